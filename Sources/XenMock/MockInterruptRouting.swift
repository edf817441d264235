import Foundation
import XenHypervisor

/// Pirqs handed out per guest, from 32 up, tracked for the leak check.
final class MockInterruptRouting: MockHandle, InterruptRouting, @unchecked Sendable {


    func mapMSI(device: PCIAddress, guest: DomID, count: Int, msix: Bool) throws -> [UInt32] {
        try hv.locked {
            let op = MockOperation.pirqMap
            let what = "\(msix ? "MSI-X" : "MSI") of \(device) for dom\(guest)"
            guard !closed else { throw XenError(EBADF, op.rawValue, "\(what): handle closed") }
            try hv.faults.check(op, domain: dom, what)
            guard hv.domains[guest] != nil else { throw XenError(ESRCH, op.rawValue, "\(what): no such domain") }
            guard (1...2048).contains(count) else { throw XenError(EINVAL, op.rawValue, "\(what): \(count) vectors") }
            return (0..<count).map { n in
                while hv.pirqs[MockHypervisor.PirqKey(dom: guest, pirq: hv.nextPirq)] != nil { hv.nextPirq += 1 }
                let p = hv.nextPirq
                hv.nextPirq += 1
                hv.pirqs[MockHypervisor.PirqKey(dom: guest, pirq: p)] = (id, "\(what) vector \(n)")
                return p
            }
        }
    }

    func unmapPirq(_ pirq: UInt32, guest: DomID) throws {
        try hv.locked {
            let op = MockOperation.pirqUnmap
            try hv.faults.check(op, domain: dom, "pirq \(pirq) of dom\(guest)")
            let k = MockHypervisor.PirqKey(dom: guest, pirq: pirq)
            guard let p = hv.pirqs[k], p.handle == id else {
                throw XenError(EINVAL, op.rawValue, "pirq \(pirq) of dom\(guest) is not mapped through this handle")
            }
            hv.pirqs[k] = nil
        }
    }

    func close() {
        hv.locked {
            guard !closed else { return }
            closed = true
            for (k, p) in hv.pirqs where p.handle == id { hv.pirqs[k] = nil }
            hv.routingHandles[id] = nil
        }
    }
}
