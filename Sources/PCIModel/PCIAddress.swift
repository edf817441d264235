import Foundation
/// A PCI function address: segment (domain), bus, device (slot), function.
public struct PCIAddress: Hashable, Comparable, CustomStringConvertible, Sendable {
    public var segment: UInt16
    public var bus: UInt8
    public var device: UInt8   // 0...31
    public var function: UInt8 // 0...7

    public init(segment: UInt16 = 0, bus: UInt8, device: UInt8, function: UInt8) {
        precondition(device < 32 && function < 8, "PCI device \(device) / function \(function) out of range")
        self.segment = segment
        self.bus = bus
        self.device = device
        self.function = function
    }

    /// From 32-bit domain, bus and devfn fields (as the PV PCI ops carry them); nil when out of range.
    public init?(domain: UInt32, bus: UInt32, devfn: UInt32) {
        guard domain <= 0xFFFF, bus <= 0xFF, devfn <= 0xFF else { return nil }
        self.init(segment: UInt16(domain), bus: UInt8(bus), device: UInt8(devfn >> 3), function: UInt8(devfn & 7))
    }

    public var devfn: UInt8 { device << 3 | function }

    /// `DDDD:BB:SS.F`, as sysfs and xenstore `dev-N` spell it.
    public var description: String { hex(segment, 4) + ":" + hex(bus, 2) + ":" + hex(device, 2) + "." + String(function, radix: 16) }

    /// `DDDD:BB:SS.FF`: Linux pciback writes `vdev-N` with a two-digit function.
    public var vdevString: String { hex(segment, 4) + ":" + hex(bus, 2) + ":" + hex(device, 2) + "." + hex(function, 2) }

    /// `BB:SS.F`, as lspci prints addresses on segment 0.
    public var shortDescription: String { hex(bus, 2) + ":" + hex(device, 2) + "." + String(function, radix: 16) }

    public static func < (a: PCIAddress, b: PCIAddress) -> Bool {
        (a.segment, a.bus, a.device, a.function) < (b.segment, b.bus, b.device, b.function)
    }

    /// Parses `DDDD:BB:SS.F`, `BB:SS.F` (segment 0) and a function of one or two
    /// hex digits. The error names what is wrong.
    public init(parsing text: String) throws {
        let t = text.trimmingCharacters(in: asciiBlanks)
        func bad(_ why: String) -> PCIAddressError { PCIAddressError(text: text, reason: why) }
        guard let dot = t.lastIndex(of: ".") else { throw bad("missing '.' before the function") }
        let fnText = t[t.index(after: dot)...]
        let parts = t[..<dot].split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2 || parts.count == 3 else { throw bad("expected [DDDD:]BB:SS.F") }
        func field(_ s: Substring, _ name: String, max: UInt32, digits: Int) throws -> UInt32 {
            guard s.utf8.count <= digits, let v = parseASCIIHex(s) else {
                throw bad("\(name) '\(s)' is not a hex number of at most \(digits) digits")
            }
            guard v <= max else { throw bad("\(name) \(s) is above \(String(max, radix: 16))") }
            return v
        }
        let seg = parts.count == 3 ? try field(parts[0], "segment", max: 0xFFFF, digits: 4) : 0
        let bus = try field(parts[parts.count - 2], "bus", max: 0xFF, digits: 2)
        let dev = try field(parts[parts.count - 1], "device", max: 31, digits: 2)
        let fn = try field(fnText, "function", max: 7, digits: 2)
        self.init(segment: UInt16(seg), bus: UInt8(bus), device: UInt8(dev), function: UInt8(fn))
    }
}

public struct PCIAddressError: Error, CustomStringConvertible, Sendable {
    public var text: String
    public var reason: String
    public var description: String { "bad PCI address '\(text)': \(reason)" }
}

/// Whether `c` is one of the ASCII hex digits 0-9, a-f, A-F. Operator and
/// guest input is parsed with this, never `Character.isHexDigit`: that also
/// accepts fullwidth digits, which `UInt32(_:radix:)` then rejects.
public func isASCIIHexDigit(_ c: Character) -> Bool {
    guard let b = c.asciiValue else { return false }
    return (48...57).contains(b) || (65...70).contains(b) || (97...102).contains(b)
}

/// `s` as unsigned hex of 1 to 8 ASCII digits: no sign, no `0x`, no other
/// script's digits (the integer initializers accept a leading `+` or `-`).
public func parseASCIIHex<S: StringProtocol>(_ s: S) -> UInt32? {
    guard !s.isEmpty, s.utf8.count <= 8 else { return nil }
    var v: UInt32 = 0
    for b in s.utf8 {
        switch b {
        case 48...57: v = v << 4 | UInt32(b - 48)
        case 65...70: v = v << 4 | UInt32(b - 55)
        case 97...102: v = v << 4 | UInt32(b - 87)
        default: return nil
        }
    }
    return v
}

/// Space and tab: what the parsers trim (not the other scripts' spaces).
public let asciiBlanks = CharacterSet(charactersIn: " \t")

/// Zero-padded lower-case hex.
public func hex<T: BinaryInteger>(_ v: T, _ width: Int) -> String {
    let s = String(v, radix: 16)
    return s.count >= width ? s : String(repeating: "0", count: width - s.count) + s
}
