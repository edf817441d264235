import Foundation
import XenHypervisor
import XenPCIABI

/// The xenstore database: nodes by absolute path, with xenstored's
/// permission rules and per-node modification generations for transactions.
struct XenstoreTree {
    struct Node {
        var value: String
        var perms: [XenstorePermission]
        var children: Set<String> = []
        var generation: UInt64
    }

    private(set) var nodes: [String: Node]
    /// Generation at which a path last changed (including removal).
    private(set) var changed: [String: UInt64] = [:]
    var generation: UInt64 = 1

    init() {
        nodes = ["/": Node(value: "", perms: [XenstorePermission(0, .none)], generation: 1)]
    }

    static let maxPath = 3072
    static let maxValue = 4096

    /// Validates and normalises an absolute path (xenstored's character set).
    static func check(_ path: String, op: String) throws -> String {
        func bad(_ why: String) -> XenError { XenError(EINVAL, op, "'\(path)': \(why)") }
        guard path.hasPrefix("/") else { throw bad("not an absolute path") }
        guard path.utf8.count <= maxPath else { throw bad("longer than \(maxPath) bytes") }
        if path == "/" { return path }
        // Byte scans, not Foundation: every operation on the mock comes here.
        var previous: UInt8 = 0
        for b in path.utf8 {
            if b == UInt8(ascii: "/") && previous == b { throw bad("empty path component") }
            previous = b
        }
        guard previous != UInt8(ascii: "/") else { throw bad("empty path component") }
        for b in path.utf8 where !Self.allowed(b) {
            let c = path.unicodeScalars.first { !$0.isASCII || !Self.allowed(UInt8($0.value)) }!
            throw bad("character '\(c)' not allowed")
        }
        return path
    }

    /// xenstored's path alphabet: ASCII letters, digits and `/_@-`.
    static func allowed(_ b: UInt8) -> Bool {
        switch b {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "/"), UInt8(ascii: "_"), UInt8(ascii: "@"), UInt8(ascii: "-"): return true
        default: return false
        }
    }

    static func parent(_ path: String) -> String {
        // The UTF-8 view: paths are ASCII, and Character search is slow.
        guard let i = path.utf8.lastIndex(of: UInt8(ascii: "/")), path != "/" else { return "/" }
        return i == path.startIndex ? "/" : String(path[..<i])
    }

    static func child(_ path: String, _ name: String) -> String { path == "/" ? "/" + name : path + "/" + name }

    /// Owner and dom0 have full access; others get their entry or the default.
    static func access(_ perms: [XenstorePermission], _ dom: DomID) -> XenstorePermission.Access {
        guard let owner = perms.first else { return .none }
        if dom == 0 || owner.domid == dom { return .both }
        return perms.dropFirst().first { $0.domid == dom }?.access ?? owner.access
    }

    func node(_ path: String) -> Node? { nodes[path] }

    /// Nearest existing ancestor (or the node itself).
    func nearest(_ path: String) -> (String, Node) {
        var p = path
        while nodes[p] == nil { p = XenstoreTree.parent(p) }
        return (p, nodes[p]!)
    }

    func lastChange(_ path: String) -> UInt64 { max(nodes[path]?.generation ?? 0, changed[path] ?? 0) }

    func canRead(_ path: String, _ dom: DomID) -> Bool {
        guard let n = nodes[path] else { return false }
        let a = XenstoreTree.access(n.perms, dom)
        return a == .read || a == .both
    }

    func read(_ path: String, dom: DomID) throws -> String {
        guard let n = nodes[path] else { throw XenError(ENOENT, "xenstore read", path) }
        guard canRead(path, dom) else { throw XenError(EACCES, "xenstore read", path) }
        return n.value
    }

    func directory(_ path: String, dom: DomID) throws -> [String] {
        guard let n = nodes[path] else { throw XenError(ENOENT, "xenstore directory", path) }
        guard canRead(path, dom) else { throw XenError(EACCES, "xenstore directory", path) }
        return n.children.sorted()
    }

    private func requireWrite(_ path: String, dom: DomID, op: String) throws {
        let (_, n) = nearest(path)
        let a = XenstoreTree.access(n.perms, dom)
        guard a == .write || a == .both else { throw XenError(EACCES, op, path) }
    }

    /// Creates missing ancestors and the node; new nodes inherit the
    /// parent's permissions, and an unprivileged creator becomes the owner.
    /// Returns the paths that changed.
    private mutating func create(_ path: String, dom: DomID) -> [String] {
        if nodes[path] != nil { return [] }
        let parent = XenstoreTree.parent(path)
        var created = create(parent, dom: dom)
        generation += 1
        var perms = nodes[parent]!.perms
        if dom != 0 { perms[0].domid = dom }
        nodes[path] = Node(value: "", perms: perms, generation: generation)
        nodes[parent]!.children.insert(String(path[path.utf8.index(after: path.utf8.lastIndex(of: UInt8(ascii: "/"))!)...]))
        nodes[parent]!.generation = generation
        created.append(path)
        return created
    }

    mutating func write(_ path: String, _ value: String, dom: DomID) throws {
        guard value.utf8.count <= XenstoreTree.maxValue else {
            throw XenError(E2BIG, "xenstore write", "\(path): value of \(value.utf8.count) bytes")
        }
        try requireWrite(path, dom: dom, op: "xenstore write")
        _ = create(path, dom: dom)
        generation += 1
        nodes[path]!.value = value
        nodes[path]!.generation = generation
    }

    mutating func mkdir(_ path: String, dom: DomID) throws {
        if nodes[path] != nil { return }
        try requireWrite(path, dom: dom, op: "xenstore mkdir")
        _ = create(path, dom: dom)
    }

    /// Removes a subtree; returns false when nothing was there.
    mutating func remove(_ path: String, dom: DomID) throws {
        guard path != "/" else { throw XenError(EINVAL, "xenstore rm", "/ cannot be removed") }
        guard nodes[path] != nil else { throw XenError(ENOENT, "xenstore rm", path) }
        try requireWrite(path, dom: dom, op: "xenstore rm")
        generation += 1
        func drop(_ p: String) {
            for c in nodes[p]?.children ?? [] { drop(XenstoreTree.child(p, c)) }
            nodes[p] = nil
            changed[p] = generation
        }
        drop(path)
        let parent = XenstoreTree.parent(path)
        nodes[parent]!.children.remove(String(path[path.index(after: path.lastIndex(of: "/")!)...]))
        nodes[parent]!.generation = generation
    }

    func permissions(_ path: String, dom: DomID) throws -> [XenstorePermission] {
        guard let n = nodes[path] else { throw XenError(ENOENT, "xenstore get-perms", path) }
        guard canRead(path, dom) else { throw XenError(EACCES, "xenstore get-perms", path) }
        return n.perms
    }

    /// Only dom0 or the node's owner may change permissions, and only dom0
    /// may give a node away.
    mutating func setPermissions(_ path: String, _ perms: [XenstorePermission], dom: DomID) throws {
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
