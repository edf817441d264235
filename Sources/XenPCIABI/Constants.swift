import CXenPCI
import Foundation

public typealias DomID = UInt16

/// XenbusState values (xen/io/xenbus.h), as a Swift enum.
public enum XenState: UInt32, CaseIterable, CustomStringConvertible, Sendable {
    case unknown = 0, initialising, initWait, initialised, connected, closing, closed,
         reconfiguring, reconfigured

    /// Parses a xenstore `state` value strictly (XenstoreValue.decimal: the
    /// other end writes it); nil for anything that is not 0...8.
    public init?(xenstore text: String) {
        guard let n = XenstoreValue.decimal(text, max: 8), let s = XenState(rawValue: UInt32(n)) else { return nil }
        self = s
    }

    public var xenstoreValue: String { String(rawValue) }

    public var description: String {
        switch self {
        case .unknown: return "Unknown"
        case .initialising: return "Initialising"
        case .initWait: return "InitWait"
        case .initialised: return "Initialised"
        case .connected: return "Connected"
        case .closing: return "Closing"
        case .closed: return "Closed"
        case .reconfiguring: return "Reconfiguring"
        case .reconfigured: return "Reconfigured"
        }
    }
}

/// xen_pci_op.cmd
public enum PCIOpCommand: UInt32, CaseIterable, CustomStringConvertible, Sendable {
    case confRead = 0, confWrite, enableMSI, disableMSI, enableMSIX, disableMSIX,
         aerDetected, aerResume, aerMMIO, aerSlotReset, enableMultiMSI

    public var description: String {
        switch self {
        case .confRead: return "conf_read"
        case .confWrite: return "conf_write"
        case .enableMSI: return "enable_msi"
        case .disableMSI: return "disable_msi"
        case .enableMSIX: return "enable_msix"
        case .disableMSIX: return "disable_msix"
        case .aerDetected: return "aer_detected"
        case .aerResume: return "aer_resume"
        case .aerMMIO: return "aer_mmio"
        case .aerSlotReset: return "aer_slotreset"
        case .enableMultiMSI: return "enable_multi_msi"
        }
    }
}

/// xen_pci_op.err: the six values of the protocol. Nothing else is ever written.
public enum PCIOpError: Int32, Error, CaseIterable, CustomStringConvertible, Sendable {
    case success = 0
    case devNotFound = -1
    case invalidOffset = -2
    case accessDenied = -3
    case notImplemented = -4
    case opFailed = -5

    public var description: String {
        switch self {
        case .success: return "success"
        case .devNotFound: return "device not found"
        case .invalidOffset: return "invalid offset"
        case .accessDenied: return "access denied"
        case .notImplemented: return "not implemented"
        case .opFailed: return "operation failed"
        }
    }
}

public enum XenPCI {
    public static let magic = XEN_PCI_MAGIC
    public static let maxMSIXVectors = Int(SH_INFO_MAX_VEC)
    public static let pageSize = Int(XENPCI_PAGE_SIZE)
    public static let frontendActive = UInt32(XEN_PCIF_active)
    public static let aerHandler = UInt32(XEN_PCIB_AERHANDLER)
    public static let backendActive = UInt32(XEN_PCIB_active)
}
