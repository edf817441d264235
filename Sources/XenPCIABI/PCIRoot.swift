import PCIModel

/// A PCI root (segment and bus) as `root-N` spells it: `DDDD:BB`.
public struct PCIRoot: Hashable, Comparable, CustomStringConvertible, Sendable {
    public var segment: UInt16
    public var bus: UInt8
    public init(segment: UInt16, bus: UInt8) { self.segment = segment; self.bus = bus }
    public var description: String { hex(segment, 4) + ":" + hex(bus, 2) }
    public static func < (a: PCIRoot, b: PCIRoot) -> Bool { (a.segment, a.bus) < (b.segment, b.bus) }

    /// Strict parse of `DDDD:BB` (hex); nil for anything else.
    public init?(xenstore text: String) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, (1...4).contains(parts[0].count), (1...2).contains(parts[1].count),
              let s = parseASCIIHex(parts[0]), let b = parseASCIIHex(parts[1]) else { return nil }
        self.init(segment: UInt16(s), bus: UInt8(b))
    }
}
