import Foundation
import PCIModel

/// Strict parsers for the backend's xenstore values besides numbers
/// (XenstoreValue.decimal): a guest or toolstack writes them, so anything
/// but the exact expected form is refused.
enum XSValue {
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
