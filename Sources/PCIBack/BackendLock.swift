import Foundation

/// The backend's lock: recursive (entry points call each other), and the
/// place where callbacks wait. Whatever is queued with `afterUnlock` runs
/// once the holding thread has released the lock completely, so a user
/// callback never runs under it and may call back into the backend.
final class BackendLock: @unchecked Sendable {
    private let l = NSRecursiveLock()
    private var depth = 0
    private var owner: pthread_t?
    private var deferred: [() -> Void] = []

    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        l.lock()
        depth += 1
        owner = pthread_self()
        defer {
            depth -= 1
            var run: [() -> Void] = []
            if depth == 0 {
                owner = nil
                swap(&run, &deferred)
            }
            l.unlock()
            for f in run { f() }
        }
        return try body()
    }

    /// Runs `f` after the lock is released, or now when this thread does
    /// not hold it.
    func afterUnlock(_ f: @escaping () -> Void) {
        l.lock()
        let held = depth > 0 && owner.map { pthread_equal($0, pthread_self()) != 0 } == true
        if held { deferred.append(f) }
        l.unlock()
        if !held { f() }
    }
}
