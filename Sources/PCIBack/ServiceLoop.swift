import Foundation
import Synchronization
import CXenPCI

/// The one owner of the backend's state, in the manner of swift-nio's
/// EventLoop (serving) and EmbeddedEventLoop (the deterministic mode).
///
/// Serving, the service thread is the loop and the only thread that touches
/// the state. Other threads hand it work: `submit` waits for the result,
/// `post` does not. Work that can block (a reset, a golden restore) runs on
/// a worker and comes back as a posted job; a wait the device needs (a
/// power-state settle) is a timer, not a sleep. No lock is held while work
/// runs: `shared` is held for an append or a pop of the job list.
///
/// Not serving (before `start`, after `stop`, the deterministic mode), the
/// calling thread is the loop for the length of its call: `turn` makes such
/// calls take turns, and the service thread never takes it.
///
/// A callback (`later`) runs after the step that queued it is complete, on
/// the loop, never inside another step; it may call back into the backend.
private enum Route { case here, handed, turn }

/// A job handed to the loop: it runs there and only there, so what it
/// captures of the loop's state is touched by the loop's thread alone (the
/// caller of `submit` waits meanwhile); the checker sees a closure crossing
/// threads, not that the crossing is the confinement.
private struct Job: @unchecked Sendable {
    let run: () -> Void
}

final class ServiceLoop: @unchecked Sendable {
    // The owner-only fields below are touched only by the thread that is
    // the loop at the time (checked by `assertOwner`); the rest is `shared`.
    private struct Shared {
        var jobs: [Job] = []
        var serviceThread: pthread_t?
        /// The thread that is the loop now.
        var owner: pthread_t?
    }
    private let shared = Locked(Shared())
    private let turn = NSLock()
    /// Signalled when a job is handed to the service thread (and at stop).
    let wake = xenpci_eventfd_open()

    // Owner only.
    private var stepping = 0
    private var callbacks: [() -> Void] = []
    private var timers: [(at: ContinuousClock.Instant, seq: UInt64, job: () -> Void)] = []
    private var timerSeq: UInt64 = 0

    deinit { close(wake) }

    private static func isMe(_ t: pthread_t?) -> Bool { t.map { pthread_equal($0, pthread_self()) != 0 } ?? false }

    /// This thread is the loop now.
    var inLoop: Bool { shared.withLock { Self.isMe($0.owner) } }

    /// Whether the service thread is running.
    var serving: Bool { shared.withLock { $0.serviceThread != nil } }

    func assertOwner(_ file: StaticString = #fileID, _ line: UInt = #line) {
        assert(inLoop, "backend state touched off its loop", file: file, line: line)
    }

    /// Runs `body` as the loop and returns what it returns: on the service
    /// thread while it serves (this thread waits), else on this thread when
    /// its turn comes. On the loop already (a callback, a step), at once.
    /// `asStep` false: `body` steps itself (`drain`), so each of its
    /// events' callbacks run as soon as that event is served.
    func submit<T, E: Error>(asStep: Bool = true, _ body: @escaping () throws(E) -> T) throws(E) -> T {
        var result: Result<T, E>?
        let done = DispatchSemaphore(value: 0)
        let route: Route = shared.withLock { s in
            if Self.isMe(s.owner) { return .here }
            guard s.serviceThread != nil else { return .turn }
            s.jobs.append(Job { result = Result(catching: body); done.signal() })
            return .handed
        }
        switch route {
        case .here:
            return asStep ? try step(body) : try body()
        case .handed:
            _ = xenpci_eventfd_signal(wake)
            done.wait()
            return try result!.get()
        case .turn:
            turn.lock()
            // The service thread may have started while this thread waited.
            let handed = shared.withLock { s -> Bool in
                guard s.serviceThread != nil else { s.owner = pthread_self(); return false }
                s.jobs.append(Job { result = Result(catching: body); done.signal() })
                return true
            }
            if handed {
                turn.unlock()
                _ = xenpci_eventfd_signal(wake)
                done.wait()
                return try result!.get()
            }
            defer {
                runJobs() // what the body posted to the loop
                shared.withLock { $0.owner = nil }
                turn.unlock()
            }
            runJobs()
            return asStep ? try step(body) : try body()
        }
    }

    /// Hands `job` to the loop without waiting for it: the service thread
    /// runs it on its next turn; the loop's own posts run after its current
    /// work; with no loop running, this thread takes its turn and runs it
    /// (a worker's result is never left waiting for a caller).
    func post(_ job: @escaping () -> Void) {
        let queued = shared.withLock { s -> Bool in
            guard s.serviceThread != nil || Self.isMe(s.owner) else { return false }
            s.jobs.append(Job(run: job))
            return true
        }
        if queued { _ = xenpci_eventfd_signal(wake) } else { submit(job) }
    }

    /// Runs `f` after the loop's current step (at once when there is none).
    /// Owner only.
    func later(_ f: @escaping () -> Void) {
        callbacks.append(f)
        if stepping == 0 { flush() }
    }

    /// Runs `job` on the loop at `at` or soon after: a wait a device needs,
    /// a deadline. Owner only.
    func schedule(at: ContinuousClock.Instant, _ job: @escaping () -> Void) {
        timerSeq += 1
        timers.append((at, timerSeq, job))
    }

    /// The earliest timer, if any (owner only).
    var nextDeadline: ContinuousClock.Instant? { timers.min { ($0.at, $0.seq) < ($1.at, $1.seq) }?.at }

    /// Runs the timers due by now, each a step of its own, earliest first;
    /// returns how many ran. Owner only.
    @discardableResult
    func runDueTimers() -> Int {
        guard !timers.isEmpty else { return 0 }
        let now = ContinuousClock.now
        let due = timers.filter { $0.at <= now }.sorted { ($0.at, $0.seq) < ($1.at, $1.seq) }
        guard !due.isEmpty else { return 0 }
        let seqs = Set(due.map(\.seq))
        timers.removeAll { seqs.contains($0.seq) }
        for t in due { step(t.job) }
        return due.count
    }

    /// One unit of the loop's work; the callbacks it queued run after it.
    /// Owner only.
    @discardableResult
    func step<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        stepping += 1
        defer {
            stepping -= 1
            if stepping == 0 { flush() }
        }
        return try body()
    }

    private func flush() {
        // A callback queuing another runs it in this loop, never nested.
        stepping += 1
        while !callbacks.isEmpty { callbacks.removeFirst()() }
        stepping -= 1
    }

    /// Runs the jobs handed over so far, in order, each a step; returns
    /// how many ran. Owner only.
    @discardableResult
    func runJobs() -> Int {
        var n = 0
        while let job = shared.withLock({ s in s.jobs.isEmpty ? nil : s.jobs.removeFirst() }) {
            step(job.run)
            n += 1
        }
        return n
    }

    /// The service thread, as it begins: from here every other thread's
    /// call is a job for it. Waits for a caller whose turn it is to finish.
    func beginService() {
        turn.lock()
        shared.withLock { $0.serviceThread = pthread_self(); $0.owner = pthread_self() }
        turn.unlock()
    }

    /// The service thread, as it ends: the jobs handed over before this
    /// are run; later calls run on their callers' threads again.
    func endService() {
        runJobs()
        let late: [Job] = shared.withLock { s in
            s.serviceThread = nil
            s.owner = nil
            defer { s.jobs = [] }
            return s.jobs
        }
        // Handed over between the last run and the line above: their
        // callers wait for them, so they run here, still as the loop.
        if !late.isEmpty {
            turn.lock()
            shared.withLock { $0.owner = pthread_self() }
            for j in late { step(j.run) }
            shared.withLock { $0.owner = nil }
            turn.unlock()
        }
    }
}

/// A reference to the loop's state carried through another thread (a
/// worker's job, a writer's callback) and dereferenced only back on the
/// loop, as swift-nio's NIOLoopBound: the check is at run time, where the
/// Sendable checker cannot see that a thread, not a lock, guards the state.
struct LoopBound<Value>: @unchecked Sendable {
    private let wrapped: Value
    let loop: ServiceLoop

    init(_ value: Value, _ loop: ServiceLoop) {
        wrapped = value
        self.loop = loop
    }

    /// On the loop only.
    var value: Value {
        loop.assertOwner()
        return wrapped
    }
}
