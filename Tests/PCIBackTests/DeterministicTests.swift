import Foundation
import Synchronization
import Testing
@testable import PCIBack
import XenMock
import CXenPCI
import XenPCIABI
import PCIModel
import CXenPCISoftc
import XenHypervisor

/// The deterministic mode (issue 13): no service thread, no workers; the
/// backend does nothing until the caller steps it with `drain()`, which is
/// what lets a fuzz input cost microseconds and a test say exactly when
/// each watch event, request and reset happens.
@Suite("pciback: the deterministic, thread-free mode")
struct DeterministicTests {
    static func manual() -> PCIBack.Options {
        var o = PCIBack.Options()
        o.serviceThread = false
        return o
    }

    @Test("nothing happens between steps: the toolstack's keys, the guest's keys, a request and a reset each wait for drain()")
    func stepped() throws {
        let h = try Harness(options: Self.manual())
        let dev = try MemoryPCIDevice(config: h.device(Fixture.e1000), at: Fixture.e1000)
        try h.back.claim(dev)
        let resetsAtClaim = dev.resetCount
        try h.create(1, Fixture.e1000)
        #expect(h.read(h.be(1) + "/state") == "1", "the toolstack's state, untouched before a step")
        #expect(try h.back.drain() > 0)
        #expect(h.read(h.be(1) + "/state") == XenState.initialised.xenstoreValue)
        #expect(h.read(h.be(1) + "/vdev-0") == "0000:00:00.00") // Linux pciback's form

        let f = try RawFrontend(h)
        try f.connect()
        #expect(h.read(h.be(1) + "/state") == XenState.initialised.xenstoreValue)
        try h.back.drain()
        #expect(h.read(h.be(1) + "/state") == XenState.connected.xenstoreValue)

        f.page.postRequest(xen_pci_op(command: .confRead, address: v00, offset: 0, size: 2))
        try f.ev.notify(f.port!)
        #expect(f.page.flags & XenPCI.frontendActive != 0, "no thread answered behind the test's back")
        #expect(try h.back.drain() >= 1)
        #expect(f.page.flags & XenPCI.frontendActive == 0)
        #expect(f.page.readReply().err == 0 && f.page.readReply().value == 0x8086)

        // The frontend closes: the reset is queued and runs inside the step.
        try f.setState(.closed)
        #expect(dev.resetCount == resetsAtClaim)
        try h.back.drain()
        #expect(dev.resetCount == resetsAtClaim + 1, "one reset, run by the step")
        #expect(h.read(h.be(1) + "/state") == XenState.closed.xenstoreValue)
        #expect(try h.back.drain() == 0, "idle: nothing left to do")
        f.close()
        h.shutdown()
        #expect(h.hv.leaks().isEmpty, "leaks: \(h.hv.leaks())")
    }

    @Test("the guest's devices are read from its pb_xenbus_instance list and each pciback_pci_dev's owner pointer")
    func softcsAreTheRecord() throws {
        let h = try Harness(options: Self.manual())
        try h.claim(Fixture.e1000, Fixture.ahci)
        try h.create(1, Fixture.e1000, Fixture.ahci)
        try h.back.drain()
        let f = try RawFrontend(h)
        try f.connect()
        try h.back.drain()
        let i = try #require(h.back.connections[1])
        let list = i.deviceList.map(ClaimedDevice.address(of:))
        #expect(Set(list) == [Fixture.e1000, Fixture.ahci])
        for a in [Fixture.e1000, Fixture.ahci] {
            let d = try #require(h.back.registry[a])
            #expect(d.pb.pointee.pbx_instance == i.c, "\(a): owner pointer")
            #expect(d.guest == 1)
        }
        #expect(i.c.pointee.pbx_evtchn != 0 && i.port == i.c.pointee.pbx_evtchn)
        #expect(i.c.pointee.pbx_sh_info != nil)
        // Unlinking a device in the C list is what takes it from the guest.
        let d = try #require(h.back.registry[Fixture.ahci])
        i.unlink(d)
        #expect(d.guest == nil)
        #expect(i.exported.map(\.address) == [Fixture.e1000])
        i.link(d)
        f.close()
        h.shutdown()
        #expect(h.hv.leaks().isEmpty, "leaks: \(h.hv.leaks())")
    }

    @Test("a function freed while on a guest's list leaves the list, and a connection freed first clears its functions' owner")
    func freeingInEitherOrder() throws {
        let h = try Harness(options: Self.manual(), start: false)
        let dev = try h.device(Fixture.e1000)
        var d: ClaimedDevice? = try ClaimedDevice(dev, allowHostDriver: false)
        let i = GuestConnection(h.back.ctx, domid: 1, backendPath: "/b", frontendPath: "/f")
        i.link(d!)
        #expect(i.deviceList.count == 1)
        d = nil
        #expect(i.deviceList.isEmpty, "a freed function is still on the guest's list")
        let kept = try ClaimedDevice(dev, allowHostDriver: false)
        var j: GuestConnection? = GuestConnection(h.back.ctx, domid: 2, backendPath: "/b2", frontendPath: "/f2")
        j!.link(kept)
        #expect(kept.guest == 2)
        j = nil
        #expect(kept.guest == nil && kept.pb.pointee.pb_guest_next.sle_next == nil)
        h.shutdown()
    }

    @Test("list and the kernfs text read each function's pciback_pci_softc: ids, subsystem ids, BARs and irq")
    func softcIsReadForListing() throws {
        let h = try Harness(options: Self.manual())
        try h.claim(Fixture.e1000)
        let d = try #require(h.back.registry[Fixture.e1000])
        let before = try #require(h.back.listing().first)
        #expect(before.vendorID == 0x8086 && before.irq == d.access.irq)
        #expect(d.softcBARs.map(\.index) == before.bars.keys.filter { $0 < 6 }.sorted())
        // A change in the softc shows; a Swift copy would not.
        d.sc.pointee.sc_id = 0xBEEF_1234
        d.sc.pointee.sc_subid = 0x5678_9ABC
        d.sc.pointee.sc_irq = 77
        withUnsafeMutableBytes(of: &d.sc.pointee.sc_bars) { $0.bindMemory(to: pci_bar.self)[0].b_size = 0x40 }
        let after = try #require(h.back.listing().first)
        #expect(after.vendorID == 0x1234 && after.deviceID == 0xBEEF)
        #expect(after.subsystemVendorID == 0x9ABC && after.subsystemID == 0x5678)
        #expect(after.irq == 77)
        #expect(after.text.contains("irq 77") && after.text.contains("(size 0x40)"), "\(after.text)")
        h.shutdown()
    }
}

extension MemoryPCIDevice {
    /// An in-memory copy of a fixture, reset counted, in virtual time.
    convenience init(config src: SysfsPCIDevice, at a: PCIAddress) throws {
        try self.init(copying: src, as: a)
        virtualTime = true
    }
}

@Suite("pciback: AER requests against guests that do not answer")
struct AERTests {
    @Test("no answer: a timeout naming the guest; the bit is taken back so a late answer is not read as the next one")
    func timeout() throws {
        let (h, f) = try connected([Fixture.e1000])
        let start = ContinuousClock.now
        #expect(throws: PCIBackError.self) { try h.back.raiseAER(Fixture.e1000, .aerDetected, timeout: .milliseconds(200)) }
        #expect(ContinuousClock.now - start < .seconds(2))
        #expect(f.page.flags & XenPCI.backendActive == 0)
        f.close()
        h.expectClean()
    }

    @Test("the guest disconnects while the backend waits: notConnected, and its page is never read after the unmap")
    func disconnectDuringWait() throws {
        let (h, f) = try connected([Fixture.e1000])
        let done = DispatchSemaphore(value: 0)
        let result = Mutex<Error?>(nil)
        Thread {
            do { _ = try h.back.raiseAER(Fixture.e1000, .aerDetected, timeout: .seconds(20)) } catch { result.withLock { $0 = error } }
            done.signal()
        }.start()
        #expect(eventually("the request posted") { f.page.flags & XenPCI.backendActive != 0 })
        try f.setState(.closing)
        #expect(done.wait(timeout: .now() + 5) == .success, "raiseAER returned after the disconnect")
        let outcome = result.withLock { $0 }
        if case .notConnected? = outcome as? PCIBackError {} else { Issue.record("expected notConnected, got \(String(describing: outcome))") }
        f.close()
        h.expectClean()
    }
}
