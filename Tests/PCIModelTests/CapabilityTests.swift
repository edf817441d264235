import Testing
@testable import PCIModel

@Suite("Capability walks")
struct CapabilityTests {
    static func space(_ build: (inout ConfigSpace) -> Void) -> ConfigSpace {
        var c = ConfigSpace(size: 4096)
        c.write(PCIReg.status, 2, UInt32(PCIStatus.capList))
        build(&c)
        return c
    }

    @Test("standard and extended lists are walked in order")
    func walk() {
        let c = Self.space { c in
            c.write(0x34, 1, 0x40)
            c.write(0x40, 2, 0x5001) // PM -> 0x50
            c.write(0x50, 2, 0x7005) // MSI -> 0x70
            c.write(0x70, 2, 0x0011) // MSI-X, end
            c.write(0x100, 4, 0x1401_0001) // AER v1 -> 0x140
            c.write(0x140, 4, 0x0001_0010) // SR-IOV, end
        }
        #expect(c.capabilities.map(\.id) == [1, 5, 0x11])
        #expect(c.capabilities.map(\.offset) == [0x40, 0x50, 0x70])
        #expect(c.extendedCapabilities.map(\.id) == [1, 0x10])
        #expect(c.extendedCapability(.sriov)?.offset == 0x140)
        #expect(c.capability(.msix)?.name == "MSI-X")
    }

    @Test("hostile lists end: loops, pointers into the header, 0xFF ids, no cap-list bit")
    func hostile() {
        let loop = Self.space { c in
            c.write(0x34, 1, 0x40); c.write(0x40, 2, 0x4001) // points at itself
            c.write(0x100, 4, 0x1000_0001) // extended loop
        }
        #expect(loop.capabilities.count == 1)
        #expect(loop.extendedCapabilities.count == 1)
        let intoHeader = Self.space { c in c.write(0x34, 1, 0x10) }
        #expect(intoHeader.capabilities.isEmpty)
        var noList = Self.space { c in c.write(0x34, 1, 0x40); c.write(0x40, 2, 0x0001) }
        noList.write(PCIReg.status, 2, 0)
        #expect(noList.capabilities.isEmpty)
        let legacy = ConfigSpace(size: 256)
        #expect(legacy.extendedCapabilities.isEmpty)
        #expect(legacy.read(0x100, 4) == 0xFFFF_FFFF, "beyond the end reads as all ones")
    }

    @Test("BAR flags decode I/O, 32/64-bit and prefetchable memory")
    func bars() {
        #expect(BARFlags(raw: 0xC001).isIO)
        #expect(BARFlags(raw: 0xFEB0_000C).is64Bit && BARFlags(raw: 0xFEB0_000C).prefetchable)
        #expect(!BARFlags(raw: 0xFEB0_0000).is64Bit)
        #expect(BARFlags(raw: 0xC001).mask == 3 && BARFlags(raw: 0).mask == 0xF)
    }
}
