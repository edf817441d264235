import Foundation
import PCIBack
import XenHypervisor
import PCIModel

/// /etc/xenpci.conf: INI-style, one section per function to claim at start
/// (xenpci(8), CONFIGURATION FILE):
///
///     # comment
///     [0000:01:00.0]
///     permissive = on
///     quirk = 0x0a0:2:0xffff
///     no-strict-reset = on
///
/// Parsed whole before anything is claimed. Every bad line is reported, not
/// only the first: an administrator fixes a file in one pass.
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

    /// The file's bytes; a missing or unreadable file is a configuration error.
    static func read(_ path: String) throws -> Data {
        guard let data = FileManager.default.contents(atPath: path) else {
            let why = FileManager.default.fileExists(atPath: path) ? "cannot be read (\(String(cString: strerror(EACCES))))" : "no such file"
            throw CLIError(message: "\(path): \(why)", status: errorStatus)
        }
        return data
    }

    /// Parses the file; every problem is thrown together.
    static func load(_ path: String) throws -> DaemonConfig {
        try parse(read(path), path: path)
    }

    static func parse(_ text: String, path: String) throws -> DaemonConfig {
        try parse(Data(text.utf8), path: path)
    }

    static func parse(_ data: Data, path: String) throws -> DaemonConfig {
        let (c, problems) = parseCollecting(data, path: path)
        if !problems.isEmpty { throw ConfigErrors(path: path, problems: problems) }
        return c
    }

    /// What `check-config` and the backend use: the entries of every good
    /// section, and every problem. A bad section's keys are skipped (they
    /// would only repeat its error).
    static func parseCollecting(_ data: Data, path: String) -> (DaemonConfig, [ConfigProblem]) {
        var c = DaemonConfig(path: path)
        var problems: [ConfigProblem] = []
        var current: Int?     // index into entries
        var inBadSection = false
        var seenKeys: Set<String> = []
        var crLines: [Int] = []
        // Split on the byte: Swift's String treats "\r\n" as one Character,
        // so splitting a CRLF file on "\n" would find no line at all.
        for (n, raw) in data.split(separator: 0x0A, omittingEmptySubsequences: false).enumerated() {
            let lineNo = n + 1
            func fail(_ why: String) { problems.append(ConfigProblem(line: lineNo, message: why)) }
            var bytes = Array(raw)
            if bytes.last == 0x0D {
                crLines.append(lineNo) // reported once for the file, below
                bytes.removeLast()
            }
            if let bad = firstInvisible(bytes) {
                fail("\(bad.name) at column \(bad.column): only printable ASCII is allowed")
                continue
            }
            var line = Substring(String(decoding: bytes, as: UTF8.self))
            if let h = line.firstIndex(where: { $0 == "#" || $0 == ";" }) { line = line[..<h] }
            let t = line.trimmingCharacters(in: asciiBlanks)
            if t.isEmpty { continue }
            if t.hasPrefix("[") {
                current = nil
                inBadSection = true
                seenKeys = []
                guard t.hasSuffix("]") else { fail("section '\(t)' has no closing ']'"); continue }
                let name = String(t.dropFirst().dropLast()).trimmingCharacters(in: asciiBlanks)
                let a: PCIAddress
                do { a = try PCIAddress(parsing: name) } catch { fail("section [\(name)]: \(error)"); continue }
                if let prev = c.entry(a) { fail("[\(a)] repeats the section of line \(prev.line)"); continue }
                c.entries.append(Entry(address: a, line: lineNo))
                current = c.entries.count - 1
                inBadSection = false
                continue
            }
            guard let eq = t.firstIndex(of: "=") else { fail("expected 'key = value' or '[DDDD:BB:SS.F]', got '\(t)'"); continue }
            let key = t[..<eq].trimmingCharacters(in: asciiBlanks).lowercased()
            let value = t[t.index(after: eq)...].trimmingCharacters(in: asciiBlanks)
            guard let i = current else {
                if !inBadSection { fail("'\(key)' before any [DDDD:BB:SS.F] section") }
                continue
            }
            guard !value.isEmpty else { fail("'\(key)' has no value"); continue }
            let a = c.entries[i].address
            switch key {
            case "permissive", "no-strict-reset":
                guard seenKeys.insert(key).inserted else { fail("'\(key)' given twice for \(a)"); continue }
                guard let b = parseSwitch(value) else { fail("\(key) '\(value)': expected \(switchWords)"); continue }
                if key == "permissive" { c.entries[i].options.permissive = b } else { c.entries[i].options.noStrictReset = b }
            case "quirk":
                // REG:SIZE:MASK of the section's function, or a whole quirk line naming it.
                let q: PCIQuirk
                do { q = try parseQuirk(value.contains("-") ? value : "\(a)-\(value)") } catch { fail(userMessage(error)); continue }
                guard q.address == a else { fail("quirk '\(value)' names \(q.address), not this section's \(a)"); continue }
                if c.entries[i].options.quirks.contains(where: { $0.offset == q.offset }) {
                    fail("a second quirk at register 0x\(hex(q.offset, 3)) of \(a)")
                    continue
                }
                c.entries[i].options.quirks.append(q)
                c.entries[i].quirkLines.append(lineNo)
            default:
                fail("unknown key '\(key)' (expected permissive, quirk or no-strict-reset)")
            }
        }
        if let first = crLines.first {
            let others = crLines.count - 1
            problems.append(ConfigProblem(line: first, message: "line ends in \\r (carriage return): Windows line endings" +
                (others > 0 ? ", as \(others) more line\(others == 1 ? "" : "s") do" : "") + "; convert the file with dos2unix or sed -i 's/\\r$//'"))
        }
        problems.sort { $0.line < $1.line }
        return (c, problems)
    }

    /// The first byte or character outside printable ASCII (tab allowed),
    /// named so it can be seen: the bad ones are usually invisible.
    static func firstInvisible(_ bytes: [UInt8]) -> (name: String, column: Int)? {
        guard !bytes.allSatisfy({ ($0 >= 0x20 && $0 < 0x7F) || $0 == 0x09 }) else { return nil }
        var column = 0
        var it = bytes.makeIterator()
        var decoder = UTF8()
        while true {
            column += 1
            switch decoder.decode(&it) {
            case .scalarValue(let s):
                if (s.value >= 0x20 && s.value < 0x7F) || s.value == 0x09 { continue }
                return (describeCharacter(s), column)
            case .error:
                return ("a byte that is not UTF-8", column)
            case .emptyInput:
                return nil
            }
        }
    }

    /// `\r`, `U+00A0 (no-break space)`, `U+FF59 'ｙ'`.
    static func describeCharacter(_ s: Unicode.Scalar) -> String {
        let names: [UInt32: String] = [
            0x00: "\\0 (NUL)", 0x0B: "\\v (vertical tab)", 0x0C: "\\f (form feed)", 0x0D: "\\r (carriage return)",
            0x1B: "\\e (escape)", 0x7F: "\\x7f (delete)",
            0xA0: "U+00A0 (no-break space)", 0xAD: "U+00AD (soft hyphen)", 0x200B: "U+200B (zero-width space)",
            0x200C: "U+200C (zero-width non-joiner)", 0x200D: "U+200D (zero-width joiner)", 0x200E: "U+200E (left-to-right mark)",
            0x200F: "U+200F (right-to-left mark)", 0x2028: "U+2028 (line separator)", 0x202E: "U+202E (right-to-left override)",
            0x3000: "U+3000 (ideographic space)", 0xFEFF: "U+FEFF (byte order mark)",
        ]
        if let n = names[s.value] { return n }
        if s.value < 0x20 { return "\\x\(hex(s.value, 2)) (a control character)" }
        let code = "U+" + hex(s.value, 4).uppercased()
        if s.properties.isWhitespace || s.properties.generalCategory == .format || s.properties.generalCategory == .nonspacingMark {
            return "\(code) (an invisible character)"
        }
        return "\(code) '\(Character(s))'"
    }
}

/// One thing wrong in a config file, at its line.
struct ConfigProblem: Equatable {
    var line: Int
    var message: String
}

/// Every problem of a config file: what `check-config` lists, what a
/// backend refuses to start with and what a reload answers with.
struct ConfigErrors: Error, CustomStringConvertible {
    var path: String
    var problems: [ConfigProblem]
    /// FILE:LINE: message, one a problem.
    var lines: [String] { problems.map { "\(path):\($0.line): \($0.message)" } }
    var description: String { lines.joined(separator: "\n") }
}

/// The two words of an on/off setting, the same in the file, on the command
/// line and over the control socket.
let switchWords = "on or off"

func parseSwitch(_ s: String) -> Bool? {
    switch s.lowercased() {
    case "on": return true
    case "off": return false
    default: return nil
    }
}

/// A quirk that lets nothing through (mask 0) is refused: it would only hide
/// a register's denied writes from `status`.
func parseQuirk(_ text: String) throws -> PCIQuirk {
    let q = try PCIQuirk(parsing: text)
    guard q.mask != 0 else { throw CLIError.usage("quirk '\(text)': mask 0 allows no bit; give the bits a guest may write") }
    return q
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
