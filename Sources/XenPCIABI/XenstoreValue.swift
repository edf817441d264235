/// The one strict parser for numbers read from xenstore, shared by both
/// drivers: the other side (a guest, a backend, a toolstack) wrote them, so
/// only the canonical form is accepted. Only the ASCII digits: the integer
/// initializers accept a sign and `Character.isNumber` other scripts' digits.
public enum XenstoreValue {
    /// Unsigned decimal: ASCII digits only, no sign, no spaces, no leading
    /// zero (but "0" itself), at most `max`; nil for anything else.
    public static func decimal(_ s: String, max: UInt64) -> UInt64? {
        let u = s.utf8
        guard !u.isEmpty, u.count <= 20, u.first != UInt8(ascii: "0") || u.count == 1 else { return nil }
        var v: UInt64 = 0
        for b in u {
            guard b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") else { return nil }
            let (m, o1) = v.multipliedReportingOverflow(by: 10)
            let (a, o2) = m.addingReportingOverflow(UInt64(b - UInt8(ascii: "0")))
            guard !o1 && !o2 else { return nil }
            v = a
        }
        return v <= max ? v : nil
    }
}
