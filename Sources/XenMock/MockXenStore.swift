import Foundation
import XenHypervisor
import XenPCIABI

/// A xenstore connection of one domain. Relative paths resolve against the
/// domain's home, `/local/domain/<id>`, as with xenstored.
// @unchecked Sendable: its state is used only under the hypervisor's lock (see MockHandle).
final class MockXenStore: MockHandle, XenStore, @unchecked Sendable {
    override class var what: String { "xenstore connection" }
    private var queue: [XenstoreWatchEvent] = []
    private let signal = ReadySignal()


    var fileDescriptor: Int32 { signal.fd }

    func enqueue(_ e: XenstoreWatchEvent) {
        queue.append(e)
        signal.raise(hv)
    }

    func nextWatchEvent() -> XenstoreWatchEvent? {
        hv.locked {
            guard !queue.isEmpty else { signal.clear(); return nil }
            let e = queue.removeFirst()
            if queue.isEmpty { signal.clear() }
            return e
        }
    }

    /// Where relative paths resolve: `/local/domain/<id>/`.
    private let home: String

    override init(hv: MockHypervisor, id: Int, dom: DomID) {
        home = "/local/domain/\(dom)/"
        super.init(hv: hv, id: id, dom: dom)
    }

    private func resolve(_ path: String, _ op: MockOperation) throws -> String {
        try XenstoreTree.resolve(path, home: home, op: op.rawValue)
    }

    /// What every operation does first, under the lock: the closed check,
    /// the path, the fault check. Returns the absolute path.
    private func begin(_ kind: MockOperation, _ path: String) throws -> String {
        guard !closed else { throw XenError(EBADF, kind.rawValue, "\(path): connection closed") }
        let p = try resolve(path, kind)
        try hv.faults.check(kind, domain: dom, p)
        return p
    }

    /// The named transaction of this connection, changed in place (one
    /// lookup, and its snapshot is not copied on write).
    private func inTransaction<T>(_ kind: MockOperation, _ p: String, _ t: XenstoreTransaction,
                                  _ body: (inout MockHypervisor.Transaction) throws -> T) throws -> T {
        guard let i = hv.transactions.index(forKey: t.id), hv.transactions.values[i].conn == id else {
            throw XenError(ENOENT, kind.rawValue, "\(p): no transaction \(t.id)")
        }
        return try body(&hv.transactions.values[i])
    }

    /// A read-only operation, on the store or inside the named transaction
    /// (whose snapshot it reads, and where it counts as an access).
    private func query<T>(_ kind: MockOperation, _ path: String, _ t: XenstoreTransaction,
                          _ body: (XenstoreTree, String) throws -> T) throws -> T {
        try hv.locked {
            let p = try begin(kind, path)
            if t == .none { return try body(hv.tree, p) }
            return try inTransaction(kind, p, t) { tx in
                let r = try body(tx.snapshot, p)
                tx.access(p)
                return r
            }
        }
    }

    /// A change: on the store, firing its watches; or inside the named
    /// transaction, on its snapshot, recorded to redo at commit. The tree's
    /// operations validate before they change anything, so a failed one
    /// leaves the snapshot as it was.
    private func change(_ kind: MockOperation, _ path: String, _ t: XenstoreTransaction, _ c: XenstoreTree.Change) throws {
        try hv.locked {
            let p = try begin(kind, path)
            let d = dom
            if t != .none {
                return try inTransaction(kind, p, t) { tx in try tx.change(p, c) }
            }
            if case .remove = c {
                // A removal's watches are found before it (the removed nodes'
                // permissions decide who hears of them).
                let events = hv.collectWatchEvents(p, recurse: true, tree: hv.tree)
                try hv.tree.apply(c, p, dom: d)
                hv.deliver(events)
            } else {
                hv.fire(p, perms: try hv.tree.apply(c, p, dom: d))
            }
        }
    }

    func read(_ path: String, transaction t: XenstoreTransaction) throws -> String {
        let d = dom
        return try query(.xsRead, path, t) { tree, p in try tree.read(p, dom: d) }
    }

    func write(_ path: String, _ value: String, transaction t: XenstoreTransaction) throws {
        try change(.xsWrite, path, t, .write(value))
    }

    func mkdir(_ path: String, transaction t: XenstoreTransaction) throws {
        try change(.xsMkdir, path, t, .mkdir)
    }

    func remove(_ path: String, transaction t: XenstoreTransaction) throws {
        try change(.xsRemove, path, t, .remove)
    }

    func directory(_ path: String, transaction t: XenstoreTransaction) throws -> [String] {
        let d = dom
        return try query(.xsDirectory, path, t) { tree, p in try tree.directory(p, dom: d) }
    }

    func permissions(_ path: String, transaction t: XenstoreTransaction) throws -> [XenstorePermission] {
        let d = dom
        return try query(.xsGetPermissions, path, t) { tree, p in try tree.permissions(p, dom: d) }
    }

    func setPermissions(_ path: String, _ perms: [XenstorePermission], transaction t: XenstoreTransaction) throws {
        try change(.xsSetPermissions, path, t, .setPermissions(perms))
    }

    func transactionStart() throws -> XenstoreTransaction {
        try hv.locked {
            guard !closed else { throw XenError(EBADF, MockOperation.xsTransactionStart.rawValue, "connection closed") }
            try hv.faults.check(.xsTransactionStart, domain: dom, "")
            let t = hv.nextTransaction
            hv.nextTransaction += 1
            hv.transactions[t] = MockHypervisor.Transaction(conn: id, dom: dom, snapshot: hv.tree, start: hv.tree.generation)
            return XenstoreTransaction(t)
        }
    }

    /// Commit: EAGAIN if any node the transaction touched changed since it
    /// started (xenstored's rule); otherwise its changes go to the live
    /// store and fire their watches.
    func transactionEnd(_ t: XenstoreTransaction, abort: Bool) throws {
        try hv.locked {
            let kind = MockOperation.xsTransactionEnd.rawValue
            guard hv.transactions[t.id]?.conn == id else {
                throw XenError(ENOENT, kind, "no transaction \(t.id)")
            }
            var tx = hv.transactions.removeValue(forKey: t.id)
            try hv.faults.check(.xsTransactionEnd, domain: dom, "transaction \(t.id)")
            if abort { return }
            let start = tx!.start
            // Nothing changed since the start (the generation moves with
            // every change): redoing the changes on the live store would
            // make the snapshot again, step by step, so the snapshot becomes
            // the store, and each step's watches are those its node's
            // permissions after it allow. A removal's watches depend on the
            // subtree before it, so a transaction with one is redone.
            if hv.tree.generation == start && !tx!.removes {
                hv.tree = tx!.snapshot
                var events: [(Int, XenstoreWatchEvent)] = []
                for step in tx!.replay { hv.watchEvents(step.path, perms: step.perms, into: &events) }
                hv.deliver(events)
                return
            }
            if let p = tx!.accessed.first(where: { hv.tree.lastChange($0) > start }) {
                throw XenError(EAGAIN, kind, "transaction \(t.id): \(p) changed since it started")
            }
            // Redone on the live tree in place: no node it touched changed
            // since the transaction made them on its snapshot, so each step
            // succeeds as it did there. A copy of the whole tree per commit
            // (thousands of nodes with 256 guests, under the mock's one lock)
            // was what a connect storm waited for. A removal's watches are
            // found before it. The snapshot goes first, so that nothing of
            // the live tree it shares is copied.
            let replay = tx!.replay, d = tx!.dom
            tx = nil
            var events: [(Int, XenstoreWatchEvent)] = []
            for step in replay {
                let (p, c) = (step.path, step.change)
                if case .remove = c {
                    events += hv.collectWatchEvents(p, recurse: true, tree: hv.tree)
                    try hv.tree.apply(c, p, dom: d)
                } else {
                    try hv.tree.apply(c, p, dom: d)
                    events += hv.collectWatchEvents(p, recurse: false, tree: hv.tree)
                }
            }
            hv.deliver(events)
        }
    }

    func watch(_ path: String, token: String) throws {
        try hv.locked {
            guard !closed else { throw XenError(EBADF, MockOperation.xsWatch.rawValue, "\(path): connection closed") }
            let p = path.hasPrefix("@") ? path : try resolve(path, .xsWatch)
            try hv.faults.check(.xsWatch, domain: dom, p)
            guard !hv.watches.contains(where: { $0.conn == id && $0.path == p && $0.token == token }) else {
                throw XenError(EEXIST, MockOperation.xsWatch.rawValue, "\(p) token '\(token)'")
            }
            hv.watches.append(MockHypervisor.Watch(conn: id, path: p, token: token, under: p == "/" ? "/" : p + "/"))
            enqueue(XenstoreWatchEvent(path: p, token: token))
        }
    }

    func unwatch(_ path: String, token: String) throws {
        try hv.locked {
            let p = path.hasPrefix("@") ? path : try resolve(path, .xsUnwatch)
            try hv.faults.check(.xsUnwatch, domain: dom, p)
            guard let i = hv.watches.firstIndex(where: { $0.conn == id && $0.path == p && $0.token == token }) else {
                throw XenError(ENOENT, MockOperation.xsUnwatch.rawValue, "\(p) token '\(token)'")
            }
            hv.watches.remove(at: i)
            queue.removeAll { $0.token == token && ($0.path == p || $0.path.hasPrefix(p + "/")) }
            if queue.isEmpty { signal.clear() }
        }
    }

    /// As when a process exits: its watches and transactions go with it.
    func close() {
        hv.locked {
            guard !closed else { return }
            closed = true
            hv.watches.removeAll { $0.conn == id }
            for (k, t) in hv.transactions where t.conn == id { hv.transactions[k] = nil }
            queue.removeAll()
            signal.clear()
            hv.connections[id] = nil
        }
    }
}
