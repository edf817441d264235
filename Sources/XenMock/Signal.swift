import Foundation
import XenHypervisor
import CXenPCI
import XenPCIABI

/// An eventfd that is readable while a queue is non-empty. `raise` and
/// `clear` are called with the mock's lock held; the write that makes the
/// descriptor readable is made after the lock is released
/// (`MockHypervisor.locked`), so the woken reader, whose first step is to
/// take the lock, does not find it held by the writer (a futex wait and
/// wake per event).
final class ReadySignal {
    let fd: Int32
    /// Writes decided and not yet read back. While above zero the
    /// descriptor is readable, or will be when a write still on its way
    /// lands; that write can land after the queue was emptied, so a reader
    /// finding the queue empty reads the count again (`clear`).
    private var owed = 0

    init() {
        fd = xenpci_eventfd_open()
        precondition(fd >= 0, "eventfd: \(String(cString: strerror(errno)))")
    }

    /// Lock held: the queue is not empty.
    func raise(_ hv: MockHypervisor) {
        guard owed == 0 else { return }
        owed = 1
        hv.signalAfterUnlock(self)
    }

    /// Lock held: the queue is empty. Reads back the writes that landed;
    /// one still on its way leaves `owed` above zero for the next call.
    func clear() {
        guard owed > 0 else { return }
        var count: UInt64 = 0
        if read(fd, &count, MemoryLayout<UInt64>.size) == MemoryLayout<UInt64>.size {
            owed = max(0, owed - Int(clamping: count))
        }
    }

    /// Without the lock: the write `raise` decided.
    func write() { _ = xenpci_eventfd_signal(fd) }

    deinit { Foundation.close(fd) }
}

/// What every handle a domain opens has: its hypervisor, a number for the
/// leak report, its domain, and whether it was closed (as a closed fd).
// @unchecked Sendable: `closed`, `leakLine` and each subclass's state are used only
// under the hypervisor's lock (`hv.locked`); the rest is immutable.
class MockHandle: @unchecked Sendable {
    unowned let hv: MockHypervisor
    let id: Int
    let dom: DomID
    var closed = false

    init(hv: MockHypervisor, id: Int, dom: DomID) {
        self.hv = hv
        self.id = id
        self.dom = dom
    }

    /// What the handle is, for the leak report.
    class var what: String { "handle" }
    /// Its line in the leak report, made once (the fuzzers check for leaks
    /// after every input, and a long-lived handle is listed each time).
    private(set) lazy var leakLine = "dom\(dom): \(type(of: self).what) #\(id) not closed"
}
