import Foundation
import Synchronization
import XenHypervisor
import XenPCIABI
import CXenLibs

/// Event channels through libxenevtchn (Linux: /dev/xen/evtchn). A port read
/// from the device stays masked until `unmask`, which is the contract of
/// `EventChannels`. The fd is made non-blocking so `pending()` never waits.
public final class XenEventChannels: EventChannels {
    private struct State {
        var handle: LibHandle?
        var bound: Set<EvtchnPort> = []
    }
    private let state: Mutex<State>
    public let fileDescriptor: Int32

    public init() throws {
        try XenLibrary.evtchn.load()
        errno = 0
        guard let h = libxenevtchn.xenevtchn_open!(nil, 0) else {
            throw XenError(lastErrno(), "xenevtchn_open", "(/dev/xen/evtchn)")
        }
        let fd = libxenevtchn.xenevtchn_fd!(h)
        let flags = fd >= 0 ? fcntl(fd, F_GETFL) : -1
        if fd < 0 || flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0 {
            let e = lastErrno()
            _ = libxenevtchn.xenevtchn_close!(h)
            throw XenError(e, "xenevtchn_fd", "making the event channel device non-blocking")
        }
        state = Mutex(State(handle: LibHandle(h)))
        fileDescriptor = fd
    }

    deinit { close() }

    private func h(_ op: String, _ what: String) throws -> OpaquePointer {
        guard let h = state.withLock({ $0.handle }) else { throw XenError(EBADF, op, "\(what): handle closed") }
        return h.pointer
    }

    public func allocateUnbound(remote: DomID) throws -> EvtchnPort {
        let h = try h("xenevtchn_bind_unbound_port", "for dom\(remote)")
        let p = try xenCall("xenevtchn_bind_unbound_port", "for dom\(remote)") {
            libxenevtchn.xenevtchn_bind_unbound_port!(h, UInt32(remote))
        }
        state.withLock { _ = $0.bound.insert(EvtchnPort(p)) }
        return EvtchnPort(p)
    }

    public func bindInterdomain(remote: DomID, remotePort: EvtchnPort) throws -> EvtchnPort {
        let what = "dom\(remote) port \(remotePort)"
        let h = try h("xenevtchn_bind_interdomain", what)
        let p = try xenCall("xenevtchn_bind_interdomain", what) {
            libxenevtchn.xenevtchn_bind_interdomain!(h, UInt32(remote), remotePort)
        }
        state.withLock { _ = $0.bound.insert(EvtchnPort(p)) }
        return EvtchnPort(p)
    }

    public func notify(_ port: EvtchnPort) throws {
        let h = try h("xenevtchn_notify", "port \(port)")
        try xenCall("xenevtchn_notify", "port \(port)") { libxenevtchn.xenevtchn_notify!(h, port) }
    }

    public func pending() throws -> EvtchnPort? {
        let h = try h("xenevtchn_pending", "")
        while true {
            errno = 0
            let p = libxenevtchn.xenevtchn_pending!(h)
            if p >= 0 { return EvtchnPort(p) }
            let e = lastErrno()
            if e == EINTR { continue }
            if e == EAGAIN || e == EWOULDBLOCK { return nil }
            throw XenError(e, "xenevtchn_pending")
        }
    }

    /// Every port the device has ready, up to `max`, in one read(2) of its
    /// fd (Linux's evtchn device returns as many 4-byte ports as the buffer
    /// holds); libxenevtchn's pending reads one per call, and in a PV dom0
    /// each system call goes through Xen (docs/PERFORMANCE.md).
    public func pendingBatch(max: Int) throws -> [EvtchnPort] {
        guard max > 0 else { return [] }
        _ = try h("xenevtchn_pending", "")
        // On the stack for the service loop's batches: no buffer per call.
        return try withUnsafeTemporaryAllocation(of: UInt32.self, capacity: max) { buf in
            while true {
                let n = read(fileDescriptor, buf.baseAddress, buf.count * MemoryLayout<UInt32>.size)
                if n >= 0 { return buf.prefix(n / MemoryLayout<UInt32>.size).map { EvtchnPort($0) } }
                let e = errno
                if e == EINTR { continue }
                if e == EAGAIN || e == EWOULDBLOCK { return [] }
                throw XenError(e, "xenevtchn_pending", "read of \(max) ports")
            }
        }
    }

    public func unmask(_ port: EvtchnPort) throws {
        let h = try h("xenevtchn_unmask", "port \(port)")
        try xenCall("xenevtchn_unmask", "port \(port)") { libxenevtchn.xenevtchn_unmask!(h, port) }
    }

    public func unbind(_ port: EvtchnPort) throws {
        let h = try h("xenevtchn_unbind", "port \(port)")
        try xenCall("xenevtchn_unbind", "port \(port)") { libxenevtchn.xenevtchn_unbind!(h, port) }
        state.withLock { _ = $0.bound.remove(port) }
    }

    public func close() {
        let (handle, ports): (LibHandle?, Set<EvtchnPort>) = state.withLock { s in
            defer { s.handle = nil; s.bound = [] }
            return (s.handle, s.bound)
        }
        guard let h = handle?.pointer else { return }
        for p in ports.sorted() { _ = libxenevtchn.xenevtchn_unbind!(h, p) }
        _ = libxenevtchn.xenevtchn_close!(h)
    }
}
