import Foundation
import Testing
@testable import XenMock

/// The path check scans eight bytes at a time with word arithmetic; these
/// hold it to the plain rule, byte by byte, at every length and offset.
@Suite("Mock xenstore: path check")
struct XenstorePathTests {
    /// xenstored's rule, plainly: `/`, then only `[A-Za-z0-9/_@-]`, no `//`, no trailing `/`.
    static func plain(_ bytes: [UInt8]) -> Bool {
        guard bytes.first == UInt8(ascii: "/"), bytes.count <= XenstoreTree.maxPath else { return false }
        if bytes.count == 1 { return true }
        for (i, b) in bytes.enumerated() {
            guard XenstoreTree.allowed(b) else { return false }
            if b == UInt8(ascii: "/") && i > 0 && bytes[i - 1] == b { return false }
        }
        return bytes.last != UInt8(ascii: "/")
    }

    static func check(_ bytes: [UInt8]) {
        let s = String(decoding: bytes, as: UTF8.self)
        guard Array(s.utf8) == bytes else { return } // not valid UTF-8: not a path a String can carry
        #expect(XenstoreTree.wellFormed(s) == plain(bytes), "\(bytes)")
    }

    @Test("every byte, alone and after a slash, in every position of a word")
    func everyByte() {
        for b in 0..<128 {
            for prefix in 0..<17 {
                let lead = [UInt8(ascii: "/")] + [UInt8](repeating: UInt8(ascii: "a"), count: prefix)
                Self.check(lead + [UInt8(b)])
                Self.check(lead + [UInt8(b), UInt8(ascii: "b")])
                Self.check(lead + [UInt8(ascii: "/"), UInt8(b)])
                Self.check(lead + [UInt8(ascii: "/"), UInt8(b), UInt8(ascii: "c")])
                Self.check(lead + [UInt8(b), UInt8(ascii: "/")])
            }
        }
        for scalar in ["\u{e9}", "\u{301}", "\u{212a}", "\u{1f600}"] {
            for prefix in 0..<17 {
                Self.check(Array(("/" + String(repeating: "a", count: prefix) + scalar + "b").utf8))
            }
        }
    }

    @Test("random paths of every length up to three words and at the size limit")
    func random() {
        var rng = SplitMix(state: 42)
        let alphabet = Array("/ab-_@Z9/ .~\u{0}".utf8)
        for _ in 0..<20_000 {
            let n = rng.below(26)
            var bytes = [UInt8(ascii: "/")]
            for _ in 0..<n { bytes.append(rng.pick(alphabet)) }
            Self.check(bytes)
        }
        for n in [3071, 3072, 3073] {
            Self.check([UInt8(ascii: "/")] + [UInt8](repeating: UInt8(ascii: "x"), count: n - 1))
        }
    }
}
