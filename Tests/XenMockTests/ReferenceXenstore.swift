import Foundation
import XenHypervisor

/// A domain id (XenPCIABI's DomID, which this test target does not import).
typealias Dom = UInt16

/// The mock xenstored's semantics as they were before the store was made
/// fast (issue 13): a flat dictionary of nodes by path, a transaction as a
/// whole copy of the store, its writes replayed at commit. Slow and plain on
/// purpose; `XenstoreModelTests` runs random operations on it and on
/// `MockHypervisor` side by side and requires the same answers, errors,
/// watch events and final store.
final class ReferenceXenstore {
    struct Node {
        var value: String
        var perms: [XenstorePermission]
        var children: Set<String> = []
        var generation: UInt64
    }

    struct Tree {
        var nodes: [String: Node] = ["/": Node(value: "", perms: [XenstorePermission(0, .none)], generation: 1)]
        var changed: [String: UInt64] = [:]
        var generation: UInt64 = 1

        static func parent(_ path: String) -> String {
            guard path != "/", let i = path.lastIndex(of: "/") else { return "/" }
            return i == path.startIndex ? "/" : String(path[..<i])
        }

        static func name(_ path: String) -> String { String(path[path.index(after: path.lastIndex(of: "/")!)...]) }

        static func child(_ path: String, _ name: String) -> String { path == "/" ? "/" + name : path + "/" + name }

        static func access(_ perms: [XenstorePermission], _ dom: Dom) -> XenstorePermission.Access {
            guard let owner = perms.first else { return .none }
            if dom == 0 || owner.domid == dom { return .both }
            return perms.dropFirst().first { $0.domid == dom }?.access ?? owner.access
        }

        func nearest(_ path: String) -> String {
            var p = path
            while nodes[p] == nil { p = Tree.parent(p) }
            return p
        }

        func lastChange(_ path: String) -> UInt64 { max(nodes[path]?.generation ?? 0, changed[path] ?? 0) }

        func canRead(_ path: String, _ dom: Dom) -> Bool {
            guard let n = nodes[path] else { return false }
            let a = Tree.access(n.perms, dom)
            return a == .read || a == .both
        }

        func read(_ path: String, dom: Dom) throws -> String {
            guard let n = nodes[path] else { throw XenError(ENOENT, "xenstore read", path) }
            guard canRead(path, dom) else { throw XenError(EACCES, "xenstore read", path) }
            return n.value
        }

        func directory(_ path: String, dom: Dom) throws -> [String] {
            guard let n = nodes[path] else { throw XenError(ENOENT, "xenstore directory", path) }
            guard canRead(path, dom) else { throw XenError(EACCES, "xenstore directory", path) }
            return n.children.sorted()
        }

        func permissions(_ path: String, dom: Dom) throws -> [XenstorePermission] {
            guard let n = nodes[path] else { throw XenError(ENOENT, "xenstore get-perms", path) }
            guard canRead(path, dom) else { throw XenError(EACCES, "xenstore get-perms", path) }
            return n.perms
        }

        func requireWrite(_ path: String, dom: Dom, op: String) throws {
            let a = Tree.access(nodes[nearest(path)]!.perms, dom)
            guard a == .write || a == .both else { throw XenError(EACCES, op, path) }
        }

        mutating func create(_ path: String, dom: Dom) {
            if nodes[path] != nil { return }
            let parent = Tree.parent(path)
            create(parent, dom: dom)
            generation += 1
            var perms = nodes[parent]!.perms
            if dom != 0 { perms[0].domid = dom }
            nodes[path] = Node(value: "", perms: perms, generation: generation)
            nodes[parent]!.children.insert(Tree.name(path))
            nodes[parent]!.generation = generation
        }

        mutating func write(_ path: String, _ value: String, dom: Dom) throws {
            guard value.utf8.count <= 4096 else {
                throw XenError(E2BIG, "xenstore write", "\(path): value of \(value.utf8.count) bytes")
            }
            try requireWrite(path, dom: dom, op: "xenstore write")
            create(path, dom: dom)
            generation += 1
            nodes[path]!.value = value
            nodes[path]!.generation = generation
        }

        mutating func mkdir(_ path: String, dom: Dom) throws {
            if nodes[path] != nil { return }
            try requireWrite(path, dom: dom, op: "xenstore mkdir")
            create(path, dom: dom)
        }

        mutating func remove(_ path: String, dom: Dom) throws {
            guard path != "/" else { throw XenError(EINVAL, "xenstore rm", "/ cannot be removed") }
            guard nodes[path] != nil else { throw XenError(ENOENT, "xenstore rm", path) }
            try requireWrite(path, dom: dom, op: "xenstore rm")
            generation += 1
            func drop(_ p: String) {
                for c in nodes[p]?.children ?? [] { drop(Tree.child(p, c)) }
                nodes[p] = nil
                changed[p] = generation
            }
            drop(path)
            let parent = Tree.parent(path)
            nodes[parent]!.children.remove(Tree.name(path))
            nodes[parent]!.generation = generation
        }

        mutating func setPermissions(_ path: String, _ perms: [XenstorePermission], dom: Dom) throws {
            guard let n = nodes[path] else { throw XenError(ENOENT, "xenstore set-perms", path) }
            guard !perms.isEmpty else { throw XenError(EINVAL, "xenstore set-perms", "\(path): empty permission list") }
            guard dom == 0 || (n.perms.first?.domid == dom && perms[0].domid == dom) else {
                throw XenError(EACCES, "xenstore set-perms", path)
            }
            generation += 1
            nodes[path]!.perms = perms
            nodes[path]!.generation = generation
        }
    }

    /// xenstored's path rules, in the order the mock reports them.
    static func check(_ path: String, op: String) throws -> String {
        func bad(_ why: String) -> XenError { XenError(EINVAL, op, "'\(path)': \(why)") }
        guard path.hasPrefix("/") else { throw bad("not an absolute path") }
        guard path.utf8.count <= 3072 else { throw bad("longer than 3072 bytes") }
        if path == "/" { return path }
        var previous: UInt8 = 0
        for b in path.utf8 {
            if b == UInt8(ascii: "/") && previous == b { throw bad("empty path component") }
            previous = b
        }
        guard previous != UInt8(ascii: "/") else { throw bad("empty path component") }
        func allowed(_ b: UInt8) -> Bool {
            switch b {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "/"), UInt8(ascii: "_"), UInt8(ascii: "@"), UInt8(ascii: "-"): return true
            default: return false
            }
        }
        for b in path.utf8 where !allowed(b) {
            let c = path.unicodeScalars.first { !$0.isASCII || !allowed(UInt8($0.value)) }!
            throw bad("character '\(c)' not allowed")
        }
        return path
    }

    enum Step { case write(String), mkdir, remove, setPerms([XenstorePermission]) }

    struct Transaction {
        var conn: Int, dom: Dom, snapshot: Tree, start: UInt64
        var accessed: Set<String> = []
        var replay: [(String, Step)] = []
    }

    struct Watch { var conn: Int; var path: String; var token: String }

    var tree = Tree()
    var conns: [Int: Dom] = [:]
    /// Every connection's domain, closed ones too (a closed handle keeps it).
    var owners: [Int: Dom] = [:]
    var queues: [Int: [XenstoreWatchEvent]] = [:]
    var watches: [Watch] = []
    var transactions: [UInt32: Transaction] = [:]
    var nextTransaction: UInt32 = 1
    var domains: Set<Dom> = []

    init() {
        try! tree.mkdir("/local/domain", dom: 0)
        try! tree.mkdir("/tool", dom: 0)
        try! tree.mkdir("/vm", dom: 0)
    }

    /// MockHypervisor.domain(_:): the home libxl lays out, `@introduceDomain`.
    func addDomain(_ id: Dom) {
        guard !domains.contains(id) else { return }
        domains.insert(id)
        let home = "/local/domain/\(id)"
        try! tree.write(home + "/name", id == 0 ? "Domain-0" : "guest\(id)", dom: 0)
        try! tree.write(home + "/domid", String(id), dom: 0)
        for p in [home, home + "/name", home + "/domid"] {
            try! tree.setPermissions(p, [XenstorePermission(0, .none), XenstorePermission(id, .read)], dom: 0)
        }
        for dir in ["device", "data"] {
            try! tree.mkdir(home + "/" + dir, dom: 0)
            try! tree.setPermissions(home + "/" + dir, [XenstorePermission(id, .none)], dom: 0)
        }
        deliver(collect("@introduceDomain", recurse: false, tree: tree))
    }

    /// MockHypervisor.destroyDomain(_:): its connections closed, its home removed, `@releaseDomain`.
    func destroyDomain(_ id: Dom) {
        for (c, d) in conns.sorted(by: { $0.key < $1.key }) where d == id { close(c) }
        domains.remove(id)
        let home = "/local/domain/\(id)"
        if tree.nodes[home] != nil {
            let events = collect(home, recurse: true, tree: tree)
            try? tree.remove(home, dom: 0)
            deliver(events)
        }
        deliver(collect("@releaseDomain", recurse: false, tree: tree))
    }

    func open(_ conn: Int, dom: Dom) { conns[conn] = dom; owners[conn] = dom; queues[conn] = [] }

    func close(_ conn: Int) {
        guard conns[conn] != nil else { return }
        watches.removeAll { $0.conn == conn }
        for (k, t) in transactions where t.conn == conn { transactions[k] = nil }
        queues[conn] = nil
        conns[conn] = nil
    }

    func collect(_ path: String, recurse: Bool, tree: Tree) -> [(Int, XenstoreWatchEvent)] {
        var out: [(Int, XenstoreWatchEvent)] = []
        for w in watches {
            guard let dom = conns[w.conn] else { continue }
            var reported: String?
            if path == w.path || path.hasPrefix(w.path == "/" ? "/" : w.path + "/") { reported = path }
            else if recurse && w.path.hasPrefix(path + "/") { reported = w.path }
            guard let r = reported else { continue }
            if !r.hasPrefix("@") && !tree.canRead(tree.nearest(r), dom) { continue }
            out.append((w.conn, XenstoreWatchEvent(path: r, token: w.token)))
        }
        return out
    }

    func deliver(_ events: [(Int, XenstoreWatchEvent)]) {
        for (c, e) in events where conns[c] != nil { queues[c]!.append(e) }
    }

    func nextWatchEvent(_ conn: Int) -> XenstoreWatchEvent? {
        guard var q = queues[conn], !q.isEmpty else { return nil }
        let e = q.removeFirst()
        queues[conn] = q
        return e
    }

    func resolve(_ conn: Int, _ path: String, _ op: String) throws -> String {
        try Self.check(path.hasPrefix("/") ? path : "/local/domain/\(owners[conn]!)/" + path, op: op)
    }

    func apply(_ step: Step, _ p: String, dom: Dom, to tree: inout Tree) throws {
        switch step {
        case .write(let v): try tree.write(p, v, dom: dom)
        case .mkdir: try tree.mkdir(p, dom: dom)
        case .remove: try tree.remove(p, dom: dom)
        case .setPerms(let perms): try tree.setPermissions(p, perms, dom: dom)
        }
    }

    /// One operation, as MockXenStore.op runs it.
    func op<T>(_ conn: Int, _ kind: String, _ path: String, _ t: XenstoreTransaction, step: Step? = nil,
               _ body: (inout Tree, String, Dom) throws -> T) throws -> T {
        guard let dom = conns[conn] else { throw XenError(EBADF, kind, "\(path): connection closed") }
        let p = try resolve(conn, path, kind)
        if t != .none {
            guard var tx = transactions[t.id], tx.conn == conn else { throw XenError(ENOENT, kind, "\(p): no transaction \(t.id)") }
            let r = try body(&tx.snapshot, p, dom)
            tx.accessed.insert(p)
            tx.accessed.insert(Tree.parent(p))
            if let s = step { tx.replay.append((p, s)) }
            transactions[t.id] = tx
            return r
        }
        let recursive: Bool
        if case .remove = step { recursive = true } else { recursive = false }
        let before = recursive ? collect(p, recurse: true, tree: tree) : nil
        let r = try body(&tree, p, dom)
        if step != nil { deliver(before ?? collect(p, recurse: false, tree: tree)) }
        return r
    }

    func read(_ c: Int, _ path: String, _ t: XenstoreTransaction) throws -> String {
        try op(c, "xenstore read", path, t) { tree, p, d in try tree.read(p, dom: d) }
    }
    func write(_ c: Int, _ path: String, _ v: String, _ t: XenstoreTransaction) throws {
        try op(c, "xenstore write", path, t, step: .write(v)) { tree, p, d in try tree.write(p, v, dom: d) }
    }
    func mkdir(_ c: Int, _ path: String, _ t: XenstoreTransaction) throws {
        try op(c, "xenstore mkdir", path, t, step: .mkdir) { tree, p, d in try tree.mkdir(p, dom: d) }
    }
    func remove(_ c: Int, _ path: String, _ t: XenstoreTransaction) throws {
        try op(c, "xenstore rm", path, t, step: .remove) { tree, p, d in try tree.remove(p, dom: d) }
    }
    func directory(_ c: Int, _ path: String, _ t: XenstoreTransaction) throws -> [String] {
        try op(c, "xenstore directory", path, t) { tree, p, d in try tree.directory(p, dom: d) }
    }
    func permissions(_ c: Int, _ path: String, _ t: XenstoreTransaction) throws -> [XenstorePermission] {
        try op(c, "xenstore get-perms", path, t) { tree, p, d in try tree.permissions(p, dom: d) }
    }
    func setPermissions(_ c: Int, _ path: String, _ perms: [XenstorePermission], _ t: XenstoreTransaction) throws {
        try op(c, "xenstore set-perms", path, t, step: .setPerms(perms)) { tree, p, d in try tree.setPermissions(p, perms, dom: d) }
    }

    func transactionStart(_ c: Int) throws -> XenstoreTransaction {
        guard let dom = conns[c] else { throw XenError(EBADF, "xenstore transaction start", "connection closed") }
        let t = nextTransaction
        nextTransaction += 1
        transactions[t] = Transaction(conn: c, dom: dom, snapshot: tree, start: tree.generation)
        return XenstoreTransaction(t)
    }

    func transactionEnd(_ c: Int, _ t: XenstoreTransaction, abort: Bool) throws {
        let kind = "xenstore transaction end"
        guard let tx = transactions[t.id], tx.conn == c else { throw XenError(ENOENT, kind, "no transaction \(t.id)") }
        transactions[t.id] = nil
        if abort { return }
        if let p = tx.accessed.first(where: { tree.lastChange($0) > tx.start }) {
            throw XenError(EAGAIN, kind, "transaction \(t.id): \(p) changed since it started")
        }
        var events: [(Int, XenstoreWatchEvent)] = []
        for (p, step) in tx.replay {
            if case .remove = step {
                let before = tree
                try apply(step, p, dom: tx.dom, to: &tree)
                events += collect(p, recurse: true, tree: before)
            } else {
                try apply(step, p, dom: tx.dom, to: &tree)
                events += collect(p, recurse: false, tree: tree)
            }
        }
        deliver(events)
    }

    func watch(_ c: Int, _ path: String, token: String) throws {
        guard conns[c] != nil else { throw XenError(EBADF, "xenstore watch", "\(path): connection closed") }
        let p = path.hasPrefix("@") ? path : try resolve(c, path, "xenstore watch")
        guard !watches.contains(where: { $0.conn == c && $0.path == p && $0.token == token }) else {
            throw XenError(EEXIST, "xenstore watch", "\(p) token '\(token)'")
        }
        watches.append(Watch(conn: c, path: p, token: token))
        queues[c]!.append(XenstoreWatchEvent(path: p, token: token))
    }

    func unwatch(_ c: Int, _ path: String, token: String) throws {
        let p = path.hasPrefix("@") ? path : try resolve(c, path, "xenstore unwatch")
        guard let i = watches.firstIndex(where: { $0.conn == c && $0.path == p && $0.token == token }) else {
            throw XenError(ENOENT, "xenstore unwatch", "\(p) token '\(token)'")
        }
        watches.remove(at: i)
        queues[c]?.removeAll { $0.token == token && ($0.path == p || $0.path.hasPrefix(p + "/")) }
    }

    /// MockHypervisor.dumpXenstore's format.
    func dump() -> String {
        tree.nodes.keys.sorted().map { p in
            let n = tree.nodes[p]!
            return "\(p) = \"\(n.value)\"  (\(n.perms.map(\.description).joined(separator: ",")))"
        }.joined(separator: "\n")
    }
}
