import PCIBack
import XenHypervisor

/// What libxl does for PCI pass-through, on any hypervisor's xenstore (the
/// mock's in the demo, the real one for `xenpci attach`):
/// it creates both xenbus directories with their permissions, hot-adds and
/// hot-removes devices in one transaction each, and tears the directories
/// down. `xl pci-attach` / `xl pci-detach` in a few lines.
final class Toolstack {
    let xs: XenStore
    let backendDomain: DomID
    static let defaultOpts = "msitranslate=0,power_mgmt=0,permissive=0,rdm_policy=strict"

    init(xenstore: XenStore, backendDomain: DomID = 0) {
        xs = xenstore
        self.backendDomain = backendDomain
    }

    func backendPath(_ dom: DomID) -> String { "/local/domain/\(backendDomain)/backend/pci/\(dom)/0" }
    func frontendPath(_ dom: DomID) -> String { "/local/domain/\(dom)/device/pci/0" }

    /// libxl's device creation: both directories in state Initialising; the
    /// backend's owned by the backend domain and readable by the guest, the
    /// frontend's owned by the guest and readable by the backend.
    func create(_ dom: DomID, name: String, devices: [PCIAddress], opts: String = defaultOpts) throws {
        let b = backendPath(dom), f = frontendPath(dom)
        let frontPerms = [XenstorePermission(dom, .none), XenstorePermission(backendDomain, .read)]
        try xs.transaction { t in
            try xs.write(f + "/backend", b, transaction: t)
            try xs.write(f + "/backend-id", String(backendDomain), transaction: t)
            try xs.write(f + "/state", XenState.initialising.xenstoreValue, transaction: t)
            try xs.setPermissions(f, frontPerms, transaction: t)
            for k in ["backend", "backend-id", "state"] { try xs.setPermissions(f + "/" + k, frontPerms, transaction: t) }
            try xs.mkdir(b, transaction: t)
            try xs.setPermissions(b, [XenstorePermission(backendDomain, .none), XenstorePermission(dom, .read)], transaction: t)
            try xs.write(b + "/frontend", f, transaction: t)
            try xs.write(b + "/frontend-id", String(dom), transaction: t)
            try xs.write(b + "/online", "1", transaction: t)
            try xs.write(b + "/domain", name, transaction: t)
            for (n, a) in devices.enumerated() { try writeDevice(b, n, a, opts, t) }
            try xs.write(b + "/num_devs", String(devices.count), transaction: t)
            try xs.write(b + "/state", XenState.initialising.xenstoreValue, transaction: t)
        }
    }

    private func writeDevice(_ b: String, _ n: Int, _ a: PCIAddress, _ opts: String, _ t: XenstoreTransaction) throws {
        try xs.write(b + "/dev-\(n)", a.description, transaction: t)
        try xs.write(b + "/key-\(n)", a.description, transaction: t)
        try xs.write(b + "/opts-\(n)", opts, transaction: t)
        try xs.write(b + "/state-\(n)", XenState.initialising.xenstoreValue, transaction: t)
    }

    /// The `dev-N` entries and their `state-N`, by host address.
    func entries(_ dom: DomID) throws -> [(index: Int, host: PCIAddress, state: XenState?)] {
        let b = backendPath(dom)
        guard let numText = try xs.readIfPresent(b + "/num_devs"), let num = Int(numText) else { return [] }
        return try (0..<num).compactMap { n in
            guard let text = try xs.readIfPresent(b + "/dev-\(n)"), let a = try? PCIAddress(parsing: text) else { return nil }
            let st = try xs.readIfPresent(b + "/state-\(n)").flatMap(XenState.init(xenstore:))
            return (n, a, st)
        }
    }

    /// Whether `host` is in the guest's configuration and not on its way out.
    func isAssigned(_ dom: DomID, _ host: PCIAddress) throws -> Bool {
        try entries(dom).contains { $0.host == host && $0.state != .closing && $0.state != .closed }
    }

    /// `xl pci-attach`: a new `dev-N` with `state-N` = 1 and the backend
    /// told to reconfigure, in one transaction.
    func hotAdd(_ dom: DomID, _ a: PCIAddress, opts: String = defaultOpts) throws {
        let b = backendPath(dom)
        guard try !isAssigned(dom, a) else { throw CLIError.failure("hot-add \(a): already assigned to dom\(dom)") }
        try xs.transaction { t in
            let n = Int(try xs.read(b + "/num_devs", transaction: t)) ?? 0
            try writeDevice(b, n, a, opts, t)
            try xs.write(b + "/num_devs", String(n + 1), transaction: t)
            try xs.write(b + "/state", XenState.reconfiguring.xenstoreValue, transaction: t)
        }
    }

    /// `xl pci-detach`: `state-N` = 5 and the backend told to reconfigure.
    func hotRemove(_ dom: DomID, _ a: PCIAddress) throws {
        let b = backendPath(dom)
        guard let e = try entries(dom).first(where: { $0.host == a && $0.state != .closing && $0.state != .closed }) else {
            throw CLIError.failure("hot-remove \(a): not assigned to dom\(dom)")
        }
        try xs.transaction { t in
            try xs.write(b + "/state-\(e.index)", XenState.closing.xenstoreValue, transaction: t)
            try xs.write(b + "/state", XenState.reconfiguring.xenstoreValue, transaction: t)
        }
    }

    /// `xl destroy`'s part: both directories go.
    func destroy(_ dom: DomID) {
        try? xs.remove(frontendPath(dom))
        try? xs.remove(backendPath(dom))
    }
}
