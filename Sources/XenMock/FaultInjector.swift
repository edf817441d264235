import Foundation
import Synchronization
import XenHypervisor
import XenPCIABI

/// Every hypervisor call the mock makes, by name, for counting and for faults.
public enum MockOperation: String, CaseIterable, Sendable {
    case xsRead = "xenstore read", xsWrite = "xenstore write", xsMkdir = "xenstore mkdir"
    case xsRemove = "xenstore rm", xsDirectory = "xenstore directory"
    case xsGetPermissions = "xenstore get-perms", xsSetPermissions = "xenstore set-perms"
    case xsTransactionStart = "xenstore transaction start", xsTransactionEnd = "xenstore transaction end"
    case xsWatch = "xenstore watch", xsUnwatch = "xenstore unwatch"
    case evtchnAllocUnbound = "evtchn alloc-unbound", evtchnBindInterdomain = "evtchn bind-interdomain"
    case evtchnNotify = "evtchn notify", evtchnUnmask = "evtchn unmask", evtchnUnbind = "evtchn unbind"
    case grantMap = "gnttab map", grantUnmap = "gnttab unmap"
    case grantShare = "gntshr share", grantEndAccess = "gntshr end-access"
    case openXenStore = "open xenstore", openEventChannels = "open evtchn"
    case openGrantTable = "open gnttab", openGrantSharing = "open gntshr", openInterruptRouting = "open physdev"
    case pirqMap = "physdev map-pirq", pirqUnmap = "physdev unmap-pirq"
    case msixPrepare = "physdev prepare-msix", msixRelease = "physdev release-msix"

    /// Declaration order (the one-byte tag of a payload-free enum): every
    /// mock call is counted, in an array slot rather than a dictionary.
    var index: Int { Int(withUnsafeBytes(of: self) { $0[0] }) }
}

/// Fault injection: make the Nth call of an operation fail with a chosen
/// errno (optionally only for one domain), and drop or delay event
/// notifications. Counters are per operation across all domains.
public final class FaultInjector: Sendable {
    struct Rule {
        var op: MockOperation
        var domain: DomID?
        var remainingBefore: Int // calls to let through before failing
        var times: Int           // failures left; Int.max = always
        var code: Int32
    }
    struct State {
        var rules: [Rule] = []
        var counts = [Int](repeating: 0, count: MockOperation.allCases.count)
        var injectedCount = 0
        var dropNotifications = 0
        var dropAll = false
        var delayBy: Duration?
    }
    // Its own lock: tests arm faults from their thread while the mock's
    // calls check them under the hypervisor lock (always taken first).
    private let state = Mutex(State())

    /// Faults injected so far.
    public var injected: Int { state.withLock { $0.injectedCount } }
    var delay: Duration? { state.withLock { $0.delayBy } }

    /// Fail the `nth` (1-based, counted from now) matching call of `op`,
    /// `times` times in a row (default once).
    public func fail(_ op: MockOperation, nth: Int = 1, errno code: Int32, domain: DomID? = nil, times: Int = 1) {
        precondition(nth >= 1)
        state.withLock { $0.rules.append(Rule(op: op, domain: domain, remainingBefore: nth - 1, times: times, code: code)) }
    }

    /// Every matching call fails until `reset`.
    public func failAlways(_ op: MockOperation, errno code: Int32, domain: DomID? = nil) {
        fail(op, errno: code, domain: domain, times: .max)
    }

    /// Drop the next `count` event notifications (notify succeeds, nothing arrives).
    public func dropEvents(_ count: Int) { state.withLock { $0.dropNotifications += count } }
    public func dropAllEvents(_ on: Bool) { state.withLock { $0.dropAll = on } }
    /// Deliver every notification `by` later (nil: at once).
    public func delayEvents(by d: Duration?) { state.withLock { $0.delayBy = d } }

    public func reset() {
        state.withLock { s in s.rules.removeAll(); s.dropNotifications = 0; s.dropAll = false; s.delayBy = nil }
    }

    public func count(_ op: MockOperation) -> Int { state.withLock { $0.counts[op.index] } }

    /// Called with the mock's lock held. `detail` is built only for a
    /// failure: this runs on every mock call.
    func check(_ op: MockOperation, domain: DomID, _ detail: @autoclosure () -> String) throws {
        try state.withLock { (s) throws(XenError) in
            s.counts[op.index] += 1
            for i in s.rules.indices where s.rules[i].op == op && (s.rules[i].domain == nil || s.rules[i].domain == domain) {
                if s.rules[i].remainingBefore > 0 { s.rules[i].remainingBefore -= 1; continue }
                guard s.rules[i].times > 0 else { continue }
                if s.rules[i].times != .max { s.rules[i].times -= 1 }
                s.injectedCount += 1
                let code = s.rules[i].code
                s.rules.removeAll { $0.times == 0 }
                let d = detail()
                throw XenError(code, op.rawValue, d.isEmpty ? "(injected fault)" : "\(d) (injected fault)")
            }
        }
    }

    /// What becomes of a notification: dropped, or delivered (now, or after
    /// a delay). Called with the mock's lock held, once per notification
    /// (one lock of its own for both questions: this is the request path).
    enum Delivery { case drop, now, after(Duration) }
    func delivery() -> Delivery {
        state.withLock { s in
            if s.dropAll { return .drop }
            if s.dropNotifications > 0 { s.dropNotifications -= 1; return .drop }
            return s.delayBy.map { .after($0) } ?? .now
        }
    }
}
