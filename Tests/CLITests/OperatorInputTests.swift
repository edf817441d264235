import Foundation
import Testing
@testable import xenpci
import PCIBack
import PCIModel
import XenPCIABI

/// Knuth's MMIX linear congruential step, high bits folded into the low
/// ones: a fixed seed checks the same inputs every run, and a failure names it.
struct SeededRandom: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        return state ^ (state >> 33)
    }
}

/// Input an operator can type or paste: the ASCII the parsers take, and what
/// looks like it but is not (other scripts' digits, case mappings that land
/// on ASCII, marks that merge into the previous character, emoji, NUL).
enum OperatorInput {
    static let ascii = Array("0123456789abcdefABCDEFxX:.()*-+ \t=,hidepcibk")
    static let hostile: [String] = [
        "０", "９", "ａ", "Ｆ", "：", "．", "（", "）",      // fullwidth forms
        "٣", "۷", "३", "๓", "𝟘", "①", "Ⅻ",            // digits and numbers of other scripts
        "\u{301}", "\u{336}", "\u{20DD}",               // combining marks
        "ſ", "ı", "İ", "\u{212A}", "ß",                 // case mappings onto or around ASCII
        "🧪", "👍🏽", "🇩🇪", "👨‍👩‍👧",                      // emoji, modifiers, flags, ZWJ sequences
        "\0", "\u{7F}", "\u{3000}", "\u{A0}", "\u{200B}", "\u{202E}", "\u{FEFF}", "\r\n",
    ]

    /// A random string of ASCII pieces and at least one hostile piece.
    static func hostileString(_ r: inout SeededRandom) -> String {
        var parts = (0..<Int.random(in: 0...12, using: &r)).map { _ in String(ascii.randomElement(using: &r)!) }
        for _ in 0..<Int.random(in: 1...3, using: &r) {
            parts.insert(hostile.randomElement(using: &r)!, at: Int.random(in: 0...parts.count, using: &r))
        }
        return parts.joined()
    }

    /// `valid` with one character replaced by, or one hostile piece inserted.
    static func mutated(_ valid: String, _ r: inout SeededRandom) -> String {
        var c = valid.map(String.init)
        let i = Int.random(in: 0..<c.count, using: &r), h = hostile.randomElement(using: &r)!
        if Bool.random(using: &r) { c[i] = h } else { c.insert(h, at: i) }
        return c.joined()
    }

    /// Very long: a valid input repeated, then a hostile tail.
    static func long(_ valid: String) -> [String] {
        [String(repeating: valid, count: 20_000 / valid.count + 1), String(repeating: "0", count: 100_000),
         String(repeating: valid, count: 2_000) + "０", String(repeating: "\u{301}", count: 10_000)]
    }

    static var isASCII: (String) -> Bool { { $0.utf8.allSatisfy { $0 < 0x80 } } }

    /// Every hostile input must be refused with an error that names it, and
    /// no input may trap. `valid` must parse. Returns the number checked.
    @discardableResult
    static func check<T>(_ parser: String, valid: [String], seed: UInt64, count: Int = 1500,
                         sourceLocation: SourceLocation = #_sourceLocation, _ parse: (String) throws -> T) -> Int {
        for v in valid {
            #expect(throws: Never.self, "\(parser) refused its valid input '\(v)'", sourceLocation: sourceLocation) { _ = try parse(v) }
        }
        var r = SeededRandom(state: seed)
        var inputs = valid.flatMap(long)
        for n in 0..<count { inputs.append(n % 2 == 0 ? hostileString(&r) : mutated(valid.randomElement(using: &r)!, &r)) }
        for input in inputs {
            do {
                _ = try parse(input)
                // Only ASCII may parse (a long repetition of valid input may too).
                #expect(isASCII(input), "\(parser) accepted \(input.debugDescription) (seed \(seed))", sourceLocation: sourceLocation)
            } catch {
                let message = "\(error)"
                #expect(isASCII(input) || message.contains(input),
                        "\(parser): the error for \(input.prefix(80).debugDescription) does not name it: \(message.prefix(200)) (seed \(seed))",
                        sourceLocation: sourceLocation)
            }
        }
        return inputs.count
    }
}

@Suite("Operator input: non-ASCII is refused by name, nothing traps")
struct OperatorInputTests {
    @Test("PCI addresses (BDF arguments, quirk and xenstore dev-N addresses)")
    func addresses() {
        OperatorInput.check("PCIAddress", valid: ["0000:00:03.0", "00:1f.7", "ffff:ff:1f.07", " 00:03.0\t"], seed: 1) { try PCIAddress(parsing: $0) }
    }

    @Test("PCI roots (root-N in xenstore): nil, never a trap")
    func roots() {
        #expect(PCIRoot(xenstore: "０000:00") == nil && PCIRoot(xenstore: "0000:0０") == nil)
        #expect(PCIRoot(xenstore: "+000:00") == nil, "no sign")
        struct Refused: Error, CustomStringConvertible { var description: String }
        OperatorInput.check("PCIRoot", valid: ["0000:00", "ffff:ff"], seed: 2) { s in
            guard let root = PCIRoot(xenstore: s) else { throw Refused(description: "not a root: '\(s)'") }
            return root
        }
    }

    @Test("hide lists: `xenpci list --hide '(００:00.0)'` is an error naming the input, not a trap")
    func hideLists() {
        #expect { try parseHideList("(００:00.0)") } throws: { e in
            guard let e = e as? HideListError else { return false }
            return e.position == 1 && e.description.contains("(００:00.0)")
        }
        OperatorInput.check("hide list", valid: ["(00:03.0)", "pciback.hide=(0000:00:06.*)(01:*.*)", " (00:1f.7) (ff:00.0) "],
                            seed: 3) { try parseHideList($0) }
    }

    @Test("quirks")
    func quirks() {
        OperatorInput.check("quirk", valid: ["0000:00:03.0-0x40:4:0xffffffff", "00:03.0-3c:1:ff"], seed: 4) { try PCIQuirk(parsing: $0) }
    }

    @Test("shell registers, sizes and values (setpci style); register names are ASCII")
    func registers() {
        #expect(throws: CLIError.self, "ſ upper-cases to S") { try Shell.register("ſtatus", nil) }
        #expect(throws: CLIError.self, "ı upper-cases to I") { try Shell.register("ınterrupt_lıne", nil) }
        #expect(throws: CLIError.self, "no sign") { try Shell.register("-4", "4") }
        #expect(throws: CLIError.self, "no sign") { try Shell.value("+ff", size: 1) }
        OperatorInput.check("register", valid: ["COMMAND", "command.l", "0x3c", "100", "BASE_ADDRESS_0"], seed: 5) { try Shell.register($0, "4") }
        OperatorInput.check("register size", valid: ["1", "b", "W", "4"], seed: 6) { try Shell.register("0x40", $0) }
        OperatorInput.check("value", valid: ["0xff", "12345678", "FF"], seed: 7) { try Shell.value($0, size: 4) }
    }

    @Test("lspci -s selectors and options")
    func selectors() {
        OperatorInput.check("slot", valid: ["00:04.2", "*:*.2", "0000:00:04", ".2", "4."], seed: 8) { try SlotSelector(parsing: $0) }
        OperatorInput.check("lspci -s", valid: ["00:04.2"], seed: 9) { try LspciOptions(parsing: ["-s", $0]) }
        OperatorInput.check("lspci option", valid: ["-nnvxxx", "--json"], seed: 10) { try LspciOptions(parsing: [$0]) }
    }

    @Test("domain ids (attach, detach)")
    func domainIDs() {
        #expect(throws: CLIError.self) { try parseDomainID("+1") }
        #expect(throws: CLIError.self) { try parseDomainID("３") }
        #expect(throws: CLIError.self) { try parseDomainID("32752") }
        OperatorInput.check("domain id", valid: ["0", "1", "32751"], seed: 11) { try parseDomainID($0) }
    }

    @Test("shell lines: blank, comment-only and hostile lines never trap the shell")
    func shellLines() throws {
        let rig = try DemoRig(hide: "(00:04.0)")
        defer { rig.finish() }
        var r = SeededRandom(state: 12)
        for line in ["", "   ", "# only a comment", "\0", "read ００:00.0 0 4", "read 00:00.0 ſtatus", "lspci -s ００"]
            + (0..<200).map({ _ in OperatorInput.hostileString(&r) }) {
            do { _ = try rig.output(line) } catch {
                // The one error line names the word it refused.
                #expect(Shell.words(line).contains { "\(error)".contains($0) }, "\(line.debugDescription): \(error)")
            }
        }
        #expect(try rig.output("read 00:00.0 0 2") == "1af4\n", "the shell still answers")
    }
}
