import PCIModel

/// One entry of a hide list: a function, or a wildcard over a bus or slot.
public struct PCIPattern: Equatable, CustomStringConvertible, Sendable {
    public var segment: UInt16
    public var bus: UInt8
    public var device: UInt8?   // nil: `*`
    public var function: UInt8? // nil: `*`

    public func matches(_ a: PCIAddress) -> Bool {
        a.segment == segment && a.bus == bus && (device == nil || device == a.device) && (function == nil || function == a.function)
    }

    public var description: String {
        "(\(hex(segment, 4)):\(hex(bus, 2)):\(device.map { hex($0, 2) } ?? "*").\(function.map { String($0, radix: 16) } ?? "*"))"
    }
}

public struct HideListError: Error, CustomStringConvertible, Sendable {
    public var text: String
    public var position: Int // 0-based character index
    public var reason: String
    public var description: String { "hide list: \(reason) at position \(position + 1) of '\(text)'" }
}

/// Parses a hide list: NetBSD's `pciback.hide=(bus:dev.func)(bus:dev.func)`
/// and Linux's `(DDDD:BB:SS.F)`, `(BB:SS.F)`, `(BB:SS.*)`, `(BB:*.*)`, with
/// optional whitespace between entries, a `pciback.hide=` or `hide=` prefix,
/// and no length limit. It either returns every entry or throws naming the
/// first bad position: nothing is claimed from a list with an error in it.
public func parseHideList(_ text: String) throws -> [PCIPattern] {
    let chars = Array(text)
    var i = 0
    func fail(_ why: String) -> HideListError { HideListError(text: text, position: min(i, chars.count), reason: why) }
    func skipSpace() { while i < chars.count, chars[i].isASCII, chars[i].isWhitespace { i += 1 } }
    func hexField(_ name: String, maxDigits: Int, max: UInt32, wildcard: Bool) throws -> UInt32? {
        if wildcard, i < chars.count, chars[i] == "*" { i += 1; return nil }
        let start = i
        while i < chars.count, isASCIIHexDigit(chars[i]) { i += 1 }
        guard i > start else { i = start; throw fail("expected a hex \(name)\(wildcard ? " or '*'" : "")") }
        let digits = String(chars[start..<i])
        guard digits.count <= maxDigits else { i = start; throw fail("\(name) has more than \(maxDigits) hex digits") }
        guard let v = parseASCIIHex(digits) else { i = start; throw fail("\(name) '\(digits)' is not hex") }
        guard v <= max else { i = start; throw fail("\(name) \(digits) is above \(String(max, radix: 16))") }
        return v
    }
    func expect(_ c: Character, _ what: String) throws {
        guard i < chars.count, chars[i] == c else { throw fail("expected '\(c)' \(what)") }
        i += 1
    }

    skipSpace()
    for prefix in ["pciback.hide=", "hide="] where String(chars[i...]).hasPrefix(prefix) {
        i += prefix.count
        break
    }
    var out: [PCIPattern] = []
    skipSpace()
    while i < chars.count {
        try expect("(", "to open an entry")
        skipSpace()
        // Up to three colon-separated numbers before the '.': [DDDD:]BB:SS
        let firstAt = i
        let first = try hexField("bus or segment", maxDigits: 4, max: 0xFFFF, wildcard: false)!
        try expect(":", "after the \(first > 0xFF ? "segment" : "bus")")
        let save = i
        var segment: UInt32 = 0, bus = first
        var device: UInt32?
        // Is there a third field (DDDD:BB:SS)? Look for another ':' before '.'.
        var j = i
        while j < chars.count, chars[j] != ".", chars[j] != ")", chars[j] != ":" { j += 1 }
        if j < chars.count, chars[j] == ":" {
            segment = first
            i = save
            bus = try hexField("bus", maxDigits: 2, max: 0xFF, wildcard: false)!
            try expect(":", "after the bus")
        } else {
            guard first <= 0xFF else { i = firstAt; throw fail("bus \(String(first, radix: 16)) is above ff (a segment needs DDDD:BB:SS.F)") }
        }
        let deviceAt = i
        device = try hexField("device", maxDigits: 2, max: 31, wildcard: true)
        try expect(".", "before the function")
        let function = try hexField("function", maxDigits: 1, max: 7, wildcard: true)
        if device == nil && function != nil { i = deviceAt; throw fail("a '*' device needs a '*' function") }
        skipSpace()
        try expect(")", "to close the entry")
        out.append(PCIPattern(segment: UInt16(segment), bus: UInt8(bus), device: device.map(UInt8.init), function: function.map(UInt8.init)))
        skipSpace()
    }
    return out
}
