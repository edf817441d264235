/// A function's configuration space as bytes (256 or 4096), little-endian
/// accessors, and the structure both drivers need: header type, BARs and
/// capability lists.
public struct ConfigSpace: Equatable, Sendable {
    public var bytes: [UInt8]

    public init(bytes: [UInt8]) { self.bytes = bytes }
    public init(size: Int = PCIReg.legacySize) { bytes = Array(repeating: 0, count: size) }

    public var size: Int { bytes.count }
    public var isExtended: Bool { bytes.count >= PCIReg.extendedSize }

    /// Reads 1, 2 or 4 bytes; bytes beyond the end read as 0xFF, as a
    /// master abort would.
    public func read(_ offset: Int, _ width: Int) -> UInt32 {
        if offset >= 0 && offset + width <= bytes.count {
            switch width {
            case 1: return UInt32(bytes[offset])
            case 2: return UInt32(bytes.withUnsafeBytes { UInt16(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: UInt16.self)) })
            case 4: return bytes.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: UInt32.self)) }
            default: break
            }
        }
        var v: UInt32 = 0
        for i in 0..<width {
            let o = offset + i
            let b: UInt8 = o >= 0 && o < bytes.count ? bytes[o] : 0xFF
            v |= UInt32(b) << (8 * i)
        }
        return v
    }

    public func read8(_ o: Int) -> UInt8 { UInt8(truncatingIfNeeded: read(o, 1)) }
    public func read16(_ o: Int) -> UInt16 { UInt16(truncatingIfNeeded: read(o, 2)) }
    public func read32(_ o: Int) -> UInt32 { read(o, 4) }

    public mutating func write(_ offset: Int, _ width: Int, _ value: UInt32) {
        if width == 4 && offset >= 0 && offset + 4 <= bytes.count {
            bytes.withUnsafeMutableBytes { $0.storeBytes(of: value.littleEndian, toByteOffset: offset, as: UInt32.self) }
            return
        }
        for i in 0..<width where offset + i >= 0 && offset + i < bytes.count {
            bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * i))
        }
    }

    public var vendorID: UInt16 { read16(PCIReg.vendorID) }
    public var deviceID: UInt16 { read16(PCIReg.deviceID) }
    public var classCode: UInt32 { read32(PCIReg.revision) >> 8 }
    public var revision: UInt8 { read8(PCIReg.revision) }
    /// Header layout (0 device, 1 bridge, 2 CardBus), without the multi-function bit.
    public var headerType: UInt8 { read8(PCIReg.headerType) & 0x7F }
    public var isMultiFunction: Bool { read8(PCIReg.headerType) & 0x80 != 0 }
    public var isBridge: Bool { headerType == 1 }
    public var barCount: Int { headerType == 0 ? 6 : headerType == 1 ? 2 : 0 }
    public var romOffset: Int? { headerType == 0 ? PCIReg.romAddress : headerType == 1 ? PCIReg.bridgeROMAddress : nil }

    public var capabilities: [PCICapability] { PCICapability.walk(read8: { read8($0) }, hasList: read16(PCIReg.status) & PCIStatus.capList != 0) }
    public var extendedCapabilities: [PCICapability] { isExtended ? PCICapability.walkExtended { read32($0) } : [] }

    public func capability(_ id: PCICapID) -> PCICapability? { capabilities.first { $0.id == UInt16(id.rawValue) } }
    public func extendedCapability(_ id: PCIExtCapID) -> PCICapability? { extendedCapabilities.first { $0.id == id.rawValue } }
}

/// One entry of a capability list.
public struct PCICapability: Equatable, Sendable, CustomStringConvertible {
    public var id: UInt16
    public var offset: Int
    public var extended: Bool
    public var version: UInt8 // extended capabilities only

    public init(id: UInt16, offset: Int, extended: Bool, version: UInt8 = 0) {
        self.id = id; self.offset = offset; self.extended = extended; self.version = version
    }

    public var name: String {
        if extended { return PCIExtCapID(rawValue: id)?.name ?? "Extended Capability ID \(hex(id, 2))" }
        return PCICapID(rawValue: UInt8(truncatingIfNeeded: id))?.name ?? "Capability ID \(hex(id, 2))"
    }

    public var description: String { "[\(hex(offset, 2))] \(name)" }

    /// Walks the list at 0x34 through `read8`; hostile lists (loops, pointers
    /// into the header, unaligned pointers) end the walk instead of hanging it.
    public static func walk(read8: (Int) -> UInt8, hasList: Bool = true) -> [PCICapability] {
        guard hasList else { return [] }
        var out: [PCICapability] = []
        var seen = Set<Int>()
        var p = Int(read8(PCIReg.capabilityPointer) & 0xFC)
        while p >= PCIReg.headerSize && p < PCIReg.legacySize && seen.insert(p).inserted && out.count < 48 {
            let id = read8(p)
            if id == 0xFF { break }
            out.append(PCICapability(id: UInt16(id), offset: p, extended: false))
            p = Int(read8(p + 1) & 0xFC)
        }
        return out
    }

    /// Walks the extended list from 0x100 through `read32`.
    public static func walkExtended(read32: (Int) -> UInt32) -> [PCICapability] {
        var out: [PCICapability] = []
        var seen = Set<Int>()
        var p = PCIReg.legacySize
        while p >= PCIReg.legacySize && p < PCIReg.extendedSize - 3 && seen.insert(p).inserted && out.count < 512 {
            let h = read32(p)
            if h == 0 || h == 0xFFFF_FFFF { break }
            out.append(PCICapability(id: UInt16(h & 0xFFFF), offset: p, extended: true, version: UInt8((h >> 16) & 0xF)))
            p = Int((h >> 20) & 0xFFC)
        }
        return out
    }
}

/// What a BAR register says about itself (not its size: that needs sizing).
public struct BARFlags: Equatable, Sendable {
    public var isIO: Bool
    public var is64Bit: Bool
    public var prefetchable: Bool

    public init(raw: UInt32) {
        isIO = raw & 1 != 0
        is64Bit = !isIO && (raw >> 1) & 3 == 2
        prefetchable = !isIO && raw & 8 != 0
    }

    /// The bits below the address: 0x3 for I/O, 0xF for memory.
    public var mask: UInt32 { isIO ? 0x3 : 0xF }
}
