import Foundation
import PCIModel
import XPCI

/// lspci's options as the shell takes them: `-n`, `-nn`, `-v`, `-x`,
/// `-xxx`, `-xxxx`, `-s [[[[DDDD]:]BB]:][SS][.[F]]`, and `--json`.
struct LspciOptions: Equatable {
    var numeric = 0     // 1: -n numbers only; 2: -nn names and numbers
    var verbose = false
    var hexBytes = 0    // 0, 64, 256, 4096
    var selector: SlotSelector?
    var json = false

    init() {}

    init(parsing args: [String]) throws {
        var i = 0
        while i < args.count {
            let a = args[i]
            i += 1
            switch a {
            case "--json": json = true
            case "-s":
                guard i < args.count else { throw CLIError.usage("lspci: -s needs a slot ([[[[DDDD]:]BB]:][SS][.[F]])") }
                selector = try SlotSelector(parsing: args[i])
                i += 1
            case _ where a.hasPrefix("-s") && a.count > 2:
                selector = try SlotSelector(parsing: String(a.dropFirst(2)))
            case _ where a.hasPrefix("-") && a.count > 1 && a.dropFirst().allSatisfy({ "nvx".contains($0) }):
                // Bundled flags as pciutils takes them: -nv, -xxx, -vxxx.
                for c in a.dropFirst() {
                    switch c {
                    case "n": numeric = min(numeric + 1, 2)
                    case "v": verbose = true
                    default: hexBytes = hexBytes == 0 ? 64 : hexBytes == 64 ? 128 : hexBytes == 128 ? 256 : 4096
                    }
                }
            default:
                throw CLIError.usage("lspci: unknown option '\(a)' (use -n, -nn, -v, -x, -xxx, -xxxx, -s SLOT, --json)")
            }
        }
        if hexBytes == 128 { hexBytes = 256 } // -xx (config space of a non-root user in pciutils) reads as -xxx here
    }
}

/// `-s` as pciutils reads it; an empty or `*` field matches anything.
struct SlotSelector: Equatable {
    var segment: UInt16?, bus: UInt8?, device: UInt8?, function: UInt8?

    init(parsing text: String) throws {
        func bad(_ why: String) -> CLIError { .usage("bad slot '\(text)': \(why)") }
        func field<T: FixedWidthInteger>(_ s: Substring, _ name: String, max: T) throws -> T? {
            if s.isEmpty || s == "*" { return nil }
            guard s.utf8.count <= 4, let v = parseASCIIHex(s) else { throw bad("\(name) '\(s)' is not a hex number") }
            guard v <= UInt32(max) else { throw bad("\(name) \(s) is above \(String(max, radix: 16))") }
            return T(v)
        }
        var rest = Substring(text)
        if let dot = rest.lastIndex(of: ".") {
            function = try field(rest[rest.index(after: dot)...], "function", max: UInt8(7))
            rest = rest[..<dot]
        }
        let parts = rest.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count <= 3 else { throw bad("expected [[[[DDDD]:]BB]:][SS][.[F]]") }
        device = try field(parts[parts.count - 1], "device", max: UInt8(31))
        if parts.count >= 2 { bus = try field(parts[parts.count - 2], "bus", max: UInt8(0xFF)) }
        if parts.count == 3 { segment = try field(parts[0], "domain", max: UInt16(0xFFFF)) }
    }

    func matches(_ a: PCIAddress) -> Bool {
        (segment ?? a.segment) == a.segment && (bus ?? a.bus) == a.bus && (device ?? a.device) == a.device
            && (function ?? a.function) == a.function
    }
}

/// Formats functions as pciutils' lspci does. `-n` lines and `-x` dumps
/// are byte for byte pciutils'; names come from pci.ids when it is there.
struct LspciFormatter {
    var ids: PCIIDs? = PCIIDs.shared
    /// pciutils prints the domain when any device is off segment 0.
    var showDomain = false

    func slot(_ a: PCIAddress) -> String { showDomain ? a.description : a.shortDescription }

    func classText(_ cls: UInt32, numeric: Int) -> String {
        let c = UInt8(cls >> 16), s = UInt8((cls >> 8) & 0xFF)
        let num = hex(cls >> 8, 4)
        if numeric == 1 { return num }
        let name: String
        if let n = ids?.subclassName(c, s) { name = numeric == 2 ? "\(n) [\(num)]" : n }
        else if let n = ids?.className(c) { name = "\(n) [\(num)]" }
        else { name = numeric == 2 ? "Class [\(num)]" : "Class \(num)" }
        return name
    }

    func idText(_ v: UInt16, _ d: UInt16, numeric: Int) -> String {
        let num = "\(hex(v, 4)):\(hex(d, 4))"
        if numeric == 1 { return num }
        let text: String
        if let vn = ids?.vendorName(v) { text = "\(vn) \(ids?.deviceName(v, d) ?? (numeric == 2 ? "Device" : "Device \(hex(d, 4))"))" }
        else { text = numeric == 2 ? "Device" : "Device \(num)" }
        return numeric == 2 ? "\(text) [\(num)]" : text
    }

    func subsystemText(_ f: PCIFunction, numeric: Int) -> String {
        let sv = f.subsystemVendorID, sd = f.subsystemID
        if numeric == 1 { return "\(hex(sv, 4)):\(hex(sd, 4))" }
        let num = "\(hex(sv, 4)):\(hex(sd, 4))"
        var text: String
        if let vn = ids?.vendorName(sv) {
            text = "\(vn) \(ids?.subsystemName(f.vendorID, f.deviceID, sv, sd) ?? "Device \(hex(sd, 4))")"
        } else { text = numeric == 2 ? "Device" : "Device \(num)" }
        if numeric == 2 { text += " [\(num)]" }
        return text
    }

    /// The first line: `BB:SS.F class: vendor device (rev RR)`.
    func headerLine(_ f: PCIFunction, _ o: LspciOptions) -> String {
        var s = "\(slot(f.address)) \(classText(f.classCode, numeric: o.numeric)): \(idText(f.vendorID, f.deviceID, numeric: o.numeric))"
        if f.revision != 0 { s += " (rev \(hex(f.revision, 2)))" }
        if o.verbose {
            let c = UInt8(f.classCode >> 16), sc = UInt8((f.classCode >> 8) & 0xFF), p = UInt8(f.classCode & 0xFF)
            let name = o.numeric == 1 ? nil : ids?.progIfName(c, sc, p)
            if p != 0 || name != nil { s += " (prog-if \(hex(p, 2))\(name.map { " [\($0)]" } ?? ""))" }
        }
        return s
    }

    /// pciutils' hex dump: `OO: hh hh ...`, 16 bytes a line, offsets of
    /// two hex digits below 0x100 and three above.
    func hexDump(_ bytes: [UInt8], count: Int) -> [String] {
        stride(from: 0, to: min(count, bytes.count), by: 16).map { o in
            hex(o, o < 0x100 ? 2 : 3) + ":" + bytes[o..<min(o + 16, bytes.count)].map { " " + hex($0, 2) }.joined()
        }
    }

    func verboseLines(_ f: PCIFunction, _ o: LspciOptions) -> [String] {
        var out: [String] = []
        if f.headerType != 1 || f.capability(.subsystemVendor) != nil, f.subsystemVendorID != 0 && f.subsystemVendorID != 0xFFFF {
            out.append("Subsystem: \(subsystemText(f, numeric: o.numeric))")
        }
        var flags: [String] = []
        if f.command & PCICommand.master != 0 { flags.append("bus master") }
        if f.status & 0x20 != 0 { flags.append("66MHz") }
        flags.append(["fast", "medium", "slow", "??"][Int((f.status >> 9) & 3)] + " devsel")
        if f.command & PCICommand.master != 0 { flags.append("latency \(f.config.read8(PCIReg.latencyTimer))") }
        if f.interruptPin != 0 && f.interruptLine != 0 && f.interruptLine != 0xFF { flags.append("IRQ \(f.interruptLine)") }
        out.append("Flags: " + flags.joined(separator: ", "))
        for b in f.bars {
            let off = b.isIO ? f.command & PCICommand.io == 0 : f.command & PCICommand.memory == 0
            out.append(b.description + (off ? " [disabled]" : ""))
        }
        if f.headerType == 1 {
            let c = f.config
            out.append("Bus: primary=\(hex(c.read8(0x18), 2)), secondary=\(hex(c.read8(0x19), 2)), subordinate=\(hex(c.read8(0x1A), 2)), sec-latency=\(c.read8(0x1B))")
        }
        if let r = f.rom {
            out.append("Expansion ROM at \(hex(r.base, 8)) [\(r.enabled ? "enabled" : "disabled")] [size=\(Self.sizeText(UInt64(r.size)))]")
        }
        for c in f.capabilities + f.extendedCapabilities {
            var text = f.describe(c)
            // pciutils names the PCIe capability's version only from -vv on
            // (ls-caps.c cap_express): "Express Endpoint" at -v.
            if text.hasPrefix("Express (v"), let r = text.range(of: ") ") { text = "Express " + text[r.upperBound...] }
            out.append("Capabilities: [\(hex(c.offset, c.extended ? 3 : 2))] \(text)")
        }
        return out.map { "\t" + $0 }
    }

    static func sizeText(_ s: UInt64) -> String {
        for (shift, unit) in [(30, "G"), (20, "M"), (10, "K")] where s >= 1 << shift && s % (1 << shift) == 0 { return "\(s >> shift)\(unit)" }
        return String(s)
    }

    /// The whole output for `functions` (already filtered by -s).
    func render(_ functions: [PCIFunction], _ o: LspciOptions) -> String {
        var lines: [String] = []
        for f in functions {
            lines.append(headerLine(f, o))
            if o.verbose { lines += verboseLines(f, o) }
            if o.hexBytes > 0 { lines += hexDump(f.config.bytes, count: o.hexBytes) }
            if o.verbose || o.hexBytes > 0 { lines.append("") }
        }
        return lines.isEmpty ? "" : lines.joined(separator: "\n") + "\n"
    }

    /// `--json`: one object per function, the numbers as lspci spells them.
    func json(_ functions: [PCIFunction], _ o: LspciOptions) -> [LspciJSON] {
        functions.map { f in
            LspciJSON(slot: f.address.description, class: hex(f.classCode >> 8, 4), progIf: hex(f.classCode & 0xFF, 2),
                      vendor: hex(f.vendorID, 4), device: hex(f.deviceID, 4), revision: hex(f.revision, 2),
                      subsystemVendor: hex(f.subsystemVendorID, 4), subsystem: hex(f.subsystemID, 4),
                      className: o.numeric == 1 ? nil : classText(f.classCode, numeric: 0),
                      name: o.numeric == 1 ? nil : idText(f.vendorID, f.deviceID, numeric: 0),
                      irq: f.interruptPin != 0 ? Int(f.interruptLine) : nil, command: hex(f.command, 4),
                      bars: f.bars.map { LspciJSON.BAR(index: $0.index, type: $0.isIO ? "io" : "memory", base: "0x" + hex($0.base, 8),
                                                        size: $0.size, is64Bit: $0.is64Bit, prefetchable: $0.prefetchable) },
                      rom: f.rom.map { LspciJSON.ROM(base: "0x" + hex($0.base, 8), size: UInt64($0.size), enabled: $0.enabled) },
                      capabilities: (f.capabilities + f.extendedCapabilities).map {
                          LspciJSON.Capability(offset: "0x" + hex($0.offset, $0.extended ? 3 : 2), id: "0x" + hex($0.id, $0.extended ? 4 : 2),
                                               extended: $0.extended, description: f.describe($0))
                      },
                      config: o.hexBytes > 0 ? f.config.bytes.prefix(o.hexBytes).map { hex($0, 2) }.joined() : nil)
        }
    }
}

struct LspciJSON: Encodable {
    struct BAR: Encodable { var index: Int; var type: String; var base: String; var size: UInt64; var is64Bit: Bool; var prefetchable: Bool }
    struct ROM: Encodable { var base: String; var size: UInt64; var enabled: Bool }
    struct Capability: Encodable { var offset: String; var id: String; var extended: Bool; var description: String }
    var slot: String
    var `class`: String
    var progIf: String
    var vendor: String
    var device: String
    var revision: String
    var subsystemVendor: String
    var subsystem: String
    var className: String?
    var name: String?
    var irq: Int?
    var command: String
    var bars: [BAR]
    var rom: ROM?
    var capabilities: [Capability]
    var config: String?
}

/// One line of JSON, keys sorted, for tools.
func jsonLine<T: Encodable>(_ v: T) -> String {
    let e = JSONEncoder()
    e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    return String(decoding: (try? e.encode(v)) ?? Data("null".utf8), as: UTF8.self)
}
