import Foundation
import Synchronization
import XenHypervisor
import XenToolstack
import XenPCIABI
import PCIModel
import CXenLibs

/// A libxenctrl handle (/dev/xen/privcmd): the dom0 calls of PCI
/// pass-through. Errors carry the call's name and its arguments.
public final class XenCtrl: Sendable {
    private let handle: Mutex<LibHandle?>

    public init() throws {
        try XenLibrary.xenctrl.load()
        errno = 0
        guard let h = libxenctrl.xc_interface_open!(nil, nil, 0) else {
            throw XenError(lastErrno(), "xc_interface_open", "(/dev/xen/privcmd)")
        }
        handle = Mutex(LibHandle(h))
    }

    deinit { close() }

    public func close() {
        let h = handle.withLock { h in defer { h = nil }; return h }
        if let h { _ = libxenctrl.xc_interface_close!(h.pointer) }
    }

    private func h(_ op: String) throws -> OpaquePointer {
        guard let h = handle.withLock({ $0 }) else { throw XenError(EBADF, op, "libxenctrl handle closed") }
        return h.pointer
    }

    /// libxl's encoding of a machine SBDF for the assign domctls.
    static func sbdf(_ d: PCIAddress) -> UInt32 {
        UInt32(d.segment) << 16 | UInt32(d.bus) << 8 | UInt32(d.devfn)
    }

    public func assignDevice(_ d: PCIAddress, to guest: DomID, relaxedRDM: Bool) throws {
        let x = try h("xc_assign_device")
        try xenCall("xc_assign_device", "\(d) to dom\(guest)") {
            libxenctrl.xc_assign_device!(x, UInt32(guest), Self.sbdf(d), relaxedRDM ? XENPCI_DOMCTL_DEV_RDM_RELAXED : 0)
        }
    }

    public func deassignDevice(_ d: PCIAddress, from guest: DomID) throws {
        let x = try h("xc_deassign_device")
        try xenCall("xc_deassign_device", "\(d) from dom\(guest)") {
            libxenctrl.xc_deassign_device!(x, UInt32(guest), Self.sbdf(d))
        }
    }

    public func iomemPermission(guest: DomID, firstFrame: UInt64, frames: UInt64, allow: Bool) throws {
        let x = try h("xc_domain_iomem_permission")
        try xenCall("xc_domain_iomem_permission", "dom\(guest) frames 0x\(String(firstFrame, radix: 16))+\(frames) \(allow ? "allow" : "deny")") {
            libxenctrl.xc_domain_iomem_permission!(x, UInt32(guest), UInt(firstFrame), UInt(frames), allow ? 1 : 0)
        }
    }

    public func ioportPermission(guest: DomID, firstPort: UInt32, ports: UInt32, allow: Bool) throws {
        let x = try h("xc_domain_ioport_permission")
        try xenCall("xc_domain_ioport_permission", "dom\(guest) ports 0x\(String(firstPort, radix: 16))+\(ports) \(allow ? "allow" : "deny")") {
            libxenctrl.xc_domain_ioport_permission!(x, UInt32(guest), firstPort, ports, allow ? 1 : 0)
        }
    }

    /// Maps a host GSI for `guest` (libxl passes the irq as both index and pirq).
    public func mapPirq(guest: DomID, irq: Int32) throws -> Int32 {
        let x = try h("xc_physdev_map_pirq")
        var pirq = irq
        try xenCall("xc_physdev_map_pirq", "irq \(irq) for dom\(guest)") {
            libxenctrl.xc_physdev_map_pirq!(x, UInt32(guest), irq, &pirq)
        }
        return pirq
    }

    public func irqPermission(guest: DomID, pirq: UInt32, allow: Bool) throws {
        let x = try h("xc_domain_irq_permission")
        try xenCall("xc_domain_irq_permission", "dom\(guest) pirq \(pirq) \(allow ? "allow" : "deny")") {
            libxenctrl.xc_domain_irq_permission!(x, UInt32(guest), pirq, allow)
        }
    }

    public func unmapPirq(guest: DomID, pirq: UInt32) throws {
        let x = try h("xc_physdev_unmap_pirq")
        try xenCall("xc_physdev_unmap_pirq", "dom\(guest) pirq \(pirq)") {
            libxenctrl.xc_physdev_unmap_pirq!(x, UInt32(guest), Int32(bitPattern: pirq))
        }
    }
}

/// The physdev hypercalls libxenctrl has no call for, through libxencall:
/// PHYSDEVOP_prepare_msix / release_msix, and map_pirq of type MSI_SEG
/// (libxenctrl's xc_physdev_map_pirq_msi cannot name a PCI segment).
final class XenPhysdev: Sendable {
    private let handle: Mutex<LibHandle?>

    init() throws {
        try XenLibrary.xencall.load()
        errno = 0
        guard let h = libxencall.xencall_open!(nil, 0) else { throw XenError(lastErrno(), "xencall_open", "(/dev/xen/privcmd)") }
        handle = Mutex(LibHandle(h))
    }

    deinit { close() }

    func close() {
        let h = handle.withLock { h in defer { h = nil }; return h }
        if let h { _ = libxencall.xencall_close!(h.pointer) }
    }

    /// Runs PHYSDEVOP `cmd` on `arg`, copied into a hypercall-safe buffer
    /// and back; the hypercall's own -errno comes back as errno.
    private func physdevOp<T>(_ cmd: Int32, _ name: String, _ what: String, _ arg: inout T) throws {
        guard let h = handle.withLock({ $0 })?.pointer else { throw XenError(EBADF, name, "libxencall handle closed") }
        guard let buf = libxencall.xencall_alloc_buffer!(h, MemoryLayout<T>.size) else {
            throw XenError(lastErrno(), name, "\(what): hypercall buffer")
        }
        defer { libxencall.xencall_free_buffer!(h, buf) }
        let typed = buf.bindMemory(to: T.self, capacity: 1)
        typed.initialize(to: arg)
        try xenCall(name, what) {
            libxencall.xencall2!(h, UInt32(XENPCI_HYPERVISOR_physdev_op), UInt64(cmd), UInt64(UInt(bitPattern: buf)))
        }
        arg = typed.pointee
    }

    func prepareMSIX(_ d: PCIAddress, release: Bool) throws {
        var dev = xenpci_physdev_pci_device(seg: d.segment, bus: d.bus, devfn: d.devfn)
        try physdevOp(release ? XENPCI_PHYSDEVOP_release_msix : XENPCI_PHYSDEVOP_prepare_msix,
                      release ? "PHYSDEVOP_release_msix" : "PHYSDEVOP_prepare_msix", "\(d)", &dev)
    }

    /// One MSI vector (`entry` nil) or MSI-X table entry for `guest`; Xen
    /// chooses the pirq.
    func mapMSI(_ d: PCIAddress, guest: DomID, entry: UInt16?, tableBase: UInt64) throws -> UInt32 {
        var m = xenpci_physdev_map_pirq()
        m.domid = guest
        m.type = XENPCI_MAP_PIRQ_TYPE_MSI_SEG
        m.index = -1
        m.pirq = -1
        m.bus = Int32(d.segment) << 16 | Int32(d.bus)
        m.devfn = Int32(d.devfn)
        m.entry_nr = Int32(entry ?? 0)
        m.table_base = entry == nil ? 0 : tableBase
        let what = entry.map { "MSI-X of \(d) entry \($0) (table BAR at 0x\(String(tableBase, radix: 16))) for dom\(guest)" }
            ?? "MSI of \(d) for dom\(guest)"
        try physdevOp(XENPCI_PHYSDEVOP_map_pirq, "PHYSDEVOP_map_pirq", what, &m)
        guard m.pirq > 0 else { throw XenError(EIO, "PHYSDEVOP_map_pirq", "\(what): Xen returned pirq \(m.pirq)") }
        return UInt32(m.pirq)
    }
}

/// MSI and MSI-X vectors of host devices mapped to pirqs of a guest, and
/// the MSI-X tables registered with Xen. Everything mapped or prepared
/// through this handle is undone by `close()`.
public final class XenInterruptRouting: InterruptRouting {
    let ctrl: XenCtrl
    let physdev: XenPhysdev
    private struct Held {
        var mapped: [(guest: DomID, pirq: UInt32)] = []
        var prepared: Set<PCIAddress> = []
    }
    private let held = Mutex(Held())

    init(ctrl: XenCtrl, physdev: XenPhysdev) {
        self.ctrl = ctrl
        self.physdev = physdev
    }

    public func prepareMSIX(device: PCIAddress) throws {
        do {
            try physdev.prepareMSIX(device, release: false)
        } catch let e as XenError where e.code == EBUSY {
            // Already registered: a backend that died left it so (or vectors
            // are mapped); ours to release from now on. Only a table with
            // vectors still mapped refuses the release later.
        }
        held.withLock { _ = $0.prepared.insert(device) }
    }

    public func releaseMSIX(device: PCIAddress) throws {
        guard held.withLock({ $0.prepared.contains(device) }) else {
            throw XenError(EINVAL, "PHYSDEVOP_release_msix", "\(device): not prepared through this handle")
        }
        try physdev.prepareMSIX(device, release: true)
        held.withLock { _ = $0.prepared.remove(device) }
    }

    public func mapMSI(device: PCIAddress, guest: DomID) throws -> UInt32 {
        let p = try physdev.mapMSI(device, guest: guest, entry: nil, tableBase: 0)
        held.withLock { $0.mapped.append((guest, p)) }
        return p
    }

    public func mapMSIX(device: PCIAddress, guest: DomID, entries: [UInt16], tableBase: UInt64) throws -> [UInt32] {
        let op = "PHYSDEVOP_map_pirq"
        guard (1...2048).contains(entries.count), Set(entries).count == entries.count else {
            throw XenError(EINVAL, op, "MSI-X of \(device) for dom\(guest): entries \(entries)")
        }
        var pirqs: [UInt32] = []
        do {
            for e in entries { pirqs.append(try physdev.mapMSI(device, guest: guest, entry: e, tableBase: tableBase)) }
        } catch {
            for p in pirqs { try? ctrl.unmapPirq(guest: guest, pirq: p) }
            throw error
        }
        held.withLock { $0.mapped += pirqs.map { (guest, $0) } }
        return pirqs
    }

    public func unmapPirq(_ pirq: UInt32, guest: DomID) throws {
        guard held.withLock({ $0.mapped.contains { $0 == (guest, pirq) } }) else {
            throw XenError(EINVAL, "xc_physdev_unmap_pirq", "pirq \(pirq) of dom\(guest) is not mapped through this handle")
        }
        // Forgotten even when Xen refuses: a dead guest's pirqs went with it.
        defer { held.withLock { $0.mapped.removeAll { $0 == (guest, pirq) } } }
        try ctrl.unmapPirq(guest: guest, pirq: pirq)
    }

    public func adopt(pirqs: [UInt32], guest: DomID, device: PCIAddress) throws {
        held.withLock { $0.mapped += pirqs.map { (guest, $0) } }
    }

    public func adoptPreparedMSIX(device: PCIAddress) throws {
        held.withLock { _ = $0.prepared.insert(device) }
    }

    public func abandon() {
        held.withLock { $0 = Held() }
        physdev.close()
    }

    public func close() {
        let (all, tables) = held.withLock { h in defer { h = Held() }; return (h.mapped, h.prepared) }
        for m in all { try? ctrl.unmapPirq(guest: m.guest, pirq: m.pirq) }
        for d in tables.sorted() { try? physdev.prepareMSIX(d, release: true) }
        physdev.close()
    }
}

/// libxenctrl is the real provider of the toolstack's pass-through grants.
extension XenCtrl: PassthroughPermissions {}
