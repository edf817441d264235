import Foundation

/// Where slow device work (resets, golden restores) runs, off the request
/// path and off the service thread: on workers when the backend is a
/// service, or queued until the caller runs it in the deterministic mode
/// (`PCIBack.Options.serviceThread` false), so a test or a fuzz input
/// decides when a reset happens and nothing runs behind its back.
final class DeviceWork: @unchecked Sendable {
    private let queue: DispatchQueue?
    private let group = DispatchGroup()
    private let lock = NSLock()
    private var queued: [() -> Void] = []

    init(workers: Bool) {
        queue = workers ? DispatchQueue(label: "pciback.device-work", attributes: .concurrent) : nil
    }

    func submit(_ job: @escaping () -> Void) {
        guard let queue else {
            lock.lock(); queued.append(job); lock.unlock()
            return
        }
        group.enter()
        queue.async { [group] in job(); group.leave() }
    }

    /// Deterministic mode: runs what is queued, in order, on this thread,
    /// and returns how many jobs ran (always 0 with workers).
    @discardableResult
    func runQueued() -> Int {
        var n = 0
        while true {
            lock.lock()
            let job = queued.isEmpty ? nil : queued.removeFirst()
            lock.unlock()
            guard let job else { return n }
            job()
            n += 1
        }
    }

    /// Until no job is left: workers finish, or the queue runs here.
    func finish() {
        if queue == nil { runQueued() } else { group.wait() }
    }
}
