import Foundation
import Logging
import PCIBack
import PCIModel
import XenHypervisor
import XenPCIABI

/// `xenpci backend --hypervisor xen`: pciback in this (control) domain on
/// the real Xen, serving the host's own PCI functions through sysfs
/// (`config`, `resource`, `reset`): every read and mediated write reaches the
/// hardware. Only functions without a host driver (or held by a stub driver
/// such as pciback or pci-stub) are claimed.
final class XenBackendHost {
    let back: PCIBack
    /// The daemon logs through swift-log (stderr by default; a service
    /// manager or another LogHandler takes it from there).
    let log: Logger
    let sysfsRoot: String

    /// Functions a previous backend enabled in dom0 (kept next to the state file).
    let enabledPath: String?

    init(hypervisor: Hypervisor, topology: PCIBack.Topology, sysfsRoot: String, statePath: String? = nil,
         spin: Duration = .zero, log: Logger = Logger(label: "xenpci.pciback")) throws {
        self.log = log
        self.sysfsRoot = sysfsRoot
        var o = PCIBack.Options()
        o.topology = topology
        o.spinBeforeBlock = spin
        o.spinYields = false // guests have vCPUs of their own; a yield is a system call through Xen
        o.allowHostDriverReadOnly = false // a host driver's device is refused, never shared
        back = try PCIBack(hypervisor: hypervisor, options: o, stateStore: statePath.map(FileStateStore.init(path:)))
        // `status` reads guests' names and xenbus states; without it they show as unknown.
        statusStore = try? hypervisor.openXenStore()
        enabledPath = statePath.map { ($0 as NSString).deletingLastPathComponent + "/enabled-in-dom0" }
        previouslyEnabled = enabledPath.flatMap { try? String(contentsOfFile: $0, encoding: .utf8) }
            .map { $0.split(separator: "\n").compactMap { try? PCIAddress(parsing: String($0)) } } ?? []
        back.onEvent = { [unowned self] e in
            let line = describe(e, listing: self.back.listing())
            if case .error = e { self.log.error("\(line)") } else { self.log.info("\(line)") }
        }
    }

    private let statusStore: XenStore?

    /// Functions this process enabled in dom0 (sysfs `enable`), disabled again at stop.
    private var enabled: [PCIAddress] = []
    private let previouslyEnabled: [PCIAddress]

    /// Claims what the hide list names (all of it, or nothing).
    func claim(hide: String) throws {
        let available = try listSysfsDevices(root: sysfsRoot)
        let chosen: [PCIAddress]
        do {
            chosen = try back.claim(hideList: hide, from: available) { a in
                self.enableInDom0(a)
                return try SysfsPCIDevice(root: self.sysfsRoot, address: a, inMemory: false)
            }
        } catch {
            disableInDom0()
            throw error
        }
        guard !chosen.isEmpty else { disableInDom0(); throw CLIError.failure("no device to export (the hide list selects none)") }
        saveEnabled() // a backend killed from now on leaves the list for the next one
        for i in back.listing() {
            log.info("[dom0 pciback] claimed \(i.address) \(hex(i.vendorID, 4)):\(hex(i.deviceID, 4)) irq \(i.irq)\(i.driver.map { " (held by \($0))" } ?? "")")
        }
    }

    func start() throws { try back.start() }

    /// Guests told Closing, grants unmapped, ports unbound, devices reset and
    /// released; or, keeping guests, everything left for the next backend.
    func stop(keepGuests: Bool = false) {
        back.stop(keepGuests: keepGuests)
        statusStore?.close()
        if keepGuests {
            saveEnabled()
        } else {
            disableInDom0()
        }
    }

    func saveEnabled() {
        guard let p = enabledPath else { return }
        try? (enabled.map(\.description).joined(separator: "\n") + "\n").write(toFile: p, atomically: true, encoding: .utf8)
    }

    /// What Linux's pciback gets from pci_enable_device() (at bind, and when
    /// the guest turns decoding on): ACPI routes the function's INTx pin to
    /// its GSI, dom0 sets that GSI up in Xen, and sysfs `irq` becomes the GSI
    /// (before, it is the firmware's interrupt line: a legacy IRQ the pin is
    /// not wired to). The toolstack maps that irq as the guest's pirq and the
    /// interrupt line the guest reads is it. Only for a function no driver
    /// holds (the kernel refuses otherwise; a stub driver enabled it itself).
    func enableInDom0(_ a: PCIAddress) {
        let dir = "\(sysfsRoot)/bus/pci/devices/\(a)"
        guard (try? FileManager.default.destinationOfSymbolicLink(atPath: dir + "/driver")) == nil else { return }
        let on = (try? String(contentsOfFile: dir + "/enable", encoding: .utf8)).map { !$0.hasPrefix("0") }
        // Enabled by a backend that stopped for a restart: ours to disable at stop.
        if on == true, previouslyEnabled.contains(a) { enabled.append(a); return }
        guard on == false else { return }
        if writeSysfs(dir + "/enable", "1") {
            enabled.append(a)
            let irq = (try? String(contentsOfFile: dir + "/irq", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
            log.info("[dom0 pciback] \(a): enabled in dom0 for its interrupt routing (irq \(irq))")
        }
    }

    /// Functions this process enabled in dom0, disabled again (`addresses`:
    /// only those, for a run-time release).
    func disableInDom0(_ addresses: [PCIAddress]) {
        for a in enabled.reversed() where addresses.contains(a) { _ = writeSysfs("\(sysfsRoot)/bus/pci/devices/\(a)/enable", "0") }
        enabled.removeAll { addresses.contains($0) }
    }

    private func disableInDom0() {
        for a in enabled.reversed() { _ = writeSysfs("\(sysfsRoot)/bus/pci/devices/\(a)/enable", "0") }
        enabled = []
        saveEnabled()
    }

    private func writeSysfs(_ path: String, _ value: String) -> Bool {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return write(fd, value, value.utf8.count) == value.utf8.count
    }
}

/// One line for a backend event, as `xenpci demo` and `xenpci backend` print them.
func describe(_ e: PCIBack.Event, listing: @autoclosure () -> [ClaimedDeviceInfo]) -> String {
    let tag = "[dom0 pciback]"
    switch e {
    case .backendState(let d, let s): return "\(tag) backend/pci/\(d)/0 state \(s) (\(s.rawValue))"
    case .frontendState(let d, let s): return "\(tag) dom\(d) frontend state \(s) (\(s.rawValue))"
    case .exported(let d, let h, let g): return "\(tag) exported \(h) to dom\(d) as \(g)"
    case .unexported(let d, let h):
        let ro = listing().first { $0.address == h }?.readOnly ?? false
        return "\(tag) took \(h) back from dom\(d)\(ro ? " (read-only: never written)" : ": reset, golden state restored")"
    case .connected(let d, let p): return "\(tag) dom\(d) connected: shared page mapped, event channel port \(p)"
    case .disconnected(let d): return "\(tag) dom\(d) disconnected"
    case .error(let d, let m), .notice(let d, let m): return "\(tag) \(d.map { "dom\($0): " } ?? "")\(m)"
    }
}

/// A swift-log handler that writes to a `Console` (tests capture it).
struct ConsoleLogHandler: LogHandler {
    let console: Console
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) {
        console.err("\(event.level) \(event.message)")
    }
}

/// Xen as the administrator's daemon sees it: functions of this host's
/// sysfs, enabled in dom0 while claimed (as the hide list's are).
extension XenBackendHost: DaemonHost {
    func openFunction(_ a: PCIAddress) throws -> PCIDeviceAccess {
        guard try listSysfsDevices(root: sysfsRoot).contains(a) else {
            throw CLIError.failure("\(a): no such function in \(sysfsRoot)/bus/pci/devices")
        }
        enableInDom0(a)
        do { return try SysfsPCIDevice(root: sysfsRoot, address: a, inMemory: false) } catch {
            released([a])
            throw error
        }
    }

    /// Linux has a `reset` file only for a function with a reset method.
    func hasResetMethod(_ access: PCIDeviceAccess) -> Bool {
        guard let d = access as? SysfsPCIDevice else { return true }
        return FileManager.default.fileExists(atPath: d.path + "/reset")
    }

    func released(_ addresses: [PCIAddress]) {
        disableInDom0(addresses)
        saveEnabled()
    }

    func logInfo(_ s: String) { log.info("\(s)") }
    func logError(_ s: String) { log.error("\(s)") }
    func xenstoreRead(_ path: String) -> String? { try? statusStore?.read(path) }

    /// Linux 5.15+ lists the methods it tries in reset_method ("flr bus");
    /// older kernels only have `reset` when there is one.
    func resetMethod(_ a: PCIAddress) -> String {
        let dir = "\(sysfsRoot)/bus/pci/devices/\(a)"
        if let m = try? String(contentsOfFile: dir + "/reset_method", encoding: .utf8).split(separator: " ").first {
            return m.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        return FileManager.default.fileExists(atPath: dir + "/reset") ? "kernel" : "none"
    }
}
