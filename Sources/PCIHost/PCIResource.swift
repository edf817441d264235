/// One line of Linux sysfs `resource`: start, end (inclusive), IORESOURCE
/// flags. The backend (BAR values, MSI-X tables) and the toolstack (I/O
/// port and memory permissions) read the file through this one parser.
public struct PCIResource: Equatable, Sendable {
    public var start: UInt64
    public var end: UInt64
    public var flags: UInt64
    /// 0 for an unused entry (all zero).
    public var size: UInt64 { end >= start && (start != 0 || end != 0) ? end - start + 1 : 0 }
    public var isIO: Bool { flags & 0x100 != 0 }     // IORESOURCE_IO
    public var isMemory: Bool { flags & 0x200 != 0 } // IORESOURCE_MEM
    public var isPrefetch: Bool { flags & 0x2000 != 0 }
    public var is64Bit: Bool { flags & 0x0010_0000 != 0 } // IORESOURCE_MEM_64

    public init(start: UInt64, end: UInt64, flags: UInt64) { self.start = start; self.end = end; self.flags = flags }

    /// Every line of `resource` text (BARs 0-5, the ROM, then bridge windows
    /// or SR-IOV BARs); a malformed line is an error naming it.
    public static func parse(_ text: String) throws -> [PCIResource] {
        try text.split(separator: "\n").enumerated().map { n, line in
            let f = line.split(separator: " ").map { UInt64($0.hasPrefix("0x") ? $0.dropFirst(2) : $0, radix: 16) }
            guard f.count == 3, let s = f[0], let e = f[1], let fl = f[2] else {
                throw PCIResourceError(line: n + 1, text: String(line))
            }
            return PCIResource(start: s, end: e, flags: fl)
        }
    }
}

public struct PCIResourceError: Error, CustomStringConvertible, Sendable {
    public var line: Int
    public var text: String
    public var description: String { "line \(line) '\(text)' is not 'start end flags'" }
}
