import Foundation
import PCIModel
import XenHypervisor
import CXenPCISoftc

/// The functions pciback holds: NetBSD's list of `pciback_pci_dev`, each
/// with its `pciback_pci_softc`, which are their state of record (see
/// `ClaimedDevice`). Also the functions being claimed (their device I/O
/// runs on the claiming thread) and what a previous backend saved about
/// them. Owned by the service thread, like all the backend's state.
final class DeviceRegistry {
    private var byAddress: [PCIAddress: ClaimedDevice] = [:]
    /// Reserved while their claim's device I/O runs: no second claim.
    var claiming: Set<PCIAddress> = []
    /// Where the state a restarted backend needs is kept (nil: nowhere; a
    /// restart then resets every function).
    let store: BackendStateStore?
    /// What the previous backend saved, by function; taken at claim.
    private var recovered: [PCIAddress: PersistedState.Device] = [:]
    /// Why the saved state could not be used (reported at start).
    let recoveryProblem: String?

    init(store: BackendStateStore?) {
        self.store = store
        var problem: String?
        do {
            if let s = try store?.load() {
                if let now = PersistedState.currentBootID, s.bootID != now {
                    problem = "\(store!.location) was written in another boot (boot_id \(s.bootID ?? "none"), now \(now))"
                } else {
                    for d in s.devices { if let a = try? PCIAddress(parsing: d.address) { recovered[a] = d } }
                }
            }
        } catch {
            problem = "\(error)"
        }
        recoveryProblem = problem
    }

    subscript(a: PCIAddress) -> ClaimedDevice? { byAddress[a] }

    func add(_ d: ClaimedDevice) { byAddress[d.address] = d }
    func remove(_ a: PCIAddress) { byAddress[a] = nil }
    func removeAll() { byAddress.removeAll() }

    /// Claimed, or being claimed.
    func isClaimed(_ a: PCIAddress) -> Bool { byAddress[a] != nil || claiming.contains(a) }

    /// A VF's physical function, when it is claimed here too.
    func physicalFunction(of d: ClaimedDevice) -> ClaimedDevice? { d.access.physicalFunction.flatMap { byAddress[$0.address] } }

    /// Every claimed function, by address.
    var sorted: [ClaimedDevice] { byAddress.values.sorted { $0.address < $1.address } }

    /// The function a guest's device list entry is: found by the entry's
    /// address, and only if it is that very entry.
    func device(for pb: UnsafeMutablePointer<pciback_pci_dev>) -> ClaimedDevice? {
        byAddress[ClaimedDevice.address(of: pb)].flatMap { $0.pb == pb ? $0 : nil }
    }

    /// What the previous backend saved about `a`, once.
    func takeSaved(_ a: PCIAddress) -> PersistedState.Device? { recovered.removeValue(forKey: a) }

    /// What a restarted backend needs, as the state file holds it.
    func snapshot() -> PersistedState {
        var s = PersistedState()
        for d in sorted where !d.readOnly {
            s.devices.append(.init(address: d.address.description, golden: d.goldenHex,
                                   msixPrepared: d.msixPrepared, guest: d.guest, guestAddress: d.guestAddress?.description,
                                   msiPirqs: d.msiPirqs, msixPirqs: d.msixPirqs, permissive: d.mediation.permissive,
                                   quirks: d.mediation.quirks.map(\.description)))
        }
        return s
    }

    func statistics() -> [DeviceStatistics] {
        sorted.map { d in
            DeviceStatistics(address: d.address, guest: d.guest, ops: d.ops, errors: d.errors,
                             refusedWrites: d.mediation.refusalReport(d.address), permissive: d.mediation.permissive,
                             quirks: d.mediation.quirks)
        }
    }
}
