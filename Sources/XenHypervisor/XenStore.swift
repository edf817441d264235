import Foundation
import XenPCIABI

/// One entry of a node's permission list. The first entry names the owner
/// and the access every domain not listed gets; the owner (and dom0) always
/// has full access.
public struct XenstorePermission: Equatable, CustomStringConvertible, Sendable {
    public enum Access: Character, Sendable { case none = "n", read = "r", write = "w", both = "b" }
    public var domid: DomID
    public var access: Access
    public init(_ domid: DomID, _ access: Access) { self.domid = domid; self.access = access }
    public var description: String { "\(access.rawValue)\(domid)" }
    public var canRead: Bool { access == .read || access == .both }
    public var canWrite: Bool { access == .write || access == .both }

    /// Parses the `xenstore-ls -p` spelling, e.g. `r1`, `n0`.
    public init?(_ text: String) {
        guard let c = text.first, let a = Access(rawValue: c), let d = DomID(text.dropFirst()) else { return nil }
        self.init(d, a)
    }
}

/// A transaction id; `.none` is outside any transaction.
public struct XenstoreTransaction: Hashable, Sendable {
    public var id: UInt32
    public init(_ id: UInt32) { self.id = id }
    public static let none = XenstoreTransaction(0)
}

public struct XenstoreWatchEvent: Equatable, Sendable {
    public var path: String
    public var token: String
    public init(path: String, token: String) { self.path = path; self.token = token }
}

/// A connection to xenstore. Paths are absolute; watch events are queued
/// and signalled on `fileDescriptor` (readable while events are pending),
/// so a driver can poll it next to its event channel, as on real Xen.
public protocol XenStore: AnyObject, Sendable {
    func read(_ path: String, transaction: XenstoreTransaction) throws -> String
    func write(_ path: String, _ value: String, transaction: XenstoreTransaction) throws
    func mkdir(_ path: String, transaction: XenstoreTransaction) throws
    func remove(_ path: String, transaction: XenstoreTransaction) throws
    func directory(_ path: String, transaction: XenstoreTransaction) throws -> [String]
    func permissions(_ path: String, transaction: XenstoreTransaction) throws -> [XenstorePermission]
    func setPermissions(_ path: String, _ perms: [XenstorePermission], transaction: XenstoreTransaction) throws

    func transactionStart() throws -> XenstoreTransaction
    /// Commits (or aborts); a conflicting commit throws EAGAIN and changes nothing.
    func transactionEnd(_ t: XenstoreTransaction, abort: Bool) throws

    /// Registers a watch; an initial event for `path` is queued at once, as xenstored does.
    func watch(_ path: String, token: String) throws
    func unwatch(_ path: String, token: String) throws
    var fileDescriptor: Int32 { get }
    /// The next queued watch event, without blocking.
    func nextWatchEvent() -> XenstoreWatchEvent?
    /// Unwatches everything and releases the connection.
    func close()
}

extension XenStore {
    public func read(_ path: String) throws -> String { try read(path, transaction: .none) }
    public func write(_ path: String, _ value: String) throws { try write(path, value, transaction: .none) }
    public func mkdir(_ path: String) throws { try mkdir(path, transaction: .none) }
    public func remove(_ path: String) throws { try remove(path, transaction: .none) }
    public func directory(_ path: String) throws -> [String] { try directory(path, transaction: .none) }
    public func permissions(_ path: String) throws -> [XenstorePermission] { try permissions(path, transaction: .none) }
    public func setPermissions(_ path: String, _ perms: [XenstorePermission]) throws {
        try setPermissions(path, perms, transaction: .none)
    }

    /// The value, or nil when the node does not exist (other errors throw).
    public func readIfPresent(_ path: String, transaction: XenstoreTransaction = .none) throws -> String? {
        do { return try read(path, transaction: transaction) } catch let e as XenError where e.code == ENOENT { return nil }
    }

    /// Runs `body` in a transaction, retrying on EAGAIN up to `attempts` times.
    /// An error thrown by `body` aborts the transaction and is rethrown.
    public func transaction<T>(attempts: Int = 16, _ body: (XenstoreTransaction) throws -> T) throws -> T {
        var last: XenError?
        for _ in 0..<max(1, attempts) {
            let t = try transactionStart()
            let result: T
            do { result = try body(t) } catch {
                try? transactionEnd(t, abort: true)
                throw error
            }
            do {
                try transactionEnd(t, abort: false)
                return result
            } catch let e as XenError where e.isRetry {
                last = e
            }
        }
        throw last ?? XenError(EAGAIN, "xenstore transaction")
    }

    /// Waits up to `timeout` for the next watch event (nil on timeout).
    public func waitWatchEvent(timeout: Duration?) throws -> XenstoreWatchEvent? {
        if let e = nextWatchEvent() { return e }
        guard try pollReadable(fileDescriptor, timeout: timeout) else { return nil }
        return nextWatchEvent()
    }
}
