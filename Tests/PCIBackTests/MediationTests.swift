import Foundation
import Testing
@testable import PCIBack
import XenMock
import PCIModel
import XenPCIABI

/// A fixture tree in a temporary directory: the e1000 capture with PM at
/// 0x40, VPD at 0x50 and a 64-bit maskable MSI at 0x60 added, as slot 7.
func syntheticTree() throws -> (root: String, address: PCIAddress) {
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("xenpci-synth-\(UUID().uuidString)").path
    let a = try PCIAddress(parsing: "0000:00:07.0")
    let dir = root + "/bus/pci/devices/" + a.description
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    let src = fixtureRoot + "/bus/pci/devices/" + Fixture.e1000.description
    var cs = ConfigSpace(bytes: Array(FileManager.default.contents(atPath: src + "/config")!))
    cs.write(PCIReg.status, 2, UInt32(cs.read16(PCIReg.status) | PCIStatus.capList))
    cs.write(PCIReg.capabilityPointer, 1, 0x40)
    cs.write(0x40, 2, 0x5001); cs.write(0x42, 2, 0xC803) // PM, PME from D0/D3hot/D3cold
    cs.write(0x44, 2, 0x0000)
    cs.write(0x50, 2, 0x6003); cs.write(0x52, 2, 0); cs.write(0x54, 4, 0) // VPD
    cs.write(0x60, 2, 0x0005); cs.write(0x62, 2, 0x0184) // MSI: 64-bit, per-vector mask, 4 vectors capable
    guard FileManager.default.createFile(atPath: dir + "/config", contents: Data(cs.bytes)) else {
        throw PCIBackError.badDevice("could not write the synthetic config space at \(dir)/config")
    }
    for f in ["resource", "irq", "vendor", "device", "class"] {
        try FileManager.default.copyItem(atPath: src + "/" + f, toPath: dir + "/" + f)
    }
    return (root, a)
}

/// docs/PROTOCOL.md §6, row by row: what the guest reads and what its writes do.
@Suite("pciback config space mediation (PROTOCOL §6)", .serialized)
struct MediationTests {
    struct Setup {
        let h: Harness
        let f: RawFrontend
        let dev: SysfsPCIDevice
    }

    static func setup(_ a: PCIAddress = Fixture.e1000, root: String = fixtureRoot, opts: String = Harness.defaultOpts,
                      options: PCIBack.Options = .init()) throws -> Setup {
        let h = try Harness(options: options)
        let dev = try h.device(a, root: root)
        return Setup(h: h, f: try h.export(dev, opts: opts), dev: dev)
    }

    func done(_ s: Setup) { s.f.close(); s.h.expectClean() }

    @Test("vendor/device, status, class, header type, capability pointer: writes never reach hardware")
    func readOnlyHeader() throws {
        let s = try Self.setup()
        let before = try (0..<64).map { try s.dev.readConfig($0, 1) }
        for (o, sz) in [(0, 4), (0, 2), (2, 2), (6, 2), (8, 4), (0xE, 1), (0x34, 1), (0x2C, 4), (0x3D, 1), (0xD, 1)] as [(Int32, Int32)] {
            #expect(try s.f.write(v00, o, sz, 0xA5A5_A5A5 & ConfigMediation.ones(Int(sz))) == .success)
        }
        #expect(try (0..<64).map { try s.dev.readConfig($0, 1) } == before)
        let refused = try #require(s.h.back.statistics().first).refusedWrites
        #expect(refused.contains { $0.offset == 6 && $0.size == 2 && !$0.denied }, "status write counted: \(refused)")
        #expect(!refused.contains { $0.offset == 0 }, "vendor/device writes are ignored, not counted")
        done(s)
    }

    @Test("XSA-120: command: IO/MEM enable decode, clearing both stops mastering but never clears decode")
    func commandRegister() throws {
        let s = try Self.setup()
        let hw = { UInt16(try s.dev.readConfig(4, 2)) }
        // Start from decode off in hardware, as after a reset on real devices.
        try s.dev.writeConfig(4, 2, 0)
        #expect(try s.f.write(v00, 4, 2, UInt32(PCICommand.memory | PCICommand.master)) == .success)
        #expect(try hw() & (PCICommand.memory | PCICommand.io) == PCICommand.memory | PCICommand.io, "decode for the BAR types present (mem + io)")
        #expect(try hw() & PCICommand.master != 0)
        #expect(try s.f.read(v00, 4, 2).1 == UInt32(PCICommand.memory | PCICommand.master), "the guest sees what it wrote")
        #expect(try s.f.write(v00, 4, 2, 0) == .success)
        #expect(try hw() & PCICommand.master == 0, "disable stops bus mastering")
        #expect(try hw() & PCICommand.memory != 0, "but decode stays on: the guest cannot clear it")
        #expect(try s.f.read(v00, 4, 2).1 & UInt32(PCICommand.memory) == 0, "the guest sees it off")
        // Virtual bits: PARITY, SERR, INTX_DISABLE read back, hardware unchanged.
        let v = PCICommand.parity | PCICommand.serr | PCICommand.intxDisable
        let before = try hw()
        #expect(try s.f.write(v00, 4, 2, UInt32(v)) == .success)
        #expect(try hw() & v == before & v)
        #expect(try s.f.read(v00, 4, 2).1 & UInt32(v) == UInt32(v))
        // A byte write to the high byte of command is a partial write of the field.
        #expect(try s.f.write(v00, 5, 1, 0) == .success)
        #expect(try s.f.read(v00, 4, 2).1 & UInt32(PCICommand.intxDisable) == 0)
        done(s)
    }

    @Test("cache line is written, latency ignored, BIST only START")
    func smallRegisters() throws {
        let s = try Self.setup()
        #expect(try s.f.write(v00, 0xC, 1, 0x10) == .success)
        #expect(try s.dev.readConfig(0xC, 1) == 0x10)
        let lat = try s.dev.readConfig(0xD, 1)
        #expect(try s.f.write(v00, 0xD, 1, 0x77) == .success)
        #expect(try s.dev.readConfig(0xD, 1) == lat)
        #expect(try s.f.write(v00, 0xF, 1, 0x0F) == .success)
        #expect(try s.dev.readConfig(0xF, 1) == 0, "BIST not capable: nothing written")
        done(s)
    }

    @Test("BAR sizing: all-ones reads -size|flags until another write; relocation ignored; unimplemented BARs read 0")
    func barSizing() throws {
        let s = try Self.setup(Fixture.virtioNet)
        let bar1 = try s.dev.readConfig(0x14, 4), bar4 = try s.dev.readConfig(0x20, 4), bar5 = try s.dev.readConfig(0x24, 4)
        // BAR0: I/O, 32 bytes.
        #expect(try s.f.write(v00, 0x10, 4, 0xFFFF_FFFF) == .success)
        #expect(try s.f.read(v00, 0x10, 4).1 == 0xFFFF_FFE1)
        // BAR1: 32-bit memory, 4 KiB; `value | 0xF == ~0` counts as sizing.
        #expect(try s.f.write(v00, 0x14, 4, 0xFFFF_FFF0) == .success)
        #expect(try s.f.read(v00, 0x14, 4).1 == 0xFFFF_F000)
        // BAR4/5: 64-bit prefetchable, 16 KiB.
        #expect(try s.f.write(v00, 0x20, 4, 0xFFFF_FFFF) == .success)
        #expect(try s.f.write(v00, 0x24, 4, 0xFFFF_FFFF) == .success)
        #expect(try s.f.read(v00, 0x20, 4).1 == 0xFFFF_C00C)
        #expect(try s.f.read(v00, 0x24, 4).1 == 0xFFFF_FFFF)
        // Restoring: the original value is shown again; hardware never changed.
        #expect(try s.f.write(v00, 0x14, 4, bar1) == .success)
        #expect(try s.f.read(v00, 0x14, 4).1 == bar1)
        #expect(try s.f.write(v00, 0x14, 4, 0x1234_5000) == .success) // relocation attempt
        #expect(try s.f.read(v00, 0x14, 4).1 == bar1)
        #expect(try s.dev.readConfig(0x14, 4) == bar1)
        #expect(try s.dev.readConfig(0x20, 4) == bar4 && s.dev.readConfig(0x24, 4) == bar5)
        // BAR2 is unimplemented.
        #expect(try s.f.write(v00, 0x18, 4, 0xFFFF_FFFF) == .success)
        #expect(try s.f.read(v00, 0x18, 4).1 == 0)
        #expect(try #require(s.h.back.statistics().first).refusedWrites.contains { $0.offset == 0x14 }, "relocation counted")
        done(s)
    }

    @Test("expansion ROM: sized with mask 0x7FF; the enable bit never reaches hardware")
    func romBAR() throws {
        let s = try Self.setup(Fixture.virtioNet) // 256 KiB ROM
        let hwROM = try s.dev.readConfig(0x30, 4)
        #expect(try s.f.write(v00, 0x30, 4, 0xFFFF_F800) == .success)
        #expect(try s.f.read(v00, 0x30, 4).1 == 0xFFFC_0000)
        #expect(try s.f.write(v00, 0x30, 4, hwROM | 1) == .success)
        #expect(try s.f.read(v00, 0x30, 4).1 == hwROM | 1, "the guest sees its enable bit")
        #expect(try s.dev.readConfig(0x30, 4) & 1 == 0, "hardware never gets it")
        done(s)
    }

    @Test("interrupt line is virtual (the host irq), interrupt pin from hardware, both ignore writes")
    func interruptRegisters() throws {
        let s = try Self.setup()
        try s.dev.writeConfig(0x3C, 1, 0xEE)
        #expect(try s.f.read(v00, 0x3C, 1).1 == 11)
        #expect(try s.f.write(v00, 0x3C, 2, 0x0505) == .success)
        #expect(try s.dev.readConfig(0x3C, 1) == 0xEE && s.dev.readConfig(0x3D, 1) == 1)
        done(s)
    }

    @Test("PM: PME support masked, power state changes performed, PME enable dropped")
    func powerManagement() throws {
        let t = try syntheticTree()
        let s = try Self.setup(t.address, root: t.root)
        #expect(try s.f.read(v00, 0x42, 2).1 == 0x0003)
        #expect(try s.f.write(v00, 0x44, 2, 0x0103) == .success) // D3hot + PME_EN
        #expect(try s.dev.readConfig(0x44, 2) == 0x0003)
        #expect(try s.f.write(v00, 0x44, 2, 0x0000) == .success)
        #expect(try s.dev.readConfig(0x44, 2) == 0x0000)
        done(s)
    }

    @Test("VPD writes are refused with access_denied; reads pass")
    func vpd() throws {
        let t = try syntheticTree()
        let s = try Self.setup(t.address, root: t.root)
        #expect(try s.f.read(v00, 0x50, 1).1 == 0x03)
        #expect(try s.f.write(v00, 0x52, 2, 0x8000) == .accessDenied)
        #expect(try s.f.write(v00, 0x54, 4, 1) == .accessDenied)
        #expect(try s.dev.readConfig(0x52, 2) == 0)
        #expect(try #require(s.h.back.statistics().first).refusedWrites.contains { $0.offset == 0x52 && $0.denied })
        done(s)
    }

    @Test("MSI control: only ENABLE may change (and only through the op); address/data protected even when permissive")
    func msiControl() throws {
        let t = try syntheticTree()
        let s = try Self.setup(t.address, root: t.root, opts: "msitranslate=0,power_mgmt=0,permissive=1,rdm_policy=strict")
        #expect(try s.f.write(v00, 0x62, 2, 0x01B4) == .accessDenied, "multiple message enable")
        #expect(try s.f.write(v00, 0x62, 2, 0x0185) == .success, "ENABLE alone is accepted")
        #expect(try s.dev.readConfig(0x62, 2) == 0x0184, "but does not reach hardware")
        #expect(try s.f.write(v00, 0x64, 4, 0xFEE0_0000) == .success)
        #expect(try s.dev.readConfig(0x64, 4) == 0, "message address stays protected")
        done(s)
    }

    @Test("MSI-X control: MASKALL reaches hardware; other bits are refused")
    func msixControl() throws {
        let s = try Self.setup(Fixture.virtioNet)
        let ctrl = UInt32(try s.dev.readConfig(0x9A, 2))
        #expect(try s.f.write(v00, 0x9A, 2, ctrl | 0x4000) == .success)
        #expect(try s.dev.readConfig(0x9A, 2) & 0x4000 != 0)
        #expect(try s.f.write(v00, 0x9A, 2, ctrl ^ 0x0001) == .accessDenied)
        let table = try s.dev.readConfig(0x9C, 4)
        #expect(try s.f.write(v00, 0x9C, 4, table ^ 0x1000) == .success)
        #expect(try s.dev.readConfig(0x9C, 4) == table, "the table offset is protected")
        #expect(try #require(s.h.back.statistics().first).refusedWrites.contains { $0.offset == 0x9A && $0.denied })
        done(s)
    }

    @Test("permissive: unhandled registers become writable; BARs, ROM and handled fields stay protected")
    func permissive() throws {
        let on = "msitranslate=0,power_mgmt=0,permissive=1,rdm_policy=strict"
        let s = try Self.setup(Fixture.nvme, opts: on, options: { var o = PCIBack.Options(); o.allowHostDriverReadOnly = true; return o }())
        let devctl = 0x80 + 8 // PCIe device control
        #expect(try s.f.write(v00, Int32(devctl), 2, 0x5F1F) == .success)
        #expect(try s.dev.readConfig(devctl, 2) == 0x5F1F)
        let bar0 = try s.dev.readConfig(0x10, 4)
        #expect(try s.f.write(v00, 0x10, 4, 0xDEAD_0000) == .success)
        #expect(try s.dev.readConfig(0x10, 4) == bar0)
        #expect(try s.f.write(v00, 0x100, 4, 0) == .success)
        #expect(try s.dev.readConfig(0x100, 4) != 0, "extended capability headers stay protected")
        done(s)
    }

    @Test("not permissive: extended space and PCIe registers read through, writes dropped and counted with a quirk hint")
    func dropsAreCounted() throws {
        let s = try Self.setup(Fixture.nvme, options: { var o = PCIBack.Options(); o.allowHostDriverReadOnly = true; return o }())
        let devctl = 0x80 + 8
        let before = try s.dev.readConfig(devctl, 2)
        #expect(try s.f.read(v00, 0x100, 4).1 == (try s.dev.readConfig(0x100, 4)))
        #expect(try s.f.write(v00, Int32(devctl), 2, 0x1234) == .success)
        #expect(try s.f.write(v00, Int32(devctl), 2, 0x1234) == .success)
        #expect(try s.dev.readConfig(devctl, 2) == before)
        let stats = try #require(s.h.back.statistics().first)
        let r = try #require(stats.refusedWrites.first { $0.offset == devctl })
        #expect(r.count == 2 && !r.denied)
        #expect(r.quirk == "0000:01:00.0-0x088:2:0xffff")
        done(s)
    }

    @Test("quirks: the mask is enforced, a quirk cannot cover an emulated register, and it goes with the guest")
    func quirks() throws {
        let s = try Self.setup(Fixture.nvme, options: { var o = PCIBack.Options(); o.allowHostDriverReadOnly = true; return o }())
        let devctl = 0x88
        let before = try s.dev.readConfig(devctl, 2)
        try s.h.back.addQuirk(try PCIQuirk(parsing: "01:00.0-0x88:2:0x00f0"))
        #expect(try s.f.write(v00, Int32(devctl), 2, 0xFFFF) == .success)
        #expect(try s.dev.readConfig(devctl, 2) == before | 0x00F0, "only the mask bits were written")
        #expect(throws: PCIBackError.self) { try s.h.back.addQuirk(try PCIQuirk(parsing: "0000:01:00.0-0x10:4:0xffffffff")) }
        #expect(throws: PCIBackError.self) { try PCIQuirk(parsing: "0000:01:00.0-0x89:2:0xffff") }
        #expect(throws: PCIBackError.self) { try PCIQuirk(parsing: "0000:01:00.0-0x88:2:0x1ffff") }
        try s.h.hotRemove(1, index: 0)
        try s.f.setState(.reconfiguring)
        #expect(s.h.waitBackend(1, .reconfigured))
        let st = try #require(s.h.back.statistics().first)
        #expect(st.quirks.isEmpty && !st.permissive, "quirks and permissive are cleared when the device leaves")
        done(s)
    }

    @Test("a device bound to a host driver is exported read-only: every write refused, never reset")
    func hostDriverReadOnly() throws {
        var o = PCIBack.Options()
        #expect(throws: PCIBackError.self) { try Harness(options: o, start: false).claim(Fixture.rootPort) }
        o.allowHostDriverReadOnly = true
        o.topology = .passthrough
        let s = try Self.setup(Fixture.rootPort, options: o)
        #expect(try s.f.write(Fixture.rootPort, 0xC, 1, 0x10) == .accessDenied)
        #expect(try s.f.read(Fixture.rootPort, 0, 4).0 == .success)
        #expect(s.dev.resetCount == 0)
        #expect(s.h.back.listing().first?.text.contains("read-only: host driver 'pcieport'") == true)
        s.f.close()
        s.h.shutdown()
        #expect(s.h.hv.leaks().isEmpty)
        #expect(s.dev.resetCount == 0, "a device the host uses is never reset")
    }

    @Test("XSA-302/306: reset: golden state saved at claim and restored at release; bus mastering off")
    func goldenRestore() throws {
        let s = try Self.setup(Fixture.e1000, opts: "permissive=1")
        try s.dev.writeConfig(4, 2, 0x0007)
        #expect(try s.f.write(v00, 0x40, 4, 0x1234_5678) == .success) // permissive: reaches hw
        #expect(try s.dev.readConfig(0x40, 4) == 0x1234_5678)
        try s.h.hotRemove(1, index: 0)
        try s.f.setState(.reconfiguring)
        #expect(s.h.waitBackend(1, .reconfigured))
        let golden = try SysfsPCIDevice(root: fixtureRoot, address: Fixture.e1000, inMemory: true)
        #expect(try s.dev.readConfig(0x40, 4) == golden.readConfig(0x40, 4))
        #expect(try s.dev.readConfig(0x10, 4) == golden.readConfig(0x10, 4))
        #expect(try s.dev.readConfig(4, 2) & UInt32(PCICommand.master) == 0)
        done(s)
    }
}
