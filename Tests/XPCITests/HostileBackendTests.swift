import Foundation
import Synchronization
import Testing
import XenMock
import PCIModel
@testable import XPCI
import CXenPCI
import XenPCIABI
import XenHypervisor

private let addr = Rig.addr
private let rich = addr("00:01.0")

/// Issue 13: what a slow, looping or address-changing backend must not be
/// able to do to the frontend, and the thread-free mode fuzzing uses.
@Suite("xpci against hostile backends", .serialized)
struct HostileBackendTests {
    @Test("detach in the middle of a bus scan returns within the connect timeout and leaves nothing",
          arguments: ["slow", "silent"])
    func detachMidScan(_ kind: String) throws {
        let rig = Rig()
        defer { rig.finish() }
        // Slow: 256 probes at 40 ms would keep the scan (and detach) busy
        // for over 10 s. Silent: the first probe alone would wait 10 s.
        let b = try rig.backend(kind == "slow" ? Behaviour(delay: .milliseconds(40)) : Behaviour(answers: false))
        let f = try rig.frontend(requestTimeout: .seconds(10), connectTimeout: .seconds(1))
        #expect(eventually { f.backendStateSeen == .connected && (f.page?.flags ?? 0) & XenPCI.frontendActive != 0 })
        if kind == "slow" { #expect(eventually { b.requests >= 3 }) }
        let t0 = ContinuousClock.now
        try f.detach()
        let took = ContinuousClock.now - t0
        #expect(took < .seconds(1), "detach took \(took)")
        #expect(f.state == .closed)
        #expect(b.requests < 60, "the scan stopped at detach (\(b.requests) requests answered)")
        #expect(rig.hv.leaks().allSatisfy { $0.hasPrefix("dom0:") }, "\(rig.hv.leaks())")
        #expect(!rig.recorded.contains { if case .error = $0 { return true }; return false },
                "the abandoned scan is not reported as an error: \(rig.recorded)")
        expectError({ _ = try f.configRead(rich, offset: 0, size: 4) }) {
            if case .notConnected = $0 { return true }; return false
        }
    }

    @Test("the AER throttle: burst tokens per window, the first refusal reported at once, the rest at the next window or flush")
    func throttle() {
        let t0 = ContinuousClock.now
        func at(_ ms: Int) -> ContinuousClock.Instant { t0 + .milliseconds(ms) }
        var t = AERThrottle(AERRateLimit(burst: 2, window: .seconds(1)))
        #expect(t.take(at: at(0)) == (true, []))
        #expect(t.take(at: at(100)) == (true, []))
        #expect(t.take(at: at(200)) == (false, [1]), "first refusal: one line at once")
        #expect(t.take(at: at(300)) == (false, []))
        #expect(t.take(at: at(999)) == (false, []))
        #expect(t.take(at: at(1000)) == (true, [2]), "a new window: the two silent refusals in one line")
        #expect(t.take(at: at(1100)) == (true, []))
        #expect(t.take(at: at(1200)) == (false, [1]))
        #expect(t.flush() == nil, "nothing unreported")
        #expect(t.take(at: at(1300)) == (false, []))
        #expect(t.flush() == 1)
        #expect(t.flush() == nil)
        var none = AERThrottle(AERRateLimit(burst: 0, window: .seconds(1)))
        #expect(none.take(at: at(0)) == (false, [1]))
    }

    @Test("AER: a backend posting requests in a loop is rate limited; the handler does not run for the excess")
    func aerRateLimit() throws {
        let rig = Rig()
        defer { rig.finish() }
        let b = try rig.backend()
        let limit = AERRateLimit(burst: 5, window: .seconds(60))
        let f = try rig.frontend { $0.aerRateLimit = limit }
        try f.waitConnected()
        let runs = Counter()
        f.setAERHandler(rich) { _ in runs.add(); usleep(100_000); return .recovered }
        let t0 = ContinuousClock.now
        let answers = (0..<40).map { _ in b.postAER(6, rich) }
        let took = ContinuousClock.now - t0
        #expect(runs.value == 5)
        #expect(answers.prefix(5).allSatisfy { $0 == AERResult.recovered.rawValue })
        #expect(answers.dropFirst(5).allSatisfy { $0 == AERResult.disconnect.rawValue }, "\(answers)")
        // 40 handler runs would take 4 s; only the 5 admitted ones sleep.
        #expect(took < .seconds(3), "the excess did not keep the xenbus thread busy: \(took)")
        #expect(f.statistics.aerRequests == 40 && f.statistics.aerRateLimited == 35)
        #expect(rateLimitLines(rig) == [1], "one line at the first refusal, not one per request")
        #expect(rig.recorded.filter { if case .aer = $0 { return true }; return false }.count == 5)
        try f.detach()
        #expect(rateLimitLines(rig) == [1, 34], "the rest of the window reported once, at teardown")
        #expect(rig.recorded.contains { "\($0)".contains("AER rate limit: 34 backend request(s) beyond 5 per 60.0 seconds") })
    }

    @Test("an AER rate limit with a negative burst or an empty window is refused")
    func aerRateLimitOptions() throws {
        let rig = Rig()
        for l in [AERRateLimit(burst: -1), AERRateLimit(window: .zero)] {
            expectError({ _ = try rig.frontend(attach: false) { $0.aerRateLimit = l } }) {
                if case .badArgument(let s) = $0 { return s.contains("AER rate limit") }; return false
            }
        }
    }

    @Test("per-address statistics stay bounded by the functions present across reconnects and hotplug with changing addresses")
    func statisticsBounded() throws {
        let rig = Rig()
        defer { rig.finish() }
        let f = try rig.frontend(attach: false)
        var total = 0
        for cycle in 1...6 {
            // A new root each time: the scan probes 256 addresses never seen before.
            let bus = String(format: "0000:%02x", cycle)
            let b = try rig.backend(devices: [addr("\(bus):00.0"): .make(device: UInt16(cycle)), addr("\(bus):1f.7"): .make()])
            try f.attach()
            try f.waitConnected()
            for d in f.devices { _ = try f.configRead(d.address, offset: 0, size: 4) }
            let extra = addr("\(bus):1e.0")
            try Toolstack.hotAdd(b.xs, b, extra, .make(device: 0xE0))
            #expect(eventually { f.device(extra) != nil && f.state == .connected && b.state == .connected })
            #expect(f.statistics.devices[extra] != nil)
            try Toolstack.hotRemove(b.xs, b, extra)
            #expect(eventually { f.device(extra) == nil && f.state == .connected && b.state == .connected })
            let s = f.statistics
            #expect(Set(s.devices.keys) == Set(f.devices.map(\.address)), "cycle \(cycle): \(s.devices.keys.sorted())")
            #expect(s.devices.count == 2)
            #expect(s.total.ops > total, "counters keep counting")
            total = s.total.ops
            try f.detach()
            #expect(f.statistics.devices.isEmpty, "nothing present, nothing kept per address")
            #expect(f.statistics.total.ops == total, "a removed function's counts move to other, not lost")
            b.stop()
            rig.backends.removeAll { $0 === b }
        }
        #expect(f.statistics.other.errors >= 6 * 250, "the empty slots probed are counted, under other")
    }

    @Test("without the xenbus thread nothing happens until drain(), which does the work on the caller's thread")
    func manualDrain() throws {
        let rig = Rig()
        defer { rig.finish() }
        let b = try rig.backend()
        let f = try rig.frontend { $0.xenbusThread = false }
        #expect(eventually { b.state == .connected })
        usleep(20_000)
        #expect(f.state == .initialised && f.devices.isEmpty, "no thread acted on the backend's Connected")
        #expect(try f.drain() > 0)
        #expect(f.state == .connected && f.devices.count == 4)
        #expect(try f.drain() == 0, "nothing left to do")
        f.setAERHandler(rich) { _ in .canRecover }
        let page = try #require(b.sendAER(6, rich))
        #expect(try f.drain() == 1)
        #expect(page.flags & XenPCI.backendActive == 0 && page.snapshotAER().err == AERResult.canRecover.rawValue)
        try b.xs.write(b.backPath + "/state", "5")
        #expect(eventually { _ = try? f.drain(); return f.state == .initialising && b.state == .closed })
        #expect(rig.hv.leaks().allSatisfy { !$0.hasPrefix("dom1: grant ref") && !$0.contains("dom1: event channel port") }, "\(rig.hv.leaks())")
        let threaded = try rig.frontend(instance: 1, attach: false)
        expectError({ _ = try threaded.drain() }) { if case .badArgument(let s) = $0 { return s.contains("xenbusThread") }; return false }
    }
}

/// The counts of the rate-limit lines recorded so far.
private func rateLimitLines(_ rig: Rig) -> [Int] {
    rig.recorded.compactMap { if case .aerRateLimited(let n, _) = $0 { return n }; return nil }
}

final class Counter: Sendable {
    private let n = Mutex(0)
    func add() { n.withLock { $0 += 1 } }
    var value: Int { n.withLock { $0 } }
}
