import Foundation
import Testing
import PCIBack
import PCIModel
import XPCI
import XenMock

/// One full life: connect, hot-add, hot-remove, frontend reconnect, teardown.
/// Every step tolerates failure (a fault may break it); afterwards nothing
/// may be left open and every claimed device must have been reset.
struct FaultScenario {
    struct Outcome { var errors: [String] = []; var leaks: [String] = []; var unreset: [PCIAddress] = []; var injected = 0 }

    static func run(fault: (MockOperation, Int)?) -> Outcome {
        var out = Outcome()
        let events = LockedBox<[String]>([])
        defer { out.errors += events.value }
        let hv = MockHypervisor()
        let dom0 = hv.domain(0), guest = hv.domain(1)
        func note(_ e: Error) { out.errors.append("\(e)") }
        guard let ts = try? dom0.openXenStore() else { out.errors.append("toolstack"); return out }
        var devs: [SysfsPCIDevice] = []
        for a in [e1000, virtio] { devs.append(try! SysfsPCIDevice(root: fixtureRoot, address: a, inMemory: true)) }
        if let (op, nth) = fault { hv.faults.fail(op, nth: nth, errno: EIO) }
        var back: PCIBack?
        do {
            let b = try PCIBack(hypervisor: dom0)
            back = b
            b.onEvent = { if case .error(_, let m) = $0 { events.mutate { $0.append(m) } } }
            for d in devs { do { try b.claim(d) } catch { note(error) } }
            try b.start()
        } catch { note(error) }
        let pair = ToolstackWriter(ts: ts)
        do { try pair.create(1, [e1000]) } catch { note(error) }
        var front: XPCIFrontend?
        do {
            let f = try XPCIFrontend(hypervisor: guest, options: .init(requestTimeout: .milliseconds(150), connectTimeout: .milliseconds(400)))
            front = f
            try f.attach()
            try f.waitConnected()
            _ = try f.configRead(PCIAddress(bus: 0, device: 0, function: 0), offset: 0, size: 4)
        } catch { note(error) }
        do {
            let added = PCIAddress(bus: 0, device: 1, function: 0)
            try pair.hot(1, add: virtio)
            waitFor(.milliseconds(500)) { front?.device(added) != nil && front?.state == .connected }
            // MSI-X left on: teardown must unmap the pirqs.
            _ = try front?.enableMSIX(added, entries: [0, 1])
            try pair.hot(1, remove: 0)
            waitFor(.milliseconds(500)) { front?.device(PCIAddress(bus: 0, device: 0, function: 0)) == nil && front?.state == .connected }
        } catch { note(error) }
        if let f = front {
            do { try f.detach(); try f.attach(); try f.waitConnected() } catch { note(error) }
            do { try f.detach() } catch { note(error) }
        }
        back?.stop()
        ts.close()
        out.injected = hv.faults.injected
        out.leaks = hv.leaks()
        // Claimed devices are reset at claim and at release: at least twice.
        for d in devs where d.resetCount == 1 { out.unreset.append(d.address) }
        out.errors += events.value
        events.mutate { $0.removeAll() }
        return out
    }
}

/// The toolstack's xenstore writes (as in PairTests), without expectations.
struct ToolstackWriter {
    let ts: XenStore
    func create(_ g: DomID, _ addrs: [PCIAddress]) throws {
        let b = "/local/domain/0/backend/pci/\(g)/0", f = "/local/domain/\(g)/device/pci/0"
        try ts.transaction { t in
            for (k, v) in [("backend", b), ("backend-id", "0"), ("state", "1")] { try ts.write(f + "/" + k, v, transaction: t) }
            try ts.setPermissions(f, [XenstorePermission(g, .none), XenstorePermission(0, .read)], transaction: t)
            try ts.mkdir(b, transaction: t)
            try ts.setPermissions(b, [XenstorePermission(0, .none), XenstorePermission(g, .read)], transaction: t)
            for (k, v) in [("frontend", f), ("frontend-id", String(g)), ("online", "1"), ("num_devs", String(addrs.count))] {
                try ts.write(b + "/" + k, v, transaction: t)
            }
            for (n, a) in addrs.enumerated() {
                try ts.write(b + "/dev-\(n)", a.description, transaction: t)
                try ts.write(b + "/state-\(n)", "1", transaction: t)
            }
            try ts.write(b + "/state", "1", transaction: t)
        }
    }

    func hot(_ g: DomID, add a: PCIAddress? = nil, remove index: Int? = nil) throws {
        let b = "/local/domain/0/backend/pci/\(g)/0"
        try ts.transaction { t in
            if let a {
                let n = Int(try ts.read(b + "/num_devs", transaction: t)) ?? 0
                try ts.write(b + "/dev-\(n)", a.description, transaction: t)
                try ts.write(b + "/state-\(n)", "1", transaction: t)
                try ts.write(b + "/num_devs", String(n + 1), transaction: t)
            }
            if let index { try ts.write(b + "/state-\(index)", "5", transaction: t) }
            try ts.write(b + "/state", "7", transaction: t)
        }
    }
}

@Suite("Fault injection: every hypervisor call failing at each step, both sides")
struct FaultInjectionTests {

    @Test("the clean scenario itself leaks nothing and reports no error")
    func cleanRun() {
        let o = FaultScenario.run(fault: nil)
        #expect(o.leaks.isEmpty, "\(o.leaks)")
        #expect(o.errors.isEmpty, "\(o.errors)")
        #expect(o.unreset.isEmpty)
    }

    @Test("each operation failing at its 1st, 2nd, 3rd, 5th and 8th call: no crash, errors named, nothing leaks, devices reset",
          arguments: MockOperation.allCases)
    func matrix(op: MockOperation) {
        var injected = 0
        for nth in [1, 2, 3, 5, 8] {
            let o = FaultScenario.run(fault: (op, nth))
            guard o.injected > 0 else { break } // the operation is called fewer times
            injected += o.injected
            #expect(o.leaks.isEmpty, "\(op) failing at call \(nth): leaks \(o.leaks)")
            #expect(o.unreset.isEmpty, "\(op) failing at call \(nth): devices not reset \(o.unreset)")
            #expect(o.errors.allSatisfy { !$0.isEmpty })
        }
        FaultTally.shared.add(op, injected)
    }
}

final class FaultTally: @unchecked Sendable {
    static let shared = FaultTally()
    private let lock = NSLock()
    private var counts: [MockOperation: Int] = [:]
    func add(_ op: MockOperation, _ n: Int) {
        lock.lock(); counts[op, default: 0] += n; let total = counts.values.reduce(0, +); lock.unlock()
        print("fault injection: \(op.rawValue): \(n) faults injected (total so far \(total))")
    }
}

/// Bounded wait without an expectation: a fault may legitimately stop it.
func waitFor(_ timeout: Duration, _ cond: () -> Bool) {
    let end = ContinuousClock.now + timeout
    while ContinuousClock.now < end && !cond() { usleep(1000) }
}
