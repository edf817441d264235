import Foundation
import Testing
@testable import PCIBack
import XenMock
import PCIModel
import PCIHost
import XenPCIABI

/// The synthetic function of `syntheticTree` (PM at 0x40, VPD at 0x50) with
/// what real hardware does and the in-memory copies do not: leaving D3hot
/// for D0 without No_Soft_Reset puts the header at power-on values;
/// PME_Status is write-1-to-clear; a VPD address write with F=0 fetches
/// four bytes into the data register and sets F; there is no reset method
/// (reset changes nothing, as on a host without the sysfs `reset` file).
/// Every write that reaches it is recorded.
final class ModelDevice: PCIDeviceAccess, @unchecked Sendable {
    static let pm = 0x40, vpd = 0x50
    let mem: MemoryPCIDevice
    let initial: ConfigSpace
    let vpdBytes: [UInt8]
    private let lock = NSLock()
    private var log: [(offset: Int, size: Int, value: UInt32)] = []

    init(pmc: UInt16 = 0xC803, pmcsr: UInt16 = 0, vpd: [UInt8] = []) throws {
        let t = try syntheticTree()
        defer { try? FileManager.default.removeItem(atPath: t.root) }
        let src = try SysfsPCIDevice(root: t.root, address: t.address, inMemory: true)
        var cs = ConfigSpace(size: src.configSize)
        for o in stride(from: 0, to: src.configSize, by: 4) { cs.write(o, 4, try src.readConfig(o, 4)) }
        cs.write(Self.pm + PCICapReg.pmCapabilities, 2, UInt32(pmc))
        cs.write(Self.pm + PCICapReg.pmControl, 2, UInt32(pmcsr))
        initial = cs
        vpdBytes = vpd
        mem = MemoryPCIDevice(address: t.address, config: cs.bytes, resources: src.resources, irq: src.irq)
    }

    var address: PCIAddress { mem.address }
    var configSize: Int { mem.configSize }
    var resources: [PCIResource] { mem.resources }
    var irq: Int { mem.irq }
    var driver: String? { nil }
    var accessCount: Int { mem.accessCount }
    var writes: [(offset: Int, size: Int, value: UInt32)] { lock.lock(); defer { lock.unlock() }; return log }

    func readConfig(_ offset: Int, _ size: Int) throws -> UInt32 { try mem.readConfig(offset, size) }

    func hw16(_ offset: Int) throws -> UInt16 { UInt16(try mem.readConfig(offset, 2)) }

    func writeConfig(_ offset: Int, _ size: Int, _ value: UInt32) throws {
        lock.lock(); log.append((offset, size, value)); lock.unlock()
        let pmcsr = Self.pm + PCICapReg.pmControl
        let old = try hw16(pmcsr)
        try mem.writeConfig(offset, size, value)
        if offset <= pmcsr + 1 && offset + size > pmcsr {
            // PME_Status: a 1 written to it clears it; anything else keeps it.
            let clears = offset + size > pmcsr + 1 && (value >> (8 * UInt32(pmcsr + 1 - offset))) & 0x80 != 0
            let new = try hw16(pmcsr) & ~0x8000 | (clears ? 0 : old & 0x8000)
            if old & 3 == 3 && new & 3 == 0 && old & 0x8 == 0 {
                for o in stride(from: PCIReg.bar0, to: PCIReg.cardbusCIS, by: 4) { try mem.writeConfig(o, 4, 0) }
                try mem.writeConfig(PCIReg.romAddress, 4, 0)
                try mem.writeConfig(PCIReg.command, 2, 0)
                try mem.writeConfig(PCIReg.cacheLineSize, 2, 0) // and the latency timer
                try mem.writeConfig(PCIReg.interruptLine, 1, 0)
            }
            try mem.writeConfig(pmcsr, 2, UInt32(new))
        }
        if offset == Self.vpd + 2 && size == 2 && value & 0x8000 == 0 {
            let a = Int(value & 0x7FFC)
            let word = (0..<4).reduce(UInt32(0)) { $0 | UInt32(a + $1 < vpdBytes.count ? vpdBytes[a + $1] : 0xFF) << (8 * UInt32($1)) }
            try mem.writeConfig(Self.vpd + 4, 4, word)
            try mem.writeConfig(Self.vpd + 2, 2, value | 0x8000)
        }
    }

    func reset() throws {}
}

/// Issue 12: power states and VPD as Linux's xen-pciback offers them, with
/// the header of a function that leaves D3hot restored.
@Suite("pciback power management and VPD (issue 12)", .serialized)
struct PowerVPDTests {
    static let pmcsr: Int32 = 0x44

    func setup(_ dev: ModelDevice) throws -> (Harness, RawFrontend) {
        let h = try Harness()
        return (h, try h.export(dev))
    }

    func expectHeaderRestored(_ dev: ModelDevice, sourceLocation: SourceLocation = #_sourceLocation) throws {
        for o in stride(from: PCIReg.bar0, to: PCIReg.cardbusCIS, by: 4) {
            #expect(try dev.readConfig(o, 4) == dev.initial.read32(o), "BAR at 0x\(String(o, radix: 16))", sourceLocation: sourceLocation)
        }
        #expect(try dev.readConfig(PCIReg.romAddress, 4) == dev.initial.read32(PCIReg.romAddress) & ~1, sourceLocation: sourceLocation)
        #expect(try dev.readConfig(PCIReg.interruptLine, 1) == UInt32(dev.initial.read8(PCIReg.interruptLine)), sourceLocation: sourceLocation)
    }

    @Test("D3hot -> D0 without No_Soft_Reset: BARs, ROM, cache line and command written back, after 10 ms")
    func d3hotToD0RestoresHeader() throws {
        let dev = try ModelDevice()
        let (h, f) = try setup(dev)
        #expect(try f.write(v00, 4, 2, UInt32(PCICommand.memory | PCICommand.master)) == .success)
        #expect(try f.write(v00, 0xC, 1, 0x10) == .success)
        let enabled = try dev.hw16(PCIReg.command)
        #expect(enabled & (PCICommand.io | PCICommand.memory | PCICommand.master) == PCICommand.io | PCICommand.memory | PCICommand.master)
        #expect(try f.write(v00, Self.pmcsr, 2, 3) == .success)
        #expect(try dev.hw16(0x44) & 3 == 3)
        let start = ContinuousClock.now
        #expect(try f.write(v00, Self.pmcsr, 2, 0) == .success)
        #expect(ContinuousClock.now - start >= .milliseconds(10), "the guest's next access waits out D3hot recovery")
        #expect(try dev.hw16(0x44) & 3 == 0)
        try expectHeaderRestored(dev)
        #expect(try dev.hw16(PCIReg.command) == enabled, "decode and bus master as before D3hot")
        #expect(try dev.readConfig(0xC, 1) == 0x10, "the guest's cache line size")
        #expect(try f.read(v00, 4, 2).1 == UInt32(PCICommand.memory | PCICommand.master))
        #expect(try f.read(v00, 0x10, 4).1 == dev.initial.read32(0x10))
        #expect(try f.read(v00, 0x30, 4).1 == dev.initial.read32(0x30))
        #expect(try f.read(v00, 0x3C, 1).1 == 11)
        f.close(); h.expectClean()
    }

    @Test("power states: only those PMC lists, D0 or deeper; others and PME_En dropped and counted")
    func powerStatesFollowPMC() throws {
        let dev = try ModelDevice(pmc: 0xC803 | PCICapReg.pmCapD1) // D1, not D2
        let (h, f) = try setup(dev)
        let state = { try dev.hw16(0x44) & 3 }
        #expect(try f.write(v00, Self.pmcsr, 2, 2) == .success)
        #expect(try state() == 0, "D2 is not supported")
        #expect(try f.write(v00, Self.pmcsr, 1, 1) == .success)
        #expect(try state() == 1, "D1 is")
        #expect(try f.write(v00, Self.pmcsr, 2, 3) == .success)
        #expect(try state() == 3, "D1 -> D3hot goes deeper")
        #expect(try f.write(v00, Self.pmcsr, 2, 1) == .success)
        #expect(try state() == 3, "D3hot -> D1 is not a transition (D0 first)")
        #expect(try f.write(v00, Self.pmcsr, 2, 0x0100) == .success)
        #expect(try dev.hw16(0x44) == 0, "D0, PME_En dropped")
        let r = try #require(h.back.statistics().first?.refusedWrites.filter { $0.offset == 0x44 })
        #expect(r.reduce(0) { $0 + $1.count } == 3 && r.allSatisfy { !$0.denied }, "\(r)")
        f.close(); h.expectClean()
    }

    @Test("PME_Status is cleared only by a 1 the guest writes; Data_Select reaches hardware")
    func pmeStatusAndDataSelect() throws {
        let dev = try ModelDevice()
        let (h, f) = try setup(dev)
        try dev.mem.writeConfig(0x44, 2, 0x8000) // a PME is pending
        #expect(try f.write(v00, Self.pmcsr, 1, 0) == .success)
        #expect(try dev.hw16(0x44) == 0x8000, "a write of the state byte leaves PME_Status alone")
        #expect(try f.write(v00, Self.pmcsr, 2, 0x0000) == .success)
        #expect(try dev.hw16(0x44) == 0x8000, "a 0 does not clear it")
        #expect(try f.write(v00, Self.pmcsr, 2, 0x8000 | 0x0400) == .success)
        #expect(try dev.hw16(0x44) == 0x0400, "cleared by a 1; Data_Select 2")
        #expect(h.back.statistics().first?.refusedWrites.contains { $0.offset == 0x44 } == false)
        f.close(); h.expectClean()
    }

    @Test("PME_En set at claim is off in hardware from export on, and after release")
    func pmeEnableClearedAtExport() throws {
        let dev = try ModelDevice(pmcsr: PCICapReg.pmControlPMEEnable)
        let (h, f) = try setup(dev)
        #expect(try dev.hw16(0x44) & PCICapReg.pmControlPMEEnable == 0)
        #expect(try f.read(v00, Self.pmcsr, 2).1 == 0)
        try h.hotRemove(1, index: 0)
        try f.setState(.reconfiguring)
        #expect(h.waitBackend(1, .reconfigured))
        #expect(try dev.hw16(0x44) & PCICapReg.pmControlPMEEnable == 0)
        f.close(); h.expectClean()
    }

    @Test("a function the guest leaves in D3hot is woken before its golden header is written back")
    func releaseFromD3hot() throws {
        let dev = try ModelDevice()
        let (h, f) = try setup(dev)
        #expect(try f.write(v00, 4, 2, UInt32(PCICommand.memory | PCICommand.master)) == .success)
        #expect(try f.write(v00, Self.pmcsr, 2, 3) == .success)
        try h.hotRemove(1, index: 0)
        try f.setState(.reconfiguring)
        #expect(h.waitBackend(1, .reconfigured))
        h.back.waitForResets() // the reset runs on a worker
        #expect(try dev.hw16(0x44) & 3 == 0, "back in D0, the state at claim")
        try expectHeaderRestored(dev)
        #expect(try dev.hw16(PCIReg.command) == dev.initial.read16(PCIReg.command) & ~PCICommand.master)
        f.close(); h.expectClean()
    }

    @Test("the power state saved at claim (D3hot) comes back at release, with the header intact")
    func savedPowerStateRestored() throws {
        let dev = try ModelDevice(pmcsr: 3)
        let (h, f) = try setup(dev)
        #expect(try f.read(v00, Self.pmcsr, 2).1 & 3 == 3, "the guest finds it as the host had it")
        #expect(try f.write(v00, Self.pmcsr, 2, 0) == .success)
        try expectHeaderRestored(dev)
        try h.hotRemove(1, index: 0)
        try f.setState(.reconfiguring)
        #expect(h.waitBackend(1, .reconfigured))
        #expect(try dev.hw16(0x44) & 3 == 3)
        try expectHeaderRestored(dev)
        f.close(); h.expectClean()
    }

    @Test("VPD: an address write with F=0 reaches hardware; the guest reads the bytes")
    func vpdRead() throws {
        let bytes: [UInt8] = [0x82, 0x0A, 0x00] + Array("xenpci VPD".utf8) + [0x78] // identifier string, end tag
        let dev = try ModelDevice(vpd: bytes)
        let (h, f) = try setup(dev)
        var got: [UInt8] = []
        for a in stride(from: 0, to: 16, by: 4) {
            #expect(try f.write(v00, 0x52, 2, UInt32(a)) == .success)
            let addr = try f.read(v00, 0x52, 2).1
            #expect(addr == UInt32(a) | 0x8000, "F set: the data is there")
            let data = try f.read(v00, 0x54, 4).1
            got += (0..<4).map { UInt8(truncatingIfNeeded: data >> (8 * UInt32($0))) }
        }
        #expect(Array(got.prefix(bytes.count)) == bytes)
        #expect(h.back.statistics().first?.refusedWrites.isEmpty == true)
        f.close(); h.expectClean()
    }

    @Test("VPD: F=1 address writes and data writes answer access_denied and never reach hardware")
    func vpdWriteRefused() throws {
        let dev = try ModelDevice(vpd: [1, 2, 3, 4])
        let (h, f) = try setup(dev)
        #expect(try f.write(v00, 0x54, 4, 0xDEAD_BEEF) == .accessDenied)
        #expect(try f.write(v00, 0x52, 2, 0x8000) == .accessDenied)
        #expect(try f.write(v00, 0x53, 1, 0x80) == .accessDenied)
        #expect(!dev.writes.contains { $0.offset >= 0x52 && $0.offset < 0x58 }, "\(dev.writes)")
        let r = try #require(h.back.statistics().first).refusedWrites
        #expect(r.contains { $0.offset == 0x52 && $0.denied && $0.count == 2 } && r.contains { $0.offset == 0x54 && $0.denied }, "\(r)")
        f.close(); h.expectClean()
    }
}
