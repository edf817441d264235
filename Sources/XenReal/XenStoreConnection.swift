import Foundation
import Synchronization
import XenHypervisor
import XenPCIABI
import CXenLibs

/// A xenstore connection through libxenstore: the xenbus device in a guest,
/// xenstored's Unix socket in dom0 (or wherever `XENSTORED_PATH` points).
/// Watch events arrive on libxenstore's watch pipe (`xs_fileno`) and are
/// taken without blocking with `xs_check_watch`; events of a watch removed
/// with `unwatch` are dropped here, as the mock does.
public final class XenStoreConnection: XenStore {
    private struct State {
        var handle: LibHandle?
        var watches: [(path: String, token: String)] = []
    }
    private let state: Mutex<State>
    public let fileDescriptor: Int32

    /// Opens the default connection (libxenstore's own choice of socket or
    /// device, honouring `XENSTORED_PATH`).
    public init() throws {
        try XenLibrary.xenstore.load()
        errno = 0
        guard let h = libxenstore.xs_open!(0) else {
            throw XenError(lastErrno(), "xs_open", Self.where_())
        }
        let fd = libxenstore.xs_fileno!(h)
        if fd < 0 {
            let e = lastErrno()
            libxenstore.xs_close!(h)
            throw XenError(e, "xs_fileno")
        }
        fileDescriptor = fd
        state = Mutex(State(handle: LibHandle(h)))
    }

    /// Opens a connection to the xenstored socket or xenbus device at `path`.
    /// libxenstore only takes the path from the environment, so it is set
    /// for the duration of the open (under a process-wide lock).
    public convenience init(path: String) throws {
        Self.envLock.lock()
        defer { Self.envLock.unlock() }
        let old = getenv("XENSTORED_PATH").map { String(cString: $0) }
        setenv("XENSTORED_PATH", path, 1)
        defer { if let o = old { setenv("XENSTORED_PATH", o, 1) } else { unsetenv("XENSTORED_PATH") } }
        try self.init()
    }

    private static let envLock = NSLock()

    private static func where_() -> String {
        if let p = getenv("XENSTORED_PATH") { return "(XENSTORED_PATH=\(String(cString: p)))" }
        return "(neither the xenstored socket nor /dev/xen/xenbus could be opened)"
    }

    deinit { close() }

    private func h(_ op: String, _ path: String) throws -> OpaquePointer {
        guard let h = state.withLock({ $0.handle }) else { throw XenError(EBADF, op, "\(path): connection closed") }
        return h.pointer
    }

    public func read(_ path: String, transaction t: XenstoreTransaction) throws -> String {
        let h = try h("xs_read", path)
        var len: UInt32 = 0
        errno = 0
        guard let p = libxenstore.xs_read!(h, t.id, path, &len) else {
            throw XenError(lastErrno(), "xs_read", path)
        }
        defer { free(p) }
        return String(decoding: UnsafeRawBufferPointer(start: p, count: Int(len)), as: UTF8.self)
    }

    public func write(_ path: String, _ value: String, transaction t: XenstoreTransaction) throws {
        let h = try h("xs_write", path)
        var bytes = Array(value.utf8)
        errno = 0
        let ok = bytes.withUnsafeMutableBytes { libxenstore.xs_write!(h, t.id, path, $0.baseAddress, UInt32($0.count)) }
        if !ok { throw XenError(lastErrno(), "xs_write", path) }
    }

    public func mkdir(_ path: String, transaction t: XenstoreTransaction) throws {
        let h = try h("xs_mkdir", path)
        errno = 0
        if !libxenstore.xs_mkdir!(h, t.id, path) { throw XenError(lastErrno(), "xs_mkdir", path) }
    }

    public func remove(_ path: String, transaction t: XenstoreTransaction) throws {
        let h = try h("xs_rm", path)
        errno = 0
        if !libxenstore.xs_rm!(h, t.id, path) { throw XenError(lastErrno(), "xs_rm", path) }
    }

    public func directory(_ path: String, transaction t: XenstoreTransaction) throws -> [String] {
        let h = try h("xs_directory", path)
        var n: UInt32 = 0
        errno = 0
        guard let list = libxenstore.xs_directory!(h, t.id, path, &n) else {
            throw XenError(lastErrno(), "xs_directory", path)
        }
        defer { free(list) }
        return (0..<Int(n)).compactMap { list[$0].map { String(cString: $0) } }
    }

    public func permissions(_ path: String, transaction t: XenstoreTransaction) throws -> [XenstorePermission] {
        let h = try h("xs_get_permissions", path)
        var n: UInt32 = 0
        errno = 0
        guard let raw = libxenstore.xs_get_permissions!(h, t.id, path, &n) else {
            throw XenError(lastErrno(), "xs_get_permissions", path)
        }
        let perms = UnsafeMutablePointer<xenpci_xs_perm>(raw)
        defer { free(perms) }
        return (0..<Int(n)).map { Self.permission(perms[$0]) }
    }

    public func setPermissions(_ path: String, _ perms: [XenstorePermission], transaction t: XenstoreTransaction) throws {
        let h = try h("xs_set_permissions", path)
        var raw = perms.map(Self.raw)
        errno = 0
        let ok = raw.withUnsafeMutableBufferPointer {
            libxenstore.xs_set_permissions!(h, t.id, path, OpaquePointer($0.baseAddress), UInt32($0.count))
        }
        if !ok { throw XenError(lastErrno(), "xs_set_permissions", "\(path) \(perms.map(\.description).joined(separator: ","))") }
    }

    static func permission(_ p: xenpci_xs_perm) -> XenstorePermission {
        let access: XenstorePermission.Access
        switch p.perms & (XENPCI_XS_PERM_READ | XENPCI_XS_PERM_WRITE) {
        case XENPCI_XS_PERM_READ: access = .read
        case XENPCI_XS_PERM_WRITE: access = .write
        case XENPCI_XS_PERM_READ | XENPCI_XS_PERM_WRITE: access = .both
        default: access = .none
        }
        return XenstorePermission(DomID(truncatingIfNeeded: p.id), access)
    }

    static func raw(_ p: XenstorePermission) -> xenpci_xs_perm {
        var bits = XENPCI_XS_PERM_NONE
        if p.canRead { bits |= XENPCI_XS_PERM_READ }
        if p.canWrite { bits |= XENPCI_XS_PERM_WRITE }
        return xenpci_xs_perm(id: UInt32(p.domid), perms: bits)
    }

    public func transactionStart() throws -> XenstoreTransaction {
        let h = try h("xs_transaction_start", "")
        errno = 0
        let t = libxenstore.xs_transaction_start!(h)
        if t == 0 { throw XenError(lastErrno(), "xs_transaction_start") }
        return XenstoreTransaction(t)
    }

    /// A conflicting commit: libxenstore returns false with errno EAGAIN,
    /// which becomes `XenError.isRetry`.
    public func transactionEnd(_ t: XenstoreTransaction, abort: Bool) throws {
        let h = try h("xs_transaction_end", "transaction \(t.id)")
        errno = 0
        if !libxenstore.xs_transaction_end!(h, t.id, abort) {
            throw XenError(lastErrno(), "xs_transaction_end", "transaction \(t.id)\(abort ? " (abort)" : "")")
        }
    }

    public func watch(_ path: String, token: String) throws {
        let h = try h("xs_watch", path)
        state.withLock { $0.watches.append((path, token)) }
        errno = 0
        if !libxenstore.xs_watch!(h, path, token) {
            let e = lastErrno()
            state.withLock { s in if let i = s.watches.lastIndex(where: { $0 == (path, token) }) { s.watches.remove(at: i) } }
            throw XenError(e, "xs_watch", "\(path) token '\(token)'")
        }
    }

    public func unwatch(_ path: String, token: String) throws {
        let h = try h("xs_unwatch", path)
        errno = 0
        if !libxenstore.xs_unwatch!(h, path, token) {
            throw XenError(lastErrno(), "xs_unwatch", "\(path) token '\(token)'")
        }
        state.withLock { s in if let i = s.watches.lastIndex(where: { $0 == (path, token) }) { s.watches.remove(at: i) } }
    }

    /// Events of a watch still registered (xenstored reports the changed
    /// path, at or under the watched one, or the watched special path).
    private func registered(_ e: XenstoreWatchEvent) -> Bool {
        state.withLock {
            $0.watches.contains { w in
                w.token == e.token && (e.path == w.path || e.path.hasPrefix(w.path + "/") || w.path.hasPrefix(e.path + "/")
                                       || !w.path.hasPrefix("/"))
            }
        }
    }

    public func nextWatchEvent() -> XenstoreWatchEvent? {
        guard let h = state.withLock({ $0.handle })?.pointer else { return nil }
        while true {
            guard let v = libxenstore.xs_check_watch!(h) else { return nil }
            let e = XenstoreWatchEvent(path: String(cString: v[Int(XENPCI_XS_WATCH_PATH)]!),
                                       token: String(cString: v[Int(XENPCI_XS_WATCH_TOKEN)]!))
            free(v)
            if registered(e) { return e }
        }
    }

    /// The path of a domain's home directory, as xenstored names it.
    public func domainPath(_ domid: DomID) throws -> String {
        let h = try h("xs_get_domain_path", "dom\(domid)")
        errno = 0
        guard let p = libxenstore.xs_get_domain_path!(h, UInt32(domid)) else {
            throw XenError(lastErrno(), "xs_get_domain_path", "dom\(domid)")
        }
        defer { free(p) }
        return String(cString: p)
    }

    public func close() {
        let (handle, ws): (LibHandle?, [(path: String, token: String)]) = state.withLock { s in
            defer { s.handle = nil; s.watches = [] }
            return (s.handle, s.watches)
        }
        guard let h = handle?.pointer else { return }
        for w in ws { _ = libxenstore.xs_unwatch!(h, w.path, w.token) }
        libxenstore.xs_close!(h)
    }
}
