import Foundation

/// `xenpci backend --profile`: where a request's time goes on the
/// service thread. Monotonic timestamps at four points: poll() returning,
/// the request taken (GuestConnection.evthandler), the reply ready, the
/// notify done. Off by default, each hook is then one load and a branch.
///
/// Phases per request:
///   idle      our previous notify -> the poll() wake that brought this request
///             (the guest's side of the round trip plus dom0's wake-up of us);
///             only for the first request of a wake
///   wake      poll() wake (or the previous request's end) -> handling starts
///             (watch check, lock, reading the port from /dev/xen/evtchn)
///   handling  the op itself (config access through sysfs, mediation)
///   reply     publish + notify (the port stays masked: `HeldPorts`)
/// Samples go to fixed rings written by the service thread only; `report()`
/// is read once that thread has stopped (at `stop`).
public final class RequestProfile: @unchecked Sendable {
    public private(set) var enabled = false
    /// The last 65536 samples of each phase: seconds of traffic under TCG,
    /// a bounded 1.25 MiB when on, nothing allocated when off.
    static let capacity = 1 << 16
    private var rings: [[UInt32]] = []
    private var filled = [Int](repeating: 0, count: Phase.allCases.count)
    private(set) var requests = 0
    private(set) var wakes = 0
    private(set) var wakesWithRequest = 0
    private var wokeAt: UInt64 = 0, doneAt: UInt64 = 0, startAt: UInt64 = 0, repliedAt: UInt64 = 0
    private var firstOfWake = false

    enum Phase: Int, CaseIterable {
        case idle, wake, handling, reply, inBackend
        var name: String {
            switch self {
            case .idle: return "idle (notify -> next wake)"
            case .wake: return "wake -> handling"
            case .handling: return "handling"
            case .reply: return "publish+notify"
            case .inBackend: return "wake -> notified"
            }
        }
    }

    public init() {}

    public func enable() {
        guard !enabled else { return }
        rings = Phase.allCases.map { _ in [UInt32](repeating: 0, count: Self.capacity) }
        enabled = true
    }

    @inline(__always) static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }

    /// poll() returned.
    @inline(__always) func woke() {
        guard enabled else { return }
        wokeAt = Self.now()
        wakes += 1
        firstOfWake = true
    }

    /// A request (bit 0 set) is about to be handled.
    @inline(__always) func begin() {
        guard enabled else { return }
        startAt = Self.now()
    }

    /// The reply is ready; publishing and the notify follow.
    @inline(__always) func replied() {
        guard enabled else { return }
        repliedAt = Self.now()
    }

    /// The notify is done: the request's samples are recorded.
    @inline(__always) func notified() {
        guard enabled, startAt != 0 else { return }
        let t = Self.now()
        // drain() (tests) has no wake: its requests count from their start.
        let from = firstOfWake ? (wokeAt != 0 ? wokeAt : startAt) : (doneAt != 0 ? doneAt : startAt)
        if firstOfWake {
            wakesWithRequest += 1
            if doneAt != 0 && wokeAt > doneAt { record(.idle, wokeAt - doneAt) }
        }
        record(.wake, startAt &- from)
        record(.handling, repliedAt &- startAt)
        record(.reply, t &- repliedAt)
        record(.inBackend, t &- from)
        requests += 1
        doneAt = t
        startAt = 0
        firstOfWake = false
    }

    @inline(__always) private func record(_ p: Phase, _ ns: UInt64) {
        let n = filled[p.rawValue]
        rings[p.rawValue][n % Self.capacity] = UInt32(clamping: ns)
        filled[p.rawValue] = n + 1
    }

    /// Mean and percentiles of one phase in microseconds, nil without samples.
    func percentiles(_ p: Phase) -> (mean: Double, p50: Double, p90: Double, p99: Double, n: Int)? {
        let n = min(filled[p.rawValue], Self.capacity)
        guard enabled, n > 0 else { return nil }
        let s = rings[p.rawValue][0..<n].sorted()
        func at(_ q: Double) -> Double { Double(s[min(n - 1, Int(Double(n) * q))]) / 1000 }
        let mean = s.reduce(0.0) { $0 + Double($1) } / Double(n) / 1000
        return (mean, at(0.5), at(0.9), at(0.99), n)
    }

    /// One line for the log: counts, then mean and p50/p90/p99 of each phase in µs.
    public func report() -> String {
        guard enabled else { return "profile: off" }
        var parts = ["profile: \(requests) requests, \(wakes) wakes (\(wakesWithRequest) with a request)"]
        for p in Phase.allCases {
            guard let q = percentiles(p) else { parts.append("\(p.name) -"); continue }
            func us(_ v: Double) -> String { String(format: "%.1f", v) }
            parts.append("\(p.name) mean \(us(q.mean)) p50 \(us(q.p50)) p90 \(us(q.p90)) p99 \(us(q.p99)) us (n=\(q.n))")
        }
        return parts.joined(separator: "; ")
    }
}
