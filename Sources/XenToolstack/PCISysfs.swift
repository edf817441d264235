import Foundation
import XenHypervisor
import PCIHost
import PCIModel

/// What the toolstack reads about a host PCI function from Linux sysfs
/// (`/sys/bus/pci/devices/<BDF>/{resource,irq,config}`). The root is a
/// parameter so tests can point it at a fixture tree.
public struct PCISysfs: Sendable {
    public var root: String
    public init(root: String = "/sys/bus/pci/devices") { self.root = root }

    func path(_ d: PCIAddress, _ file: String) -> String { "\(root)/\(d)/\(file)" }

    /// The first seven lines of `resource`: BARs 0-5 and the ROM, as libxl
    /// reads them (unused ones are all zero).
    public func resources(_ d: PCIAddress) throws -> [PCIResource] {
        let p = path(d, "resource")
        guard let text = try? String(contentsOfFile: p, encoding: .utf8) else {
            throw XenError(errno == 0 ? ENOENT : errno, "read", p)
        }
        do { return Array(try PCIResource.parse(text).prefix(7)) } catch { throw XenError(EINVAL, "parse", "\(p): \(error)") }
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
