import Foundation
import XenHypervisor
import XenPCIABI
import PCIModel

/// One vector a backend mapped: what Xen would have programmed, so a test
/// can check the entries and table base the backend asked for.
public struct MockPirqVector: Equatable, Sendable, CustomStringConvertible {
    public var guest: DomID
    public var pirq: UInt32
    public var device: PCIAddress
    public var msix: Bool
    /// The MSI-X table entry (0 for MSI).
    public var entry: UInt16
    /// The BAR base the backend named (0 for MSI).
    public var tableBase: UInt64

    public init(guest: DomID, pirq: UInt32, device: PCIAddress, msix: Bool, entry: UInt16, tableBase: UInt64) {
        self.guest = guest; self.pirq = pirq; self.device = device; self.msix = msix; self.entry = entry; self.tableBase = tableBase
    }

    public var description: String {
        msix ? "MSI-X of \(device) entry \(entry) for dom\(guest)" : "MSI of \(device) for dom\(guest)"
    }
}

/// Pirqs handed out per guest, from 32 up, tracked for the leak check.
/// Follows Xen 4.17's rules: an MSI-X vector can only be mapped for a
/// function whose table was prepared (else ENODATA), a table is prepared
/// once (else EBUSY) and released only with no vector left (else EBUSY).
// @unchecked Sendable: its state is used only under the hypervisor's lock (see MockHandle).
final class MockInterruptRouting: MockHandle, InterruptRouting, @unchecked Sendable {
    override class var what: String { "interrupt routing handle" }

    func prepareMSIX(device: PCIAddress) throws {
        try hv.locked {
            let op = MockOperation.msixPrepare
            guard !closed else { throw XenError(EBADF, op.rawValue, "\(device): handle closed") }
            try hv.faults.check(op, domain: dom, "\(device)")
            guard hv.preparedMSIX[device] == nil else { throw XenError(EBUSY, op.rawValue, "\(device): MSI-X table already prepared") }
            hv.preparedMSIX[device] = id
        }
    }

    func releaseMSIX(device: PCIAddress) throws {
        try hv.locked {
            let op = MockOperation.msixRelease
            try hv.faults.check(op, domain: dom, "\(device)")
            guard hv.preparedMSIX[device] == id else { throw XenError(EBUSY, op.rawValue, "\(device): MSI-X table not prepared through this handle") }
            guard !hv.pirqs.values.contains(where: { $0.vector.device == device && $0.vector.msix }) else {
                throw XenError(EBUSY, op.rawValue, "\(device): MSI-X vectors still mapped")
            }
            hv.preparedMSIX[device] = nil
        }
    }

    func mapMSI(device: PCIAddress, guest: DomID) throws -> UInt32 {
        try map(device, guest, [MockPirqVector(guest: guest, pirq: 0, device: device, msix: false, entry: 0, tableBase: 0)])[0]
    }

    func mapMSIX(device: PCIAddress, guest: DomID, entries: [UInt16], tableBase: UInt64) throws -> [UInt32] {
        let what = "MSI-X of \(device) for dom\(guest)"
        let op = MockOperation.pirqMap.rawValue
        guard (1...2048).contains(entries.count), Set(entries).count == entries.count else {
            throw XenError(EINVAL, op, "\(what): entries \(entries)")
        }
        guard tableBase != 0 else { throw XenError(EINVAL, op, "\(what): table base 0 (the BAR is not assigned)") }
        return try map(device, guest, entries.map { MockPirqVector(guest: guest, pirq: 0, device: device, msix: true, entry: $0, tableBase: tableBase) })
    }

    /// All or nothing, under the hypervisor lock.
    private func map(_ device: PCIAddress, _ guest: DomID, _ vectors: [MockPirqVector]) throws -> [UInt32] {
        try hv.locked {
            let op = MockOperation.pirqMap
            let what = "\(vectors[0].msix ? "MSI-X" : "MSI") of \(device) for dom\(guest)"
            guard !closed else { throw XenError(EBADF, op.rawValue, "\(what): handle closed") }
            try hv.faults.check(op, domain: dom, what)
            guard hv.domains[guest] != nil else { throw XenError(ESRCH, op.rawValue, "\(what): no such domain") }
            let mapped = hv.pirqs.values.map(\.vector).filter { $0.device == device }
            if vectors[0].msix {
                guard hv.preparedMSIX[device] != nil else {
                    throw XenError(ENODATA, op.rawValue, "\(what): the MSI-X table was never prepared")
                }
                if let dup = vectors.first(where: { v in mapped.contains { $0.msix && $0.entry == v.entry } }) {
                    throw XenError(EEXIST, op.rawValue, "\(what): entry \(dup.entry) already mapped")
                }
            } else if mapped.contains(where: { !$0.msix }) {
                throw XenError(EEXIST, op.rawValue, "\(what): already mapped")
            }
            return vectors.map { v in
                while hv.pirqs[MockHypervisor.PirqKey(dom: guest, pirq: hv.nextPirq)] != nil { hv.nextPirq += 1 }
                var v = v
                v.pirq = hv.nextPirq
                hv.nextPirq += 1
                hv.pirqs[MockHypervisor.PirqKey(dom: guest, pirq: v.pirq)] = (id, v)
                return v.pirq
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

    func adopt(pirqs: [UInt32], guest: DomID, device: PCIAddress) throws {
        try hv.locked {
            for p in pirqs {
                let k = MockHypervisor.PirqKey(dom: guest, pirq: p)
                guard let v = hv.pirqs[k], v.vector.device == device else {
                    throw XenError(ENOENT, "adopt pirq", "pirq \(p) of dom\(guest) is not a vector of \(device)")
                }
                hv.pirqs[k] = (id, v.vector)
            }
        }
    }

    func adoptPreparedMSIX(device: PCIAddress) throws {
        try hv.locked {
            guard hv.preparedMSIX[device] != nil else { throw XenError(ENOENT, "adopt MSI-X", "\(device): not prepared") }
            hv.preparedMSIX[device] = id
        }
    }

    /// What the end of a process does to Xen: nothing (pirqs and tables
    /// stay, owned by a handle nobody has until adopted).
    func abandon() {
        hv.locked {
            closed = true
            hv.routingHandles[id] = nil
        }
    }

    func close() {
        hv.locked {
            guard !closed else { return }
            closed = true
            for (k, p) in hv.pirqs where p.handle == id { hv.pirqs[k] = nil }
            for (a, h) in hv.preparedMSIX where h == id { hv.preparedMSIX[a] = nil }
            hv.routingHandles[id] = nil
        }
    }
}
