import Foundation
import Testing
@testable import PCIBack
import XenMock
import CXenPCI
import XenPCIABI
import PCIModel
import XenHypervisor

@Suite("pciback xenbus: connect, hotplug, close", .serialized)
struct XenbusTests {
    @Test("connect: keys written exactly as Linux pcifront reads them, then Connected")
    func connect() throws {
        let (h, f) = try connected([Fixture.e1000])
        let b = h.be(1)
        #expect(h.read(b + "/vdev-0") == "0000:00:00.00")
        #expect(h.read(b + "/state-0") == "3")
        #expect(h.read(b + "/root_num") == "1")
        #expect(h.read(b + "/root-0") == "0000:00")
        #expect(try f.read(v00, 0, 4) == (.success, 0x100e_8086))
        let listing = h.back.listing()
        #expect(listing.first?.guest == 1)
        #expect(listing.first?.text.contains("guest: dom1 as 0000:00:00.0") == true)
        f.close()
        h.expectClean()
    }

    @Test("vpci groups the functions of one slot and keeps their numbers; slots are given in order")
    func vpciMultifunction() throws {
        let (h, f) = try connected([Fixture.e1000, Fixture.mfE1000, Fixture.mfRng])
        let b = h.be(1)
        #expect(h.read(b + "/vdev-0") == "0000:00:00.00")
        #expect(h.read(b + "/vdev-1") == "0000:00:01.00")
        #expect(h.read(b + "/vdev-2") == "0000:00:01.01")
        #expect(try f.read(PCIAddress(bus: 0, device: 1, function: 1), 0, 4) == (.success, 0x1005_1af4))
        f.close()
        h.expectClean()
    }

    @Test("a bridge is refused on vpci with the reason in `error`; the other devices still go")
    func bridgeRefusedOnVPCI() throws {
        var o = PCIBack.Options()
        o.allowHostDriverReadOnly = true // the root port fixture is bound to pcieport
        let (h, f) = try connected([Fixture.rootPort, Fixture.e1000], options: o)
        #expect(h.read(h.be(1) + "/error")?.contains("bridge") == true)
        #expect(h.read(h.be(1) + "/vdev-0") == nil)
        #expect(h.read(h.be(1) + "/vdev-1") == "0000:00:00.00")
        f.close()
        h.shutdown()
        #expect(h.hv.leaks().isEmpty)
    }

    @Test("passthrough: real addresses, and a root per bus whose bridge is not exported")
    func passthroughTopology() throws {
        var o = PCIBack.Options()
        o.topology = .passthrough
        o.allowHostDriverReadOnly = true
        let (h, f) = try connected([Fixture.e1000, Fixture.nvme], options: o)
        let b = h.be(1)
        #expect(h.read(b + "/vdev-0") == "0000:00:03.00")
        #expect(h.read(b + "/vdev-1") == "0000:01:00.00")
        #expect(h.read(b + "/root_num") == "2")
        #expect([h.read(b + "/root-0"), h.read(b + "/root-1")] == ["0000:00", "0000:01"])
        #expect(try f.read(Fixture.nvme, 0, 2) == (.success, 0x1b36))
        // Exporting the bridge too removes bus 01 from the roots.
        try h.claim(Fixture.rootPort)
        try h.hotAdd(1, Fixture.rootPort)
        try f.setState(.reconfiguring)
        #expect(h.waitBackend(1, .reconfigured))
        #expect(h.read(b + "/root_num") == "1")
        #expect(h.read(b + "/root-1") == nil, "a stale root-N is removed")
        f.close()
        h.shutdown()
        #expect(h.hv.leaks().isEmpty)
    }

    @Test("hot-add and hot-remove through Reconfiguring/Reconfigured; the removed device is reset and released")
    func hotplug() throws {
        let (h, f) = try connected([Fixture.e1000])
        try h.claim(Fixture.virtioNet)
        try h.hotAdd(1, Fixture.virtioNet)
        #expect(h.read(h.be(1) + "/state") == "7")
        try f.setState(.reconfiguring)
        #expect(h.waitBackend(1, .reconfigured))
        #expect(h.read(h.be(1) + "/state-1") == "3")
        #expect(h.read(h.be(1) + "/vdev-1") == "0000:00:01.00")
        #expect(try f.read(v01, 0, 4) == (.success, 0x1000_1af4))
        try f.setState(.connected)
        #expect(h.waitBackend(1, .connected))

        let resets = try h.device(Fixture.e1000).resetCount
        try h.hotRemove(1, index: 0)
        try f.setState(.reconfiguring)
        #expect(h.waitBackend(1, .reconfigured))
        #expect(h.read(h.be(1) + "/state-0") == "6")
        #expect(try f.read(v00, 0, 4).0 == .devNotFound)
        #expect(try h.device(Fixture.e1000).resetCount == resets + 1)
        #expect(h.back.listing().first { $0.address == Fixture.e1000 }?.guest == nil)
        try f.setState(.connected)
        #expect(h.waitBackend(1, .connected))
        f.close()
        h.expectClean()
    }

    @Test("after the toolstack compacts dev-N keys, a device added at a reused index is exported")
    func compactedIndices() throws {
        let (h, f) = try connected([Fixture.e1000, Fixture.virtioNet])
        try h.claim(Fixture.ahci)
        let b = h.be(1)
        try h.hotRemove(1, index: 0)
        try f.setState(.reconfiguring)
        #expect(h.waitBackend(1, .reconfigured))
        try f.setState(.connected)
        #expect(h.waitBackend(1, .connected))
        // libxl compacts: dev-1 moves to dev-0, num_devs drops to 1.
        try h.toolstack.transaction { t in
            for k in ["dev", "key", "opts", "state", "vdev"] {
                let v = try h.toolstack.read(b + "/\(k)-1", transaction: t)
                try h.toolstack.write(b + "/\(k)-0", v, transaction: t)
                try h.toolstack.remove(b + "/\(k)-1", transaction: t)
            }
            try h.toolstack.write(b + "/num_devs", "1", transaction: t)
        }
        try h.hotAdd(1, Fixture.ahci)
        try f.setState(.reconfiguring)
        #expect(h.waitBackend(1, .reconfigured))
        #expect(h.read(b + "/dev-1") == Fixture.ahci.description)
        #expect(h.read(b + "/vdev-1") == "0000:00:00.02", "the added AHCI function (2) takes the free slot 0")
        #expect(h.read(b + "/vdev-0") == "0000:00:01.00", "virtio keeps its slot")
        #expect(try f.read(PCIAddress(bus: 0, device: 0, function: 2), 0, 2) == (.success, 0x8086))
        f.close()
        h.expectClean()
    }

    @Test("missed Connected: the toolstack goes Reconfiguring before the frontend attached")
    func missedConnected() throws {
        let h = try Harness()
        try h.claim(Fixture.e1000, Fixture.virtioNet)
        try h.create(1, Fixture.e1000)
        #expect(h.waitBackend(1, .initialised))
        try h.hotAdd(1, Fixture.virtioNet)
        #expect(h.waitBackend(1, .reconfiguring))
        let f = try RawFrontend(h)
        try f.connect()
        // The backend attaches although it is Reconfiguring; requests work.
        #expect(eventually("attach") { h.events.contains { if case .connected = $0 { return true }; return false } })
        #expect(try f.read(v00, 0, 2) == (.success, 0x8086))
        try f.setState(.reconfiguring)
        #expect(h.waitBackend(1, .reconfigured))
        try f.setState(.connected)
        #expect(h.waitBackend(1, .connected))
        f.close()
        h.expectClean()
    }

    @Test("close: Closing disconnects, Closed resets, and the frontend can connect again")
    func closeAndReconnect() throws {
        let (h, f) = try connected([Fixture.e1000])
        try f.setState(.closing)
        #expect(h.waitBackend(1, .closing))
        #expect(!h.hv.leaks().contains { $0.contains("grant mapping") || $0.contains("still bound") }, "\(h.hv.leaks())")
        try f.setState(.closed)
        #expect(h.waitBackend(1, .closed))
        f.close()
        // Reconnect, as Mini-OS does after Closed.
        let f2 = try RawFrontend(h)
        try f2.setState(.initialising)
        #expect(h.waitBackend(1, .initialised))
        try f2.connect()
        #expect(h.waitBackend(1, .connected))
        #expect(try f2.read(v00, 0, 2) == (.success, 0x8086))
        f2.close()
        h.expectClean()
    }

    @Test("the toolstack removing the backend directory releases the devices")
    func backendDirectoryRemoved() throws {
        let (h, f) = try connected([Fixture.e1000])
        try h.toolstack.remove(h.be(1))
        #expect(eventually("release") { h.back.listing().first?.guest == nil })
        #expect(!h.hv.leaks().contains { $0.contains("grant mapping") })
        f.close()
        h.expectClean()
    }

    @Test("a destroyed guest's devices are released and nothing of it stays mapped")
    func guestDestroyed() throws {
        let (h, f) = try connected([Fixture.e1000])
        _ = f
        h.hv.destroyDomain(1)
        #expect(eventually("release") { h.back.listing().first?.guest == nil })
        h.expectClean()
    }

    @Test("two guests at once, each with its own instance, port and mapping")
    func twoGuests() throws {
        let h = try Harness(guests: [1, 2])
        try h.claim(Fixture.e1000, Fixture.virtioNet)
        let (f1, f2) = try h.connectTwoGuests(Fixture.e1000, Fixture.virtioNet)
        #expect(try f1.read(v00, 2, 2) == (.success, 0x100e))
        #expect(try f2.read(v00, 2, 2) == (.success, 0x1000))
        f1.close(); f2.close()
        h.expectClean()
    }

    @Test("stop tells every guest Closing, unmaps, unbinds, resets and releases")
    func shutdown() throws {
        let (h, f) = try connected([Fixture.virtioNet])
        let r = try #require(try f.send(msixOp(v00, entries: [0, 1])))
        #expect(r.err == 0)
        h.back.stop()
        #expect(h.read(h.be(1) + "/state") == "5")
        f.close()
        h.toolstack.close()
        #expect(h.hv.leaks().isEmpty, "\(h.hv.leaks())")
        #expect(try h.device(Fixture.virtioNet).resetCount >= 2)
    }
}

func msixOp(_ a: PCIAddress, entries: [UInt16]) -> xen_pci_op {
    var op = xen_pci_op(command: .enableMSIX, address: a, value: UInt32(entries.count))
    for (n, e) in entries.enumerated() { op.setMSIXEntry(n, xen_msix_entry(vector: 0, entry: e)) }
    return op
}
