import Foundation
import XenHypervisor
import XenPCIABI

/// Pages a domain shares (gntshr). Refs start at 8, as the first refs are
/// reserved on real guests.
// @unchecked Sendable: its state is used only under the hypervisor's lock (see MockHandle).
final class MockGrantSharing: MockHandle, GrantSharing, @unchecked Sendable {
    override class var what: String { "grant sharing handle" }


    func share(with domain: DomID, writable: Bool) throws -> SharedGrant {
        try hv.locked {
            let op = MockOperation.grantShare
            guard !closed else { throw XenError(EBADF, op.rawValue, "handle closed") }
            try hv.faults.check(op, domain: dom, "page for dom\(domain)")
            var page: UnsafeMutableRawPointer?
            guard posix_memalign(&page, XenPCI.pageSize, XenPCI.pageSize) == 0, let page else {
                throw XenError(ENOMEM, op.rawValue, "page for dom\(domain)")
            }
            memset(page, 0, XenPCI.pageSize)
            var ref: GrantRef = 8
            while hv.grants[MockHypervisor.GrantKey(owner: dom, ref: ref)] != nil { ref += 1 }
            hv.grants[MockHypervisor.GrantKey(owner: dom, ref: ref)] =
                MockHypervisor.Grant(handle: id, grantee: domain, writable: writable, page: page)
            return SharedGrant(address: page, ref: ref, domain: domain)
        }
    }

    func endAccess(_ grant: SharedGrant) throws {
        try hv.locked {
            let op = MockOperation.grantEndAccess
            guard !closed else { throw XenError(EBADF, op.rawValue, "handle closed") }
            try hv.faults.check(op, domain: dom, "ref \(grant.ref)")
            let k = MockHypervisor.GrantKey(owner: dom, ref: grant.ref)
            guard let g = hv.grants[k], g.handle == id, !g.ended else {
                throw XenError(EINVAL, op.rawValue, "ref \(grant.ref) is not shared through this handle")
            }
            hv.endGrant(k)
        }
    }

    func close() {
        hv.locked {
            guard !closed else { return }
            closed = true
            for (k, g) in hv.grants where g.handle == id && !g.ended { hv.endGrant(k) }
            hv.gntshrHandles[id] = nil
        }
    }
}

/// Foreign pages mapped by a domain (gnttab).
// @unchecked Sendable: its state is used only under the hypervisor's lock (see MockHandle).
final class MockGrantTable: MockHandle, GrantTable, @unchecked Sendable {
    override class var what: String { "grant table handle" }


    func map(domain: DomID, ref: GrantRef, writable: Bool) throws -> GrantMapping {
        try hv.locked {
            let op = MockOperation.grantMap, what = "dom\(domain) ref \(ref)"
            guard !closed else { throw XenError(EBADF, op.rawValue, "\(what): handle closed") }
            try hv.faults.check(op, domain: dom, what)
            let k = MockHypervisor.GrantKey(owner: domain, ref: ref)
            guard let g = hv.grants[k], !g.ended else {
                throw XenError(EINVAL, op.rawValue, "\(what): no such grant")
            }
            guard g.grantee == dom else { throw XenError(EPERM, op.rawValue, "\(what): granted to dom\(g.grantee), not dom\(dom)") }
            guard g.writable || !writable else { throw XenError(EPERM, op.rawValue, "\(what): granted read-only") }
            hv.grants[k]!.maps += 1
            let h = hv.nextGrantHandle
            hv.nextGrantHandle += 1
            hv.mappings[h] = MockHypervisor.Mapping(handle: id, mapper: dom, key: k)
            return GrantMapping(address: g.page, handle: h, domain: domain, ref: ref)
        }
    }

    func unmap(_ mapping: GrantMapping) throws {
        try hv.locked {
            let op = MockOperation.grantUnmap
            guard !closed else { throw XenError(EBADF, op.rawValue, "handle closed") }
            try hv.faults.check(op, domain: dom, "handle \(mapping.handle)")
            guard let m = hv.mappings[mapping.handle], m.handle == id else {
                throw XenError(EINVAL, op.rawValue, "handle \(mapping.handle) is not mapped (double unmap?)")
            }
            hv.unmapGrant(mapping.handle, m)
        }
    }

    func close() {
        hv.locked {
            guard !closed else { return }
            closed = true
            for (h, m) in hv.mappings where m.handle == id { hv.unmapGrant(h, m) }
            hv.gnttabHandles[id] = nil
        }
    }
}

extension MockHypervisor {
    /// Lock held. The page is freed once nobody maps it any more.
    func endGrant(_ k: GrantKey) {
        grants[k]!.ended = true
        if grants[k]!.maps == 0 {
            free(grants[k]!.page)
            grants[k] = nil
        }
    }

    func unmapGrant(_ h: GrantHandle, _ m: Mapping) {
        mappings[h] = nil
        guard grants[m.key] != nil else { return }
        grants[m.key]!.maps -= 1
        if grants[m.key]!.ended && grants[m.key]!.maps == 0 {
            free(grants[m.key]!.page)
            grants[m.key] = nil
        }
    }
}
