import Foundation
import XenHypervisor

/// A xenstore connection of one domain. Relative paths resolve against the
/// domain's home, `/local/domain/<id>`, as with xenstored.
final class MockXenStore: MockHandle, XenStore, @unchecked Sendable {
    private var queue: [XenstoreWatchEvent] = []
    private let signal = ReadySignal()


    var fileDescriptor: Int32 { signal.fd }

    func enqueue(_ e: XenstoreWatchEvent) {
        queue.append(e)
        signal.raise()
    }

    func nextWatchEvent() -> XenstoreWatchEvent? {
        hv.locked {
            guard !queue.isEmpty else { signal.clear(); return nil }
            let e = queue.removeFirst()
            if queue.isEmpty { signal.clear() }
            return e
        }
    }

    private func resolve(_ path: String, _ op: MockOperation) throws -> String {
        let p = path.hasPrefix("/") ? path : "/local/domain/\(dom)/" + path
        return try XenstoreTree.check(p, op: op.rawValue)
    }

    /// Runs one operation under the lock: closed check, fault check, then
    /// either directly on the store or inside the named transaction.
    private func op<T>(_ kind: MockOperation, _ path: String, _ t: XenstoreTransaction,
                       _ body: @escaping (inout XenstoreTree, String) throws -> T,
                       fires: Bool = false, recurse: Bool = false) throws -> T {
        try hv.locked {
            guard !closed else { throw XenError(EBADF, kind.rawValue, "\(path): connection closed") }
            let p = try resolve(path, kind)
            try hv.faults.check(kind, domain: dom, p)
            if t != .none {
                guard hv.transactions[t.id]?.conn == id else {
                    throw XenError(ENOENT, kind.rawValue, "\(p): no transaction \(t.id)")
                }
                // Taken out while it changes, so its snapshot is not copied on
                // write. The tree's operations validate before they change
                // anything, so a failed one leaves it as it was.
                var tx = hv.transactions.removeValue(forKey: t.id)!
                let r: T
                do { r = try body(&tx.snapshot, p) } catch { hv.transactions[t.id] = tx; throw error }
                tx.accessed.insert(p)
                tx.accessed.insert(XenstoreTree.parent(p))
                if fires {
                    tx.replay.append((recurse, { tree in
                        _ = try body(&tree, p)
                        return p
                    }))
                }
                hv.transactions[t.id] = tx
                return r
            }
            let before = fires && recurse ? hv.tree : nil
            let events = before.map { hv.collectWatchEvents(p, recurse: true, tree: $0) }
            let r = try body(&hv.tree, p)
            if fires {
                if let ev = events { hv.deliver(ev) } else { hv.fire(p, recurse: false, before: nil) }
            }
            return r
        }
    }

    func read(_ path: String, transaction t: XenstoreTransaction) throws -> String {
        let d = dom
        return try op(.xsRead, path, t) { tree, p in try tree.read(p, dom: d) }
    }

    func write(_ path: String, _ value: String, transaction t: XenstoreTransaction) throws {
        let d = dom
        try op(.xsWrite, path, t, { tree, p in try tree.write(p, value, dom: d) }, fires: true)
    }

    func mkdir(_ path: String, transaction t: XenstoreTransaction) throws {
        let d = dom
        try op(.xsMkdir, path, t, { tree, p in try tree.mkdir(p, dom: d) }, fires: true)
    }

    func remove(_ path: String, transaction t: XenstoreTransaction) throws {
        let d = dom
        try op(.xsRemove, path, t, { tree, p in try tree.remove(p, dom: d) }, fires: true, recurse: true)
    }

    func directory(_ path: String, transaction t: XenstoreTransaction) throws -> [String] {
        let d = dom
        return try op(.xsDirectory, path, t) { tree, p in try tree.directory(p, dom: d) }
    }

    func permissions(_ path: String, transaction t: XenstoreTransaction) throws -> [XenstorePermission] {
        let d = dom
        return try op(.xsGetPermissions, path, t) { tree, p in try tree.permissions(p, dom: d) }
    }

    func setPermissions(_ path: String, _ perms: [XenstorePermission], transaction t: XenstoreTransaction) throws {
        let d = dom
        try op(.xsSetPermissions, path, t, { tree, p in try tree.setPermissions(p, perms, dom: d) }, fires: true)
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
    /// started (xenstored's rule); otherwise replay its writes on the live
    /// store and fire their watches.
    func transactionEnd(_ t: XenstoreTransaction, abort: Bool) throws {
        try hv.locked {
            let kind = MockOperation.xsTransactionEnd.rawValue
            guard let tx = hv.transactions[t.id], tx.conn == id else {
                throw XenError(ENOENT, kind, "no transaction \(t.id)")
            }
            hv.transactions[t.id] = nil
            try hv.faults.check(.xsTransactionEnd, domain: dom, "transaction \(t.id)")
            if abort { return }
            if let p = tx.accessed.first(where: { hv.tree.lastChange($0) > tx.start }) {
                throw XenError(EAGAIN, kind, "transaction \(t.id): \(p) changed since it started")
            }
            // Replayed on the live tree in place: no node it touched changed
            // since the transaction ran them on its snapshot, so each step
            // succeeds as it did there. A copy of the whole tree per commit
            // (thousands of nodes with 256 guests, under the mock's one lock)
            // was what a connect storm waited for. Removals keep a copy of the
            // tree before them, to find the watches they fire.
            var events: [(Int, XenstoreWatchEvent)] = []
            for (recursive, step) in tx.replay {
                let before = recursive ? hv.tree : nil
                let p = try step(&hv.tree)
                events += hv.collectWatchEvents(p, recurse: recursive, tree: before ?? hv.tree)
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
            hv.watches.append(MockHypervisor.Watch(conn: id, path: p, token: token))
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
