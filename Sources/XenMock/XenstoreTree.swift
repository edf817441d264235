import Foundation
import XenHypervisor
import XenPCIABI

/// The xenstore database: nodes by absolute path, with xenstored's
/// permission rules and per-node modification generations for transactions.
///
/// Every operation on the mock comes here, and in the fuzzers it runs under
/// coverage instrumentation and ASan, where each comparison our code makes
/// is a call and each allocation records a stack. So: a path is
/// checked in one branch-free scan (the byte loop that did it was a tenth
/// of the xenstore target's time), a node is found with one hash lookup and
/// changed in place through its index, and a read or a write to an existing
/// node allocates nothing.
struct XenstoreTree {
    struct Node {
        var value: String
        var perms: [XenstorePermission]
        /// The children's paths, in no order (a new one is appended: a set
        /// grew and rehashed for every directory each guest makes).
        var children: [String] = []
        var generation: UInt64
    }

    /// A change, as a transaction records it to redo at commit.
    enum Change {
        case write(String), mkdir, remove, setPermissions([XenstorePermission])
    }

    private(set) var nodes: [String: Node]
    /// Generation at which a path was last removed.
    private(set) var changed: [String: UInt64] = [:]
    var generation: UInt64 = 1

    init() {
        nodes = ["/": Node(value: "", perms: [XenstorePermission(0, .none)], generation: 1)]
    }

    static let maxPath = 3072
    static let maxValue = 4096

    // MARK: paths

    /// Validates an absolute path (xenstored's character set).
    static func check(_ path: String, op: String) throws -> String {
        if wellFormed(path) { return path }
        return try explain(path, op: op)
    }

    /// A connection's path made absolute (relative ones are under `home`,
    /// which ends in `/`) and checked. The usual case, an absolute valid
    /// path, is one scan of its bytes.
    static func resolve(_ path: String, home: String, op: String) throws -> String {
        let fast = path.utf8.withContiguousStorageIfAvailable { b in
            // A second byte that is ASCII: the first Character is the slash alone.
            b.count > 1 && b.count <= maxPath && b[0] == 0x2F && b[1] < 0x80 && scan(b)
        }
        if fast == true { return path }
        return try check(isAbsolute(path) ? path : home + path, op: op)
    }

    /// True when every byte is in the alphabet, no `//` occurs and the last
    /// byte is not `/`. Eight bytes at a time with word arithmetic, no
    /// branch per byte and one load per word: under coverage every
    /// comparison is a call, under ASan every load is checked, and this runs
    /// on every operation. (In a word of ASCII bytes, adding 0x80 - c to
    /// each byte sets its top bit exactly when the byte is >= c, and adding
    /// 0x7F - c leaves it clear exactly when the byte is <= c; no byte
    /// carries into the next.)
    static func scan(_ b: UnsafeBufferPointer<UInt8>) -> Bool {
        guard let p = b.baseAddress, b.count > 0 else { return false }
        let ones: UInt64 = 0x0101_0101_0101_0101, top: UInt64 = 0x8080_8080_8080_8080
        @inline(__always) func atLeast(_ y: UInt64, _ c: UInt64) -> UInt64 { (y &+ (0x80 &- c) &* ones) & top }
        @inline(__always) func atMost(_ y: UInt64, _ c: UInt64) -> UInt64 { ~(y &+ (0x7F &- c) &* ones) & top }
        @inline(__always) func within(_ y: UInt64, _ lo: UInt64, _ hi: UInt64) -> UInt64 { atLeast(y, lo) & atMost(y, hi) }
        let n = b.count
        var bad: UInt64 = 0, doubled: UInt64 = 0, carry: UInt64 = 0
        @inline(__always) func word(_ x: UInt64, _ live: UInt64) {
            let y = x & ~top // the low seven bits; a byte with its top bit set is refused below
            let slash = within(y, 0x2F, 0x2F)
            let ok = (within(y | 0x20 &* ones, 0x61, 0x7A) | within(y, 0x30, 0x39) | slash
                      | within(y, 0x5F, 0x5F) | within(y, 0x40, 0x40) | within(y, 0x2D, 0x2D)) & ~(x & top)
            bad |= ~ok & live
            doubled |= (slash & (slash &<< 8)) | (carry & slash)
            carry = (slash &>> 56) & 0x80
        }
        let raw = UnsafeRawPointer(p)
        var i = 0
        while i &+ 8 <= n {
            word(raw.loadUnaligned(fromByteOffset: i, as: UInt64.self), top)
            i &+= 8
        }
        if i < n { // the tail, padded with NULs (never slashes), which `live` leaves out
            var x: UInt64 = 0
            memcpy(&x, raw + i, n &- i)
            word(x, top & ((1 &<< (8 &* UInt64(n &- i))) &- 1))
        }
        return bad | doubled == 0 && p[n &- 1] != 0x2F
    }

    /// True for a valid path: `/` then only the alphabet, no empty component,
    /// no trailing `/`.
    static func wellFormed(_ path: String) -> Bool {
        path.utf8.withContiguousStorageIfAvailable { b in
            b.count > 0 && b.count <= maxPath && b[0] == 0x2F && (b.count == 1 || scan(b))
        } ?? false
    }

    /// Why a path is invalid, in the order the checks were always made:
    /// absolute, length, empty component, then the first bad character.
    private static func explain(_ path: String, op: String) throws -> String {
        func bad(_ why: String) -> XenError { XenError(EINVAL, op, "'\(path)': \(why)") }
        guard path.hasPrefix("/") else { throw bad("not an absolute path") }
        guard path.utf8.count <= maxPath else { throw bad("longer than \(maxPath) bytes") }
        if path == "/" { return path }
        var previous: UInt8 = 0
        for b in path.utf8 {
            if b == UInt8(ascii: "/") && previous == b { throw bad("empty path component") }
            previous = b
        }
        guard previous != UInt8(ascii: "/") else { throw bad("empty path component") }
        for b in path.utf8 where !allowed(b) {
            let c = path.unicodeScalars.first { !$0.isASCII || !allowed(UInt8($0.value)) }!
            throw bad("character '\(c)' not allowed")
        }
        return path
    }

    static func allowed(_ b: UInt8) -> Bool {
        switch b {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "/"), UInt8(ascii: "_"), UInt8(ascii: "@"), UInt8(ascii: "-"): return true
        default: return false
        }
    }

    /// True when `path` is absolute in the sense `hasPrefix("/")` gives
    /// (its first Character is `/`), without the Character machinery when
    /// the byte after the slash is ASCII (a grapheme always breaks there).
    static func isAbsolute(_ path: String) -> Bool {
        var it = path.utf8.makeIterator()
        guard it.next() == UInt8(ascii: "/") else { return false }
        guard let second = it.next(), second >= 0x80 else { return true }
        return path.hasPrefix("/")
    }

    /// Offset of the last `/` (paths here are checked: ASCII, no NUL).
    private static func lastSlash(_ path: String) -> Int? {
        path.withCString { p in strrchr(p, 0x2F).map { UnsafePointer($0) - p } }
    }

    static func parent(_ path: String) -> String {
        guard path != "/", let i = lastSlash(path) else { return "/" }
        if i == 0 { return "/" }
        return path.withCString { p in p.withMemoryRebound(to: UInt8.self, capacity: i) { String(decoding: UnsafeBufferPointer(start: $0, count: i), as: UTF8.self) } }
    }

    /// True when `a` and `b` (checked paths) have the same parent.
    static func sameParent(_ a: String, _ b: String) -> Bool {
        guard let i = lastSlash(a), lastSlash(b) == i else { return false }
        return a.utf8.withContiguousStorageIfAvailable { x in
            b.utf8.withContiguousStorageIfAvailable { y in memcmp(x.baseAddress!, y.baseAddress!, i) == 0 } ?? false
        } ?? false
    }

    /// The last component (short: a small string, not allocated).
    static func name(_ path: String) -> String {
        let i = lastSlash(path) ?? -1
        let n = path.utf8.count - i - 1
        return path.withCString { p in
            (p + i + 1).withMemoryRebound(to: UInt8.self, capacity: n) { String(decoding: UnsafeBufferPointer(start: $0, count: n), as: UTF8.self) }
        }
    }

    static func child(_ path: String, _ name: String) -> String { path == "/" ? "/" + name : path + "/" + name }

    // MARK: permissions

    /// Owner and dom0 have full access; others get their entry or the default.
    static func access(_ perms: [XenstorePermission], _ dom: DomID) -> XenstorePermission.Access {
        guard let owner = perms.first else { return .none }
        if dom == 0 || owner.domid == dom { return .both }
        var i = 1
        while i < perms.count {
            if perms[i].domid == dom { return perms[i].access }
            i += 1
        }
        return owner.access
    }

    static func readable(_ perms: [XenstorePermission], _ dom: DomID) -> Bool {
        let a = access(perms, dom)
        return a == .read || a == .both
    }

    static func writable(_ perms: [XenstorePermission], _ dom: DomID) -> Bool {
        let a = access(perms, dom)
        return a == .write || a == .both
    }

    // MARK: queries

    func node(_ path: String) -> Node? { nodes[path] }

    /// The permissions of the node or, when it does not exist, of its nearest ancestor.
    func nearestPerms(_ path: String) -> [XenstorePermission] {
        if let n = nodes[path] { return n.perms }
        var p = XenstoreTree.parent(path)
        while true {
            if let n = nodes[p] { return n.perms }
            p = XenstoreTree.parent(p)
        }
    }

    func lastChange(_ path: String) -> UInt64 {
        let g = nodes[path]?.generation ?? 0
        guard !changed.isEmpty, let r = changed[path] else { return g }
        return max(g, r)
    }

    func canRead(_ path: String, _ dom: DomID) -> Bool {
        guard let n = nodes[path] else { return false }
        return XenstoreTree.readable(n.perms, dom)
    }

    func read(_ path: String, dom: DomID) throws -> String {
        guard let n = nodes[path] else { throw XenError(ENOENT, "xenstore read", path) }
        guard XenstoreTree.readable(n.perms, dom) else { throw XenError(EACCES, "xenstore read", path) }
        return n.value
    }

    func directory(_ path: String, dom: DomID) throws -> [String] {
        guard let n = nodes[path] else { throw XenError(ENOENT, "xenstore directory", path) }
        guard XenstoreTree.readable(n.perms, dom) else { throw XenError(EACCES, "xenstore directory", path) }
        return n.children.map(XenstoreTree.name).sorted()
    }

    func permissions(_ path: String, dom: DomID) throws -> [XenstorePermission] {
        guard let n = nodes[path] else { throw XenError(ENOENT, "xenstore get-perms", path) }
        guard XenstoreTree.readable(n.perms, dom) else { throw XenError(EACCES, "xenstore get-perms", path) }
        return n.perms
    }

    // MARK: changes

    /// Makes a change; returns the node's permissions after it (none for a
    /// removal), which decide who hears of it.
    @discardableResult
    mutating func apply(_ change: Change, _ path: String, dom: DomID) throws -> [XenstorePermission] {
        switch change {
        case .write(let v): return try write(path, v, dom: dom)
        case .mkdir: return try mkdir(path, dom: dom)
        case .remove: try remove(path, dom: dom); return []
        case .setPermissions(let perms): return try setPermissions(path, perms, dom: dom)
        }
    }

    /// A node that does not exist yet, with its missing ancestors, after the
    /// write check on its nearest existing ancestor. New nodes inherit their
    /// parent's permissions, and an unprivileged creator becomes the owner.
    /// Each created node takes a generation, and its parent with it; a
    /// written value takes one more (as a create followed by a write).
    private mutating func create(_ path: String, value: String?, dom: DomID, op: String) throws -> [XenstorePermission] {
        let parent = XenstoreTree.parent(path)
        if let i = nodes.index(forKey: parent) {
            guard XenstoreTree.writable(nodes.values[i].perms, dom) else { throw XenError(EACCES, op, path) }
        } else {
            guard XenstoreTree.writable(nearestPerms(parent), dom) else { throw XenError(EACCES, op, path) }
            insertMissing(parent, dom: dom)
        }
        return insert(path, under: parent, value: value, dom: dom)
    }

    /// Creates `path` and its missing ancestors, unchecked (the caller checked).
    private mutating func insertMissing(_ path: String, dom: DomID) {
        let parent = XenstoreTree.parent(path)
        if nodes[parent] == nil { insertMissing(parent, dom: dom) }
        insert(path, under: parent, value: nil, dom: dom)
    }

    /// The parent lists its children by their paths (the very strings that
    /// key them here), so removing a subtree makes no path.
    @discardableResult
    private mutating func insert(_ path: String, under parent: String, value: String?, dom: DomID) -> [XenstorePermission] {
        let i = nodes.index(forKey: parent)!
        generation += 1
        var perms = nodes.values[i].perms
        if dom != 0 && perms[0].domid != dom { perms[0].domid = dom } // else shared, not copied
        nodes.values[i].children.append(path)
        nodes.values[i].generation = generation
        if value != nil { generation += 1 }
        nodes[path] = Node(value: value ?? "", perms: perms, generation: generation)
        return perms
    }

    @discardableResult
    mutating func write(_ path: String, _ value: String, dom: DomID) throws -> [XenstorePermission] {
        guard value.utf8.count <= XenstoreTree.maxValue else {
            throw XenError(E2BIG, "xenstore write", "\(path): value of \(value.utf8.count) bytes")
        }
        guard let i = nodes.index(forKey: path) else { return try create(path, value: value, dom: dom, op: "xenstore write") }
        guard XenstoreTree.writable(nodes.values[i].perms, dom) else { throw XenError(EACCES, "xenstore write", path) }
        generation += 1
        nodes.values[i].value = value
        nodes.values[i].generation = generation
        return nodes.values[i].perms
    }

    @discardableResult
    mutating func mkdir(_ path: String, dom: DomID) throws -> [XenstorePermission] {
        if let i = nodes.index(forKey: path) { return nodes.values[i].perms }
        return try create(path, value: nil, dom: dom, op: "xenstore mkdir")
    }

    /// Removes a subtree.
    mutating func remove(_ path: String, dom: DomID) throws {
        guard path != "/" else { throw XenError(EINVAL, "xenstore rm", "/ cannot be removed") }
        guard let i = nodes.index(forKey: path) else { throw XenError(ENOENT, "xenstore rm", path) }
        guard XenstoreTree.writable(nodes.values[i].perms, dom) else { throw XenError(EACCES, "xenstore rm", path) }
        generation += 1
        drop(path)
        let p = nodes.index(forKey: XenstoreTree.parent(path))!
        nodes.values[p].children.removeAll { $0 == path }
        nodes.values[p].generation = generation
    }

    private mutating func drop(_ path: String) {
        guard let n = nodes.removeValue(forKey: path) else { return }
        changed[path] = generation
        for c in n.children { drop(c) }
    }

    /// Only dom0 or the node's owner may change permissions, and only dom0
    /// may give a node away.
    @discardableResult
    mutating func setPermissions(_ path: String, _ perms: [XenstorePermission], dom: DomID) throws -> [XenstorePermission] {
        guard let i = nodes.index(forKey: path) else { throw XenError(ENOENT, "xenstore set-perms", path) }
        guard !perms.isEmpty else { throw XenError(EINVAL, "xenstore set-perms", "\(path): empty permission list") }
        guard dom == 0 || (nodes.values[i].perms.first?.domid == dom && perms[0].domid == dom) else {
            throw XenError(EACCES, "xenstore set-perms", path)
        }
        generation += 1
        nodes.values[i].perms = perms
        nodes.values[i].generation = generation
        return perms
    }
}
