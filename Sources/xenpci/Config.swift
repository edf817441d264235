import Foundation
import PCIBack
import XenHypervisor
import PCIModel

/// /etc/xenpci.conf: INI-style, one section per function to claim at start
/// (xenpci(8), CONFIGURATION FILE):
///
///     # comment
///     [0000:01:00.0]
///     permissive = yes
///     quirk = 0x0a0:2:0xffff
///     no-strict-reset = yes
///
/// Parsed whole before anything is claimed; the first bad line is an error
/// naming FILE:LINE.
struct DaemonConfig: Equatable {
    static let defaultPath = "/etc/xenpci.conf"
    /// EX_CONFIG
    static let errorStatus: Int32 = 78

    struct Entry: Equatable {
        var address: PCIAddress
        var line: Int
        var options = FunctionOptions()
        /// The line of each of `options.quirks`, for errors the device gives.
        var quirkLines: [Int] = []
    }

    var path: String
    var entries: [Entry] = []

    func entry(_ a: PCIAddress) -> Entry? { entries.first { $0.address == a } }

    static func load(_ path: String) throws -> DaemonConfig {
        guard let data = FileManager.default.contents(atPath: path) else {
            let why = FileManager.default.fileExists(atPath: path) ? "cannot be read" : "no such file"
            throw CLIError(message: "\(path): \(why)", status: errorStatus)
        }
        return try parse(String(decoding: data, as: UTF8.self), path: path)
    }

    static func parse(_ text: String, path: String) throws -> DaemonConfig {
        var c = DaemonConfig(path: path)
        var current: Int?     // index into entries
        var seenKeys: Set<String> = []
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            func fail(_ why: String) -> CLIError { CLIError(message: "\(path):\(n + 1): \(why)", status: errorStatus) }
            guard raw.utf8.allSatisfy({ $0 < 0x80 && ($0 >= 0x20 || $0 == 0x09 || $0 == 0x0D) }) else {
                throw fail("only printable ASCII is allowed")
            }
            var line = Substring(raw)
            if line.hasSuffix("\r") { line = line.dropLast() } // a file written on Windows
            if let h = line.firstIndex(where: { $0 == "#" || $0 == ";" }) { line = line[..<h] }
            let t = line.trimmingCharacters(in: asciiBlanks)
            if t.isEmpty { continue }
            if t.hasPrefix("[") {
                guard t.hasSuffix("]") else { throw fail("section '\(t)' has no closing ']'") }
                let name = String(t.dropFirst().dropLast()).trimmingCharacters(in: asciiBlanks)
                let a: PCIAddress
                do { a = try PCIAddress(parsing: name) } catch { throw fail("section [\(name)]: \(error)") }
                if let prev = c.entry(a) { throw fail("[\(a)] repeats the section of line \(prev.line)") }
                c.entries.append(Entry(address: a, line: n + 1))
                current = c.entries.count - 1
                seenKeys = []
                continue
            }
            guard let eq = t.firstIndex(of: "=") else { throw fail("expected 'key = value' or '[DDDD:BB:SS.F]', got '\(t)'") }
            let key = t[..<eq].trimmingCharacters(in: asciiBlanks).lowercased()
            let value = t[t.index(after: eq)...].trimmingCharacters(in: asciiBlanks)
            guard let i = current else { throw fail("'\(key)' before any [DDDD:BB:SS.F] section") }
            guard !value.isEmpty else { throw fail("'\(key)' has no value") }
            let a = c.entries[i].address
            switch key {
            case "permissive", "no-strict-reset":
                guard seenKeys.insert(key).inserted else { throw fail("'\(key)' given twice for \(a)") }
                guard let b = parseBool(value) else { throw fail("\(key) '\(value)': expected yes or no") }
                if key == "permissive" { c.entries[i].options.permissive = b } else { c.entries[i].options.noStrictReset = b }
            case "quirk":
                // REG:SIZE:MASK of the section's function, or a whole quirk line naming it.
                let q: PCIQuirk
                do { q = try PCIQuirk(parsing: value.contains("-") ? value : "\(a)-\(value)") } catch { throw fail("\(error)") }
                guard q.address == a else { throw fail("quirk '\(value)' names \(q.address), not this section's \(a)") }
                if c.entries[i].options.quirks.contains(where: { $0.offset == q.offset }) {
                    throw fail("a second quirk at register 0x\(hex(q.offset, 3)) of \(a)")
                }
                c.entries[i].options.quirks.append(q)
                c.entries[i].quirkLines.append(n + 1)
            default:
                throw fail("unknown key '\(key)' (expected permissive, quirk or no-strict-reset)")
            }
        }
        return c
    }

    static func parseBool(_ s: String) -> Bool? {
        switch s.lowercased() {
        case "yes", "on", "true", "1": return true
        case "no", "off", "false", "0": return false
        default: return nil
        }
    }
}

/// What the administrator set for one function: from the config file or
/// the control socket. Kept by the daemon and applied again after the
/// backend clears it (a function leaving its guest loses permissive and
/// quirks; an export takes permissive from the toolstack's options).
struct FunctionOptions: Equatable {
    var permissive = false
    var quirks: [PCIQuirk] = []
    /// Qubes' no-strict-reset: claim a function that has no reset method
    /// (only its saved state is restored then). Strict by default.
    var noStrictReset = false
}
