import Foundation
import XenHypervisor
import XenPCIABI
import PCIHost
import PCIModel

/// The hypervisor grants PCI pass-through needs besides xenstore (libxl's
/// `pci_add_dm_done` / `pci_remove_detached` for a PV guest). `XenCtrl`
/// implements it with libxenctrl; tests record the calls.
public protocol PassthroughPermissions: AnyObject {
    func assignDevice(_ d: PCIAddress, to guest: DomID, relaxedRDM: Bool) throws
    func deassignDevice(_ d: PCIAddress, from guest: DomID) throws
    func iomemPermission(guest: DomID, firstFrame: UInt64, frames: UInt64, allow: Bool) throws
    func ioportPermission(guest: DomID, firstPort: UInt32, ports: UInt32, allow: Bool) throws
    func mapPirq(guest: DomID, irq: Int32) throws -> Int32
    func unmapPirq(guest: DomID, pirq: UInt32) throws
    func irqPermission(guest: DomID, pirq: UInt32, allow: Bool) throws
}

/// Per-device options, written to `opts-N` as libxl spells them.
public struct PCIDeviceOptions: Equatable, Sendable {
    public enum RDMPolicy: String, Sendable { case strict, relaxed }
    public var msitranslate = false
    public var powerMgmt = false
    public var permissive = false
    public var rdmPolicy = RDMPolicy.strict
    public init(msitranslate: Bool = false, powerMgmt: Bool = false, permissive: Bool = false, rdmPolicy: RDMPolicy = .strict) {
        self.msitranslate = msitranslate; self.powerMgmt = powerMgmt; self.permissive = permissive; self.rdmPolicy = rdmPolicy
    }
    public var xenstoreValue: String {
        "msitranslate=\(msitranslate ? 1 : 0),power_mgmt=\(powerMgmt ? 1 : 0),permissive=\(permissive ? 1 : 0),rdm_policy=\(rdmPolicy.rawValue)"
    }
}

/// What libxl does to give a PV guest host PCI devices, and to take them
/// back: the backend and frontend xenstore directories (with the
/// Reconfiguring exchange when the guest is already connected) and the
/// hypervisor grants (IOMMU assignment, BAR I/O memory and ports, the INTx
/// pirq). Works over any `XenStore`, so the xenstore part is tested on the
/// mock; the grants go through `PassthroughPermissions`.
///
/// The xenstore steps follow libxl 4.17 (`libxl__device_generic_add`,
/// `libxl__device_pci_add_xenstore`, `libxl__device_pci_remove_xenstore`):
/// waits poll the backend's `state` (as `libxl__wait_for_backend` does), so
/// no watch events of a shared connection are consumed.
public final class XenToolstack {
    public let xenstore: XenStore
    public let permissions: PassthroughPermissions?
    public let sysfs: PCISysfs
    public var backendDomid: DomID
    /// How long to wait for the backend to be (again) Connected.
    public var timeout: Duration = .seconds(10)
    public var pollInterval: Duration = .milliseconds(20)
    /// Assign devices to the guest's IOMMU context (libxl does when the IOMMU is on).
    public var assignToIOMMU = true

    public init(xenstore: XenStore, permissions: PassthroughPermissions?, sysfs: PCISysfs = PCISysfs(), backendDomid: DomID = 0) {
        self.xenstore = xenstore
        self.permissions = permissions
        self.sysfs = sysfs
        self.backendDomid = backendDomid
    }

    public static func backendPath(backend: DomID, guest: DomID) -> String { "/local/domain/\(backend)/backend/pci/\(guest)/0" }
    public static func frontendPath(guest: DomID) -> String { "/local/domain/\(guest)/device/pci/0" }

    public enum AttachKind: Equatable, Sendable {
        /// The backend was created, in state 1, with these devices.
        case created
        /// Hot-added to a connected backend through state 7 and back to 4.
        case hotAdded
    }

    // MARK: attach

    /// Gives `devices` to guest `domid`: grants first (as libxl), then
    /// xenstore. A failed grant undoes the grants made before it.
    @discardableResult
    public func attach(domid: DomID, devices: [PCIAddress], opts: PCIDeviceOptions = PCIDeviceOptions()) throws -> AttachKind {
        guard !devices.isEmpty else { throw XenError(EINVAL, "pci attach", "dom\(domid): no device given") }
        guard Set(devices).count == devices.count else { throw XenError(EINVAL, "pci attach", "dom\(domid): a device is listed twice") }
        let be = Self.backendPath(backend: backendDomid, guest: domid)
        let home = "/local/domain/\(domid)"
        guard let name = try xenstore.readIfPresent(home + "/name") ?? (try xenstore.readIfPresent(home + "/domid")).map({ _ in "" }) else {
            throw XenError(ESRCH, "pci attach", "dom\(domid) has no xenstore home \(home)")
        }
        let existing = try exportedDevices(be)
        if let dup = devices.first(where: { d in existing.contains { $0.device == d } }) {
            throw XenError(EEXIST, "pci attach", "\(dup) is already given to dom\(domid)")
        }

        var undo: [() -> Void] = []
        do {
            for d in devices { undo += try grant(d, to: domid, opts: opts) }
            if existing.isEmpty, try xenstore.readIfPresent(be + "/num_devs") == nil {
                try createBackend(be: be, guest: domid, name: name, devices: devices, opts: opts)
                return .created
            }
            try hotAdd(be: be, devices: devices, opts: opts)
            return .hotAdded
        } catch {
            for u in undo.reversed() { u() }
            throw error
        }
    }

    /// The first device set: `libxl__device_generic_add` in one transaction.
    func createBackend(be: String, guest: DomID, name: String, devices: [PCIAddress], opts: PCIDeviceOptions) throws {
        let fe = Self.frontendPath(guest: guest)
        let frontPerms = [XenstorePermission(guest, .none), XenstorePermission(backendDomid, .read)]
        let backPerms = [XenstorePermission(backendDomid, .none), XenstorePermission(guest, .read)]
        try xenstore.transaction { t in
            try removeIfPresent(fe, t)
            try xenstore.mkdir(fe, transaction: t)
            try xenstore.setPermissions(fe, frontPerms, transaction: t)
            for (k, v) in [("backend", be), ("backend-id", String(backendDomid)), ("state", XenState.initialising.xenstoreValue)] {
                try xenstore.write(fe + "/" + k, v, transaction: t)
                try xenstore.setPermissions(fe + "/" + k, frontPerms, transaction: t)
            }
            try removeIfPresent(be, t)
            try xenstore.mkdir(be, transaction: t)
            try xenstore.setPermissions(be, backPerms, transaction: t)
            var kv: [(String, String)] = [("frontend", fe), ("frontend-id", String(guest)), ("online", "1"),
                                          ("state", XenState.initialising.xenstoreValue), ("domain", name)]
            for (i, d) in devices.enumerated() { kv += deviceKeys(i, d, opts) }
            kv.append(("num_devs", String(devices.count)))
            for (k, v) in kv { try xenstore.write(be + "/" + k, v, transaction: t) }
        }
    }

    /// Hot-add to a running guest: wait for Connected, then add the device
    /// keys, `num_devs` and backend state 7 in one transaction, then wait for
    /// the backend and frontend to finish the 7/8 exchange (backend 4).
    func hotAdd(be: String, devices: [PCIAddress], opts: PCIDeviceOptions) throws {
        try waitForBackend(be, .connected)
        try xenstore.transaction { t in
            guard let n = Int(try xenstore.read(be + "/num_devs", transaction: t)), n >= 0 else {
                throw XenError(EINVAL, "pci attach", "\(be)/num_devs is not a number")
            }
            for (i, d) in devices.enumerated() {
                for (k, v) in deviceKeys(n + i, d, opts) { try xenstore.write(be + "/" + k, v, transaction: t) }
            }
            try xenstore.write(be + "/num_devs", String(n + devices.count), transaction: t)
            try xenstore.write(be + "/state", XenState.reconfiguring.xenstoreValue, transaction: t)
        }
        try waitForBackend(be, .connected)
    }

    func deviceKeys(_ i: Int, _ d: PCIAddress, _ opts: PCIDeviceOptions) -> [(String, String)] {
        [("key-\(i)", d.description), ("dev-\(i)", d.description), ("opts-\(i)", opts.xenstoreValue),
         ("state-\(i)", XenState.initialising.xenstoreValue)]
    }

    /// `xl destroy`'s part for a guest that is gone or shutting down: both
    /// directories are removed at once (the backend releases and resets the
    /// devices when its directory goes). The grants die with the domain.
    public func destroy(domid: DomID) {
        try? xenstore.remove(Self.frontendPath(guest: domid))
        try? xenstore.remove(Self.backendPath(backend: backendDomid, guest: domid))
    }

    // MARK: detach

    /// Takes `devices` back from guest `domid`, one at a time as libxl:
    /// `state-i` = 5 and backend 7, wait for 4, then remove and compact the
    /// `*-i` keys; the last device removes both directories. Then the grants
    /// are revoked; every step is tried and the first failure is thrown.
    public func detach(domid: DomID, devices: [PCIAddress]) throws {
        guard !devices.isEmpty else { throw XenError(EINVAL, "pci detach", "dom\(domid): no device given") }
        let be = Self.backendPath(backend: backendDomid, guest: domid)
        var firstError: Error?
        for d in devices {
            try detachXenstore(be: be, guest: domid, device: d)
            do { try revoke(d, from: domid) } catch { firstError = firstError ?? error }
        }
        if let e = firstError { throw e }
    }

    static let perDeviceKeys = ["state", "key", "dev", "vdev", "opts", "vdevfn"]

    func detachXenstore(be: String, guest: DomID, device d: PCIAddress) throws {
        guard let numText = try xenstore.readIfPresent(be + "/num_devs"), let num = Int(numText) else {
            throw XenError(ENOENT, "pci detach", "dom\(guest) has no PCI backend at \(be)")
        }
        try waitForBackend(be, .connected)
        guard let i = try exportedDevices(be).first(where: { $0.device == d })?.index else {
            throw XenError(ENOENT, "pci detach", "\(d) is not given to dom\(guest)")
        }
        try xenstore.transaction { t in
            try xenstore.write(be + "/state-\(i)", XenState.closing.xenstoreValue, transaction: t)
            try xenstore.write(be + "/state", XenState.reconfiguring.xenstoreValue, transaction: t)
        }
        try waitForBackend(be, .connected)
        try xenstore.transaction { t in
            for k in Self.perDeviceKeys { try removeIfPresent(be + "/\(k)-\(i)", t) }
            try xenstore.write(be + "/num_devs", String(num - 1), transaction: t)
            for j in (i + 1)..<max(i + 1, num) {
                for k in Self.perDeviceKeys {
                    guard let v = try xenstore.readIfPresent(be + "/\(k)-\(j)", transaction: t) else { continue }
                    try xenstore.write(be + "/\(k)-\(j - 1)", v, transaction: t)
                    try xenstore.remove(be + "/\(k)-\(j)", transaction: t)
                }
            }
        }
        if num == 1 {
            let fe = Self.frontendPath(guest: guest)
            try xenstore.transaction { t in
                try removeIfPresent(fe, t)
                try removeIfPresent(be, t)
            }
        }
    }

    // MARK: grants

    /// libxl's order: BAR I/O ports and memory, the INTx pirq and its irq
    /// permission, then IOMMU assignment. Returns how to undo each step.
    /// A frontend in the backend's own domain (the loopback case) already
    /// owns the device: nothing is granted or revoked.
    func grant(_ d: PCIAddress, to guest: DomID, opts: PCIDeviceOptions) throws -> [() -> Void] {
        guard let p = permissions, guest != backendDomid else { return [] }
        var undo: [() -> Void] = []
        do {
            for r in try sysfs.resources(d) where r.start != 0 && r.size != 0 {
                if r.isIO {
                    let (first, n) = (UInt32(truncatingIfNeeded: r.start), UInt32(truncatingIfNeeded: r.size))
                    try p.ioportPermission(guest: guest, firstPort: first, ports: n, allow: true)
                    undo.append { try? p.ioportPermission(guest: guest, firstPort: first, ports: n, allow: false) }
                } else {
                    let (first, n) = (r.start >> 12, (r.size + 0xFFF) >> 12)
                    try p.iomemPermission(guest: guest, firstFrame: first, frames: n, allow: true)
                    undo.append { try? p.iomemPermission(guest: guest, firstFrame: first, frames: n, allow: false) }
                }
            }
            let irq = try sysfs.irq(d)
            if irq != 0 {
                let pirq = UInt32(bitPattern: try p.mapPirq(guest: guest, irq: Int32(bitPattern: irq)))
                undo.append { try? p.unmapPirq(guest: guest, pirq: pirq) }
                try p.irqPermission(guest: guest, pirq: pirq, allow: true)
                undo.append { try? p.irqPermission(guest: guest, pirq: pirq, allow: false) }
            }
            if assignToIOMMU {
                try p.assignDevice(d, to: guest, relaxedRDM: opts.rdmPolicy == .relaxed)
                undo.append { try? p.deassignDevice(d, from: guest) }
            }
            return undo
        } catch {
            for u in undo.reversed() { u() }
            throw error
        }
    }

    /// The reverse of `grant`, every step tried (libxl logs and goes on).
    func revoke(_ d: PCIAddress, from guest: DomID) throws {
        guard let p = permissions, guest != backendDomid else { return }
        var firstError: Error?
        func attempt(_ body: () throws -> Void) { do { try body() } catch { firstError = firstError ?? error } }
        attempt {
            for r in try sysfs.resources(d) where r.start != 0 && r.size != 0 {
                if r.isIO {
                    attempt { try p.ioportPermission(guest: guest, firstPort: UInt32(truncatingIfNeeded: r.start),
                                                     ports: UInt32(truncatingIfNeeded: r.size), allow: false) }
                } else {
                    attempt { try p.iomemPermission(guest: guest, firstFrame: r.start >> 12, frames: (r.size + 0xFFF) >> 12, allow: false) }
                }
            }
        }
        attempt {
            let irq = try sysfs.irq(d)
            if irq != 0 {
                attempt { try p.unmapPirq(guest: guest, pirq: irq) }
                attempt { try p.irqPermission(guest: guest, pirq: irq, allow: false) }
            }
        }
        if assignToIOMMU { attempt { try p.deassignDevice(d, from: guest) } }
        if let e = firstError { throw e }
    }

    // MARK: helpers

    /// The `dev-N` entries of a backend directory (none when it is absent).
    public func exportedDevices(_ be: String) throws -> [(index: Int, device: PCIAddress)] {
        guard let numText = try xenstore.readIfPresent(be + "/num_devs") else { return [] }
        guard let num = Int(numText), (0...256).contains(num) else {
            throw XenError(EINVAL, "pci", "\(be)/num_devs is '\(numText)'")
        }
        return try (0..<num).compactMap { i in
            guard let text = try xenstore.readIfPresent(be + "/dev-\(i)") else { return nil }
            return (i, try PCIAddress(parsing: text))
        }
    }

    func removeIfPresent(_ path: String, _ t: XenstoreTransaction) throws {
        do { try xenstore.remove(path, transaction: t) } catch let e as XenError where e.code == ENOENT {}
    }

    /// Polls the backend's `state` until it reads `want` (libxl__wait_for_backend).
    func waitForBackend(_ be: String, _ want: XenState) throws {
        let deadline = ContinuousClock.now + timeout
        var last: String?
        while true {
            last = try xenstore.readIfPresent(be + "/state")
            if last == want.xenstoreValue { return }
            if ContinuousClock.now >= deadline { break }
            Thread.sleep(forTimeInterval: Double(pollInterval.components.attoseconds) / 1e18 + Double(pollInterval.components.seconds))
        }
        let now = last.flatMap { UInt32($0) }.flatMap(XenState.init(rawValue:)).map { "\($0.rawValue) (\($0))" } ?? (last.map { "'\($0)'" } ?? "absent")
        throw XenError(ETIMEDOUT, "pci", "\(be)/state is \(now) after \(timeout); waited for \(want.rawValue) (\(want))")
    }
}
