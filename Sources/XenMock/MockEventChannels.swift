import Foundation
import XenHypervisor
import XenPCIABI

/// One domain's event channel handle. Ports are numbered per domain from 1,
/// lowest free first, as Xen allocates them.
// @unchecked Sendable: its state is used only under the hypervisor's lock (see MockHandle).
final class MockEventChannels: MockHandle, EventChannels, @unchecked Sendable {
    override class var what: String { "event channel handle" }
    private var ready: [EvtchnPort] = []
    private let signal = ReadySignal()


    var fileDescriptor: Int32 { signal.fd }

    private typealias Key = MockHypervisor.PortKey

    private func begin(_ op: MockOperation, _ detail: @autoclosure () -> String) throws {
        guard !closed else { throw XenError(EBADF, op.rawValue, "\(detail()): handle closed") }
        try hv.faults.check(op, domain: dom, detail())
    }

    private func freePort() -> EvtchnPort {
        var p: EvtchnPort = 1
        while hv.ports[Key(dom: dom, port: p)] != nil { p += 1 }
        return p
    }

    /// Where our port is in `hv.ports` (one lookup, the port not copied),
    /// or ENOTCONN when this handle does not own it (Linux evtchn).
    private func owned(_ port: EvtchnPort, _ op: MockOperation, _ hv: MockHypervisor) throws -> [Key: MockHypervisor.Port].Index {
        guard let i = hv.ports.index(forKey: Key(dom: dom, port: port)), hv.ports.values[i].handle == id else {
            throw XenError(ENOTCONN, op.rawValue, "port \(port) is not bound by this handle")
        }
        return i
    }

    func allocateUnbound(remote: DomID) throws -> EvtchnPort {
        try hv.locked {
            try begin(.evtchnAllocUnbound, "for dom\(remote)")
            guard hv.domains[remote] != nil else {
                throw XenError(ESRCH, MockOperation.evtchnAllocUnbound.rawValue, "dom\(remote) does not exist")
            }
            let p = freePort()
            hv.ports[Key(dom: dom, port: p)] = MockHypervisor.Port(handle: id, state: .unbound(remote: remote))
            return p
        }
    }

    func bindInterdomain(remote: DomID, remotePort: EvtchnPort) throws -> EvtchnPort {
        try hv.locked {
            let what = "dom\(remote) port \(remotePort)"
            try begin(.evtchnBindInterdomain, what)
            let rk = Key(dom: remote, port: remotePort)
            guard let r = hv.ports[rk], case .unbound(let allowed) = r.state, allowed == dom else {
                throw XenError(EINVAL, MockOperation.evtchnBindInterdomain.rawValue, "\(what) is not an unbound port offered to dom\(dom)")
            }
            let p = freePort()
            hv.ports[Key(dom: dom, port: p)] = MockHypervisor.Port(handle: id, state: .interdomain(remote: remote, port: remotePort))
            hv.ports[rk]!.state = .interdomain(remote: dom, port: p)
            return p
        }
    }

    func notify(_ port: EvtchnPort) throws {
        let hv = self.hv // one strong reference for the call, not one per use
        let inPlace: (handler: MockHypervisor.InPlaceHandler, port: EvtchnPort)? = try hv.locked {
            try begin(.evtchnNotify, "port \(port)")
            let i = try owned(port, .evtchnNotify, hv)
            guard case .interdomain(let rd, let rp) = hv.ports.values[i].state else { return nil } // unbound: dropped, as Xen does
            let peer = Key(dom: rd, port: rp)
            switch hv.faults.delivery() {
            case .drop:
                return nil
            case .now:
                return hv.raiseUnlessInPlace(peer).map { ($0, rp) }
            case .after(let d):
                if let h = hv.ports[peer]?.inPlace { return (h, rp) } // in place ignores a delay
                let ns = d.components.seconds * 1_000_000_000 + d.components.attoseconds / 1_000_000_000
                DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(Int(ns))) { [hv] in
                    hv.locked { hv.raise(peer) }
                }
                return nil
            }
        }
        // Outside the lock: the handler calls back into the mock (notify).
        if let inPlace { inPlace.handler(inPlace.port) }
    }

    /// Called with the lock held by the delivering side.
    func deliver(_ port: EvtchnPort) {
        ready.append(port)
        signal.raise(hv)
    }

    func pending() throws -> EvtchnPort? {
        let hv = self.hv
        return try hv.locked {
            guard !closed else { throw XenError(EBADF, "evtchn pending", "handle closed") }
            guard !ready.isEmpty else { signal.clear(); return nil }
            let p = ready.removeFirst()
            if ready.isEmpty { signal.clear() }
            if let i = hv.ports.index(forKey: Key(dom: dom, port: p)) { hv.ports.values[i].pending = false }
            return p
        }
    }

    /// The pending ports in one lock (the service loop's turn), as Linux's
    /// evtchn device gives several in one read(2).
    func pendingBatch(max: Int) throws -> [EvtchnPort] {
        let hv = self.hv
        return try hv.locked {
            guard !closed else { throw XenError(EBADF, "evtchn pending", "handle closed") }
            guard max > 0 else { return [] }
            guard !ready.isEmpty else { signal.clear(); return [] }
            let out = Array(ready.prefix(max))
            ready.removeFirst(out.count)
            if ready.isEmpty { signal.clear() }
            for p in out {
                if let i = hv.ports.index(forKey: Key(dom: dom, port: p)) { hv.ports.values[i].pending = false }
            }
            return out
        }
    }

    func unmask(_ port: EvtchnPort) throws {
        let hv = self.hv
        try hv.locked {
            try begin(.evtchnUnmask, "port \(port)")
            let i = try owned(port, .evtchnUnmask, hv)
            hv.ports.values[i].masked = false
            if hv.ports.values[i].pending { hv.ports.values[i].pending = false; hv.raise(Key(dom: dom, port: port)) }
        }
    }

    func unbind(_ port: EvtchnPort) throws {
        try hv.locked {
            try begin(.evtchnUnbind, "port \(port)")
            _ = try owned(port, .evtchnUnbind, hv)
            release(port)
        }
    }

    /// Lock held. The peer of an interdomain port falls back to unbound.
    private func release(_ port: EvtchnPort) {
        let k = Key(dom: dom, port: port)
        if case .interdomain(let rd, let rp)? = hv.ports[k]?.state {
            let rk = Key(dom: rd, port: rp)
            if hv.ports[rk] != nil { hv.ports[rk]!.state = .unbound(remote: dom) }
        }
        hv.ports[k] = nil
        ready.removeAll { $0 == port }
        if ready.isEmpty { signal.clear() }
    }

    func close() {
        hv.locked {
            guard !closed else { return }
            for (k, p) in hv.ports where k.dom == dom && p.handle == id { release(k.port) }
            closed = true
            hv.evtchnHandles[id] = nil
        }
    }
}

extension MockDomain {
    /// For tests and fuzzing without threads: a notify from the peer of
    /// `port` (bound by this domain) runs `handler` synchronously on the
    /// notifying thread, with no mock lock held, instead of queueing an event
    /// for this domain. A backend that answers inside `handler` has its reply
    /// on the page before the frontend's `notify` returns, so the frontend's
    /// wait finds it at once. Dropped notifies (fault injection) are still
    /// dropped; a delay is ignored. Unbinding the port removes the handler.
    public func deliverInPlace(port: EvtchnPort, _ handler: @escaping (EvtchnPort) -> Void) throws {
        try hypervisor.locked {
            let k = MockHypervisor.PortKey(dom: id, port: port)
            guard hypervisor.ports[k] != nil else {
                throw XenError(EINVAL, "evtchn deliver-in-place", "dom\(id) port \(port) is not bound")
            }
            hypervisor.ports[k]!.inPlace = handler
        }
    }
}

extension MockHypervisor {
    /// Lock held. Marks a port pending; a port that is not masked is masked
    /// and queued on its handle (one delivery until the owner unmasks).
    func raise(_ k: PortKey) {
        // Changed in place: one lookup, the port (and its handler) not copied.
        guard let handle = ports[k]?.raise() else { return }
        evtchnHandles[handle]?.deliver(k.port)
    }

    /// Lock held. `raise`, unless the port has an in-place handler: that is
    /// returned instead (the notify's path: one lookup for both).
    func raiseUnlessInPlace(_ k: PortKey) -> InPlaceHandler? {
        guard let i = ports.index(forKey: k) else { return nil }
        if let h = ports.values[i].inPlace { return h }
        guard let handle = ports.values[i].raise() else { return nil }
        evtchnHandles[handle]?.deliver(k.port)
        return nil
    }
}
