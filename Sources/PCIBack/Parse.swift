import Foundation
import PCIModel

/// Strict parsers for values read from xenstore: a guest or toolstack
/// writes them, so anything but the exact expected form is refused.
enum XSValue {
    /// Decimal, no sign, no spaces, no leading zeros beyond "0", within `max`.
    static func decimal(_ s: String, max: UInt64) -> UInt64? {
        guard !s.isEmpty, s.count <= 20, s.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }),
              s == "0" || !s.hasPrefix("0"), let v = UInt64(s), v <= max else { return nil }
        return v
    }

    /// `DDDD:BB:SS.F` exactly as libxl writes `dev-N`.
    static func hostAddress(_ s: String) -> PCIAddress? {
        let u = Array(s.utf8)
        guard u.count == 12, u[4] == 58, u[7] == 58, u[10] == 46 else { return nil }
        return try? PCIAddress(parsing: s)
    }

    /// `opts-N`: comma-separated key=value; only `permissive` matters here.
    static func permissive(_ s: String) -> Bool {
        s.split(separator: ",").contains { $0.trimmingCharacters(in: .whitespaces) == "permissive=1" }
    }
}
