/// What a driver needs from a hypervisor, and nothing more. Drivers are
/// written against this; the mock and the real Xen binding implement it.
public protocol Hypervisor: AnyObject {
    /// "mock" or "xen", for messages.
    var name: String { get }
    /// The calling domain's id.
    func domid() throws -> DomID
    func openXenStore() throws -> XenStore
    func openEventChannels() throws -> EventChannels
    func openGrantTable() throws -> GrantTable
    func openGrantSharing() throws -> GrantSharing
    func openInterruptRouting() throws -> InterruptRouting
}

/// Physical interrupt routing for pass-through (PHYSDEVOP map/unmap pirq):
/// what a backend needs to give a guest MSI or MSI-X vectors of a host device.
public protocol InterruptRouting: AnyObject {
    /// Maps `count` vectors of `device` for `guest`; one pirq per vector.
    func mapMSI(device: PCIAddress, guest: DomID, count: Int, msix: Bool) throws -> [UInt32]
    func unmapPirq(_ pirq: UInt32, guest: DomID) throws
    /// Unmaps every pirq still mapped through this handle.
    func close()
}
