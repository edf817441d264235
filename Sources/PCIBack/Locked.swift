import Foundation

/// A value behind a plain lock, held only for the closure's few
/// instructions (an append, a pop, a copy), never across I/O. An NSLock
/// rather than Synchronization.Mutex: ThreadSanitizer sees the pthread
/// mutex under NSLock as the ordering it is, and reports every access
/// under Mutex's futex as a race.
final class Locked<Value>: @unchecked Sendable { // the lock guards `value`
    private let lock = NSLock()
    private var value: Value

    init(_ value: Value) { self.value = value }

    func withLock<T>(_ body: (inout Value) throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
}
