import Foundation
import XenPCIABI

public typealias EvtchnPort = UInt32

/// Event channels of the calling domain (xenevtchn). A delivered port stays
/// masked until `unmask`, as the Linux evtchn device does; `fileDescriptor`
/// is readable while ports are pending.
public protocol EventChannels: AnyObject, Sendable {
    func allocateUnbound(remote: DomID) throws -> EvtchnPort
    func bindInterdomain(remote: DomID, remotePort: EvtchnPort) throws -> EvtchnPort
    func notify(_ port: EvtchnPort) throws
    /// The next pending port, without blocking.
    func pending() throws -> EvtchnPort?
    /// Up to `max` pending ports, without blocking (see the extension).
    func pendingBatch(max: Int) throws -> [EvtchnPort]
    func unmask(_ port: EvtchnPort) throws
    func unbind(_ port: EvtchnPort) throws
    var fileDescriptor: Int32 { get }
    /// Unbinds every port still bound through this handle.
    func close()
}

extension EventChannels {
    /// Up to `max` pending ports, without blocking; empty when none. A
    /// binding that can take several in one system call overrides this.
    public func pendingBatch(max: Int) throws -> [EvtchnPort] {
        var out: [EvtchnPort] = []
        while out.count < max, let p = try pending() { out.append(p) }
        return out
    }

    /// Waits up to `timeout` (nil: forever) for a pending port.
    public func wait(timeout: Duration?) throws -> EvtchnPort? {
        if let p = try pending() { return p }
        guard try pollReadable(fileDescriptor, timeout: timeout) else { return nil }
        return try pending()
    }
}

/// poll(2) for readability, EINTR retried; false on timeout.
public func pollReadable(_ fd: Int32, timeout: Duration?) throws -> Bool {
    try pollReadable([fd], timeout: timeout)[0]
}

/// poll(2) on several descriptors for readability, EINTR retried with the
/// time left; all false on timeout. A negative descriptor is skipped, as
/// poll(2) does. The one poll wrapper of the drivers.
public func pollReadable(_ fds: [Int32], timeout: Duration?) throws -> [Bool] {
    let deadline = timeout.map { ContinuousClock.now + $0 }
    var p = fds.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
    while true {
        var ms: Int32 = -1
        if let d = deadline {
            let left = ContinuousClock.now.duration(to: d)
            if left <= .zero { ms = 0 } else {
                // Rounded up: a wait of under a millisecond must not become a busy poll.
                let c = left.components
                ms = Int32(clamping: c.seconds * 1000 + (c.attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000)
            }
        }
        let r = poll(&p, nfds_t(p.count), ms)
        if r >= 0 { return p.map { $0.revents & Int16(POLLIN) != 0 } }
        if errno != EINTR { throw XenError(errno, "poll", "fds \(fds)") }
    }
}
