import Foundation
import XenHypervisor
import CXenPCI
import XenPCIABI

/// An eventfd that is readable while a queue is non-empty. Calls are made
/// with the mock's lock held, so raise/clear never race each other.
final class ReadySignal {
    let fd: Int32
    private var raised = false

    init() {
        fd = xenpci_eventfd_open()
        precondition(fd >= 0, "eventfd: \(String(cString: strerror(errno)))")
    }

    func raise() {
        guard !raised else { return }
        raised = true
        _ = xenpci_eventfd_signal(fd)
    }

    func clear() {
        guard raised else { return }
        raised = false
        xenpci_eventfd_drain(fd)
    }

    deinit { Foundation.close(fd) }
}

/// What every handle a domain opens has: its hypervisor, a number for the
/// leak report, its domain, and whether it was closed (as a closed fd).
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
