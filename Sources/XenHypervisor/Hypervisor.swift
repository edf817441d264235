import XenPCIABI
import PCIModel

/// What both drivers ask of a hypervisor: who they are, xenstore, event channels.
public protocol XenServices: AnyObject, Sendable {
    /// "mock" or "xen", for messages.
    var name: String { get }
    /// The calling domain's id.
    func domid() throws -> DomID
    func openXenStore() throws -> XenStore
    func openEventChannels() throws -> EventChannels
}

/// What pciback(4) is handed: it maps the guest's page and routes the
/// host device's interrupts, and never shares pages.
public protocol BackendServices: XenServices {
    func openGrantTable() throws -> GrantTable
    func openInterruptRouting() throws -> InterruptRouting
}

/// What xpci(4) is handed: it shares its page, and never maps another
/// domain's pages or routes host interrupts.
public protocol FrontendServices: XenServices {
    func openGrantSharing() throws -> GrantSharing
}

/// A whole hypervisor binding (the mock, real Xen): both drivers' services.
/// The command picks one and hands each driver only its part.
public protocol Hypervisor: BackendServices, FrontendServices {}

/// Physical interrupt routing for pass-through (PHYSDEVOP map/unmap pirq,
/// prepare/release MSI-X): what a backend needs to give a guest MSI or MSI-X
/// vectors of a host device.
///
/// Xen learns where a function's MSI-X table is only while dom0 owns the
/// function; once the function is assigned to a guest, mapping an MSI-X
/// vector fails (ENODATA) unless the table was registered beforehand with
/// `prepareMSIX`, as Linux's pciback does when it takes a function.
public protocol InterruptRouting: AnyObject, Sendable {
    /// Registers the MSI-X table of `device` with the hypervisor (at claim,
    /// while dom0 owns the function, memory decoding on).
    func prepareMSIX(device: PCIAddress) throws
    /// Undoes `prepareMSIX`; every vector must have been unmapped first.
    func releaseMSIX(device: PCIAddress) throws
    /// Maps the single MSI vector of `device` for `guest`; returns its pirq.
    func mapMSI(device: PCIAddress, guest: DomID) throws -> UInt32
    /// Maps exactly the MSI-X table `entries` of `device` for `guest`, one
    /// pirq per entry, in order. `tableBase` is the start of the BAR holding
    /// the table (what Xen compares with the BAR it reads). All or nothing.
    func mapMSIX(device: PCIAddress, guest: DomID, entries: [UInt16], tableBase: UInt64) throws -> [UInt32]
    func unmapPirq(_ pirq: UInt32, guest: DomID) throws
    /// Takes over pirqs a previous backend mapped for `guest` (they outlive
    /// the process that mapped them), so this handle unmaps them later.
    func adopt(pirqs: [UInt32], guest: DomID, device: PCIAddress) throws
    /// Takes over an MSI-X table a previous backend prepared.
    func adoptPreparedMSIX(device: PCIAddress) throws
    /// Unmaps every pirq still mapped and releases every MSI-X table still
    /// prepared through this handle.
    func close()
    /// Closes the handle leaving every pirq mapped and every table prepared:
    /// a planned restart hands them to the next backend.
    func abandon()
}
