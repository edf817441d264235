import Foundation
import PCIModel
import XenHypervisor
import XenPCIABI
import CXenPCISoftc

/// Export, connect, reconfigure and teardown: the xenbus side of
/// NetBSD's pciback_xenbus_* functions with Linux's behaviour.
extension PCIBack {
    static let maxDevices: UInt64 = 256 // 32 slots x 8 functions

    /// A guest's devices, found through its device list as
    /// pciback_xenbus_evthandler finds them (the registry maps an entry's
    /// address to the Swift object that serves it).
    func exported(_ i: Instance) -> [ClaimedDevice] {
        i.deviceList.compactMap { pb in devices[ClaimedDevice.address(of: pb)].flatMap { $0.pb == pb ? $0 : nil } }
    }

    func exported(_ i: Instance, host: PCIAddress) -> ClaimedDevice? { exported(i).first { $0.address == host } }

    /// The device a guest addresses, by its guest-visible address (the
    /// request path: walks the list without allocating).
    func exported(_ i: Instance, guest a: PCIAddress) -> ClaimedDevice? {
        var p = i.c.pointee.pbx_pb_pci_dev.slh_first
        while let pb = p {
            if let d = devices[ClaimedDevice.address(of: pb)], d.pb == pb, d.guestAddress == a { return d }
            p = pb.pointee.pb_guest_next.sle_next
        }
        return nil
    }

    /// The guest bound to `port`: NetBSD establishes the event handler with
    /// the instance as its argument; `handlers` is that registration, and
    /// the instance's pbx_evtchn must still name the port.
    func instance(port: EvtchnPort) -> Instance? { handlers[port].flatMap { $0.port == port ? $0 : nil } }

    /// xen_pcibk_setup_backend: export every `dev-N`, publish `vdev-N`,
    /// `state-N`, the roots, go Initialised; attach if the frontend is ready.
    func setupBackend(_ i: Instance) {
        let p = i.backendPath
        if exportWhenReset(i) { return }
        guard let numText = try? xs.readIfPresent(p + "/num_devs") else {
            fatal(i, "\(p)/num_devs is missing")
            return
        }
        guard let num = XenstoreValue.decimal(numText, max: Self.maxDevices) else {
            fatal(i, "\(p)/num_devs '\(numText)' is not a decimal count of at most \(Self.maxDevices)")
            return
        }
        for n in 0..<Int(num) {
            let st = (try? xs.readIfPresent(p + "/state-\(n)")) ?? nil
            if st == XenState.closing.xenstoreValue || st == XenState.closed.xenstoreValue { continue }
            if let h = hostAddress(i, n), exported(i, host: h) != nil { continue } // a reconnect: still ours
            export(i, n)
        }
        publish(i)
        setState(i, .initialised)
        if i.frontState == .initialised { attach(i) }
        if i.connected && i.state == .initialised { setState(i, .connected) }
    }

    /// Exports `dev-N` to the guest. A device that cannot be exported is
    /// skipped with the reason in `error`; the others still go.
    func export(_ i: Instance, _ n: Int) {
        let p = i.backendPath
        func refuse(_ why: String) {
            emit(.error(i.domid, why))
            try? xs.write(p + "/error", why)
        }
        guard let text = try? xs.readIfPresent(p + "/dev-\(n)") else { return refuse("\(p)/dev-\(n) is missing") }
        guard let host = XSValue.hostAddress(text) else { return refuse("dev-\(n) '\(text)' is not a DDDD:BB:SS.F address") }
        guard let d = devices[host] else { return refuse("dev-\(n) \(host): not claimed by pciback (hide it first)") }
        if d.releasing { return refuse("dev-\(n) \(host): being released to dom0") }
        if let g = d.guest, g != i.domid { return refuse("dev-\(n) \(host): already exported to dom\(g)") }
        if d.guest == i.domid { return refuse("dev-\(n) \(host): already exported to this guest") }
        if options.topology == .vpci && d.isBridge { return refuse("dev-\(n) \(host): a bridge cannot be exported on the vpci topology") }
        let adopted = d.adoption.flatMap { $0.guest == i.domid ? $0 : nil }
        guard let vaddr = adopted?.address ?? guestAddress(i, host) else { return refuse("dev-\(n) \(host): no free virtual slot (32 in use)") }
        let opts = (try? xs.readIfPresent(p + "/opts-\(n)")) ?? nil
        d.mediation.permissive = opts.map(XSValue.permissive) ?? false
        d.guestAddress = vaddr
        if let a = adopted { d.msiPirqs = a.msi; d.msixPirqs = a.msix }
        d.adoption = nil
        i.link(d)
        emit(.exported(i.domid, host: host, guest: vaddr))
        persist()
    }

    /// The host address in `dev-N`, when it is well formed.
    func hostAddress(_ i: Instance, _ n: Int) -> PCIAddress? {
        ((try? xs.readIfPresent(i.backendPath + "/dev-\(n)")) ?? nil).flatMap(XSValue.hostAddress)
    }

    /// vpci: functions of one physical slot share a virtual slot on root
    /// 0000:00 and keep their function numbers; passthrough: the real address.
    func guestAddress(_ i: Instance, _ host: PCIAddress) -> PCIAddress? {
        if options.topology == .passthrough { return host }
        let used = exported(i)
        if let sibling = used.first(where: { $0.address.segment == host.segment && $0.address.bus == host.bus && $0.address.device == host.device }),
           let v = sibling.guestAddress {
            return PCIAddress(segment: 0, bus: 0, device: v.device, function: host.function)
        }
        let taken = Set(used.compactMap { $0.guestAddress?.device })
        guard let slot = (0..<32).first(where: { !taken.contains(UInt8($0)) }) else { return nil }
        return PCIAddress(segment: 0, bus: 0, device: UInt8(slot), function: host.function)
    }

    /// Writes `vdev-N`, `state-N` = 3 and the roots in one transaction, so a
    /// frontend never sees half of them.
    func publish(_ i: Instance) {
        let roots = computeRoots(i)
        let p = i.backendPath
        // Where each exported device stands now in the (possibly compacted) dev-N list.
        let num = ((try? xs.readIfPresent(p + "/num_devs")) ?? nil).flatMap { XenstoreValue.decimal($0, max: Self.maxDevices) } ?? 0
        let slots = (0..<Int(num)).compactMap { n in hostAddress(i, n).flatMap { h in exported(i, host: h).map { (n, $0) } } }
        do {
            try xs.transaction { t in
                for (n, d) in slots {
                    try xs.write(p + "/vdev-\(n)", d.guestAddress!.vdevString, transaction: t)
                    try xs.write(p + "/state-\(n)", XenState.initialised.xenstoreValue, transaction: t)
                }
                // Stale root-N beyond the new count go.
                for k in roots.count..<max(roots.count, i.roots.count) { try? xs.remove(p + "/root-\(k)", transaction: t) }
                for (k, r) in roots.enumerated() { try xs.write(p + "/root-\(k)", r.description, transaction: t) }
                try xs.write(p + "/root_num", String(roots.count), transaction: t)
            }
            i.roots = roots
        } catch {
            fatal(i, "publishing devices: \(error)")
        }
    }

    /// vpci: one root, 0000:00. passthrough: the bus of each exported
    /// device whose parent bridge is not exported too.
    func computeRoots(_ i: Instance) -> [PCIRoot] {
        let list = exported(i)
        if options.topology == .vpci { return list.isEmpty ? [] : [PCIRoot(segment: 0, bus: 0)] }
        let bridged = Set(list.filter(\.isBridge).map {
            PCIRoot(segment: $0.address.segment, bus: $0.golden.read8(PCIReg.secondaryBus))
        })
        return Set(list.map { PCIRoot(segment: $0.address.segment, bus: $0.address.bus) })
            .subtracting(bridged).sorted()
    }

    /// xen_pcibk_do_attach: check magic, map the shared page, bind the
    /// event channel. Every value comes from the guest and is checked.
    func attach(_ i: Instance) {
        let f = i.frontendPath
        func read(_ k: String) -> String? { (try? xs.readIfPresent(f + "/" + k)) ?? nil }
        guard let magic = read("magic") else { return fatal(i, "\(f)/magic is missing") }
        guard magic == XenPCI.magic else {
            return fatal(i, "version mismatch: frontend magic '\(magic.prefix(16))', backend \(XenPCI.magic)")
        }
        guard let refText = read("pci-op-ref"), let ref = XenstoreValue.decimal(refText, max: UInt64(UInt32.max - 1)) else {
            return fatal(i, "\(f)/pci-op-ref '\(read("pci-op-ref")?.prefix(16) ?? "missing")' is not a grant reference")
        }
        guard let portText = read("event-channel"), let remote = XenstoreValue.decimal(portText, max: 1 << 17), remote > 0 else {
            return fatal(i, "\(f)/event-channel '\(read("event-channel")?.prefix(16) ?? "missing")' is not an event channel port")
        }
        let m: GrantMapping
        do { m = try gnttab.map(domain: i.domid, ref: GrantRef(ref), writable: true) } catch {
            return fatal(i, "mapping dom\(i.domid) grant \(ref): \(error)")
        }
        let port: EvtchnPort
        do { port = try evtchn.bindInterdomain(remote: i.domid, remotePort: EvtchnPort(remote)) } catch {
            try? gnttab.unmap(m)
            return fatal(i, "binding dom\(i.domid) event channel \(remote): \(error)")
        }
        i.setMapping(m)
        i.port = port
        handlers[port] = i
        emit(.connected(i.domid, port: port))
    }

    /// xen_pcibk_disconnect: unbind, then unmap, each exactly once.
    func disconnect(_ i: Instance) {
        if let p = i.port {
            handlers[p] = nil
            deferredUnmask.removeAll { $0.port == p }
            do { try evtchn.unbind(p) } catch { emit(.error(i.domid, "unbind port \(p): \(error)")) }
            i.port = nil
        }
        if let m = i.mapping {
            i.setMapping(nil) // cleared first: a failing unmap is never retried (NetBSD's double unmap)
            do { try gnttab.unmap(m) } catch { emit(.error(i.domid, "unmap grant \(m.ref): \(error)")) }
            emit(.disconnected(i.domid))
        }
        if i.aerPending { aerCondition.lock(); i.aerDone = true; aerCondition.broadcast(); aerCondition.unlock() }
    }

    /// xen_pcibk_reconfigure: the frontend is Reconfiguring; add `state-N`=1,
    /// remove `state-N`=5, republish, go Reconfigured.
    func reconfigure(_ i: Instance) {
        let p = i.backendPath
        if exportWhenReset(i) { return }
        guard let numText = try? xs.readIfPresent(p + "/num_devs"), let num = XenstoreValue.decimal(numText, max: Self.maxDevices) else {
            return fatal(i, "\(p)/num_devs is missing or not a count of at most \(Self.maxDevices)")
        }
        for n in 0..<Int(num) {
            guard let st = (try? xs.readIfPresent(p + "/state-\(n)")) ?? nil, let s = XenState(xenstore: st) else { continue }
            switch s {
            case .initialising where hostAddress(i, n).map({ exported(i, host: $0) == nil }) ?? true:
                export(i, n)
            case .closing:
                if let h = hostAddress(i, n) { unexport(i, h) }
                try? xs.write(p + "/state-\(n)", XenState.closed.xenstoreValue)
            default:
                break
            }
        }
        // Devices whose dev-N vanished (compacted by the toolstack) stay; only state-N=5 removes.
        publish(i)
        setState(i, .reconfigured)
    }

    /// True when a function `i` is to be given is still being reset after
    /// its previous guest (a detach and an attach in quick succession): the
    /// step waits, with no state change, and runs again once the reset is
    /// done, so the guest never scans a function that answers dev_not_found.
    /// Linux's pciback puts a function back in its pool only after the reset.
    func exportWhenReset(_ i: Instance) -> Bool {
        let p = i.backendPath
        let num = ((try? xs.readIfPresent(p + "/num_devs")) ?? nil).flatMap { XenstoreValue.decimal($0, max: Self.maxDevices) } ?? 0
        i.waitingForReset = (0..<Int(num)).contains { n in
            guard let h = hostAddress(i, n), let d = devices[h] else { return false }
            return d.resetting && !d.releasing && d.guest == nil
        }
        return i.waitingForReset
    }

    /// A reset is done: the steps that waited for it run again.
    func resumeWaitingForReset() {
        for i in instances.values.sorted(by: { $0.domid < $1.domid }) where i.waitingForReset {
            i.waitingForReset = false
            if i.state == .initWait { setupBackend(i) }
            else if i.state == .reconfiguring && i.frontState == .reconfiguring { reconfigure(i) }
        }
    }

    /// Takes a device away from its guest: MSI off, pirqs unmapped, reset,
    /// golden state, permissive and quirks cleared (XSA-302/306).
    func unexport(_ i: Instance, _ host: PCIAddress) {
        guard let d = exported(i, host: host) else { return }
        releaseInterrupts(i, d)
        resetInBackground(d)
        i.unlink(d)
        d.guestAddress = nil
        emit(.unexported(i.domid, host: d.address))
        persist()
    }

    func releaseInterrupts(_ i: Instance, _ d: ClaimedDevice) {
        for p in d.msiPirqs + d.msixPirqs {
            do { try routing.unmapPirq(p, guest: i.domid) } catch { emit(.error(i.domid, "unmap pirq \(p): \(error)")) }
        }
        d.msiPirqs = []
        d.msixPirqs = []
        if !d.readOnly {
            try? d.mediation.setEnable(.msi, false)
            try? d.mediation.setEnable(.msix, false)
        }
    }

    /// The frontend closed: its devices stay exported to the guest but are
    /// reset, so a reconnecting frontend starts from a clean device.
    func quiesceDevices(_ i: Instance) {
        for d in exported(i).sorted(by: { $0.address < $1.address }) {
            releaseInterrupts(i, d)
            resetInBackground(d)
        }
    }

    /// Resets `d` on a worker: a reset takes 100 ms and more (Linux waits up
    /// to 60 s for a device that is not ready), and every other guest and
    /// device is served meanwhile. Requests to `d` answer dev_not_found
    /// until it is done. The worker hands the fresh mediation back to the
    /// service thread; a guest holding `d` by then (the same one after a
    /// frontend close, or a new one after a hot-add) keeps its toolstack's
    /// permissive option.
    func resetInBackground(_ d: ClaimedDevice) {
        guard !d.resetting else { return }
        d.resetting = true
        // No DMA from here on (XSA-306): bus mastering off at once, the rest later.
        if !d.readOnly, let cmd = try? d.access.readConfig(PCIReg.command, 2), UInt16(cmd) & PCICommand.master != 0 {
            try? d.access.writeConfig(PCIReg.command, 2, cmd & ~UInt32(PCICommand.master))
        }
        deviceWork.submit { [self] in
            let result = Result { try d.resetHardware() }
            loop.post { [self] in
                d.resetting = false
                switch result {
                case .success(let m):
                    if d.guest != nil { m.permissive = d.mediation.permissive }
                    d.mediation = m
                case .failure(let e):
                    emit(.error(d.guest, "\(d.address): reset: \(e)"))
                }
                persist()
                resumeWaitingForReset()
            }
        }
    }

    /// Waits until no reset is running (the deterministic mode runs the
    /// queued ones here) and what the workers handed back is installed.
    func waitForResets() {
        deviceWork.finish()
        loop.sync { [loop] in loop.runJobs() }
    }

    /// The guest or its backend directory is gone: release everything.
    func destroy(_ i: Instance) {
        disconnect(i)
        for h in exported(i).map(\.address).sorted() { unexport(i, h) }
        try? xs.unwatch(i.frontendPath + "/state", token: "front:\(i.domid)")
        instances[i.domid] = nil
    }
}
