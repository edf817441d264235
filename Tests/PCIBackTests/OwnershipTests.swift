import Foundation
import Testing
import Synchronization
@testable import PCIBack
import PCIModel
import PCIHost
import XenPCIABI

/// A function whose reset waits for the test: `entered` is signalled as a
/// reset begins, which then waits for `proceed` (unless `open`).
final class GatedResetDevice: Sendable {
    let inner: MemoryPCIDevice
    let entered = DispatchSemaphore(value: 0)
    let proceed = DispatchSemaphore(value: 0)
    let open = Atomic<Bool>(false)
    let failReset = Atomic<Bool>(false)
    var address: PCIAddress { inner.address }

    init(_ inner: MemoryPCIDevice) {
        self.inner = inner
        inner.beforeReset = { [unowned self] in
            if failReset.load(ordering: .relaxed) { throw PCIBackError.hardware("\(address): reset failed (test)") }
            if !open.load(ordering: .relaxed) { entered.signal(); proceed.wait() }
        }
    }
}

/// Issue 13: the service thread owns the backend's state and holds no lock
/// across device I/O; claims and releases do their resets on the caller's
/// thread while every guest keeps being served.
@Suite("Ownership: slow device work never stops the service thread")
struct OwnershipTests {
    func gated(_ h: Harness, _ fixture: PCIAddress, at bus: UInt8) throws -> GatedResetDevice {
        // A copy (not the harness's device, whose resets expectClean counts).
        let source = try SysfsPCIDevice(root: fixtureRoot, address: fixture, inMemory: true)
        return GatedResetDevice(try MemoryPCIDevice(copying: source, as: PCIAddress(bus: bus, device: 0, function: 0)))
    }

    func inThread(_ body: @escaping @Sendable () throws -> Void) -> (done: DispatchSemaphore, error: () -> Error?) {
        let done = DispatchSemaphore(value: 0)
        let failure = Mutex<Error?>(nil)
        Thread.detachNewThread {
            do { try body() } catch { failure.withLock { $0 = error } }
            done.signal()
        }
        return (done, { failure.withLock { $0 } })
    }

    @Test("a claim whose reset is slow: the guest is served, the backend answers, the function is reserved")
    func slowClaim() throws {
        let (h, f) = try connected([Fixture.e1000])
        let g = try gated(h, Fixture.ahci, at: 2)
        let claim = inThread { try h.back.claim(g.inner) }
        #expect(g.entered.wait(timeout: .now() + 5) == .success, "the claim's reset began")
        // The claim's reset is in progress, on the claiming thread.
        #expect(try f.read(v00, 0, 2) == (.success, 0x8086))
        #expect(h.back.isClaimed(g.address))
        #expect(!h.back.listing().contains { $0.address == g.address }, "listed once claimed")
        #expect(throws: PCIBackError.self) { try h.back.claim(g.inner) }
        g.proceed.signal()
        #expect(claim.done.wait(timeout: .now() + 5) == .success)
        #expect(claim.error() == nil)
        #expect(h.back.listing().contains { $0.address == g.address })
        g.open.store(true, ordering: .relaxed)
        try h.back.release(g.address)
        #expect(g.inner.resetCount == 2, "claim and release each reset it")
        f.close()
        h.expectClean()
    }

    @Test("a release whose reset is slow: guests are served, no guest can take the function meanwhile")
    func slowRelease() throws {
        let h = try Harness(guests: [1, 2])
        try h.claim(Fixture.e1000)
        let f = try h.connectGuest(Fixture.e1000)
        let g = try gated(h, Fixture.ahci, at: 2)
        g.open.store(true, ordering: .relaxed)
        try h.back.claim(g.inner)
        g.open.store(false, ordering: .relaxed)
        let release = inThread { try h.back.release(g.address) }
        #expect(g.entered.wait(timeout: .now() + 5) == .success, "the release's reset began")
        #expect(try f.read(v00, 0, 2) == (.success, 0x8086))
        try h.create(2, g.address)
        #expect(eventually("dom2 refused the function being released") {
            h.read(h.be(2) + "/error")?.contains("being released") == true
        })
        #expect(h.back.guestHolding(g.address) == nil)
        g.proceed.signal()
        #expect(release.done.wait(timeout: .now() + 5) == .success)
        #expect(release.error() == nil)
        #expect(!h.back.isClaimed(g.address))
        f.close()
        h.expectClean()
    }

    @Test("releaseAll with a reset that fails keeps every function claimed")
    func releaseAllFailure() throws {
        let h = try Harness()
        let a = try gated(h, Fixture.e1000, at: 2), b = try gated(h, Fixture.ahci, at: 3)
        for d in [a, b] { d.open.store(true, ordering: .relaxed); try h.back.claim(d.inner) }
        b.failReset.store(true, ordering: .relaxed)
        #expect(throws: PCIBackError.self) { try h.back.releaseAll([a.address, b.address]) }
        #expect(h.back.isClaimed(a.address) && h.back.isClaimed(b.address), "the pool is as it was")
        b.failReset.store(false, ordering: .relaxed)
        try h.back.releaseAll([a.address, b.address])
        #expect(h.back.listing().isEmpty)
        h.expectClean()
    }

    @Test("a callback may call back into the backend on the service thread")
    func callbackCallsBack() throws {
        let h = try Harness()
        let seen = DispatchSemaphore(value: 0)
        let listed = Mutex<[PCIAddress]>([])
        h.back.onEvent = { [unowned h] e in
            guard case .connected = e else { return }
            listed.withLock { $0 = h.back.listing().map(\.address) }
            _ = h.back.guestStatistics()
            seen.signal()
        }
        try h.claim(Fixture.e1000)
        let f = try h.connectGuest(Fixture.e1000)
        #expect(seen.wait(timeout: .now() + 5) == .success)
        #expect(listed.withLock { $0 } == [Fixture.e1000])
        f.close()
        h.expectClean()
    }

    @Test("detach then attach at once: the reconfigure waits for the reset, the guest never sees dev_not_found")
    func attachWaitsForReset() throws {
        let h = try Harness()
        try h.claim(Fixture.e1000)
        let g = try gated(h, Fixture.ahci, at: 2)
        g.open.store(true, ordering: .relaxed)
        try h.back.claim(g.inner)
        g.open.store(false, ordering: .relaxed)
        let f = try h.connectGuest([(Fixture.e1000, Harness.defaultOpts), (g.address, Harness.defaultOpts)])
        try h.hotRemove(1, index: 1)
        try f.setState(.reconfiguring)
        #expect(g.entered.wait(timeout: .now() + 5) == .success, "the reset after the detach began")
        #expect(eventually("backend Reconfigured after the detach") { h.read(h.be(1) + "/state") == "8" })
        try f.setState(.connected)
        #expect(eventually("backend Connected") { h.read(h.be(1) + "/state") == "4" })
        // Attached again while its reset still runs.
        try h.hotAdd(1, g.address)
        try f.setState(.reconfiguring)
        for _ in 0..<20 {
            usleep(5000)
            #expect(h.read(h.be(1) + "/state") == "7", "no Reconfigured while the function is being reset")
        }
        #expect(try f.read(v00, 0, 2) == (.success, 0x8086), "the other function is served meanwhile")
        g.proceed.signal()
        #expect(h.waitBackend(1, .reconfigured))
        let va = try #require(h.back.guestHolding(g.address)?.address)
        #expect(try f.read(va, 0, 2) == (.success, 0x8086), "the function answers as soon as it is published")
        #expect(g.inner.resetCount == 2)
        try f.setState(.connected)
        #expect(h.waitBackend(1, .connected))
        f.close()
        g.open.store(true, ordering: .relaxed)
        h.expectClean()
    }
}
