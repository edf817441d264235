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

/// The administrator's run-time control: compound operations on
/// the pool built from claim/release/quirk calls. Each is all or nothing: a
/// command that cannot complete changes nothing. Checks and changes run as
/// jobs on the service thread (which owns the state); the resets in between
/// run on the caller's thread, with the functions marked so no guest can
/// take one meanwhile.
extension PCIBack {
    /// The guest holding `a`, or nil (also when `a` is not claimed).
    public func guestHolding(_ a: PCIAddress) -> (guest: DomID, address: PCIAddress?)? {
        loop.submit { [self] in registry[a].flatMap { d in d.guest.map { ($0, d.guestAddress) } } }
    }

    public func isClaimed(_ a: PCIAddress) -> Bool { loop.submit { [self] in registry.isClaimed(a) } }

    /// Claims every function or none: all are checked first (none already
    /// claimed), then claimed in order; a failure releases those claimed.
    public func claimAll(_ accesses: [PCIDeviceAccess]) throws {
        for a in accesses where isClaimed(a.address) { throw PCIBackError.refused("\(a.address): already assignable (claimed by pciback)") }
        var done: [PCIAddress] = []
        do {
            for a in accesses { try claim(a); done.append(a.address) }
        } catch {
            try? releaseAll(done)
            throw error
        }
    }

    /// Releases every function or none: refused, naming the guest, while a
    /// guest holds any of them. They are marked first (no export, no
    /// request served), reset on this thread, then dropped together; when a
    /// reset fails every one stays claimed, so the pool is as it was.
    public func releaseAll(_ addresses: [PCIAddress]) throws {
        // A reset already running (a guest just left) finishes first.
        waitForResets()
        let list = try loop.submit { [self] () throws -> [ClaimedDevice] in
            var list: [ClaimedDevice] = []
            for a in addresses {
                guard let d = registry[a] else { throw PCIBackError.badDevice("\(a): not assignable (not claimed by pciback)") }
                if let g = d.guest {
                    throw PCIBackError.refused("\(a): held by dom\(g)\(d.guestAddress.map { " as \($0)" } ?? ""); detach it from the guest first")
                }
                guard !d.resetting, !d.releasing else { throw PCIBackError.refused("\(a): a reset is in progress; try again") }
                if !list.contains(where: { $0 === d }) { list.append(d) }
            }
            for d in list { d.releasing = true; d.resetting = true; d.heldByWorker = true }
            return list
        }
        var fresh: [ConfigMediation] = []
        var failure: Error?
        for d in list {
            do { fresh.append(try d.resetHardware()) } catch { failure = error; break }
        }
        try loop.submit { [self] () throws in
            for (d, m) in zip(list, fresh) { d.mediation = m }
            for d in list { d.releasing = false; d.resetting = false; d.heldByWorker = false }
            if let failure { throw failure }
            for d in list {
                ctx.releaseMSIX(d)
                registry.remove(d.address)
            }
            persist()
        }
    }

    public func permissive(of a: PCIAddress) -> Bool? { loop.submit { [self] in registry[a]?.mediation.permissive } }
    public func quirks(of a: PCIAddress) -> [PCIQuirk]? { loop.submit { [self] in registry[a]?.mediation.quirks } }

    /// Replaces the quirks of `a` by `wanted`, keeping permissive as it is.
    /// All or nothing: when one of `wanted` cannot be added (it overlaps an
    /// emulated register), the previous quirks are put back and the error thrown.
    public func setQuirks(_ a: PCIAddress, _ wanted: [PCIQuirk]) throws {
        try loop.submit { [self] () throws in
            guard let d = registry[a] else { throw PCIBackError.badDevice("\(a): not claimed by pciback") }
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
        try loop.submit { [self] () throws in
            guard let current = quirks(of: q.address) else { throw PCIBackError.badDevice("\(q.address): not claimed by pciback") }
            guard current.contains(q) else {
                throw PCIBackError.badQuirk("\(q): \(q.address) has no such quirk (it has \(current.isEmpty ? "none" : current.map(\.description).joined(separator: ", ")))")
            }
            try setQuirks(q.address, current.filter { $0 != q })
        }
    }

    /// Every claimed function with its guest, interrupts and counters.
    public func adminStatus() -> [AdminFunctionStatus] {
        loop.submit { [self] in
            let stats = Dictionary(statistics().map { ($0.address, $0) }, uniquingKeysWith: { a, _ in a })
            return registry.sorted.map { d in
                AdminFunctionStatus(info: d.info,
                                    interruptMode: !d.msixPirqs.isEmpty ? "msix" : !d.msiPirqs.isEmpty ? "msi" : "intx",
                                    msiPirqs: d.msiPirqs, msixPirqs: d.msixPirqs, statistics: stats[d.address]!)
            }
        }
    }
}
