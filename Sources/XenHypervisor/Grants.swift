import XenPCIABI

public typealias GrantRef = UInt32
public typealias GrantHandle = UInt32

/// A foreign page mapped into this domain (gnttab).
// @unchecked Sendable: only the address of the mapped page travels; the page (which another
// domain writes) is read and written through SharedPage's atomics and one-shot copies.
public struct GrantMapping: Hashable, @unchecked Sendable {
    public var address: UnsafeMutableRawPointer
    public var handle: GrantHandle
    public var domain: DomID
    public var ref: GrantRef
    public init(address: UnsafeMutableRawPointer, handle: GrantHandle, domain: DomID, ref: GrantRef) {
        self.address = address; self.handle = handle; self.domain = domain; self.ref = ref
    }
}

/// A page of this domain shared with another (gntshr / gntalloc).
// @unchecked Sendable: as GrantMapping, only the page's address (used through SharedPage).
public struct SharedGrant: Hashable, @unchecked Sendable {
    public var address: UnsafeMutableRawPointer
    public var ref: GrantRef
    public var domain: DomID
    public init(address: UnsafeMutableRawPointer, ref: GrantRef, domain: DomID) {
        self.address = address; self.ref = ref; self.domain = domain
    }
}

/// Backend side: map pages other domains granted to us.
public protocol GrantTable: AnyObject, Sendable {
    func map(domain: DomID, ref: GrantRef, writable: Bool) throws -> GrantMapping
    func unmap(_ mapping: GrantMapping) throws
    /// Unmaps everything still mapped through this handle.
    func close()
}

/// Frontend side: share zeroed pages of ours with another domain.
public protocol GrantSharing: AnyObject, Sendable {
    func share(with domain: DomID, writable: Bool) throws -> SharedGrant
    /// Ends foreign access. If the peer still maps the page, the memory lives
    /// on until it unmaps (as gntalloc defers), but the grant is gone.
    func endAccess(_ grant: SharedGrant) throws
    func close()
}
