import Foundation
import PCIModel
import XenHypervisor
import XenPCIABI

/// One claimed function as `xenpci status` shows it.
public struct AdminFunctionStatus: Sendable {
    public var info: ClaimedDeviceInfo
    /// "msix", "msi" or "intx": what the guest has enabled (INTx when nothing is).
    public var interruptMode: String
    public var msiPirqs: [UInt32]
    public var msixPirqs: [UInt32]
    public var statistics: DeviceStatistics
}

/// The administrator's run-time control (issue 14): compound operations on
/// the pool built from claim/release/quirk calls. Each runs under the
/// backend's lock from its checks to its last change, so no guest can take a
/// function between the check and the change, and a failure undoes what the
/// operation did before it: a command that cannot complete changes nothing.
extension PCIBack {
    /// Runs `body` with the backend's lock held (it is recursive: the backend's
    /// own public methods may be called inside).
    public func withAdminLock<T>(_ body: () throws -> T) rethrows -> T { try lock.withLock(body) }

    /// The guest holding `a`, or nil (also when `a` is not claimed).
    public func guestHolding(_ a: PCIAddress) -> (guest: DomID, address: PCIAddress?)? {
        lock.withLock { devices[a].flatMap { d in d.guest.map { ($0, d.guestAddress) } } }
    }

    public func isClaimed(_ a: PCIAddress) -> Bool { lock.withLock { devices[a] != nil } }

    /// Claims every function or none: all are checked first (none already
    /// claimed), then claimed in order; a failure releases those claimed.
    public func claimAll(_ accesses: [PCIDeviceAccess]) throws {
        try lock.withLock {
            for a in accesses where devices[a.address] != nil { throw PCIBackError.refused("\(a.address): already assignable (claimed by pciback)") }
            var done: [PCIAddress] = []
            do {
                for a in accesses { try claim(a); done.append(a.address) }
            } catch {
                for a in done.reversed() { try? release(a) }
                throw error
            }
        }
    }

    /// Releases every function or none: refused, naming the guest, while a
    /// guest holds any of them. A release that fails (the reset) claims the
    /// ones already released again, so the pool is as it was.
    public func releaseAll(_ addresses: [PCIAddress]) throws {
        try lock.withLock {
            var accesses: [PCIDeviceAccess] = []
            for a in addresses {
                guard let d = devices[a] else { throw PCIBackError.badDevice("\(a): not assignable (not claimed by pciback)") }
                if let g = d.guest {
                    throw PCIBackError.refused("\(a): held by dom\(g)\(d.guestAddress.map { " as \($0)" } ?? ""); detach it from the guest first")
                }
                accesses.append(d.access)
            }
            var done: [PCIDeviceAccess] = []
            do {
                for d in accesses { try release(d.address); done.append(d) }
            } catch {
                for d in done { try? claim(d) }
                throw error
            }
        }
    }

    public func permissive(of a: PCIAddress) -> Bool? { lock.withLock { devices[a]?.mediation.permissive } }
    public func quirks(of a: PCIAddress) -> [PCIQuirk]? { lock.withLock { devices[a]?.mediation.quirks } }

    /// Replaces the quirks of `a` by `wanted`, keeping permissive as it is.
    /// All or nothing: when one of `wanted` cannot be added (it overlaps an
    /// emulated register), the previous quirks are put back and the error thrown.
    public func setQuirks(_ a: PCIAddress, _ wanted: [PCIQuirk]) throws {
        try lock.withLock {
            guard let d = devices[a] else { throw PCIBackError.badDevice("\(a): not claimed by pciback") }
            for q in wanted where q.address != a { throw PCIBackError.badQuirk("\(q): not a quirk of \(a)") }
            let m = d.mediation
            let previous = m.quirks, permissive = m.permissive
            guard previous != wanted else { return }
            // ConfigMediation's only way to drop a quirk field is to drop all of
            // them (with permissive); the rest are added back.
            m.clearGuestGrants()
            m.permissive = permissive
            do {
                for q in wanted { try m.addQuirk(q) }
            } catch {
                m.clearGuestGrants()
                m.permissive = permissive
                for q in previous { try? m.addQuirk(q) } // they fitted before
                throw error
            }
            persist()
        }
    }

    /// Drops one quirk; refused, naming the quirks it has, when `q` is not one
    /// of them (same register, size and mask).
    public func removeQuirk(_ q: PCIQuirk) throws {
        try lock.withLock {
            guard let current = quirks(of: q.address) else { throw PCIBackError.badDevice("\(q.address): not claimed by pciback") }
            guard current.contains(q) else {
                throw PCIBackError.badQuirk("\(q): \(q.address) has no such quirk (it has \(current.isEmpty ? "none" : current.map(\.description).joined(separator: ", ")))")
            }
            try setQuirks(q.address, current.filter { $0 != q })
        }
    }

    /// Every claimed function with its guest, interrupts and counters.
    public func adminStatus() -> [AdminFunctionStatus] {
        lock.withLock {
            let stats = Dictionary(statistics().map { ($0.address, $0) }, uniquingKeysWith: { a, _ in a })
            return devices.values.sorted { $0.address < $1.address }.map { d in
                AdminFunctionStatus(info: info(d),
                                    interruptMode: !d.msixPirqs.isEmpty ? "msix" : !d.msiPirqs.isEmpty ? "msi" : "intx",
                                    msiPirqs: d.msiPirqs, msixPirqs: d.msixPirqs, statistics: stats[d.address]!)
            }
        }
    }
}
