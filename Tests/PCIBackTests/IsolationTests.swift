import Foundation
import Testing
import Synchronization
@testable import PCIBack
import XenMock
import PCIModel
import XenPCIABI
import XenHypervisor
import CXenPCI

/// What one guest does to its own function never makes another guest wait:
/// device models that block as the kernel's do (a power-state change takes
/// the spec's 10 ms, a reset holds the function).
@Suite(.serialized)
struct IsolationTests {
    /// Copies of the NVMe fixture (PM, MSI-X, 4 KiB) at distinct addresses.
    static func nvmeCopy(_ h: Harness, bus: UInt8) throws -> MemoryPCIDevice {
        try MemoryPCIDevice(copying: SysfsPCIDevice(root: fixtureRoot, address: Fixture.nvme, inMemory: true),
                            as: PCIAddress(segment: 0, bus: bus, device: 0, function: 0))
    }

    /// Two guests connected, each with its own copy; dom1's is `a`.
    static func twoGuests(_ h: Harness, _ a: MemoryPCIDevice) throws -> (RawFrontend, RawFrontend) {
        let b = try nvmeCopy(h, bus: 0x31)
        try h.back.claim(a)
        try h.back.claim(b)
        return try h.connectTwoGuests(a.address, b.address)
    }

    static func inFlight(_ h: Harness, _ dom: DomID) -> Bool { h.back.loop.submit { h.back.connections[dom]?.inFlight ?? false } }

    @Test("a guest's D3hot write waits out its 10 ms settle; another guest is answered meanwhile")
    func pmSettle() throws {
        let h = try Harness(guests: [1, 2])
        let a = try Self.nvmeCopy(h, bus: 0x30)
        let pm = try #require(try a.readConfigSpace().capability(.pm)).offset
        let (f1, f2) = try Self.twoGuests(h, a)
        let done = Atomic<Bool>(false)
        let took = Mutex<Duration?>(nil)
        let t = Thread {
            let start = ContinuousClock.now
            _ = try? f1.write(v00, Int32(pm + PCICapReg.pmControl), 2, 3) // D3hot
            took.withLock { $0 = ContinuousClock.now - start }
            done.store(true, ordering: .releasing)
        }
        t.start()
        #expect(eventually("dom1's write waiting on its function") { Self.inFlight(h, 1) || done.load(ordering: .acquiring) })
        var answeredDuring = 0
        for _ in 0..<5 where !done.load(ordering: .acquiring) {
            #expect(try f2.read(v00, 0, 4).0 == .success)
            if !done.load(ordering: .acquiring) { answeredDuring += 1 }
        }
        #expect(eventually("dom1's reply") { done.load(ordering: .acquiring) })
        #expect(answeredDuring > 0, "dom2 was answered while dom1's function settled")
        #expect(try #require(took.withLock { $0 }) >= .milliseconds(10), "the reply came after the settle")
        #expect(UInt16(try a.readConfig(pm + PCICapReg.pmControl, 2)) & 3 == 3)
        f1.close(); f2.close()
        h.shutdown()
        h.expectClean()
    }

    @Test("Closed, Closed again and a child node during a slow reset: the loop never waits for the reset, one reset")
    func closeTwice() throws {
        let h = try Harness(guests: [1, 2])
        let a = try Self.nvmeCopy(h, bus: 0x30)
        a.resetDuration = .milliseconds(600)
        let (f1, f2) = try Self.twoGuests(h, a)
        let resetsBefore = a.resetCount
        try f1.setState(.closed)
        #expect(eventually("the reset started") { h.back.loop.submit { h.back.registry[a.address]?.heldByWorker ?? false } })
        try f1.setState(.closed)
        try f1.xs.write(f1.path + "/state/child", "6")
        // Each answer of dom2 comes while dom1's function is being reset.
        var slowest = Duration.zero
        for _ in 0..<10 {
            let start = ContinuousClock.now
            #expect(try f2.read(v00, 0, 4).0 == .success)
            slowest = max(slowest, ContinuousClock.now - start)
        }
        #expect(h.back.loop.submit { h.back.registry[a.address]?.resetting ?? false }, "still resetting while dom2 was served")
        #expect(slowest < .milliseconds(300), "slowest answer to dom2 \(slowest)")
        h.back.waitForResets()
        #expect(a.resetCount == resetsBefore + 1)
        f1.close(); f2.close()
        h.shutdown()
        h.expectClean()
    }

    @Test("no-op requests write no state; a change writes once")
    func noopWritesNothing() throws {
        let store = CountingStore()
        let h = try Harness(stateStore: store)
        let f = try h.export(try Self.nvmeCopy(h, bus: 0x30))
        h.back.ctx.state.flush()
        let before = store.saves
        for _ in 0..<100 {
            let r = try #require(try f.send(xen_pci_op(command: .disableMSI, address: v00)))
            #expect(r.err == PCIOpError.success.rawValue)
        }
        h.back.ctx.state.flush()
        #expect(store.saves == before, "\(store.saves - before) writes for 100 no-ops")
        try h.back.setPermissive(PCIAddress(segment: 0, bus: 0x30, device: 0, function: 0), true)
        h.back.ctx.state.flush()
        #expect(store.saves == before + 1)
        f.close()
        h.shutdown()
    }

    @Test("a guest's state changes reach the log at the guest's rate limit; what it wrote is escaped")
    func stateChangesRateLimited() throws {
        let h = try Harness()
        try h.claim(Fixture.e1000)
        try h.create(1, Fixture.e1000)
        #expect(h.waitBackend(1, .initialised))
        let f = try RawFrontend(h)
        try f.connect(magic: "\u{1b}[31mred")
        #expect(eventually("the bad magic refused") { h.read(h.be(1) + "/error")?.contains("magic") == true })
        // Each change seen by the backend before the next.
        for n in 0..<60 {
            let s: XenState = n % 2 == 0 ? .initialising : .closed
            try f.setState(s)
            #expect(eventually("state \(s) seen") { h.back.loop.submit { h.back.connections[1]?.frontState == s } })
        }
        let aboutDom1 = h.events.filter { e in
            switch e {
            case .frontendState(1, _), .backendState(1, _), .error(1?, _), .notice(1?, _), .connected(1, _), .disconnected(1): return true
            default: return false
            }
        }
        #expect(aboutDom1.count <= GuestLogLimit().burst + 1, "\(aboutDom1.count) lines")
        let texts = h.events.compactMap { e -> String? in if case .error(_, let s) = e { return s } else { return nil } }
        #expect(texts.contains { $0.contains("\\x1B[31mred") }, "the refusal names the magic, escaped")
        #expect(!texts.contains { $0.contains("\u{1b}") }, "a guest's escape byte reached the log")
        f.close()
        h.shutdown()
    }

    @Test("Closing from the toolstack, Initialised from the guest while connected: nothing mapped or bound twice")
    func attachTwice() throws {
        let (h, f) = try connected([Fixture.e1000])
        try h.toolstack.write(h.be(1) + "/state", "5")
        try f.setState(.initialised)
        #expect(eventually("connected again") { h.read(h.be(1) + "/state") == "4" })
        #expect(try f.read(v00, 0, 4).0 == .success)
        f.close()
        h.shutdown()
        h.expectClean()
    }

    @Test("drain() while the service thread serves is refused, naming why")
    func drainRefused() throws {
        let h = try Harness()
        #expect(throws: PCIBackError.self) { try h.back.drain() }
        h.shutdown()
    }

    @Test("spinning for one guest: another guest's request ends the spin")
    func spinEndsForOthers() throws {
        var o = PCIBack.Options()
        o.spinBeforeBlock = .milliseconds(200)
        let h = try Harness(options: o, guests: [1, 2])
        let a = try Self.nvmeCopy(h, bus: 0x30)
        let (f1, f2) = try Self.twoGuests(h, a)
        var slowest = Duration.zero
        for _ in 0..<5 {
            #expect(try f1.read(v00, 0, 4).0 == .success) // the backend now spins 200 ms for dom1
            let start = ContinuousClock.now
            #expect(try f2.read(v00, 0, 4).0 == .success)
            slowest = max(slowest, ContinuousClock.now - start)
        }
        #expect(slowest < .milliseconds(100), "dom2 waited \(slowest) behind the spin for dom1")
        f1.close(); f2.close()
        h.shutdown()
        h.expectClean()
    }
}

/// Counts the state file's writes.
final class CountingStore: BackendStateStore {
    private let n = Atomic<Int>(0)
    var saves: Int { n.load(ordering: .relaxed) }
    var location: String { "memory" }
    func load() throws -> PersistedState? { nil }
    func save(_ s: PersistedState) throws { n.wrappingAdd(1, ordering: .relaxed) }
}
