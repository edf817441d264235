import Testing
import XenPCIABI

/// The one decimal parser both drivers read xenstore numbers with.
@Suite("Xenstore values: strict decimal")
struct XenstoreValueTests {
    @Test func canonical() {
        #expect(XenstoreValue.decimal("0", max: 10) == 0)
        #expect(XenstoreValue.decimal("7", max: 10) == 7)
        #expect(XenstoreValue.decimal("10", max: 10) == 10)
        #expect(XenstoreValue.decimal("18446744073709551615", max: .max) == .max)
    }

    @Test(arguments: ["", "00", "01", "007", "+1", "-1", " 1", "1 ", "1\n", "0x1", "1e3", "1.0", "1_000",
                      "18446744073709551616", "99999999999999999999", "000000000000000000001"])
    func refused(text: String) {
        #expect(XenstoreValue.decimal(text, max: .max) == nil, "'\(text)' must be refused")
    }

    /// Other scripts' digits: `Character.isNumber` says yes, the parser no.
    @Test(arguments: ["١", "٣٢", "１", "１２", "²", "Ⅻ", "1\u{0301}", "\u{FEFF}1", "1\u{200B}"])
    func nonASCII(text: String) {
        #expect(XenstoreValue.decimal(text, max: .max) == nil, "'\(text)' must be refused")
    }

    @Test func bound() {
        #expect(XenstoreValue.decimal("256", max: 256) == 256)
        #expect(XenstoreValue.decimal("257", max: 256) == nil)
    }
}
