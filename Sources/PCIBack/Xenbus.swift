import Foundation
import PCIModel
import XenHypervisor
import XenPCIABI
import CXenPCISoftc

/// A guest's xenbus state machine: export, connect, reconfigure and
/// teardown, NetBSD's pciback_xenbus_* functions with Linux's behaviour.
/// Each runs on the owner's thread for one guest.
extension GuestConnection {
    static let maxDevices: UInt64 = 256 // 32 slots x 8 functions

    /// `<path>/num_devs` as a count of at most `maxDevices`; nil when it is
    /// missing or not such a count.
    static func numDevs(_ xs: XenStore, _ path: String) -> Int? {
        ((try? xs.readIfPresent(path + "/num_devs")) ?? nil).flatMap { XenstoreValue.decimal($0, max: maxDevices) }.map(Int.init)
    }

    /// A guest's devices, found through its device list as
    /// pciback_xenbus_evthandler finds them (the registry maps an entry's
    /// address to the Swift object that serves it).
    var exported: [ClaimedDevice] { deviceList.compactMap(registry.device(for:)) }

    func exported(host: PCIAddress) -> ClaimedDevice? { exported.first { $0.address == host } }

    /// The device a guest addresses, by its guest-visible address (the
    /// request path: walks the list without allocating).
    func exported(guest a: PCIAddress) -> ClaimedDevice? {
        var p = c.pointee.pbx_pb_pci_dev.slh_first
        while let pb = p {
            if let d = registry.device(for: pb), d.guestAddress == a { return d }
            p = pb.pointee.pb_guest_next.sle_next
        }
        return nil
    }

    /// xen_pcibk_setup_backend: export every `dev-N`, publish `vdev-N`,
    /// `state-N`, the roots, go Initialised; attach if the frontend is ready.
    func setupBackend() {
        let p = backendPath
        if waitsForReset() { return }
        guard let numText = try? xs.readIfPresent(p + "/num_devs") else {
            fatal("\(p)/num_devs is missing")
            return
        }
        guard let num = XenstoreValue.decimal(numText, max: Self.maxDevices) else {
            fatal("\(p)/num_devs '\(numText)' is not a decimal count of at most \(Self.maxDevices)")
            return
        }
        for n in 0..<Int(num) {
            let st = (try? xs.readIfPresent(p + "/state-\(n)")) ?? nil
            if st == XenState.closing.xenstoreValue || st == XenState.closed.xenstoreValue { continue }
            if let h = hostAddress(n), exported(host: h) != nil { continue } // a reconnect: still ours
            exportDevice(n)
        }
        exportRoots()
        setState(.initialised)
        if frontState == .initialised { attach() }
        if connected && state == .initialised { setState(.connected) }
    }

    /// pciback_xenbus_export_device: exports `dev-N` to the guest. A device
    /// that cannot be exported is skipped with the reason in `error`; the
    /// others still go.
    func exportDevice(_ n: Int) {
        let p = backendPath
        func refuse(_ why: String) {
            emit(.error(domid, why))
            try? xs.write(p + "/error", why)
        }
        guard let text = try? xs.readIfPresent(p + "/dev-\(n)") else { return refuse("\(p)/dev-\(n) is missing") }
        guard let host = XSValue.hostAddress(text) else { return refuse("dev-\(n) '\(text)' is not a DDDD:BB:SS.F address") }
        guard let d = registry[host] else { return refuse("dev-\(n) \(host): not claimed by pciback (hide it first)") }
        if d.releasing { return refuse("dev-\(n) \(host): being released to dom0") }
        if let g = d.guest, g != domid { return refuse("dev-\(n) \(host): already exported to dom\(g)") }
        if d.guest == domid { return refuse("dev-\(n) \(host): already exported to this guest") }
        if options.topology == .vpci && d.isBridge { return refuse("dev-\(n) \(host): a bridge cannot be exported on the vpci topology") }
        let adopted = d.adoption.flatMap { $0.guest == domid ? $0 : nil }
        guard let vaddr = adopted?.address ?? guestAddress(host) else { return refuse("dev-\(n) \(host): no free virtual slot (32 in use)") }
        let opts = (try? xs.readIfPresent(p + "/opts-\(n)")) ?? nil
        d.mediation.permissive = opts.map(XSValue.permissive) ?? false
        d.guestAddress = vaddr
        if let a = adopted { d.msiPirqs = a.msi; d.msixPirqs = a.msix }
        d.adoption = nil
        link(d)
        emit(.exported(domid, host: host, guest: vaddr))
        persist()
    }

    /// The host address in `dev-N`, when it is well formed.
    func hostAddress(_ n: Int) -> PCIAddress? {
        ((try? xs.readIfPresent(backendPath + "/dev-\(n)")) ?? nil).flatMap(XSValue.hostAddress)
    }

    /// vpci: functions of one physical slot share a virtual slot on root
    /// 0000:00 and keep their function numbers; passthrough: the real address.
    func guestAddress(_ host: PCIAddress) -> PCIAddress? {
        if options.topology == .passthrough { return host }
        let used = exported
        if let sibling = used.first(where: { $0.address.segment == host.segment && $0.address.bus == host.bus && $0.address.device == host.device }),
           let v = sibling.guestAddress {
            return PCIAddress(segment: 0, bus: 0, device: v.device, function: host.function)
        }
        let taken = Set(used.compactMap { $0.guestAddress?.device })
        guard let slot = (0..<32).first(where: { !taken.contains(UInt8($0)) }) else { return nil }
        return PCIAddress(segment: 0, bus: 0, device: UInt8(slot), function: host.function)
    }

    /// pciback_xenbus_export_roots: writes `vdev-N`, `state-N` = 3 and the
    /// roots in one transaction, so a frontend never sees half of them.
    func exportRoots() {
        let fresh = computeRoots()
        let p = backendPath
        // Where each exported device stands now in the (possibly compacted) dev-N list.
        let slots = (0..<(Self.numDevs(xs, p) ?? 0)).compactMap { n in hostAddress(n).flatMap { h in exported(host: h).map { (n, $0) } } }
        do {
            try xs.transaction { t in
                for (n, d) in slots {
                    try xs.write(p + "/vdev-\(n)", d.guestAddress!.vdevString, transaction: t)
                    try xs.write(p + "/state-\(n)", XenState.initialised.xenstoreValue, transaction: t)
                }
                // Stale root-N beyond the new count go.
                for k in fresh.count..<max(fresh.count, roots.count) { try? xs.remove(p + "/root-\(k)", transaction: t) }
                for (k, r) in fresh.enumerated() { try xs.write(p + "/root-\(k)", r.description, transaction: t) }
                try xs.write(p + "/root_num", String(fresh.count), transaction: t)
            }
            roots = fresh
        } catch {
            fatal("publishing devices: \(error)")
        }
    }

    /// vpci: one root, 0000:00. passthrough: the bus of each exported
    /// device whose parent bridge is not exported too.
    func computeRoots() -> [PCIRoot] {
        let list = exported
        if options.topology == .vpci { return list.isEmpty ? [] : [PCIRoot(segment: 0, bus: 0)] }
        let bridged = Set(list.filter(\.isBridge).map {
            PCIRoot(segment: $0.address.segment, bus: $0.golden.read8(PCIReg.secondaryBus))
        })
        return Set(list.map { PCIRoot(segment: $0.address.segment, bus: $0.address.bus) })
            .subtracting(bridged).sorted()
    }

    /// xen_pcibk_do_attach: check magic, map the shared page, bind the
    /// event channel. Every value comes from the guest and is checked.
    func attach() {
        let f = frontendPath
        // A frontend that goes through Initialised again while we are
        // connected (the toolstack wrote Closing, the guest answered
        // Initialised) gets a fresh connection: the old page and port go
        // first, so nothing is mapped or bound twice.
        if connected || mapping != nil || port != nil { disconnect() }
        func read(_ k: String) -> String? { (try? xs.readIfPresent(f + "/" + k)) ?? nil }
        guard let magic = read("magic") else { return fatal("\(f)/magic is missing") }
        guard magic == XenPCI.magic else {
            return fatal("version mismatch: frontend magic '\(magic.prefix(16))', backend \(XenPCI.magic)")
        }
        guard let refText = read("pci-op-ref"), let ref = XenstoreValue.decimal(refText, max: UInt64(UInt32.max - 1)) else {
            return fatal("\(f)/pci-op-ref '\(read("pci-op-ref")?.prefix(16) ?? "missing")' is not a grant reference")
        }
        guard let portText = read("event-channel"), let remote = XenstoreValue.decimal(portText, max: 1 << 17), remote > 0 else {
            return fatal("\(f)/event-channel '\(read("event-channel")?.prefix(16) ?? "missing")' is not an event channel port")
        }
        let m: GrantMapping
        do { m = try gnttab.map(domain: domid, ref: GrantRef(ref), writable: true) } catch {
            return fatal("mapping dom\(domid) grant \(ref): \(error)")
        }
        let bound: EvtchnPort
        do { bound = try evtchn.bindInterdomain(remote: domid, remotePort: EvtchnPort(remote)) } catch {
            try? gnttab.unmap(m)
            return fatal("binding dom\(domid) event channel \(remote): \(error)")
        }
        setMapping(m)
        port = bound
        ctx.ports[bound] = self
        emit(.connected(domid, port: bound))
    }

    /// xen_pcibk_disconnect: unbind, then unmap, each exactly once.
    func disconnect() {
        if let p = port {
            ctx.ports[p] = nil
            ctx.held.forget(p)
            do { try evtchn.unbind(p) } catch { emit(.error(domid, "unbind port \(p): \(error)")) }
            port = nil
        }
        if let m = mapping {
            setMapping(nil) // cleared first: a failing unmap is never retried (NetBSD's double unmap)
            do { try gnttab.unmap(m) } catch { emit(.error(domid, "unmap grant \(m.ref): \(error)")) }
            emit(.disconnected(domid))
        }
        inFlight = false
        deviceWait = nil
        finishAER(.disconnected)
    }

    /// xen_pcibk_reconfigure: the frontend is Reconfiguring; add `state-N`=1,
    /// remove `state-N`=5, republish, go Reconfigured.
    func reconfigure() {
        let p = backendPath
        if waitsForReset() { return }
        guard let numText = try? xs.readIfPresent(p + "/num_devs"), let num = XenstoreValue.decimal(numText, max: Self.maxDevices) else {
            return fatal("\(p)/num_devs is missing or not a count of at most \(Self.maxDevices)")
        }
        for n in 0..<Int(num) {
            guard let st = (try? xs.readIfPresent(p + "/state-\(n)")) ?? nil, let s = XenState(xenstore: st) else { continue }
            switch s {
            case .initialising where hostAddress(n).map({ exported(host: $0) == nil }) ?? true:
                exportDevice(n)
            case .closing:
                if let h = hostAddress(n) { unexport(h) }
                try? xs.write(p + "/state-\(n)", XenState.closed.xenstoreValue)
            default:
                break
            }
        }
        // Devices whose dev-N vanished (compacted by the toolstack) stay; only state-N=5 removes.
        exportRoots()
        setState(.reconfigured)
    }

    /// True when a function this guest is to be given is still being reset
    /// after its previous guest (a detach and an attach in quick
    /// succession): the step waits, with no state change, and runs again once
    /// the reset is done, so the guest never scans a function that answers
    /// dev_not_found.
    /// Linux's pciback puts a function back in its pool only after the reset.
    func waitsForReset() -> Bool {
        let p = backendPath
        waitingForReset = (0..<(Self.numDevs(xs, p) ?? 0)).contains { n in
            guard let h = hostAddress(n), let d = registry[h] else { return false }
            return d.resetting && !d.releasing && d.guest == nil
        }
        return waitingForReset
    }

    /// A reset is done: the step that waited for it runs again.
    func resumeAfterReset() {
        guard waitingForReset else { return }
        waitingForReset = false
        if state == .initWait { setupBackend() }
        else if state == .reconfiguring && frontState == .reconfiguring { reconfigure() }
    }

    /// Takes a device away from its guest: MSI off, pirqs unmapped, reset,
    /// golden state, permissive and quirks cleared (XSA-302/306).
    func unexport(_ host: PCIAddress) {
        guard let d = exported(host: host) else { return }
        releaseInterrupts(d)
        ctx.resetInBackground(d)
        unlink(d)
        d.guestAddress = nil
        emit(.unexported(domid, host: d.address))
        persist()
    }

    func releaseInterrupts(_ d: ClaimedDevice) {
        for p in d.msiPirqs + d.msixPirqs {
            do { try routing.unmapPirq(p, guest: domid) } catch { emit(.error(domid, "unmap pirq \(p): \(error)")) }
        }
        d.msiPirqs = []
        d.msixPirqs = []
        // A reset asked for turns them off itself; a settle in progress is
        // waited out, never waited for here.
        if !d.readOnly && !d.resetting {
            d.whenIdle { [d] in
                try? d.mediation.setEnable(.msi, false)
                try? d.mediation.setEnable(.msix, false)
            }
        }
    }

    /// The frontend closed: its devices stay exported to the guest but are
    /// reset, so a reconnecting frontend starts from a clean device.
    func quiesceDevices() {
        for d in exported.sorted(by: { $0.address < $1.address }) {
            releaseInterrupts(d)
            ctx.resetInBackground(d)
        }
    }

    /// pciback_xenbus_destroy: the guest or its backend directory is gone;
    /// everything it held is released (the backend then forgets it).
    func destroy() {
        disconnect()
        for h in exported.map(\.address).sorted() { unexport(h) }
        try? xs.unwatch(frontendPath + "/state", token: "front:\(domid)")
    }

    func setState(_ s: XenState) {
        do {
            try xs.write(backendPath + "/state", s.xenstoreValue)
            state = s
            emit(.backendState(domid, s))
        } catch {
            emit(.error(domid, "write \(backendPath)/state: \(error)"))
        }
    }

    /// xenbus_dev_fatal: say why in `error`, go Closing, drop the connection.
    func fatal(_ why: String) {
        emit(.error(domid, why))
        try? xs.write(backendPath + "/error", why)
        disconnect()
        setState(.closing)
    }

    /// The toolstack wrote the backend's `state` (Linux's pciback acts on
    /// Initialising and Reconfiguring).
    func backendChanged(_ s: XenState) {
        state = s
        switch s {
        case .initialising:
            setState(.initWait)
            setupBackend()
        case .reconfiguring:
            // Missed-Connected race: finish the connect before the reconfigure.
            if !connected && frontState == .initialised { attach() }
            if frontState == .reconfiguring { reconfigure() }
        default:
            break
        }
    }

    /// pciback_xenbus_frontend_changed: the frontend's state changed.
    func frontendChanged() {
        let raw = (try? xs.readIfPresent(frontendPath + "/state")) ?? nil
        let fs = raw.flatMap(XenState.init(xenstore:)) ?? .unknown
        let previous = frontState
        frontState = fs
        if fs != previous { emit(.frontendState(domid, fs)) }
        // A write that changes nothing (the same state again, or a child
        // node of the state: the watch is recursive) tears nothing down
        // again: Closing, Closed and a vanished node act once.
        if fs == previous && [.closing, .closed, .unknown].contains(fs) { return }
        switch fs {
        case .initialising:
            // A frontend that closed and starts again (Mini-OS, kexec).
            if state == .closing || state == .closed {
                setState(.initWait)
                setupBackend()
            }
        case .initialised:
            // A frontend that closed and attaches again without passing Initialising.
            if state == .closing || state == .closed {
                setState(.initWait)
                setupBackend() // attaches and goes Connected: the frontend is ready
                return
            }
            if !connected && (state == .initialised || state == .reconfiguring) { attach() }
            if connected && state == .initialised { setState(.connected) }
        case .connected:
            if state == .reconfigured { setState(.connected) }
        case .reconfiguring:
            if state == .reconfiguring { reconfigure() }
        case .closing:
            disconnect()
            setState(.closing)
        case .closed:
            disconnect()
            quiesceDevices()
            setState(.closed)
        case .unknown:
            if raw == nil && previous != .unknown { disconnect(); quiesceDevices() }
        default:
            break
        }
    }
}
