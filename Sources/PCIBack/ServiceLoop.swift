import Foundation
import CXenPCI

/// Who may touch the backend's state, and when: one thread at a time, with
/// no lock around the state itself.
///
/// While the service thread runs it owns everything: it serves requests and
/// watch events, and between them runs the jobs other threads hand it
/// (`sync` waits for the result, `post` does not). Before `start`, after
/// `stop` and in the deterministic mode, the caller's thread becomes the
/// owner for the length of its call. The two locks here are plain and never
/// held across device I/O, a reset, a xenstore round trip or a callback:
/// `queue` guards the job list for an append or a pop; `ownership` is held
/// by whoever owns the state (the service thread for its whole life), and
/// other threads hand their work over instead of waiting on it while the
/// service thread runs.
///
/// Callbacks (`later`) run when the owner has finished the job or event that
/// queued them, still on the owner's thread, so a callback may call back into
/// the backend (it runs nested, at once).
final class ServiceLoop: @unchecked Sendable {
    private let queue = NSLock()
    private var jobs: [() -> Void] = []
    /// The service thread while it runs (jobs are then handed to it).
    private var serviceThread: pthread_t?
    /// The thread owning the state now, and how deep its nested calls are.
    private var owner: pthread_t?
    private let ownership = NSLock()
    // Touched by the owner only.
    private var depth = 0
    private var callbacks: [() -> Void] = []
    private var flushing = false
    /// Signalled when a job is handed to the service thread (and at stop).
    let wake = xenpci_eventfd_open()

    deinit { close(wake) }

    private func isMe(_ t: pthread_t?) -> Bool { t.map { pthread_equal($0, pthread_self()) != 0 } ?? false }

    /// Runs `body` as the owner and returns what it returns: on the service
    /// thread when it runs (this thread waits), else here.
    func sync<T, E: Error>(_ body: @escaping () throws(E) -> T) throws(E) -> T {
        queue.lock()
        if serviceThread != nil && !isMe(serviceThread) {
            var result: Result<T, E>?
            let done = DispatchSemaphore(value: 0)
            jobs.append { result = Result(catching: body); done.signal() }
            queue.unlock()
            _ = xenpci_eventfd_signal(wake)
            done.wait()
            return try result!.get()
        }
        queue.unlock()
        return try owned(body)
    }

    /// Hands `job` to the owner without waiting: the service thread runs it
    /// on its next turn; without one, the next owner runs it first thing.
    func post(_ job: @escaping () -> Void) {
        queue.lock()
        jobs.append(job)
        queue.unlock()
        _ = xenpci_eventfd_signal(wake)
    }

    /// Runs `f` after the owner's current job or event (at once when it has
    /// none). Owner only.
    func later(_ f: @escaping () -> Void) {
        callbacks.append(f)
        if depth == 0 { flush() }
    }

    /// `body` as the owner on this thread: nested when this thread owns the
    /// state already, else once `ownership` is free (pending jobs first).
    func owned<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        queue.lock()
        let nested = isMe(owner)
        queue.unlock()
        if !nested { acquire() }
        depth += 1
        if !nested { runJobs() }
        defer {
            depth -= 1
            if depth == 0 { flush() }
            if !nested { relinquish() }
        }
        return try body()
    }

    private func acquire() {
        ownership.lock()
        queue.lock(); owner = pthread_self(); queue.unlock()
    }

    private func relinquish() {
        queue.lock(); owner = nil; queue.unlock()
        ownership.unlock()
    }

    private func flush() {
        guard !flushing else { return } // the outer flush runs what this one would
        flushing = true
        while !callbacks.isEmpty { callbacks.removeFirst()() }
        flushing = false
    }

    /// Owner: runs the jobs handed over so far, in order; returns how many.
    @discardableResult
    func runJobs() -> Int {
        var n = 0
        while true {
            queue.lock()
            guard !jobs.isEmpty else { queue.unlock(); return n }
            let job = jobs.removeFirst()
            queue.unlock()
            depth += 1
            job()
            depth -= 1
            if depth == 0 { flush() }
            n += 1
        }
    }

    /// The service thread, as it begins: from here every other thread's
    /// call is a job for it.
    func beginService() {
        acquire()
        queue.lock(); serviceThread = pthread_self(); queue.unlock()
    }

    /// The service thread, as it ends: the jobs handed over before this are
    /// run; later calls run on their own threads again.
    func endService() {
        queue.lock(); serviceThread = nil; queue.unlock()
        runJobs()
        relinquish()
    }

    /// Runs `body` as one unit of the service thread's work: its callbacks
    /// follow it.
    @inline(__always) func step(_ body: () -> Void) {
        depth += 1
        body()
        depth -= 1
        if depth == 0 { flush() }
    }

    /// Whether the service thread is running (for `stop`).
    var serving: Bool { queue.lock(); defer { queue.unlock() }; return serviceThread != nil }
}
