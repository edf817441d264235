import Foundation
import PCIBack
import PCIModel
import XenHypervisor

/// `xenpci backend --hypervisor xen`: pciback in this (control) domain on
/// the real Xen, serving the host's own PCI functions through sysfs
/// (`config`, `resource`, `reset`): every read and mediated write reaches the
/// hardware. Only functions without a host driver (or held by a stub driver
/// such as pciback or pci-stub) are claimed.
final class XenBackendHost {
    let back: PCIBack
    let console: Console
    let sysfsRoot: String

    init(hypervisor: Hypervisor, topology: PCIBack.Topology, sysfsRoot: String, console: Console) throws {
        self.console = console
        self.sysfsRoot = sysfsRoot
        var o = PCIBack.Options()
        o.topology = topology
        o.allowHostDriverReadOnly = false // a host driver's device is refused, never shared
        back = try PCIBack(hypervisor: hypervisor, options: o)
        back.onEvent = { [unowned self] e in self.console.err(describe(e, listing: self.back.listing())) }
    }

    /// Claims what the hide list names (all of it, or nothing).
    func claim(hide: String) throws {
        let available = try listSysfsDevices(root: sysfsRoot)
        let chosen = try back.claim(hideList: hide, from: available) { a in
            try SysfsPCIDevice(root: self.sysfsRoot, address: a, inMemory: false)
        }
        guard !chosen.isEmpty else { throw CLIError.failure("no device to export (the hide list selects none)") }
        for i in back.listing() {
            console.err("[dom0 pciback] claimed \(i.address) \(hex(i.vendorID, 4)):\(hex(i.deviceID, 4)) irq \(i.irq)\(i.driver.map { " (held by \($0))" } ?? "")")
        }
    }

    func start() throws { try back.start() }

    /// Guests told Closing, grants unmapped, ports unbound, devices reset and released.
    func stop() { back.stop() }
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
    case .error(let d, let m): return "\(tag) \(d.map { "dom\($0): " } ?? "")\(m)"
    }
}
