import Foundation
import XenHypervisor
import XenPCIABI
import CXenLibs

/// Backend side: foreign pages mapped through libxengnttab (/dev/xen/gntdev).
/// The library has no handle for a mapping but its address, so handles are
/// numbered here.
public final class XenGrantTable: GrantTable, @unchecked Sendable {
    private var handle: OpaquePointer?
    private let lock = NSLock()
    private var mappings: [GrantHandle: GrantMapping] = [:]
    private var nextHandle: GrantHandle = 1

    public init() throws {
        try XenLibrary.gnttab.load()
        errno = 0
        guard let h = libxengnttab.xengnttab_open!(nil, 0) else {
            throw XenError(lastErrno(), "xengnttab_open", "(/dev/xen/gntdev)")
        }
        handle = h
    }

    deinit { close() }

    public func map(domain: DomID, ref: GrantRef, writable: Bool) throws -> GrantMapping {
        let what = "dom\(domain) ref \(ref)"
        guard let h = lock.withLock({ handle }) else { throw XenError(EBADF, "xengnttab_map_grant_ref", "\(what): handle closed") }
        errno = 0
        guard let p = libxengnttab.xengnttab_map_grant_ref!(h, UInt32(domain), ref,
                                                              writable ? PROT_READ | PROT_WRITE : PROT_READ) else {
            throw XenError(lastErrno(), "xengnttab_map_grant_ref", what)
        }
        return lock.withLock {
            let m = GrantMapping(address: p, handle: nextHandle, domain: domain, ref: ref)
            nextHandle &+= 1
            mappings[m.handle] = m
            return m
        }
    }

    public func unmap(_ mapping: GrantMapping) throws {
        let what = "dom\(mapping.domain) ref \(mapping.ref)"
        guard let h = lock.withLock({ handle }) else { throw XenError(EBADF, "xengnttab_unmap", "\(what): handle closed") }
        guard lock.withLock({ mappings[mapping.handle] == mapping }) else {
            throw XenError(EINVAL, "xengnttab_unmap", "\(what): not mapped through this handle")
        }
        try xenCall("xengnttab_unmap", what) { libxengnttab.xengnttab_unmap!(h, mapping.address, 1) }
        lock.withLock { _ = mappings.removeValue(forKey: mapping.handle) }
    }

    public func close() {
        let (h, ms): (OpaquePointer?, [GrantMapping]) = lock.withLock {
            defer { handle = nil; mappings = [:] }
            return (handle, Array(mappings.values))
        }
        guard let h else { return }
        for m in ms { _ = libxengnttab.xengnttab_unmap!(h, m.address, 1) }
        _ = libxengnttab.xengnttab_close!(h)
    }
}

/// Frontend side: pages of ours shared through libxengnttab's gntshr
/// (/dev/xen/gntalloc, which hands out zeroed pages).
public final class XenGrantSharing: GrantSharing, @unchecked Sendable {
    private var handle: OpaquePointer?
    private let lock = NSLock()
    private var shared: [GrantRef: SharedGrant] = [:]

    public init() throws {
        try XenLibrary.gnttab.load()
        errno = 0
        guard let h = libxengnttab.xengntshr_open!(nil, 0) else {
            throw XenError(lastErrno(), "xengntshr_open", "(/dev/xen/gntalloc)")
        }
        handle = h
    }

    deinit { close() }

    public func share(with domain: DomID, writable: Bool) throws -> SharedGrant {
        guard let h = lock.withLock({ handle }) else { throw XenError(EBADF, "xengntshr_share_pages", "dom\(domain): handle closed") }
        var ref: UInt32 = 0
        errno = 0
        guard let p = libxengnttab.xengntshr_share_pages!(h, UInt32(domain), 1, &ref, writable ? 1 : 0) else {
            throw XenError(lastErrno(), "xengntshr_share_pages", "one page with dom\(domain)")
        }
        let g = SharedGrant(address: p, ref: ref, domain: domain)
        lock.withLock { shared[ref] = g }
        return g
    }

    /// Unsharing unmaps our view; gntalloc ends foreign access and keeps the
    /// page alive until the peer unmaps it.
    public func endAccess(_ grant: SharedGrant) throws {
        let what = "ref \(grant.ref) with dom\(grant.domain)"
        guard let h = lock.withLock({ handle }) else { throw XenError(EBADF, "xengntshr_unshare", "\(what): handle closed") }
        guard lock.withLock({ shared[grant.ref] == grant }) else {
            throw XenError(EINVAL, "xengntshr_unshare", "\(what): not shared through this handle")
        }
        try xenCall("xengntshr_unshare", what) { libxengnttab.xengntshr_unshare!(h, grant.address, 1) }
        lock.withLock { _ = shared.removeValue(forKey: grant.ref) }
    }

    public func close() {
        let (h, gs): (OpaquePointer?, [SharedGrant]) = lock.withLock {
            defer { handle = nil; shared = [:] }
            return (handle, Array(shared.values))
        }
        guard let h else { return }
        for g in gs { _ = libxengnttab.xengntshr_unshare!(h, g.address, 1) }
        _ = libxengnttab.xengntshr_close!(h)
    }
}
