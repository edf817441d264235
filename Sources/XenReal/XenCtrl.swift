import CXenPCI
import Foundation
import XenHypervisor
import XenToolstack

/// A libxenctrl handle (/dev/xen/privcmd): the dom0 calls of PCI
/// pass-through. Errors carry the call's name and its arguments.
public final class XenCtrl: @unchecked Sendable {
    private var handle: OpaquePointer?
    private let lock = NSLock()

    public init() throws {
        try XenLibrary.xenctrl.load()
        errno = 0
        guard let h = xenpci_xenctrl.xc_interface_open!(nil, nil, 0) else {
            throw XenError(lastErrno(), "xc_interface_open", "(/dev/xen/privcmd)")
        }
        handle = h
    }

    deinit { close() }

    public func close() {
        let h: OpaquePointer? = lock.withLock { defer { handle = nil }; return handle }
        if let h { _ = xenpci_xenctrl.xc_interface_close!(h) }
    }

    private func h(_ op: String) throws -> OpaquePointer {
        guard let h = lock.withLock({ handle }) else { throw XenError(EBADF, op, "libxenctrl handle closed") }
        return h
    }

    /// libxl's encoding of a machine SBDF for the assign domctls.
    static func sbdf(_ d: PCIAddress) -> UInt32 {
        UInt32(d.segment) << 16 | UInt32(d.bus) << 8 | UInt32(d.devfn)
    }

    public func assignDevice(_ d: PCIAddress, to guest: DomID, relaxedRDM: Bool) throws {
        let x = try h("xc_assign_device")
        try xenCall("xc_assign_device", "\(d) to dom\(guest)") {
            xenpci_xenctrl.xc_assign_device!(x, UInt32(guest), Self.sbdf(d), relaxedRDM ? XENPCI_DOMCTL_DEV_RDM_RELAXED : 0)
        }
    }

    public func deassignDevice(_ d: PCIAddress, from guest: DomID) throws {
        let x = try h("xc_deassign_device")
        try xenCall("xc_deassign_device", "\(d) from dom\(guest)") {
            xenpci_xenctrl.xc_deassign_device!(x, UInt32(guest), Self.sbdf(d))
        }
    }

    public func iomemPermission(guest: DomID, firstFrame: UInt64, frames: UInt64, allow: Bool) throws {
        let x = try h("xc_domain_iomem_permission")
        try xenCall("xc_domain_iomem_permission", "dom\(guest) frames 0x\(String(firstFrame, radix: 16))+\(frames) \(allow ? "allow" : "deny")") {
            xenpci_xenctrl.xc_domain_iomem_permission!(x, UInt32(guest), UInt(firstFrame), UInt(frames), allow ? 1 : 0)
        }
    }

    public func ioportPermission(guest: DomID, firstPort: UInt32, ports: UInt32, allow: Bool) throws {
        let x = try h("xc_domain_ioport_permission")
        try xenCall("xc_domain_ioport_permission", "dom\(guest) ports 0x\(String(firstPort, radix: 16))+\(ports) \(allow ? "allow" : "deny")") {
            xenpci_xenctrl.xc_domain_ioport_permission!(x, UInt32(guest), firstPort, ports, allow ? 1 : 0)
        }
    }

    /// Maps a host GSI for `guest` (libxl passes the irq as both index and pirq).
    public func mapPirq(guest: DomID, irq: Int32) throws -> Int32 {
        let x = try h("xc_physdev_map_pirq")
        var pirq = irq
        try xenCall("xc_physdev_map_pirq", "irq \(irq) for dom\(guest)") {
            xenpci_xenctrl.xc_physdev_map_pirq!(x, UInt32(guest), irq, &pirq)
        }
        return pirq
    }

    public func irqPermission(guest: DomID, pirq: UInt32, allow: Bool) throws {
        let x = try h("xc_domain_irq_permission")
        try xenCall("xc_domain_irq_permission", "dom\(guest) pirq \(pirq) \(allow ? "allow" : "deny")") {
            xenpci_xenctrl.xc_domain_irq_permission!(x, UInt32(guest), pirq, allow)
        }
    }

    /// Maps one MSI (entry 0, no table) or MSI-X entry of a segment-0 device
    /// for `guest`; Xen chooses the pirq.
    public func mapPirqMSI(guest: DomID, device d: PCIAddress, entry: Int32, tableBase: UInt64) throws -> UInt32 {
        let x = try h("xc_physdev_map_pirq_msi")
        let what = "\(d) entry \(entry) for dom\(guest)"
        guard d.segment == 0 else {
            throw XenError(ENOSYS, "xc_physdev_map_pirq_msi", "\(what): segment \(d.segment) cannot be named (the call takes bus and devfn only)")
        }
        var pirq: Int32 = -1
        try xenCall("xc_physdev_map_pirq_msi", what) {
            xenpci_xenctrl.xc_physdev_map_pirq_msi!(x, UInt32(guest), -1, &pirq, Int32(d.devfn), Int32(d.bus), entry, tableBase)
        }
        return UInt32(bitPattern: pirq)
    }

    public func unmapPirq(guest: DomID, pirq: UInt32) throws {
        let x = try h("xc_physdev_unmap_pirq")
        try xenCall("xc_physdev_unmap_pirq", "dom\(guest) pirq \(pirq)") {
            xenpci_xenctrl.xc_physdev_unmap_pirq!(x, UInt32(guest), Int32(bitPattern: pirq))
        }
    }
}

/// MSI and MSI-X vectors of host devices mapped to pirqs of a guest.
public final class XenInterruptRouting: InterruptRouting, @unchecked Sendable {
    let ctrl: XenCtrl
    let sysfs: PCISysfs
    private let lock = NSLock()
    private var mapped: [(guest: DomID, pirq: UInt32)] = []

    public init(ctrl: XenCtrl, sysfs: PCISysfs = PCISysfs()) {
        self.ctrl = ctrl
        self.sysfs = sysfs
    }

    /// MSI: one vector (multi-vector MSI has no libxenctrl call; Linux's
    /// pciback refuses it too). MSI-X: table entries 0..<count, the table's
    /// address read from the device's sysfs config and resource files.
    public func mapMSI(device: PCIAddress, guest: DomID, count: Int, msix: Bool) throws -> [UInt32] {
        let op = "xc_physdev_map_pirq_msi"
        guard (1...2048).contains(count) else { throw XenError(EINVAL, op, "\(device) for dom\(guest): \(count) vectors") }
        var tableBase: UInt64 = 0
        if msix {
            tableBase = try sysfs.msixTableAddress(device)
        } else if count != 1 {
            throw XenError(EINVAL, op, "\(device) for dom\(guest): \(count) MSI vectors (only one can be mapped)")
        }
        var pirqs: [UInt32] = []
        do {
            for entry in 0..<count {
                pirqs.append(try ctrl.mapPirqMSI(guest: guest, device: device, entry: Int32(entry), tableBase: tableBase))
            }
        } catch {
            for p in pirqs { try? ctrl.unmapPirq(guest: guest, pirq: p) }
            throw error
        }
        lock.withLock { mapped += pirqs.map { (guest, $0) } }
        return pirqs
    }

    public func unmapPirq(_ pirq: UInt32, guest: DomID) throws {
        guard lock.withLock({ mapped.contains { $0 == (guest, pirq) } }) else {
            throw XenError(EINVAL, "xc_physdev_unmap_pirq", "pirq \(pirq) of dom\(guest) is not mapped through this handle")
        }
        try ctrl.unmapPirq(guest: guest, pirq: pirq)
        lock.withLock { mapped.removeAll { $0 == (guest, pirq) } }
    }

    public func close() {
        let all = lock.withLock { defer { mapped = [] }; return mapped }
        for m in all { try? ctrl.unmapPirq(guest: m.guest, pirq: m.pirq) }
    }
}

/// libxenctrl is the real provider of the toolstack's pass-through grants.
extension XenCtrl: PassthroughPermissions {}
