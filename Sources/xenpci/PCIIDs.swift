import Foundation

/// Names from the pci.ids database (the one pciutils reads), when present:
/// vendors, devices, subsystems, classes, subclasses and programming
/// interfaces. Without it every name falls back to numbers, as lspci does.
final class PCIIDs: @unchecked Sendable {
    private var vendors: [UInt16: String] = [:]
    private var devices: [UInt32: String] = [:]
    private var subsystems: [UInt64: String] = [:]
    private var classes: [UInt8: String] = [:]
    private var subclasses: [UInt16: String] = [:]
    private var progIfs: [UInt32: String] = [:]

    static let searchPath = ["/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids", "/usr/share/pci.ids", "/usr/local/share/pci.ids"]

    /// `$PCI_IDS` (as in pciutils' `-i`), else the usual places.
    static let shared: PCIIDs? = {
        let env = ProcessInfo.processInfo.environment["PCI_IDS"]
        for p in (env.map { [$0] } ?? searchPath) {
            // pci.ids is UTF-8; older copies are Latin-1.
            if let text = (try? String(contentsOfFile: p, encoding: .utf8)) ?? (try? String(contentsOfFile: p, encoding: .isoLatin1)) {
                return PCIIDs(parsing: text)
            }
        }
        return nil
    }()

    init(parsing text: String) {
        var vendor: UInt16?, device: UInt16?, cls: UInt8?, sub: UInt8?
        var inClasses = false
        for raw in text.split(separator: "\n", omittingEmptySubsequences: true) {
            guard let first = raw.first, first != "#" else { continue }
            let tabs = raw.prefix(while: { $0 == "\t" }).count
            let line = raw.dropFirst(tabs)
            if tabs == 0 {
                if line.hasPrefix("C ") {
                    inClasses = true
                    let (id, name) = Self.split(line.dropFirst(2))
                    cls = UInt8(id, radix: 16)
                    if let c = cls { classes[c] = name }
                    continue
                }
                inClasses = false
                let (id, name) = Self.split(line)
                vendor = UInt16(id, radix: 16)
                device = nil
                if let v = vendor, id.count == 4 { vendors[v] = name } else { vendor = nil }
                continue
            }
            let (id, name) = Self.split(line)
            if inClasses, let c = cls {
                if tabs == 1 { sub = UInt8(id, radix: 16); if let s = sub { subclasses[UInt16(c) << 8 | UInt16(s)] = name } }
                else if tabs == 2, let s = sub, let p = UInt8(id, radix: 16) { progIfs[UInt32(c) << 16 | UInt32(s) << 8 | UInt32(p)] = name }
            } else if let v = vendor {
                if tabs == 1 { device = UInt16(id, radix: 16); if let d = device { devices[UInt32(v) << 16 | UInt32(d)] = name } }
                else if tabs == 2, let d = device {
                    let ids = id.split(separator: " ")
                    if ids.count == 2, let sv = UInt16(ids[0], radix: 16), let sd = UInt16(ids[1], radix: 16) {
                        subsystems[UInt64(v) << 48 | UInt64(d) << 32 | UInt64(sv) << 16 | UInt64(sd)] = name
                    }
                }
            }
        }
    }

    /// "id  name": the name follows the first run of two spaces.
    private static func split(_ s: Substring) -> (Substring, String) {
        guard let r = s.range(of: "  ") else { return (s, "") }
        return (s[..<r.lowerBound], String(s[r.upperBound...]))
    }

    func vendorName(_ v: UInt16) -> String? { vendors[v] }
    func deviceName(_ v: UInt16, _ d: UInt16) -> String? { devices[UInt32(v) << 16 | UInt32(d)] }
    func className(_ c: UInt8) -> String? { classes[c] }
    func subclassName(_ c: UInt8, _ s: UInt8) -> String? { subclasses[UInt16(c) << 8 | UInt16(s)] }
    func progIfName(_ c: UInt8, _ s: UInt8, _ p: UInt8) -> String? { progIfs[UInt32(c) << 16 | UInt32(s) << 8 | UInt32(p)] }
    func subsystemName(_ v: UInt16, _ d: UInt16, _ sv: UInt16, _ sd: UInt16) -> String? {
        subsystems[UInt64(v) << 48 | UInt64(d) << 32 | UInt64(sv) << 16 | UInt64(sd)]
    }
}
