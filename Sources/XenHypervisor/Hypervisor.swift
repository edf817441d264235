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
}
