import Foundation
import PCIModel
import XenHypervisor
import XenPCIABI

/// Restart without harm: a backend that starts while guests use
/// functions a previous backend served takes them over as they are. A
/// function a running guest holds is never reset at claim; its golden state
/// and pirqs come from the state the previous backend saved.
extension PCIBack {
    /// pciback_pci_attach for one function, in three steps: `planClaim`
    /// (owner: who holds it, what was saved), `ClaimPlan.build` (the caller's
    /// thread: the device I/O, a reset unless a running guest holds it) and
    /// `completeClaim` (owner: interrupts and options taken over).
    func planClaim(_ access: PCIDeviceAccess) throws -> ClaimPlan {
        let a = access.address
        let saved = registry.takeSaved(a)
        // Nobody uses it: a fresh claim. Pirqs of a guest that is gone went
        // with it; an MSI-X table the previous backend prepared is ours.
        guard let holder = holder(of: a) else { return ClaimPlan(saved: saved, adoption: nil) }
        guard let store = registry.store else {
            throw PCIBackError.refused("\(a): dom\(holder) is using it and no state file was given: left alone, not reset")
        }
        guard let saved else {
            let why = registry.recoveryProblem ?? "\(store.location) has no state for it"
            throw PCIBackError.refused("\(a): dom\(holder) is using it and \(why): left alone, not reset")
        }
        guard let golden = saved.goldenSpace, golden.size == access.configSize else {
            throw PCIBackError.refused("\(a): dom\(holder) is using it and its golden state in \(store.location) is corrupt: left alone, not reset")
        }
        guard saved.guest == holder, let ga = saved.guestAddress.flatMap({ try? PCIAddress(parsing: $0) }) else {
            throw PCIBackError.refused("\(a): dom\(holder) is using it but \(store.location) says dom\(saved.guest.map(String.init) ?? "none"): left alone, not reset")
        }
        return ClaimPlan(saved: saved, adoption: (holder, ga, golden, store.location))
    }

    func completeClaim(_ d: ClaimedDevice, _ plan: ClaimPlan) throws {
        let a = d.address
        guard let (holder, ga, _, location) = plan.adoption, let saved = plan.saved else {
            if plan.saved?.msixPrepared == true, (try? routing.adoptPreparedMSIX(device: a)) != nil { d.msixPrepared = true }
            return
        }
        if saved.msixPrepared { try routing.adoptPreparedMSIX(device: a); d.msixPrepared = true }
        try routing.adopt(pirqs: saved.msiPirqs + saved.msixPirqs, guest: holder, device: a)
        d.adoption = (holder, ga, saved.msiPirqs, saved.msixPirqs)
        d.mediation.permissive = saved.permissive
        for q in saved.quirks { if let q = try? PCIQuirk(parsing: q) { try? d.mediation.addQuirk(q) } }
        emit(.notice(holder, "\(a): dom\(holder) is using it: taken over without reset (golden state from \(location))"))
    }

    /// The running guest whose backend directory lists `a` as a live
    /// device, if any.
    func holder(of a: PCIAddress) -> DomID? {
        for name in (try? xs.directory(backendRoot)) ?? [] {
            guard let domid = XenstoreValue.decimal(name, max: 0x7FEF).map(DomID.init),
                  (try? xs.readIfPresent("/local/domain/\(domid)/domid")) ?? nil != nil else { continue }
            let p = "\(backendRoot)/\(domid)/0"
            guard let st = (try? xs.readIfPresent(p + "/state")) ?? nil, let s = XenState(xenstore: st),
                  s != .closed, s != .closing, s != .initialising,
                  let num = GuestConnection.numDevs(xs, p) else { continue }
            for n in 0..<num {
                guard ((try? xs.readIfPresent(p + "/dev-\(n)")) ?? nil).flatMap(XSValue.hostAddress) == a else { continue }
                let ds = (try? xs.readIfPresent(p + "/state-\(n)")) ?? nil
                if ds != XenState.closing.xenstoreValue && ds != XenState.closed.xenstoreValue { return domid }
            }
        }
        return nil
    }

    /// At start: every `backend/pci/<domid>/0` the toolstack wrote before
    /// we ran. A guest whose frontend is connected is re-attached (its page
    /// mapped, its event channel bound) with no state change, and a request
    /// it posted while no backend ran is answered.
    func adoptGuests() {
        for name in (try? xs.directory(backendRoot)) ?? [] {
            guard let domid = XenstoreValue.decimal(name, max: 0x7FEF).map(DomID.init), connections[domid] == nil else { continue }
            let path = "\(backendRoot)/\(domid)/0"
            guard let st = (try? xs.readIfPresent(path + "/state")) ?? nil, let state = XenState(xenstore: st) else { continue }
            switch state {
            case .initialised, .connected, .reconfiguring, .reconfigured:
                // Only a guest we hold a function of: one whose functions were
                // refused (left alone) is not ours to attach to, nor to close.
                let ours = (0..<(GuestConnection.numDevs(xs, path) ?? 0)).contains { n in
                    ((try? xs.readIfPresent(path + "/dev-\(n)")) ?? nil).flatMap(XSValue.hostAddress).map { registry[$0]?.adoption?.guest == domid } ?? false
                }
                guard ours else {
                    emit(.notice(domid, "\(path): \(state), but none of its functions is held here: left alone"))
                    continue
                }
                guard let i = create(domid, path) else { continue }
                i.state = state
                let fs = ((try? xs.readIfPresent(i.frontendPath + "/state")) ?? nil).flatMap(XenState.init(xenstore:)) ?? .unknown
                i.frontState = fs
                for n in 0..<(GuestConnection.numDevs(xs, path) ?? 0) {
                    let ds = (try? xs.readIfPresent(path + "/state-\(n)")) ?? nil
                    if ds == XenState.closing.xenstoreValue || ds == XenState.closed.xenstoreValue { continue }
                    if let h = i.hostAddress(n), let d = registry[h], d.guest == nil { i.exportDevice(n) }
                }
                i.roots = i.computeRoots()
                if [.initialised, .connected, .reconfiguring, .reconfigured].contains(fs) {
                    i.attach()
                    emit(.notice(domid, "taken over: \(i.exported.count) function(s), frontend \(fs), backend \(state) (no state change)"))
                    if let port = i.port, let sh = i.shared, sh.flags & XenPCI.frontendActive != 0 {
                        _ = i.evthandler(port) // a port just bound is not masked: nothing to hold
                    }
                }
            default:
                backendChanged(domid) // Initialising, InitWait, Closing, Closed: the usual path
            }
        }
    }
}

/// What a claim found before its device I/O: the previous backend's saved
/// state, and whether a running guest holds the function (then it is
/// adopted with that golden state: neither read again nor reset).
struct ClaimPlan {
    var saved: PersistedState.Device?
    var adoption: (guest: DomID, address: PCIAddress, golden: ConfigSpace, location: String)?

    /// The device I/O of a claim, on the caller's thread.
    func build(_ access: PCIDeviceAccess, allowHostDriver: Bool) throws -> ClaimedDevice {
        guard let adoption else { return try ClaimedDevice(access, allowHostDriver: allowHostDriver) }
        return try ClaimedDevice(access, allowHostDriver: false, adopting: adoption.golden)
    }
}
