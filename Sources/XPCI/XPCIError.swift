import XenHypervisor
import XenPCIABI
import PCIModel

/// Everything that can go wrong in the frontend. Every message names what was
/// wrong: the operation, the device, the xenstore key or the reply field.
public enum XPCIError: Error, CustomStringConvertible, Sendable {
    /// A request got no reply within the request timeout; the channel is now broken.
    case timeout(op: PCIOpCommand, address: PCIAddress, after: Duration)
    /// The backend did not reach Connected in time.
    case connectTimeout(after: Duration, frontend: XenState, backend: XenState?)
    /// An earlier request timed out and the backend has not answered it yet
    /// (docs/PROTOCOL.md §4): nothing is posted until it does.
    case channelBroken(String)
    /// The backend answered with one of the protocol's error values.
    case backend(PCIOpError, op: PCIOpCommand, address: PCIAddress)
    /// No connection to a backend (not attached, not yet connected, or closed).
    case notConnected(XenState)
    /// The backend wrote something impossible.
    case backendLied(String)
    /// The caller asked for something the protocol cannot carry.
    case badArgument(String)
    /// A hypervisor call failed.
    case xen(XenError)
    /// `detach()` was called: the request was not sent, or its wait was cut
    /// short (a slow backend must not hold detach for requests x timeout).
    case detaching(op: PCIOpCommand, address: PCIAddress)

    public var description: String {
        switch self {
        case .timeout(let op, let a, let d):
            return "\(op) on \(a): no reply from the backend within \(d); the channel is marked broken until it answers"
        case .connectTimeout(let d, let fe, let be):
            return "backend did not connect within \(d): frontend is \(fe), backend is \(be.map(\.description) ?? "absent")"
        case .channelBroken(let why): return "request channel broken: \(why)"
        case .backend(let e, let op, let a): return "\(op) on \(a): backend answered \(e) (\(e.rawValue))"
        case .notConnected(let s): return "not connected to a backend (frontend state \(s))"
        case .backendLied(let what): return "backend sent an impossible value: \(what)"
        case .badArgument(let what): return "bad argument: \(what)"
        case .xen(let e): return e.description
        case .detaching(let op, let a): return "\(op) on \(a): abandoned, the frontend is detaching"
        }
    }

    /// Wraps hypervisor errors; frontend errors pass through.
    static func wrap(_ error: Error) -> XPCIError {
        if let e = error as? XPCIError { return e }
        if let e = error as? XenError { return .xen(e) }
        return .badArgument("\(error)")
    }
}

/// What the frontend reports as it runs (state changes, bus changes, AER),
/// for a live display or a log. Delivered on the thread that caused it.
public enum XPCIEvent: Sendable, CustomStringConvertible {
    case stateChanged(frontend: XenState, backend: XenState?)
    case deviceAdded(PCIFunction)
    case deviceRemoved(PCIAddress)
    case aer(AERRequest, AERResult)
    /// `refused` AER requests beyond the rate limit were answered
    /// `disconnect` without running a handler. At most two lines a window:
    /// the first refusal at once, the rest of the window as one count when
    /// the next window starts (or at teardown).
    case aerRateLimited(refused: Int, limit: AERRateLimit)
    case error(XPCIError)

    public var description: String {
        switch self {
        case .stateChanged(let fe, let be): return "state: frontend \(fe), backend \(be.map(\.description) ?? "absent")"
        case .deviceAdded(let f): return "added \(f.address) \(hex(f.vendorID, 4)):\(hex(f.deviceID, 4))"
        case .deviceRemoved(let a): return "removed \(a)"
        case .aer(let r, let res): return "AER \(r.command) on \(r.address): \(res)"
        case .aerRateLimited(let n, let l):
            return "AER rate limit: \(n) backend request(s) beyond \(l) answered disconnect, no handler run"
        case .error(let e): return "error: \(e)"
        }
    }
}

/// The AER commands a backend may post in `aer_op` (bit 2).
public enum AERCommand: UInt32, Sendable, CustomStringConvertible {
    case errorDetected = 6, resume = 7, mmioEnabled = 8, slotReset = 9
    public var description: String {
        switch self {
        case .errorDetected: return "error_detected"
        case .resume: return "resume"
        case .mmioEnabled: return "mmio_enabled"
        case .slotReset: return "slot_reset"
        }
    }
}

/// One AER request as the backend posted it (guest-visible address).
public struct AERRequest: Equatable, Sendable {
    public var command: AERCommand
    public var address: PCIAddress
    /// `aer_op.err` on request: the PCI channel state (1 normal, 2 frozen, 3 permanent failure).
    public var channelState: Int32
    public init(command: AERCommand, address: PCIAddress, channelState: Int32) {
        self.command = command; self.address = address; self.channelState = channelState
    }
}

/// The answer written back to `aer_op.err` (Linux `pci_ers_result_t`).
public enum AERResult: Int32, Sendable, CaseIterable {
    case none = 1, canRecover, needReset, disconnect, recovered, noAERDriver
}

/// How many backend AER requests run the guest's handler: `burst` per
/// `window` (a bucket of `burst` tokens refilled each window). The rest are
/// answered `disconnect` at once, counted, and reported as rate-limited.
public struct AERRateLimit: Equatable, Sendable, CustomStringConvertible {
    public var burst: Int
    public var window: Duration
    public init(burst: Int = 16, window: Duration = .seconds(1)) {
        self.burst = burst
        self.window = window
    }
    public var description: String { "\(burst) per \(window)" }
}

/// Per-device request counters.
public struct XPCIDeviceStatistics: Equatable, Sendable {
    public var ops = 0
    public var errors = 0
    public var timeouts = 0
    public init() {}

    mutating func add(_ o: XPCIDeviceStatistics) {
        ops += o.ops; errors += o.errors; timeouts += o.timeouts
    }
}

/// `devices` holds only functions on the bus (and those a scan is reading),
/// so reconnects and hotplug with changing addresses cannot grow it.
public struct XPCIStatistics: Sendable {
    public var devices: [PCIAddress: XPCIDeviceStatistics] = [:]
    /// Requests for addresses not on the bus (the empty slots a scan probes,
    /// typos) and the counters of functions since removed.
    public var other = XPCIDeviceStatistics()
    /// AER requests the backend posted, and those refused by the rate limit.
    public var aerRequests = 0
    public var aerRateLimited = 0
    public var total: XPCIDeviceStatistics {
        devices.values.reduce(into: other) { $0.add($1) }
    }
    public subscript(_ a: PCIAddress) -> XPCIDeviceStatistics { devices[a] ?? XPCIDeviceStatistics() }
}
