import Foundation
import Testing
@testable import PCIBack
import XenMock
import PCIModel
import CXenPCI
import XenPCIABI
import PCIHost

/// MSI and MSI-X as Xen 4.17 needs them (issue 12): tables prepared while
/// dom0 owns the function, exactly the entries the guest asked for, the
/// table's BAR base, VFs, and repeated enable/disable.
@Suite("pciback interrupts: MSI, MSI-X, SR-IOV VFs", .serialized)
struct InterruptTests {
    /// The NVMe fixture: MSI-X table in BAR0 (0xfe800000) at offset 0x2000.
    static let nvmeTableBAR: UInt64 = 0xfe80_0000

    @Test("MSI-X: exactly the entries asked for, in order, each pirq handed back for its own entry, table base = the BAR's start")
    func exactEntries() throws {
        let (h, f) = try connected([Fixture.nvme])
        let entries: [UInt16] = [3, 7, 1, 62]
        let r = try #require(try f.send(msixOp(v00, entries: entries)))
        #expect(r.err == 0)
        let mapped = h.hv.pirqVectors(guest: 1)
        #expect(mapped.count == entries.count)
        for n in 0..<entries.count {
            let e = r.msixEntry(n)
            #expect(e.entry == entries[n], "the guest's entry list is left as it wrote it")
            let v = try #require(mapped.first { $0.pirq == UInt32(e.vector) }, "vector \(e.vector) is a mapped pirq")
            #expect(v.msix && v.device == Fixture.nvme)
            #expect(v.entry == entries[n], "pirq \(v.pirq) is wired to entry \(v.entry), the guest asked for \(entries[n])")
            #expect(v.tableBase == Self.nvmeTableBAR, "table base: the BAR's start, not start + table offset")
        }
        #expect(try f.send(xen_pci_op(command: .disableMSIX, address: v00))?.err == 0)
        #expect(h.hv.pirqVectors().isEmpty)
        f.close()
        h.expectClean()
    }

    @Test("MSI: one vector, entry 0, no table")
    func msiVector() throws {
        let (h, f) = try connected([Fixture.ahci])
        let ahciV = PCIAddress(bus: 0, device: 0, function: 2) // vpci keeps the function number
        let r = try #require(try f.send(xen_pci_op(command: .enableMSI, address: ahciV)))
        #expect(r.err == 0)
        #expect(h.hv.pirqVectors(guest: 1) == [MockPirqVector(guest: 1, pirq: r.value, device: Fixture.ahci, msix: false, entry: 0, tableBase: 0)])
        #expect(try f.send(xen_pci_op(command: .disableMSI, address: ahciV))?.err == 0)
        f.close()
        h.expectClean()
    }

    @Test("MSI-X tables are prepared at claim (only functions with MSI-X) and released with the function")
    func preparedAtClaim() throws {
        let h = try Harness()
        try h.claim(Fixture.nvme, Fixture.virtioNet, Fixture.e1000, Fixture.ahci)
        #expect(h.hv.preparedMSIXDevices == [Fixture.virtioNet, Fixture.nvme])
        try h.back.release(Fixture.nvme)
        #expect(h.hv.preparedMSIXDevices == [Fixture.virtioNet])
        h.shutdown()
        #expect(h.hv.preparedMSIXDevices.isEmpty, "released at stop")
        #expect(h.hv.leaks().isEmpty, "\(h.hv.leaks())")
    }

    @Test("a read-only function (a host driver owns it) is never prepared")
    func readOnlyNotPrepared() throws {
        var o = PCIBack.Options()
        o.allowHostDriverReadOnly = true
        let h = try Harness(options: o)
        try h.claim(Fixture.rootPort) // pcieport bound: read-only; it has no MSI-X either
        let root = TempTree()
        try root.copy(Fixture.virtioNet, driver: "virtio-pci")
        _ = try h.back.claim(SysfsPCIDevice(root: root.path, address: Fixture.virtioNet, inMemory: true))
        #expect(h.hv.preparedMSIXDevices.isEmpty)
        h.shutdown()
        #expect(h.hv.leaks().isEmpty, "\(h.hv.leaks())")
    }

    @Test("a failed prepare at claim is reported and retried when the guest enables MSI-X")
    func prepareRetried() throws {
        let h = try Harness()
        h.hv.faults.fail(.msixPrepare, errno: ENXIO)
        try h.claim(Fixture.nvme)
        #expect(h.hv.preparedMSIXDevices.isEmpty)
        // Reported by the claim's background work, which may end after claim() returns.
        #expect(eventually("the failed prepare reported") {
            h.events.contains { if case .error(_, let m) = $0 { return m.contains("prepare MSI-X") } else { return false } }
        })
        let f = try h.connectGuest(Fixture.nvme)
        #expect(try f.send(msixOp(v00, entries: [0, 1]))?.err == 0)
        #expect(h.hv.preparedMSIXDevices == [Fixture.nvme])
        f.close()
        h.expectClean()
    }

    @Test("disable and enable again and again (driver unbind/bind, rmmod/modprobe): no pirq left, entries as asked each time")
    func reenable() throws {
        let (h, f) = try connected([Fixture.nvme, Fixture.ahci])
        let ahciV = PCIAddress(bus: 0, device: 1, function: 2)
        for round in 0..<25 {
            let entries = (0..<UInt16(1 + round % 5)).map { ($0 * 7 + UInt16(round)) % 63 }
            #expect(try f.send(msixOp(v00, entries: entries))?.err == 0, "round \(round)")
            #expect(h.hv.pirqVectors(guest: 1).map(\.entry).sorted() == entries.sorted(), "round \(round)")
            #expect(try f.send(xen_pci_op(command: .enableMSI, address: ahciV))?.err == 0)
            #expect(h.hv.pirqVectors(guest: 1).count == entries.count + 1)
            #expect(try f.send(xen_pci_op(command: .disableMSIX, address: v00))?.err == 0)
            #expect(try f.send(xen_pci_op(command: .disableMSI, address: ahciV))?.err == 0)
            #expect(h.hv.pirqVectors().isEmpty, "round \(round)")
        }
        #expect(h.hv.preparedMSIXDevices == [Fixture.nvme], "prepared once, for the function's whole stay")
        f.close()
        h.expectClean()
    }

    @Test("Linux pcifront's MSI-X teardown (disable_msi while MSI-X is on) frees the vectors, so the driver can ask again (nvme probe, rebind)")
    func pcifrontTeardown() throws {
        let (h, f) = try connected([Fixture.nvme])
        #expect(try f.send(msixOp(v00, entries: [0]))?.err == 0)           // nvme: one vector for the admin queue
        let off = try #require(try f.send(xen_pci_op(command: .disableMSI, address: v00)))
        let irq = UInt32(try h.device(Fixture.nvme).irq)
        #expect(off.err == 0 && off.value == irq, "answers the INTx irq")
        #expect(h.hv.pirqVectors().isEmpty)
        #expect(try h.device(Fixture.nvme).readConfig(0x42, 2) & 0x8000 == 0, "MSI-X off in hardware")
        #expect(try f.send(msixOp(v00, entries: [0, 1, 2]))?.err == 0)     // then one per queue
        #expect(h.hv.pirqVectors(guest: 1).map(\.entry) == [0, 1, 2])
        f.close()
        h.expectClean()
    }

    @Test("pirqs and the prepared table go when the guest dies and when the backend stops")
    func guestDeath() throws {
        let (h, f) = try connected([Fixture.nvme])
        #expect(try f.send(msixOp(v00, entries: [5, 6]))?.err == 0)
        h.hv.destroyDomain(1)
        #expect(eventually("the dead guest's device is released") { h.back.listing().first?.guest == nil })
        #expect(h.hv.pirqVectors().isEmpty)
        f.close()
        h.shutdown()
        #expect(h.hv.preparedMSIXDevices.isEmpty)
        #expect(h.hv.leaks().isEmpty, "\(h.hv.leaks())")
    }

    @Test("a table outside its BAR, or in an I/O or unassigned BAR: refused with the reason, nothing mapped")
    func badTable() throws {
        var cfg = [UInt8](repeating: 0, count: 256)
        cfg[0] = 0x34; cfg[1] = 0x12; cfg[2] = 0x78; cfg[3] = 0x56
        cfg[4] = 0x02                       // memory decode on
        cfg[6] = 0x10                       // capability list
        cfg[0x34] = 0x40
        cfg[0x40] = 0x11; cfg[0x42] = 0x0F // MSI-X, 16 entries
        let bars = [PCIResource(start: 0xfe00_0000, end: 0xfe00_0fff, flags: 0x200),
                    PCIResource(start: 0xc000, end: 0xc01f, flags: 0x101)]
        for (reg, why) in [(UInt32(0x0000_0f80), "overruns BAR0"), (1, "BAR1"), (2, "BAR2")] {
            var c = cfg
            for i in 0..<4 { c[0x44 + i] = UInt8(truncatingIfNeeded: reg >> (8 * UInt32(i))) }
            let h = try Harness()
            let dev = MemoryPCIDevice(address: Fixture.nvme, config: c, resources: bars, irq: 11)
            _ = try h.back.claim(dev)
            let f = try h.connectGuest(Fixture.nvme)
            #expect(try f.send(msixOp(v00, entries: [0]))?.err == PCIOpError.opFailed.rawValue)
            #expect(eventually("the reason '\(why)' is reported") { h.events.contains { if case .error(_, let m) = $0 { return m.contains(why) } else { return false } } })
            #expect(h.hv.pirqVectors().isEmpty)
            f.close()
            h.expectClean()
        }
    }

    // MARK: SR-IOV virtual functions

    /// A VF as hardware presents it: BAR registers read 0, the memory-decode
    /// bit is hard-wired to 0; its BARs exist only in the host's resources.
    final class VirtualFunction: PCIDeviceAccess {
        let inner: MemoryPCIDevice
        let physicalFunction: PCIDeviceAccess?
        init(_ inner: MemoryPCIDevice, pf: PCIDeviceAccess) { self.inner = inner; physicalFunction = pf }
        var address: PCIAddress { inner.address }
        var configSize: Int { inner.configSize }
        var resources: [PCIResource] { inner.resources }
        var irq: Int { 0 }
        var driver: String? { nil }
        var accessCount: Int { inner.accessCount }
        func reset() throws { try inner.reset() }
        func readConfig(_ offset: Int, _ size: Int) throws -> UInt32 {
            let v = try inner.readConfig(offset, size)
            if (PCIReg.bar0..<PCIReg.bar0 + 24).contains(offset) { return 0 }
            if offset == PCIReg.command { return v & ~UInt32(PCICommand.memory | PCICommand.io) }
            return v
        }
        func writeConfig(_ offset: Int, _ size: Int, _ value: UInt32) throws {
            if (PCIReg.bar0..<PCIReg.bar0 + 24).contains(offset) { return }
            try inner.writeConfig(offset, size, offset == PCIReg.command ? value & ~UInt32(PCICommand.memory | PCICommand.io) : value)
        }
    }

    /// A VF of a NIC: a 64-bit prefetchable BAR0 (16 KiB) above 4 GiB and
    /// BAR3 (16 KiB) holding the MSI-X table at 0 (3 entries).
    static func vf(pf: PCIDeviceAccess) -> VirtualFunction {
        var c = [UInt8](repeating: 0, count: 256)
        c[0] = 0x86; c[1] = 0x80; c[2] = 0xCA; c[3] = 0x10
        c[6] = 0x10
        c[0x0B] = 0x02
        c[0x34] = 0x70
        c[0x70] = 0x11; c[0x72] = 0x02     // MSI-X, 3 entries
        c[0x74] = 0x03                      // table: BAR3, offset 0
        c[0x78] = 0x03; c[0x79] = 0x20      // PBA: BAR3, offset 0x2000
        let res = [PCIResource(start: 0x8_0000_0000, end: 0x8_0000_3fff, flags: 0x0014_220c),
                   PCIResource(start: 0, end: 0, flags: 0), PCIResource(start: 0, end: 0, flags: 0),
                   PCIResource(start: 0x8_0001_0000, end: 0x8_0001_3fff, flags: 0x0014_220c)]
        return VirtualFunction(MemoryPCIDevice(address: try! PCIAddress(parsing: "0000:01:10.0"), config: c, resources: res, irq: 0), pf: pf)
    }

    @Test("a VF's BARs read as its resources (start | type), sizing works; the guest's decode enable is harmless")
    func vfBARs() throws {
        let h = try Harness()
        let pf = try SysfsPCIDevice(root: fixtureRoot, address: Fixture.nvme, inMemory: true)
        let vf = Self.vf(pf: pf)
        _ = try h.back.claim(vf)
        let f = try h.connectGuest(vf.address)
        #expect(try f.read(v00, 0x10, 4) == (.success, 0x0000_000c), "BAR0 low: 64-bit prefetchable at 0x8_0000_0000")
        #expect(try f.read(v00, 0x14, 4) == (.success, 0x8), "BAR0 high")
        #expect(try f.read(v00, 0x1C, 4) == (.success, 0x0001_000c))
        #expect(try f.write(v00, 0x10, 4, 0xFFFF_FFFF) == .success)
        #expect(try f.read(v00, 0x10, 4) == (.success, 0xFFFF_C00C), "16 KiB")
        #expect(try f.write(v00, 0x10, 4, 0x0000_000c) == .success)
        #expect(try f.write(v00, 4, 2, 0x0006) == .success)
        #expect(try f.read(v00, 4, 2).1 & 0x6 == 0x6, "the guest sees the bits it set")
        f.close()
        h.expectClean()
    }

    @Test("a VF's MSI-X: allowed by its PF's memory decode (its own bit is hard-wired 0); table base = the VF's BAR start")
    func vfMSIX() throws {
        let h = try Harness()
        let pf = try SysfsPCIDevice(root: fixtureRoot, address: Fixture.nvme, inMemory: true)       // command 0x0107: memory decode on
        let vf = Self.vf(pf: pf)
        _ = try h.back.claim(vf)
        #expect(h.hv.preparedMSIXDevices == [vf.address], "prepared although the VF's own decode bit reads 0")
        let f = try h.connectGuest(vf.address)
        #expect(try f.send(msixOp(v00, entries: [2, 0]))?.err == 0)
        #expect(h.hv.pirqVectors(guest: 1).map(\.tableBase) == [0x8_0001_0000, 0x8_0001_0000])
        #expect(h.hv.pirqVectors(guest: 1).map(\.entry) == [2, 0])
        #expect(try f.send(xen_pci_op(command: .disableMSIX, address: v00))?.err == 0)
        try pf.writeConfig(4, 2, try pf.readConfig(4, 2) & ~2)  // the PF stops decoding
        #expect(try f.send(msixOp(v00, entries: [0]))?.err == PCIOpError.opFailed.rawValue, "XSA-157: decode off (the PF's)")
        f.close()
        h.expectClean()
    }
}

/// The SR-IOV fixtures (Tests/Fixtures/qemu-sriov): QEMU's NVMe PF with one VF enabled.
@Suite("pciback: a real VF (QEMU NVMe SR-IOV fixtures)", .serialized)
struct VirtualFunctionFixtureTests {
    static let root = URL(fileURLWithPath: fixtureRoot).deletingLastPathComponent().appendingPathComponent("qemu-sriov").path
    static let vf = try! PCIAddress(parsing: "0000:01:00.1")
    let g = PCIAddress(bus: 0, device: 0, function: 1) // vpci keeps the function number

    func exported() throws -> (Harness, RawFrontend, SysfsPCIDevice) {
        let h = try Harness()
        let vf = try SysfsPCIDevice(root: Self.root, address: Self.vf, inMemory: true)
        #expect(try vf.readConfig(0, 4) == 0xFFFF_FFFF, "the VF's own id registers read all ones")
        let pf = try PCIAddress(parsing: "0000:01:00.0")
        #expect(vf.isVirtualFunction && vf.physicalFunction?.address == pf)
        _ = try h.back.claim(vf)
        let f = try h.connectGuest(Self.vf)
        return (h, f, vf)
    }

    @Test("the guest sees the VF's ids and BARs as the host knows them (vendor 1b36, device 0010, BAR0 at 0xfe804000, 16 KiB)")
    func identityAndBARs() throws {
        let (h, f, _) = try exported()
        #expect(try f.read(g, 0, 4) == (.success, 0x0010_1b36))
        #expect(try f.read(g, 0x10, 4) == (.success, 0xfe80_4004), "64-bit memory BAR, from sysfs resource")
        #expect(try f.read(g, 0x14, 4) == (.success, 0))
        #expect(try f.write(g, 0x10, 4, 0xFFFF_FFFF) == .success)
        #expect(try f.read(g, 0x10, 4) == (.success, 0xFFFF_C004), "sizing: 16 KiB")
        #expect(h.back.listing().first?.vendorID == 0x1b36)
        f.close()
        h.shutdown()
        #expect(h.hv.leaks().isEmpty, "\(h.hv.leaks())")
    }

    @Test("MSI-X on the VF: gated by the PF's decode (the VF's own bit reads 0), table base = the VF's BAR0")
    func msix() throws {
        let (h, f, vf) = try exported()
        #expect(try vf.readConfig(4, 2) & 0x2 == 0, "hard-wired 0 on the VF")
        #expect(h.hv.preparedMSIXDevices == [Self.vf])
        #expect(try f.send(msixOp(g, entries: [0]))?.err == 0)
        #expect(h.hv.pirqVectors(guest: 1).map(\.tableBase) == [0xfe80_4000])
        #expect(try f.send(xen_pci_op(command: .disableMSIX, address: g))?.err == 0)
        f.close()
        h.shutdown()
        #expect(h.hv.leaks().isEmpty, "\(h.hv.leaks())")
    }
}

/// A sysfs-shaped tree of fixture copies, with a driver of our choosing.
final class TempTree {
    let path: String
    init() {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("xenpci-tree-\(UUID().uuidString)").path
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }

    func copy(_ a: PCIAddress, driver: String) throws {
        let src = fixtureRoot + "/bus/pci/devices/\(a)"
        let dst = path + "/bus/pci/devices/\(a)"
        try FileManager.default.createDirectory(atPath: path + "/bus/pci/devices", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: src, toPath: dst)
        try? FileManager.default.removeItem(atPath: dst + "/driver")
        try driver.write(toFile: dst + "/driver", atomically: true, encoding: .utf8)
    }
}
