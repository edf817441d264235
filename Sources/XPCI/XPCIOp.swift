import Foundation
import Synchronization
import XenHypervisor
import CXenPCI
import XenPCIABI
import PCIModel
import CXenPCISoftc

/// The op path: one request at a time on the caller's thread, the reply
/// checked before anything in it is believed.
extension XPCIFrontend {
    /// The handshake of docs/PROTOCOL.md §4 (NetBSD: the body of
    /// xpci_conf_read/xpci_conf_write, which spun forever). Copies the op in,
    /// sets bit 0, notifies, and waits on the event channel until the backend
    /// clears bit 0 or the request timeout passes. A timeout marks the channel
    /// broken: nothing new is posted until the backend has cleared bit 0, so a
    /// late reply can never be taken for the next request. Once detach has
    /// begun nothing is posted and a wait in progress ends at once.
    func doOp(_ op: xen_pci_op, _ a: PCIAddress) throws -> xen_pci_op {
        opLock.lock()
        defer { opLock.unlock() }
        let cmd = op.command ?? .confRead
        guard sc.pointee.sc_backend_status == Int32(XPCI_BACKEND_CONNECTED), let page, let ev = evtchn,
              sc.pointee.sc_evtchn != 0 else { throw XPCIError.notConnected(state) }
        guard !shutdownRequested else { throw XPCIError.detaching(op: cmd, address: a) }
        let port = sc.pointee.sc_evtchn
        if channelBroken {
            guard page.flags & XenPCI.frontendActive == 0 else {
                throw XPCIError.channelBroken("an earlier request timed out and the backend has not answered it yet (\(cmd) on \(a) not sent)")
            }
            channelBroken = false // the late reply came; it is dropped unread
        }
        page.postRequest(op)
        requestsPosted.add(1, ordering: .relaxed)
        do {
            try ev.notify(port)
            if options.spinBeforeBlock > .zero { spinWhileActive(page, options.spinBeforeBlock) }
            var deadline: ContinuousClock.Instant?  // read the clock only if the reply is not there yet
            while page.flags & XenPCI.frontendActive != 0 {
                if deadline == nil { deadline = ContinuousClock.now + options.requestTimeout }
                let left = ContinuousClock.now.duration(to: deadline!)
                if left <= .zero {
                    channelBroken = true
                    throw XPCIError.timeout(op: cmd, address: a, after: options.requestTimeout)
                }
                let ready = try pollReadable([ev.fileDescriptor, abortFD], timeout: left)
                if ready[1] {
                    channelBroken = true // the reply may still land; the channel is torn down next
                    throw XPCIError.detaching(op: cmd, address: a)
                }
                if ready[0], let p = try ev.pending() { try ev.unmask(p) }
            }
        } catch let e as XenError {
            channelBroken = true
            throw XPCIError.xen(e)
        }
        let reply = page.readReply()
        if page.flags & XenPCI.backendActive != 0 { _ = xenpci_eventfd_signal(kickFD) }
        return reply
    }

    /// Adaptive mode: spin on bit 0 for at most `limit` (the clock is read
    /// every 256 loads, and the CPU offered to others every 4096, in case the
    /// backend waits for this very CPU). The event the backend sends anyway
    /// is left for the blocking path or the xenbus thread to take.
    func spinWhileActive(_ page: SharedPage, _ limit: Duration) {
        let end = ContinuousClock.now + limit
        var n = 0
        while true {
            for _ in 0..<256 where page.flags & XenPCI.frontendActive == 0 { return }
            if ContinuousClock.now >= end { return }
            n += 1
            if n % 16 == 0 { sched_yield() }
        }
    }

    /// doOp plus statistics and the `err` check: one of the six values, and
    /// anything but success becomes a typed error (NetBSD swallowed them).
    func request(_ op: xen_pci_op, _ a: PCIAddress) throws -> xen_pci_op {
        try requestResult(op, a).get()
    }

    /// `request` with the error returned, not thrown: a scan gets an error
    /// for each of the hundreds of empty slots it probes, and a thrown error
    /// costs an allocation and a cast.
    func requestResult(_ op: xen_pci_op, _ a: PCIAddress) -> Result<xen_pci_op, XPCIError> {
        let cmd = op.command ?? .confRead
        let e: XPCIError
        do {
            let r = try doOp(op, a)
            if let err = PCIOpError(rawValue: r.err) {
                if err == .success {
                    count(a) { $0.ops += 1 }
                    return .success(r)
                }
                e = .backend(err, op: cmd, address: a)
            } else {
                e = .backendLied("\(cmd) on \(a): err = \(r.err) is not one of the six protocol values")
            }
        } catch {
            e = XPCIError.wrap(error)
            if case .detaching = e { return .failure(e) } // not the backend's doing: not counted
        }
        count(a) {
            $0.ops += 1
            if case .timeout = e { $0.timeouts += 1 } else { $0.errors += 1 }
        }
        return .failure(e)
    }

    /// A 4-byte config read where a backend error means "nothing there"
    /// (nil); other failures (lies, timeouts, detach) are thrown.
    func readDwordIfPresent(_ a: PCIAddress, offset: Int) throws -> UInt32? {
        switch requestResult(xen_pci_op(command: .confRead, address: a, offset: Int32(offset), size: 4), a) {
        case .success(let r): return r.value
        case .failure(.backend): return nil
        case .failure(let e): throw e
        }
    }

    /// Counts under the function's address when it is on the bus (or being
    /// read by a scan), else under `other`: a backend that makes the scan
    /// probe new addresses on every reconnect cannot grow the statistics.
    func count(_ a: PCIAddress, _ body: (inout XPCIDeviceStatistics) -> Void) {
        locked {
            // isEmpty first: a first scan probes hundreds of slots with both empty.
            if (!bus.isEmpty && bus[a] != nil) || (!scanning.isEmpty && scanning.contains(a)) {
                body(&stats.devices[a, default: XPCIDeviceStatistics()])
            } else {
                body(&stats.other)
            }
        }
    }

    static func checkAccess(_ offset: Int, _ size: Int) throws {
        guard size == 1 || size == 2 || size == 4 else { throw XPCIError.badArgument("size \(size) is not 1, 2 or 4") }
        guard offset >= 0, offset + size <= 0x1000 else { throw XPCIError.badArgument("offset 0x\(hex(offset, 3)) is outside config space") }
        guard offset % size == 0 else { throw XPCIError.badArgument("offset 0x\(hex(offset, 3)) is not aligned to \(size)") }
    }

    /// xpci_conf_read: 1, 2 or 4 bytes (NetBSD: 4 only).
    public func configRead(_ a: PCIAddress, offset: Int, size: Int) throws -> UInt32 {
        try Self.checkAccess(offset, size)
        let r = try request(xen_pci_op(command: .confRead, address: a, offset: Int32(offset), size: Int32(size)), a)
        if size < 4 && r.value >> (8 * size) != 0 {
            count(a) { $0.errors += 1 }
            throw XPCIError.backendLied("conf_read of \(size) byte(s) at 0x\(hex(offset, 3)) on \(a): value 0x\(hex(r.value, 8)) has bits above the size")
        }
        return r.value
    }

    /// xpci_conf_write: 1, 2 or 4 bytes.
    public func configWrite(_ a: PCIAddress, offset: Int, size: Int, value: UInt32) throws {
        try Self.checkAccess(offset, size)
        guard size == 4 || value >> (8 * size) == 0 else {
            throw XPCIError.badArgument("value 0x\(hex(value, 8)) does not fit in \(size) byte(s)")
        }
        _ = try request(xen_pci_op(command: .confWrite, address: a, offset: Int32(offset), size: Int32(size), value: value), a)
    }

    func checkPirq(_ p: UInt32, _ what: String) throws {
        guard p != 0, p <= Self.maxPirq else { throw XPCIError.backendLied("\(what) = \(p) is not a usable pirq") }
    }

    /// enable_msi: returns the pirq (Linux pci_frontend_enable_msi).
    public func enableMSI(_ a: PCIAddress) throws -> UInt32 {
        let r = try request(xen_pci_op(command: .enableMSI, address: a), a)
        try checkPirq(r.value, "enable_msi on \(a): value")
        return r.value
    }

    public func disableMSI(_ a: PCIAddress) throws {
        _ = try request(xen_pci_op(command: .disableMSI, address: a), a)
    }

    /// enable_msix: `entries` are MSI-X table indices; returns one pirq each.
    /// A non-zero `value` on success is an error (as Linux pcifront reads it),
    /// and so are zero, out-of-range or repeated pirqs.
    public func enableMSIX(_ a: PCIAddress, entries: [UInt16]) throws -> [UInt32] {
        guard (1...XenPCI.maxMSIXVectors).contains(entries.count) else {
            throw XPCIError.badArgument("\(entries.count) MSI-X entries (1...\(XenPCI.maxMSIXVectors))")
        }
        guard Set(entries).count == entries.count, entries.allSatisfy({ $0 < 2048 }) else {
            throw XPCIError.badArgument("MSI-X entries must be distinct table indices below 2048")
        }
        var op = xen_pci_op(command: .enableMSIX, address: a, value: UInt32(entries.count))
        for (i, e) in entries.enumerated() { op.setMSIXEntry(i, xen_msix_entry(vector: 0, entry: e)) }
        let r = try request(op, a)
        guard r.value == 0 else {
            throw XPCIError.backendLied("enable_msix on \(a): value = \(Int32(bitPattern: r.value)) with err = success (must be 0)")
        }
        var pirqs: [UInt32] = []
        for i in entries.indices {
            let v = UInt32(r.msixEntry(i).vector)
            try checkPirq(v, "enable_msix on \(a): msix_entries[\(i)].vector")
            guard !pirqs.contains(v) else {
                throw XPCIError.backendLied("enable_msix on \(a): msix_entries[\(i)].vector = \(v) repeats an earlier pirq")
            }
            pirqs.append(v)
        }
        return pirqs
    }

    public func disableMSIX(_ a: PCIAddress) throws {
        _ = try request(xen_pci_op(command: .disableMSIX, address: a), a)
    }

    /// enable_multi_msi: `count` (a power of two, 1...32) in `info`; returns
    /// the first of `count` consecutive pirqs.
    public func enableMultiMSI(_ a: PCIAddress, count n: Int) throws -> UInt32 {
        guard (1...32).contains(n), n & (n - 1) == 0 else {
            throw XPCIError.badArgument("multi-MSI count \(n) is not a power of two in 1...32")
        }
        var op = xen_pci_op(command: .enableMultiMSI, address: a)
        op.info = UInt32(n)
        let r = try request(op, a)
        try checkPirq(r.value, "enable_multi_msi on \(a): value")
        guard UInt64(r.value) + UInt64(n) - 1 <= UInt64(Self.maxPirq) else {
            throw XPCIError.backendLied("enable_multi_msi on \(a): pirqs \(r.value)+\(n) run past \(Self.maxPirq)")
        }
        return r.value
    }

    // MARK: AER

    /// Called by the xenbus thread when the event channel fired or a
    /// requester saw bit 2: with no request in flight (opLock), take the
    /// pending event; if the backend posted an AER request, answer it outside
    /// the lock (the handler may issue config requests).
    /// With `unlessBusy`, returns `.busy` at once when a request is in
    /// flight (its requester takes the event).
    @discardableResult
    func serviceEvents(unlessBusy: Bool = false) -> ServiceResult {
        if unlessBusy { guard opLock.try() else { return .busy } } else { opLock.lock() }
        guard let page, let ev = evtchn, sc.pointee.sc_evtchn != 0 else { opLock.unlock(); return .idle }
        let port = sc.pointee.sc_evtchn
        if let p = try? ev.pending() { try? ev.unmask(p) }
        let aer = page.flags & XenPCI.backendActive != 0 ? page.snapshotAER() : nil
        opLock.unlock()
        guard let aer else { return .idle }
        let result = admitAER() ? handleAER(aer) : .disconnect
        page.completeAER(err: result.rawValue)
        try? ev.notify(port)
        return .answeredAER
    }

    enum ServiceResult { case busy, idle, answeredAER }

    /// The rate limit: true when this AER request may run the
    /// handler. A refused one is answered `disconnect` (no recovery was
    /// attempted) and counted; the report lines are emitted outside the lock.
    func admitAER() -> Bool {
        let (admitted, reports) = locked {
            stats.aerRequests += 1
            let r = aerThrottle.take(at: .now)
            if !r.admitted { stats.aerRateLimited += 1 }
            return r
        }
        for n in reports { emit(.aerRateLimited(refused: n, limit: options.aerRateLimit)) }
        return admitted
    }

    /// At teardown: refusals of the last window not reported yet.
    func flushAERReports() {
        if let n = locked({ aerThrottle.flush() }) { emit(.aerRateLimited(refused: n, limit: options.aerRateLimit)) }
    }

    /// Linux pcifront_common_process: find the device's handler and call it.
    /// Impossible requests (unknown command, bad address) answer NONE and
    /// are reported.
    func handleAER(_ op: xen_pcie_aer_op) -> AERResult {
        guard let cmd = AERCommand(rawValue: op.cmd) else {
            emit(.error(.backendLied("aer_op.cmd = \(op.cmd) is not an AER command (6...9)")))
            return .none
        }
        guard let a = PCIAddress(domain: op.domain, bus: op.bus, devfn: op.devfn) else {
            emit(.error(.backendLied("aer_op address \(op.domain):\(op.bus):\(op.devfn) is out of range")))
            return .none
        }
        let req = AERRequest(command: cmd, address: a, channelState: op.err)
        let h = locked { aerHandlers[a] }
        let result = h?(req) ?? .none
        emit(.aer(req, result))
        return result
    }
}
