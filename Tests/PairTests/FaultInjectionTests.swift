import Foundation
import Synchronization
import Testing
import PCIBack
import PCIModel
import XPCI
import XenMock
import XenToolstack
import XenHypervisor
import XenPCIABI

/// One full life: connect, hot-add, hot-remove, frontend reconnect, teardown.
/// Every step tolerates failure (a fault may break it); afterwards nothing
/// may be left open and every claimed device must have been reset.
struct FaultScenario {
    struct Outcome {
        var errors: [String] = []; var leaks: [String] = []; var unreset: [PCIAddress] = []; var injected = 0
        /// Config reads that answered, but not with the device's bytes.
        var wrongReads: [String] = []
    }

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
        let toolstack = XenToolstack(xenstore: ts, permissions: nil)
        toolstack.timeout = .milliseconds(500)
        do { try toolstack.attach(domid: 1, devices: [e1000]) } catch { note(error) }
        var front: XPCIFrontend?
        do {
            let f = try XPCIFrontend(hypervisor: guest, options: .init(requestTimeout: .milliseconds(150), connectTimeout: .milliseconds(400)))
            front = f
            try f.attach()
            try f.waitConnected()
            // A fault may make the read fail, never answer someone else's bytes (QEMU's e1000 is 8086:100e).
            let id = try f.configRead(PCIAddress(bus: 0, device: 0, function: 0), offset: 0, size: 4)
            if id != 0x100E_8086 { out.wrongReads.append("00:00.0 vendor/device read 0x\(String(id, radix: 16))") }
        } catch { note(error) }
        do {
            let added = PCIAddress(bus: 0, device: 1, function: 0)
            try toolstack.attach(domid: 1, devices: [virtio])
            waitFor(.milliseconds(500)) { front?.device(added) != nil && front?.state == .connected }
            // MSI-X left on: teardown must unmap the pirqs.
            _ = try front?.enableMSIX(added, entries: [0, 1])
            try toolstack.detach(domid: 1, devices: [e1000])
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

@Suite("Fault injection: every hypervisor call failing at each step, both sides")
struct FaultInjectionTests {

    @Test("the clean scenario itself leaks nothing and reports no error")
    func cleanRun() {
        let o = FaultScenario.run(fault: nil)
        #expect(o.leaks.isEmpty, "\(o.leaks)")
        #expect(o.errors.isEmpty, "\(o.errors)")
        #expect(o.unreset.isEmpty)
        #expect(o.wrongReads.isEmpty, "\(o.wrongReads)")
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
            #expect(o.wrongReads.isEmpty, "\(op) failing at call \(nth): \(o.wrongReads)")
        }
        FaultTally.shared.add(op, injected)
    }
}

final class FaultTally: Sendable {
    static let shared = FaultTally()
    private let counts = Mutex<[MockOperation: Int]>([:])
    func add(_ op: MockOperation, _ n: Int) {
        let total = counts.withLock { c in c[op, default: 0] += n; return c.values.reduce(0, +) }
        print("fault injection: \(op.rawValue): \(n) faults injected (total so far \(total))")
    }
}

/// Bounded wait without an expectation: a fault may legitimately stop it.
func waitFor(_ timeout: Duration, _ cond: () -> Bool) {
    let end = ContinuousClock.now + timeout
    while ContinuousClock.now < end && !cond() { usleep(1000) }
}
