import Foundation
import Synchronization
import XenHypervisor
import XenPCIABI
import CXenLibs

/// Backend side: foreign pages mapped through libxengnttab (/dev/xen/gntdev).
/// The library has no handle for a mapping but its address, so handles are
/// numbered here.
public final class XenGrantTable: GrantTable {
    private struct State {
        var handle: LibHandle?
        var mappings: [GrantHandle: GrantMapping] = [:]
        var nextHandle: GrantHandle = 1
    }
    private let state: Mutex<State>

    public init() throws {
        try XenLibrary.gnttab.load()
        errno = 0
        guard let h = libxengnttab.xengnttab_open!(nil, 0) else {
            throw XenError(lastErrno(), "xengnttab_open", "(/dev/xen/gntdev)")
        }
        state = Mutex(State(handle: LibHandle(h)))
    }

    deinit { close() }

    public func map(domain: DomID, ref: GrantRef, writable: Bool) throws -> GrantMapping {
        let what = "dom\(domain) ref \(ref)"
        guard let h = state.withLock({ $0.handle })?.pointer else { throw XenError(EBADF, "xengnttab_map_grant_ref", "\(what): handle closed") }
        errno = 0
        guard let p = libxengnttab.xengnttab_map_grant_ref!(h, UInt32(domain), ref,
                                                              writable ? PROT_READ | PROT_WRITE : PROT_READ) else {
            throw XenError(lastErrno(), "xengnttab_map_grant_ref", what)
        }
        return state.withLock {
            let m = GrantMapping(address: p, handle: $0.nextHandle, domain: domain, ref: ref)
            $0.nextHandle &+= 1
            $0.mappings[m.handle] = m
            return m
        }
    }

    public func unmap(_ mapping: GrantMapping) throws {
        let what = "dom\(mapping.domain) ref \(mapping.ref)"
        guard let h = state.withLock({ $0.handle })?.pointer else { throw XenError(EBADF, "xengnttab_unmap", "\(what): handle closed") }
        guard state.withLock({ $0.mappings[mapping.handle] == mapping }) else {
            throw XenError(EINVAL, "xengnttab_unmap", "\(what): not mapped through this handle")
        }
        try xenCall("xengnttab_unmap", what) { libxengnttab.xengnttab_unmap!(h, mapping.address, 1) }
        state.withLock { _ = $0.mappings.removeValue(forKey: mapping.handle) }
    }

    public func close() {
        let (handle, ms): (LibHandle?, [GrantMapping]) = state.withLock { s in
            defer { s.handle = nil; s.mappings = [:] }
            return (s.handle, Array(s.mappings.values))
        }
        guard let h = handle?.pointer else { return }
        for m in ms { _ = libxengnttab.xengnttab_unmap!(h, m.address, 1) }
        _ = libxengnttab.xengnttab_close!(h)
    }
}

/// Frontend side: pages of ours shared through libxengnttab's gntshr
/// (/dev/xen/gntalloc, which hands out zeroed pages).
public final class XenGrantSharing: GrantSharing {
    private struct State {
        var handle: LibHandle?
        var shared: [GrantRef: SharedGrant] = [:]
    }
    private let state: Mutex<State>

    public init() throws {
        try XenLibrary.gnttab.load()
        errno = 0
        guard let h = libxengnttab.xengntshr_open!(nil, 0) else {
            throw XenError(lastErrno(), "xengntshr_open", "(/dev/xen/gntalloc)")
        }
        state = Mutex(State(handle: LibHandle(h)))
    }

    deinit { close() }

    public func share(with domain: DomID, writable: Bool) throws -> SharedGrant {
        guard let h = state.withLock({ $0.handle })?.pointer else { throw XenError(EBADF, "xengntshr_share_pages", "dom\(domain): handle closed") }
        var ref: UInt32 = 0
        errno = 0
        guard let p = libxengnttab.xengntshr_share_pages!(h, UInt32(domain), 1, &ref, writable ? 1 : 0) else {
            throw XenError(lastErrno(), "xengntshr_share_pages", "one page with dom\(domain)")
        }
        let g = SharedGrant(address: p, ref: ref, domain: domain)
        state.withLock { $0.shared[ref] = g }
        return g
    }

    /// Unsharing unmaps our view; gntalloc ends foreign access and keeps the
    /// page alive until the peer unmaps it.
    public func endAccess(_ grant: SharedGrant) throws {
        let what = "ref \(grant.ref) with dom\(grant.domain)"
        guard let h = state.withLock({ $0.handle })?.pointer else { throw XenError(EBADF, "xengntshr_unshare", "\(what): handle closed") }
        guard state.withLock({ $0.shared[grant.ref] == grant }) else {
            throw XenError(EINVAL, "xengntshr_unshare", "\(what): not shared through this handle")
        }
        try xenCall("xengntshr_unshare", what) { libxengnttab.xengntshr_unshare!(h, grant.address, 1) }
        state.withLock { _ = $0.shared.removeValue(forKey: grant.ref) }
    }

    public func close() {
        let (handle, gs): (LibHandle?, [SharedGrant]) = state.withLock { s in
            defer { s.handle = nil; s.shared = [:] }
            return (s.handle, Array(s.shared.values))
        }
        guard let h = handle?.pointer else { return }
        for g in gs { _ = libxengnttab.xengntshr_unshare!(h, g.address, 1) }
        _ = libxengnttab.xengntshr_close!(h)
    }
}
