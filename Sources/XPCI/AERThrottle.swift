/// The AER rate limit's bookkeeping: a backend that posts AER
/// requests in a loop must neither keep the guest's handler running nor
/// flood the log. A fixed window holds `burst` tokens; a request without a
/// token is refused. Refusals are reported as at most two lines a window:
/// the first at once (the operator learns of the flood when it starts), the
/// rest as one count when a later request opens a new window, or at `flush`.
/// Pure: the caller passes the time, so tests can drive it exactly.
struct AERThrottle {
    let limit: AERRateLimit
    private var windowStart: ContinuousClock.Instant?
    private var used = 0
    private var refusedInWindow = 0
    /// Refusals not yet in a report line.
    private var unreported = 0

    init(_ limit: AERRateLimit) { self.limit = limit }

    /// Takes a token for a request at `now`. `reports`: refusal counts to
    /// emit now, in order (their sum over time is the number refused).
    mutating func take(at now: ContinuousClock.Instant) -> (admitted: Bool, reports: [Int]) {
        var reports: [Int] = []
        if let s = windowStart, s.duration(to: now) < limit.window {
            // same window
        } else {
            if let n = flush() { reports.append(n) }
            windowStart = now
            used = 0
            refusedInWindow = 0
        }
        if used < limit.burst {
            used += 1
            return (true, reports)
        }
        refusedInWindow += 1
        if refusedInWindow == 1 { reports.append(1) } else { unreported += 1 }
        return (false, reports)
    }

    /// The refusals not reported yet (nil: none), now counted as reported.
    mutating func flush() -> Int? {
        defer { unreported = 0 }
        return unreported > 0 ? unreported : nil
    }
}
