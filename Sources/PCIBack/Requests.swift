import Foundation
import PCIModel
import XenHypervisor
import CXenPCI
import XenPCIABI
import CXenPCISoftc
import PCIHost

/// A guest's request path: pciback_xenbus_evthandler and the dispatch of
/// each command.
extension GuestConnection {
    /// One request of a guest: on an event of its port, or seen waiting
    /// while the port was held (`fromEvent` false, see `HeldPorts`). The
    /// request is copied once into the instance's private `op` (XSA-155);
    /// only the copy is read; only `err`, `value` and the MSI-X vectors are
    /// written back. True when a request was served: the port is then left
    /// masked, for `HeldPorts.settle` to unmask or serve again.
    func evthandler(_ port: EvtchnPort, fromEvent: Bool = true) -> Bool {
        guard let sh = shared else { return false }
        // A request waits on its function (a settle): nothing more of this
        // guest's is read until it is answered; the port stays masked.
        if inFlight { return false }
        if aer != nil && sh.flags & XenPCI.backendActive == 0 {
            finishAER(.answered)
            if sh.flags & XenPCI.frontendActive == 0 { try? evtchn.unmask(port); return false } // the AER answer
        }
        guard sh.flags & XenPCI.frontendActive != 0 else {
            // The notify of a request already served arrives once the port
            // is unmasked: owed, not a flood (one per served request).
            if !fromEvent || owedEvent {
                if fromEvent { owedEvent = false }
                try? evtchn.unmask(port)
                return false
            }
            spurious += 1
            throttle(port)
            return false
        }
        // Its notify may still be behind the mask (served while held, or
        // taken by the event owed to the request before): one excused event.
        owedEvent = true
        requests += 1
        if !fromEvent { withoutEvent += 1 }
        ctx.profile.begin()
        let op = withUnsafeMutablePointer(to: &c.pointee.op) { $0 }
        sh.snapshotRequest(into: op)
        let nvec = dispatch(op)
        if let (d, wait) = deviceWait {
            // The function needs time before its next access: the reply
            // goes when it has had it; other guests are served meanwhile.
            deviceWait = nil
            inFlight = true
            let page = sh.pointer
            d.settle(on: ctx.loop, for: wait.delay, then: wait.then) { [weak self, unowned ctx] failure in
                self?.completeDeferred(port, page: page, nvec: nvec, failure: failure.map { "\(d.address): \($0)" })
                ctx.deviceWorkFinished()
            }
            return false
        }
        ctx.profile.replied()
        sh.completeRequest(op, msixVectors: nvec)
        do { try evtchn.notify(port) } catch { emit(.error(domid, "notify port \(port): \(error)")) }
        ctx.profile.notified()
        return true
    }

    /// The reply to a request that waited on its function; dropped when the
    /// guest disconnected meanwhile (its page is gone).
    private func completeDeferred(_ port: EvtchnPort, page: UnsafeMutablePointer<xen_pci_sharedinfo>, nvec: Int, failure: String?) {
        guard inFlight, self.port == port, let sh = shared, sh.pointer == page else { return }
        inFlight = false
        let op = withUnsafeMutablePointer(to: &c.pointee.op) { $0 }
        if let failure {
            emit(.error(domid, failure))
            op.pointee.err = PCIOpError.opFailed.rawValue
            op.pointee.value = 0
        }
        sh.completeRequest(op, msixVectors: nvec)
        do { try evtchn.notify(port) } catch { emit(.error(domid, "notify port \(port): \(error)")) }
        try? evtchn.unmask(port)
    }

    /// XSA-332: a guest that floods events without requests gets its port
    /// left masked for a pause, so it cannot keep this thread busy.
    private func throttle(_ port: EvtchnPort) {
        let now = ContinuousClock.now
        if now - windowStart > .milliseconds(100) {
            windowStart = now
            spuriousInWindow = 0
        }
        spuriousInWindow += 1
        if spuriousInWindow > options.spuriousLimit {
            throttled += 1
            spuriousInWindow = 0
            // Anything that arrives while paused is delivered at the unmask.
            ctx.loop.schedule(at: now + options.floodPause) { [weak self] in
                if let self, self.port == port { try? self.evtchn.unmask(port) }
            }
        } else {
            try? evtchn.unmask(port)
        }
    }

    /// Acts on the private copy; sets op.err (one of the six) and op.value.
    /// Returns how many MSI-X vectors to write back.
    func dispatch(_ op: UnsafeMutablePointer<xen_pci_op>) -> Int {
        var nvec = 0
        let cmd = PCIOpCommand(rawValue: op.pointee.cmd)
        let d = op.pointee.address.flatMap { exported(guest: $0) }
        var value: UInt32 = 0
        let err: PCIOpError
        switch cmd {
        case nil, .aerDetected?, .aerResume?, .aerMMIO?, .aerSlotReset?:
            err = .notImplemented // unknown, or AER ops (backend-to-frontend only)
        case .enableMultiMSI?:
            err = d == nil ? .devNotFound : .notImplemented // as Linux
        case let c? where d == nil || d!.resetting || registry.physicalFunction(of: d!)?.resetting == true:
            _ = c
            err = .devNotFound // absent, or it (or its PF) being reset: as in Linux's pciback, off the guest's list meanwhile
        case .confRead?:
            (err, value) = configRead(d!, op.pointee.offset, op.pointee.size)
        case .confWrite?:
            err = configWrite(d!, op.pointee.offset, op.pointee.size, op.pointee.value)
            if let w = d!.mediation.takePendingWait() { deviceWait = (d!, w) }
        case .enableMSI?:
            (err, value) = enableMSI(d!)
        case .disableMSI?:
            (err, value) = disableMSI(d!)
        case .enableMSIX?:
            (err, nvec) = enableMSIX(d!, op)
        case .disableMSIX?:
            (err, value) = disableMSIX(d!)
        }
        if let d, let cmd {
            d.ops[cmd, default: 0] += 1
            if err != .success { d.errors[err, default: 0] += 1 }
            if cmd != .confRead && cmd != .confWrite && err == .success { persist() } // the pirqs a restart must know
        }
        op.pointee.err = err.rawValue
        op.pointee.value = err == .success ? value : 0
        return nvec
    }

    /// size in {1,2,4}, aligned, inside the device's config space; checked
    /// before anything touches the device.
    private func validAccess(_ d: ClaimedDevice, _ offset: Int32, _ size: Int32) -> Bool {
        (size == 1 || size == 2 || size == 4) && offset >= 0 && offset % size == 0 && Int(offset) + Int(size) <= d.mediation.limit
    }

    private func configRead(_ d: ClaimedDevice, _ offset: Int32, _ size: Int32) -> (PCIOpError, UInt32) {
        guard validAccess(d, offset, size) else { return (.invalidOffset, 0) }
        do { return (.success, try d.mediation.read(Int(offset), Int(size))) } catch {
            emit(.error(d.guest, "\(d.address): \(error)"))
            return (.opFailed, 0)
        }
    }

    private func configWrite(_ d: ClaimedDevice, _ offset: Int32, _ size: Int32, _ value: UInt32) -> PCIOpError {
        guard validAccess(d, offset, size) else { return .invalidOffset }
        // A host driver owns it: only the virtual BAR/ROM registers take writes
        // (so a guest can size them); nothing reaches the hardware.
        if d.readOnly { return d.mediation.writeVirtualOnly(Int(offset), Int(size), value) }
        do { return try d.mediation.write(Int(offset), Int(size), value & ConfigMediation.ones(Int(size))) } catch {
            emit(.error(d.guest, "\(d.address): \(error)"))
            return .opFailed
        }
    }

    /// Refused when MSI is already on or MSI-X is on (XSA-157 sequences).
    private func enableMSI(_ d: ClaimedDevice) -> (PCIOpError, UInt32) {
        guard !d.readOnly, d.mediation.capability(.msi) != nil, d.msiPirqs.isEmpty, d.msixPirqs.isEmpty,
              !d.mediation.isEnabled(.msi), !d.mediation.isEnabled(.msix) else { return (.opFailed, 0) }
        do {
            let pirq = try routing.mapMSI(device: d.address, guest: domid)
            d.msiPirqs = [pirq]
            try d.mediation.setEnable(.msi, true)
            emit(.notice(domid, "\(d.address): MSI on: pirq \(pirq)"))
            return (.success, pirq)
        } catch {
            emit(.error(domid, "\(d.address): enable MSI: \(error)"))
            releaseInterrupts(d)
            return (.opFailed, 0)
        }
    }

    /// `value` = the INTx irq afterwards (Linux returns dev->irq).
    /// Linux's pcifront sends disable_msi when a driver frees MSI-X vectors
    /// (its core clears msix_enabled before the Xen teardown looks at it), so
    /// with MSI off and MSI-X vectors mapped this disables MSI-X: otherwise a
    /// driver that frees its vectors and asks again (nvme at probe, any
    /// unbind and bind) would find MSI-X still on and be refused.
    private func disableMSI(_ d: ClaimedDevice) -> (PCIOpError, UInt32) {
        if d.msiPirqs.isEmpty && !d.msixPirqs.isEmpty { return disableMSIX(d) }
        if !d.msiPirqs.isEmpty {
            for p in d.msiPirqs { try? routing.unmapPirq(p, guest: domid) }
            d.msiPirqs = []
            try? d.mediation.setEnable(.msi, false)
        }
        return (.success, UInt32(max(0, d.irq)))
    }

    /// `value` = nvec in (1...128, within the table), entries unique and in
    /// range; refused when MSI or MSI-X is on or memory decoding is off
    /// (the PF's for a VF; XSA-157). Exactly the entries asked for are
    /// mapped, in order. On success `value` is 0 (pcifront reads non-zero as
    /// error).
    private func enableMSIX(_ d: ClaimedDevice, _ op: UnsafeMutablePointer<xen_pci_op>) -> (PCIOpError, Int) {
        let nvec = Int(op.pointee.value)
        func refuse(_ why: String) -> (PCIOpError, Int) {
            emit(.error(domid, "\(d.address): enable MSI-X refused: \(why)"))
            return (.opFailed, 0)
        }
        guard !d.readOnly, let cap = d.mediation.capability(.msix) else { return refuse("no MSI-X capability the guest may use") }
        guard (1...XenPCI.maxMSIXVectors).contains(nvec) else { return refuse("\(nvec) vectors (1 to \(XenPCI.maxMSIXVectors))") }
        guard d.msiPirqs.isEmpty, d.msixPirqs.isEmpty else {
            return refuse("vectors already mapped (MSI \(d.msiPirqs.count), MSI-X \(d.msixPirqs.count))")
        }
        guard let ctrl = try? d.access.readConfig(cap.offset + PCICapReg.msixFlags, 2) else { return refuse("MSI-X control unreadable") }
        guard !d.mediation.isEnabled(.msi), !d.mediation.isEnabled(.msix) else {
            return refuse("MSI or MSI-X is on in hardware (MSI-X control 0x\(hex(ctrl, 4)))")
        }
        guard (try? d.access.memoryDecodeEnabled()) == true else {
            return refuse("memory decoding is off\(d.access.isVirtualFunction ? " on its physical function" : "")")
        }
        let tableSize = Int(UInt16(ctrl) & PCICapReg.msixFlagsTableSize) + 1
        var entries: [UInt16] = []
        for n in 0..<nvec {
            let e = op.pointee.msixEntry(n).entry
            guard Int(e) < tableSize, !entries.contains(e) else { return refuse("entry \(e) is repeated or beyond the table's \(tableSize)") }
            entries.append(e)
        }
        do {
            let base = try msixTableBAR(d, cap, tableSize)
            if !d.msixPrepared { try ctx.prepareMSIX(d) }
            let pirqs = try routing.mapMSIX(device: d.address, guest: domid, entries: entries, tableBase: base)
            d.msixPirqs = pirqs
            guard pirqs.count == nvec, pirqs.allSatisfy({ $0 <= UInt32(UInt16.max) }) else {
                throw PCIBackError.hardware("pirqs \(pirqs) for \(nvec) vectors (each must fit 16 bits)")
            }
            for (n, p) in pirqs.enumerated() {
                var e = op.pointee.msixEntry(n)
                e.vector = UInt16(p)
                op.pointee.setMSIXEntry(n, e)
            }
            try d.mediation.setEnable(.msix, true)
            emit(.notice(domid, "\(d.address): MSI-X on: entries \(entries) -> pirqs \(pirqs)"))
            return (.success, nvec)
        } catch {
            emit(.error(domid, "\(d.address): enable MSI-X: \(error)"))
            releaseInterrupts(d)
            return (.opFailed, 0)
        }
    }

    /// The start of the memory BAR holding the MSI-X table (what Xen
    /// compares with the BAR it reads), from the host's resources, which
    /// also hold a VF's BARs; the table must lie inside it.
    private func msixTableBAR(_ d: ClaimedDevice, _ cap: PCICapability, _ tableSize: Int) throws -> UInt64 {
        let reg = try d.access.readConfig(cap.offset + PCICapReg.msixTable, 4)
        let bir = Int(reg & 0x7), offset = UInt64(reg & ~0x7)
        let res = d.access.resources
        guard bir < 6, bir < res.count, res[bir].size > 0, !res[bir].isIO else {
            throw PCIBackError.hardware("MSI-X table in BAR\(bir), which is not an assigned memory BAR")
        }
        guard offset + UInt64(tableSize) * 16 <= res[bir].size else {
            throw PCIBackError.hardware("MSI-X table of \(tableSize) entries at 0x\(hex(offset, 1)) overruns BAR\(bir) (\(res[bir].size) bytes)")
        }
        return res[bir].start
    }

    private func disableMSIX(_ d: ClaimedDevice) -> (PCIOpError, UInt32) {
        if !d.msixPirqs.isEmpty {
            for p in d.msixPirqs { try? routing.unmapPirq(p, guest: domid) }
            d.msixPirqs = []
            try? d.mediation.setEnable(.msix, false)
        }
        return (.success, UInt32(max(0, d.irq)))
    }
}
