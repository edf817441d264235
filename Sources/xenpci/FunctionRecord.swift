import Foundation
import PCIBack
import PCIModel
import XenPCIABI
import PCIHost

/// One PCI function in the JSON of `list`, `status` and the demo's `stats`:
/// one vocabulary for all three, written down in xenpci(8) (JSON OUTPUT).
/// Each command fills a fixed set of keys and writes every one of them,
/// null for none; keys it has nothing for are left out.
struct FunctionRecord: Codable, Equatable {
    struct BAR: Codable, Equatable { var index: Int; var type: String; var start: String; var end: String; var size: UInt64 }
    /// A write that did not reach the device, and the quirk that would let it.
    struct DeniedWrite: Codable, Equatable { var offset: String; var size: Int; var count: Int; var action: String; var quirk: String? }

    var function: String?
    var name: String?
    var vendor: String?
    var device: String?
    var subsystemVendor: String?
    var subsystemDevice: String?
    var `class`: String?
    var bars: [BAR]?
    var irq: Int?
    var driver: String?
    var readOnly: Bool?
    var guest: Int?
    var guestName: String?
    var guestAddress: String?
    var xenbusState: String?
    var interruptMode: String?
    var interruptCount: Int?
    var msiPirqs: [UInt32]?
    var msixPirqs: [UInt32]?
    var resetMethod: String?
    var requests: Int?
    var requestsByKind: [String: Int]?
    var errors: [String: Int]?
    var deniedWrites: [DeniedWrite]?
    var permissive: Bool?
    var quirks: [String]?
    var configured: Bool?
    var secondsSinceLastRequest: Int?
    var frontendRequests: Int?
    var frontendErrors: Int?
    var frontendTimeouts: Int?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case function, name, vendor, device, subsystemVendor, subsystemDevice, `class`, bars, irq, driver, readOnly
        case guest, guestName, guestAddress, xenbusState, interruptMode, interruptCount, msiPirqs, msixPirqs, resetMethod
        case requests, requestsByKind, errors, deniedWrites, permissive, quirks, configured, secondsSinceLastRequest
        case frontendRequests, frontendErrors, frontendTimeouts
    }

    /// The keys each command writes (xenpci(8) lists them).
    static let listKeys: [CodingKeys] = [.function, .name, .vendor, .device, .subsystemVendor, .subsystemDevice, .class, .bars, .irq,
                                         .driver, .readOnly, .guest, .guestAddress]
    static let statusKeys: [CodingKeys] = [.function, .name, .vendor, .device, .readOnly, .guest, .guestName, .guestAddress, .xenbusState,
                                           .interruptMode, .interruptCount, .irq, .msiPirqs, .msixPirqs, .resetMethod, .requests,
                                           .requestsByKind, .errors, .deniedWrites, .permissive, .quirks, .configured, .secondsSinceLastRequest]
    static let statsKeys: [CodingKeys] = [.function, .guestAddress, .requests, .requestsByKind, .errors, .deniedWrites, .permissive, .quirks,
                                          .frontendRequests, .frontendErrors, .frontendTimeouts]

    /// Which of the keys this record writes; decoded records keep what came.
    var keys: [CodingKeys] = []

    init(keys: [CodingKeys]) { self.keys = keys }

    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        keys = c.allKeys
        function = try c.decodeIfPresent(String.self, forKey: .function)
        name = try c.decodeIfPresent(String.self, forKey: .name)
        vendor = try c.decodeIfPresent(String.self, forKey: .vendor)
        device = try c.decodeIfPresent(String.self, forKey: .device)
        subsystemVendor = try c.decodeIfPresent(String.self, forKey: .subsystemVendor)
        subsystemDevice = try c.decodeIfPresent(String.self, forKey: .subsystemDevice)
        `class` = try c.decodeIfPresent(String.self, forKey: .class)
        bars = try c.decodeIfPresent([BAR].self, forKey: .bars)
        irq = try c.decodeIfPresent(Int.self, forKey: .irq)
        driver = try c.decodeIfPresent(String.self, forKey: .driver)
        readOnly = try c.decodeIfPresent(Bool.self, forKey: .readOnly)
        guest = try c.decodeIfPresent(Int.self, forKey: .guest)
        guestName = try c.decodeIfPresent(String.self, forKey: .guestName)
        guestAddress = try c.decodeIfPresent(String.self, forKey: .guestAddress)
        xenbusState = try c.decodeIfPresent(String.self, forKey: .xenbusState)
        interruptMode = try c.decodeIfPresent(String.self, forKey: .interruptMode)
        interruptCount = try c.decodeIfPresent(Int.self, forKey: .interruptCount)
        msiPirqs = try c.decodeIfPresent([UInt32].self, forKey: .msiPirqs)
        msixPirqs = try c.decodeIfPresent([UInt32].self, forKey: .msixPirqs)
        resetMethod = try c.decodeIfPresent(String.self, forKey: .resetMethod)
        requests = try c.decodeIfPresent(Int.self, forKey: .requests)
        requestsByKind = try c.decodeIfPresent([String: Int].self, forKey: .requestsByKind)
        errors = try c.decodeIfPresent([String: Int].self, forKey: .errors)
        deniedWrites = try c.decodeIfPresent([DeniedWrite].self, forKey: .deniedWrites)
        permissive = try c.decodeIfPresent(Bool.self, forKey: .permissive)
        quirks = try c.decodeIfPresent([String].self, forKey: .quirks)
        configured = try c.decodeIfPresent(Bool.self, forKey: .configured)
        secondsSinceLastRequest = try c.decodeIfPresent(Int.self, forKey: .secondsSinceLastRequest)
        frontendRequests = try c.decodeIfPresent(Int.self, forKey: .frontendRequests)
        frontendErrors = try c.decodeIfPresent(Int.self, forKey: .frontendErrors)
        frontendTimeouts = try c.decodeIfPresent(Int.self, forKey: .frontendTimeouts)
    }

    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        for k in keys {
            switch k {
            case .function: try c.encode(function, forKey: k)
            case .name: try c.encode(name, forKey: k)
            case .vendor: try c.encode(vendor, forKey: k)
            case .device: try c.encode(device, forKey: k)
            case .subsystemVendor: try c.encode(subsystemVendor, forKey: k)
            case .subsystemDevice: try c.encode(subsystemDevice, forKey: k)
            case .class: try c.encode(`class`, forKey: k)
            case .bars: try c.encode(bars, forKey: k)
            case .irq: try c.encode(irq, forKey: k)
            case .driver: try c.encode(driver, forKey: k)
            case .readOnly: try c.encode(readOnly, forKey: k)
            case .guest: try c.encode(guest, forKey: k)
            case .guestName: try c.encode(guestName, forKey: k)
            case .guestAddress: try c.encode(guestAddress, forKey: k)
            case .xenbusState: try c.encode(xenbusState, forKey: k)
            case .interruptMode: try c.encode(interruptMode, forKey: k)
            case .interruptCount: try c.encode(interruptCount, forKey: k)
            case .msiPirqs: try c.encode(msiPirqs, forKey: k)
            case .msixPirqs: try c.encode(msixPirqs, forKey: k)
            case .resetMethod: try c.encode(resetMethod, forKey: k)
            case .requests: try c.encode(requests, forKey: k)
            case .requestsByKind: try c.encode(requestsByKind, forKey: k)
            case .errors: try c.encode(errors, forKey: k)
            case .deniedWrites: try c.encode(deniedWrites, forKey: k)
            case .permissive: try c.encode(permissive, forKey: k)
            case .quirks: try c.encode(quirks, forKey: k)
            case .configured: try c.encode(configured, forKey: k)
            case .secondsSinceLastRequest: try c.encode(secondsSinceLastRequest, forKey: k)
            case .frontendRequests: try c.encode(frontendRequests, forKey: k)
            case .frontendErrors: try c.encode(frontendErrors, forKey: k)
            case .frontendTimeouts: try c.encode(frontendTimeouts, forKey: k)
            }
        }
    }

    /// pci.ids' "Vendor Device", when the database is installed.
    static func name(_ vendor: UInt16, _ device: UInt16) -> String? {
        guard let ids = PCIIDs.shared, let v = ids.vendorName(vendor) else { return nil }
        return ids.deviceName(vendor, device).map { "\(v) \($0)" } ?? v
    }

    /// `list`: NetBSD's /kern/xen/pci/<BDF> fields.
    static func listing(_ i: ClaimedDeviceInfo) -> FunctionRecord {
        var r = FunctionRecord(keys: listKeys)
        r.function = i.address.description
        r.name = name(i.vendorID, i.deviceID)
        r.vendor = hex(i.vendorID, 4); r.device = hex(i.deviceID, 4)
        r.subsystemVendor = hex(i.subsystemVendorID, 4); r.subsystemDevice = hex(i.subsystemID, 4)
        r.class = hex(i.classCode, 6)
        r.bars = i.bars.sorted { $0.key < $1.key }.map {
            BAR(index: $0.key, type: $0.value.isIO ? "io" : "memory", start: "0x" + hex($0.value.start, 1), end: "0x" + hex($0.value.end, 1), size: $0.value.size)
        }
        r.irq = i.irq == 0 ? nil : i.irq
        r.driver = i.driver
        r.readOnly = i.readOnly
        r.guest = i.guest.map(Int.init)
        r.guestAddress = i.guestAddress?.description
        return r
    }

    /// The counters of the backend's statistics, in this vocabulary.
    mutating func setCounters(_ s: DeviceStatistics) {
        requests = s.ops.values.reduce(0, +)
        requestsByKind = Dictionary(s.ops.map { ($0.key.description, $0.value) }, uniquingKeysWith: +)
        errors = Dictionary(s.errors.map { (Self.errorKey($0.key), $0.value) }, uniquingKeysWith: +)
        deniedWrites = s.refusedWrites.map {
            DeniedWrite(offset: "0x" + hex($0.offset, 3), size: $0.size, count: $0.count, action: $0.denied ? "denied" : "dropped", quirk: $0.quirk)
        }
        permissive = s.permissive
        quirks = s.quirks.map(\.description)
    }

    /// pciif.h's XEN_PCI_ERR_ names without the prefix, as the op kinds are
    /// XEN_PCI_OP_ names.
    static func errorKey(_ e: PCIOpError) -> String {
        switch e {
        case .success: return "success"
        case .devNotFound: return "dev_not_found"
        case .invalidOffset: return "invalid_offset"
        case .accessDenied: return "access_denied"
        case .notImplemented: return "not_implemented"
        case .opFailed: return "op_failed"
        }
    }
}

/// A time span as people say it: "4 s", "3 min", "2 h 5 min", "3 days".
func humanDuration(seconds s: Int) -> String {
    switch s {
    case ..<60: return "\(s) s"
    case ..<3600: return "\(s / 60) min"
    case ..<86400: return "\(s / 3600) h" + (s % 3600 / 60 > 0 ? " \(s % 3600 / 60) min" : "")
    default: return "\(s / 86400) day\(s / 86400 == 1 ? "" : "s")"
    }
}

/// `d`'s milliseconds or seconds, as people say them: "312 ms", "60 s".
func humanDuration(_ d: Duration) -> String {
    let ms = d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000
    return ms < 1000 ? "\(ms) ms" : ms % 1000 == 0 ? "\(ms / 1000) s" : String(format: "%.1f s", Double(ms) / 1000)
}

/// Rows under a header, each column as wide as its widest cell, two spaces
/// apart (as `xl pci-list` aligns them).
func alignedColumns(_ header: [String], _ rows: [[String]]) -> String {
    let all = [header] + rows
    let widths = header.indices.map { i in all.map { $0[i].count }.max() ?? 0 }
    return all.map { r in
        r.enumerated().map { i, cell in i == r.count - 1 ? cell : cell.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
            .joined(separator: "  ")
    }.joined(separator: "\n")
}
