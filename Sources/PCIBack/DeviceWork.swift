import Foundation
import Synchronization

/// Where device work that blocks (resets, golden restores) runs, off the
/// loop: on worker threads when the backend serves, or queued until the
/// caller runs it in the deterministic mode (`PCIBack.Options.serviceThread`
/// false), so a test or a fuzz input decides when a reset happens and
/// nothing runs behind its back. A job hands its result back to the loop
/// with `ServiceLoop.post`; a function has at most one job at a time
/// (`ClaimedDevice.resetting`), so its accesses stay in order.
final class DeviceWork: Sendable {
    private let queue: DispatchQueue?
    private let queued = Locked<[@Sendable () -> Void]>([])

    init(workers: Bool) {
        queue = workers ? DispatchQueue(label: "pciback.device-work", attributes: .concurrent) : nil
    }

    var isDeterministic: Bool { queue == nil }

    func submit(_ job: @escaping @Sendable () -> Void) {
        guard let queue else {
            queued.withLock { $0.append(job) }
            return
        }
        queue.async(execute: job)
    }

    /// Deterministic mode: runs what is queued, in order, on this thread,
    /// and returns how many jobs ran (always 0 with workers).
    @discardableResult
    func runQueued() -> Int {
        var n = 0
        while let job = queued.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) {
            job()
            n += 1
        }
        return n
    }
}
