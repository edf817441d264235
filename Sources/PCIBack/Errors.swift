import PCIModel

public enum PCIBackError: Error, CustomStringConvertible, Equatable, Sendable {
    case badDevice(String)
    case hardware(String)
    case refused(String)
    case badQuirk(String)
    case xenstore(String)
    case notConnected(String)
    case timeout(String)
    case badState(String)

    public var description: String {
        switch self {
        case .badDevice(let s), .hardware(let s), .refused(let s), .xenstore(let s), .notConnected(let s), .timeout(let s), .badState(let s): return s
        case .badQuirk(let s): return "quirk: \(s)"
        }
    }
}
