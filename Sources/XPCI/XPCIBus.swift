import XenHypervisor
import PCIModel
import XenPCIABI

/// One BAR as found by sizing through the protocol.
public struct PCIBAR: Equatable, Sendable, CustomStringConvertible {
    public var index: Int
    public var base: UInt64
    public var size: UInt64
    public var isIO: Bool
    public var is64Bit: Bool
    public var prefetchable: Bool

    public init(index: Int, base: UInt64, size: UInt64, isIO: Bool, is64Bit: Bool, prefetchable: Bool) {
        self.index = index; self.base = base; self.size = size
        self.isIO = isIO; self.is64Bit = is64Bit; self.prefetchable = prefetchable
    }

    public var description: String {
        if isIO { return "I/O ports at \(hex(base, 4)) [size=\(sizeText(size))]" }
        return "Memory at \(hex(base, 8)) (\(is64Bit ? "64-bit" : "32-bit"), \(prefetchable ? "prefetchable" : "non-prefetchable")) [size=\(sizeText(size))]"
    }
}

/// The expansion ROM register, sized the same way.
public struct PCIROM: Equatable, Sendable {
    public var base: UInt32
    public var size: UInt32
    public var enabled: Bool
}

/// lspci's size spelling: 32, 4K, 16M, 2G.
func sizeText(_ s: UInt64) -> String {
    for (shift, unit) in [(30, "G"), (20, "M"), (10, "K")] where s >= 1 << shift && s % (1 << shift) == 0 {
        return "\(s >> shift)\(unit)"
    }
    return String(s)
}

/// One function on the bus, as read through the protocol.
public struct PCIFunction: Equatable, Sendable {
    public var address: PCIAddress
    /// The config space as read at scan time (256 bytes, or 4096 for PCIe
    /// functions whose extended space the backend serves), before sizing.
    public var config: ConfigSpace
    public var bars: [PCIBAR]
    public var rom: PCIROM?

    public init(address: PCIAddress, config: ConfigSpace, bars: [PCIBAR] = [], rom: PCIROM? = nil) {
        self.address = address; self.config = config; self.bars = bars; self.rom = rom
    }

    public var vendorID: UInt16 { config.vendorID }
    public var deviceID: UInt16 { config.deviceID }
    public var classCode: UInt32 { config.classCode }
    public var revision: UInt8 { config.revision }
    public var headerType: UInt8 { config.headerType }
    public var isMultiFunction: Bool { config.isMultiFunction }
    public var command: UInt16 { config.read16(PCIReg.command) }
    public var status: UInt16 { config.read16(PCIReg.status) }
    public var interruptLine: UInt8 { config.read8(PCIReg.interruptLine) }
    public var interruptPin: UInt8 { config.read8(PCIReg.interruptPin) }

    /// Subsystem ids: the header for type 0 (and 0x40 for CardBus); bridges
    /// carry them in the Subsystem capability.
    public var subsystemVendorID: UInt16 { subsystem.vendor }
    public var subsystemID: UInt16 { subsystem.device }
    var subsystem: (vendor: UInt16, device: UInt16) {
        switch headerType {
        case 0: return (config.read16(PCIReg.subsystemVendorID), config.read16(PCIReg.subsystemID))
        case 2: return (config.read16(0x40), config.read16(0x42))
        default:
            guard let c = capability(.subsystemVendor) else { return (0, 0) }
            return (config.read16(c.offset + 4), config.read16(c.offset + 6))
        }
    }

    public var capabilities: [PCICapability] { config.capabilities }
    public var extendedCapabilities: [PCICapability] { config.extendedCapabilities }
    public func capability(_ id: PCICapID) -> PCICapability? { config.capability(id) }
    public func extendedCapability(_ id: PCIExtCapID) -> PCICapability? { config.extendedCapability(id) }
}

/// The bus scan (NetBSD: xpci_attach_pci_bus handing each root to pci(4)).
extension XPCIFrontend {
    /// Every device and function of one root: 32 x 8, function 0 may be
    /// missing (pass-through exports single functions). Functions in `known`
    /// are kept as they are; new ones are read in full. A backend error on
    /// the vendor id means "not there"; a broken channel ends the scan, and
    /// so does detach (its next request fails at once).
    func scanRoot(_ root: PCIRoot, known: [PCIAddress: PCIFunction]) throws -> [PCIFunction] {
        var out: [PCIFunction] = []
        for dev in UInt8(0)..<32 {
            for fn in UInt8(0)..<8 {
                let a = PCIAddress(segment: root.segment, bus: root.bus, device: dev, function: fn)
                guard let id = try readDwordIfPresent(a, offset: PCIReg.vendorID) else { continue }
                let vendor = id & 0xFFFF
                if vendor == 0xFFFF || vendor == 0 { continue }
                if let f = known[a], UInt32(f.vendorID) == vendor { out.append(f); continue }
                locked { _ = scanning.insert(a) }
                out.append(try readFunction(a))
            }
        }
        return out
    }

    /// Reads a function's config space (extended too when it has a PCIe
    /// capability and the backend serves 0x100), sizes its BARs and ROM, and
    /// applies NetBSD's decode enabling.
    func readFunction(_ a: PCIAddress) throws -> PCIFunction {
        var config = ConfigSpace(bytes: try readDwords(a, 0..<PCIReg.legacySize))
        if config.capability(.pcie) != nil, let first = try? configRead(a, offset: PCIReg.legacySize, size: 4),
           first != 0xFFFF_FFFF {
            config.bytes += try readDwords(a, PCIReg.legacySize..<PCIReg.extendedSize)
        }
        var f = PCIFunction(address: a, config: config)
        f.bars = try sizeBARs(a, config)
        f.rom = try sizeROM(a, config)
        if options.enableDecodeOnScan {
            // Optional: a backend may refuse it (a function it exports
            // read-only); the function is still usable, so it stays on the bus.
            do { try enableDecode(&f) } catch XPCIError.backend(.accessDenied, let op, let at) {
                emit(.error(.backend(.accessDenied, op: op, address: at)))
            }
        }
        return f
    }

    func readDwords(_ a: PCIAddress, _ range: Range<Int>) throws -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(range.count)
        for off in stride(from: range.lowerBound, to: range.upperBound, by: 4) {
            let v = try readDwordIfPresent(a, offset: off) ?? 0xFFFF_FFFF
            withUnsafeBytes(of: v.littleEndian) { bytes += $0 }
        }
        return bytes
    }

    /// Writes `probe`, reads back, restores `original`.
    func probeRegister(_ a: PCIAddress, _ offset: Int, original: UInt32, probe: UInt32) throws -> UInt32 {
        try configWrite(a, offset: offset, size: 4, value: probe)
        let v = try configRead(a, offset: offset, size: 4)
        try configWrite(a, offset: offset, size: 4, value: original)
        return v
    }

    /// BAR sizing through the protocol (all ones, read back, restore).
    func sizeBARs(_ a: PCIAddress, _ config: ConfigSpace) throws -> [PCIBAR] {
        var out: [PCIBAR] = []
        var i = 0
        while i < config.barCount {
            let reg = PCIReg.bar0 + 4 * i
            let orig = config.read32(reg)
            let flags = BARFlags(raw: orig)
            let wide = flags.is64Bit && i + 1 < config.barCount
            let lo = try probeRegister(a, reg, original: orig, probe: 0xFFFF_FFFF) & ~flags.mask
            var mask = UInt64(lo)
            var base = UInt64(orig & ~flags.mask)
            if wide {
                let origHi = config.read32(reg + 4)
                mask |= UInt64(try probeRegister(a, reg + 4, original: origHi, probe: 0xFFFF_FFFF)) << 32
                base |= UInt64(origHi) << 32
            } else if flags.isIO {
                mask |= 0xFFFF_FFFF_FFFF_0000
            } else {
                mask |= 0xFFFF_FFFF_0000_0000
            }
            if lo != 0 || (wide && mask >> 32 != 0) {
                out.append(PCIBAR(index: i, base: base, size: ~mask &+ 1, isIO: flags.isIO,
                                  is64Bit: wide, prefetchable: flags.prefetchable))
            }
            i += wide ? 2 : 1
        }
        return out
    }

    func sizeROM(_ a: PCIAddress, _ config: ConfigSpace) throws -> PCIROM? {
        guard let reg = config.romOffset else { return nil }
        let orig = config.read32(reg)
        let v = try probeRegister(a, reg, original: orig, probe: 0xFFFF_F800) & 0xFFFF_F800
        guard v != 0 else { return nil }
        return PCIROM(base: orig & 0xFFFF_F800, size: ~v &+ 1, enabled: orig & 1 != 0)
    }

    /// NetBSD: a function with I/O and memory decode both off gets the ones
    /// its BARs need.
    func enableDecode(_ f: inout PCIFunction) throws {
        let cmd = f.command
        guard cmd & (PCICommand.io | PCICommand.memory) == 0, !f.bars.isEmpty else { return }
        var want = cmd
        if f.bars.contains(where: \.isIO) { want |= PCICommand.io }
        if f.bars.contains(where: { !$0.isIO }) { want |= PCICommand.memory }
        try configWrite(f.address, offset: PCIReg.command, size: 2, value: UInt32(want))
        f.config.write(PCIReg.command, 2, try configRead(f.address, offset: PCIReg.command, size: 2))
    }
}
