import Foundation
import XenHypervisor
import PCIModel

/// What the toolstack reads about a host PCI function from Linux sysfs
/// (`/sys/bus/pci/devices/<BDF>/{resource,irq,config}`). The root is a
/// parameter so tests can point it at a fixture tree.
public struct PCISysfs: Sendable {
    public var root: String
    public init(root: String = "/sys/bus/pci/devices") { self.root = root }

    /// One line of `resource`: start, end (inclusive) and IORESOURCE flags.
    public struct Resource: Equatable, Sendable {
        public var start: UInt64
        public var end: UInt64
        public var flags: UInt64
        public init(start: UInt64, end: UInt64, flags: UInt64) { self.start = start; self.end = end; self.flags = flags }
        public var size: UInt64 { end >= start ? end - start + 1 : 0 }
        /// IORESOURCE_IO (an I/O port range); otherwise memory.
        public var isIO: Bool { flags & 0x100 != 0 }
    }

    func path(_ d: PCIAddress, _ file: String) -> String { "\(root)/\(d)/\(file)" }

    /// The first seven lines of `resource`: BARs 0-5 and the ROM, as libxl
    /// reads them (unused ones are all zero).
    public func resources(_ d: PCIAddress) throws -> [Resource] {
        let p = path(d, "resource")
        guard let text = try? String(contentsOfFile: p, encoding: .utf8) else {
            throw XenError(errno == 0 ? ENOENT : errno, "read", p)
        }
        return try text.split(separator: "\n").prefix(7).map { line in
            let f = line.split(separator: " ").map { UInt64($0.hasPrefix("0x") ? $0.dropFirst(2) : $0[...], radix: 16) }
            guard f.count >= 3, let s = f[0], let e = f[1], let fl = f[2] else {
                throw XenError(EINVAL, "parse", "\(p): '\(line)'")
            }
            return Resource(start: s, end: e, flags: fl)
        }
    }

    /// The legacy interrupt (GSI) of the function; 0 when it has none.
    public func irq(_ d: PCIAddress) throws -> UInt32 {
        let p = path(d, "irq")
        guard let text = try? String(contentsOfFile: p, encoding: .utf8) else { throw XenError(ENOENT, "read", p) }
        guard let v = UInt32(text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw XenError(EINVAL, "parse", "\(p): '\(text)'")
        }
        return v
    }
}
