import Foundation
import XenHypervisor
import XenPCIABI
import PCIModel

/// An in-process hypervisor holding several domains: a xenstore with
/// permissions, watches and transactions; grant tables whose mappings are the
/// very memory the granting domain shared; interdomain event channels; fault
/// injection; and a leak check. One lock guards everything, which keeps the
/// model simple and its behaviour deterministic.
// @unchecked Sendable: every mutable property (and its handles') is used only inside `locked`.
public final class MockHypervisor: @unchecked Sendable {
    let lock = NSLock()
    var tree = XenstoreTree()
    var domains: [DomID: String] = [:]
    public let faults = FaultInjector()

    // xenstore
    var connections: [Int: MockXenStore] = [:]
    struct Watch {
        var conn: Int; var path: String; var token: String
        /// What a path under it starts with (`path/`, or `/` for the root).
        var under: String
    }
    var watches: [Watch] = []
    struct Transaction {
        var conn: Int
        var dom: DomID
        var snapshot: XenstoreTree
        var start: UInt64
        /// Every path an operation in it used, and their parents: a commit
        /// fails when one changed since the start.
        var accessed: [String] = []
        private var lastPath: String?
        /// Its changes in order, each with its node's permissions after it
        /// (what decides who hears of it).
        var replay: [(path: String, change: XenstoreTree.Change, perms: [XenstorePermission])] = []
        /// Whether one of them is a removal.
        var removes = false

        init(conn: Int, dom: DomID, snapshot: XenstoreTree, start: UInt64) {
            self.conn = conn; self.dom = dom; self.snapshot = snapshot; self.start = start
            accessed.reserveCapacity(16)
            replay.reserveCapacity(8)
        }

        /// Makes a change on the snapshot, and records it.
        mutating func change(_ path: String, _ change: XenstoreTree.Change) throws {
            let perms = try snapshot.apply(change, path, dom: dom)
            access(path)
            if case .remove = change { removes = true }
            replay.append((path, change, perms))
        }

        /// Records `path` and its parent (the parent once for a run of
        /// paths in the same directory: it is a string to make).
        mutating func access(_ path: String) {
            if lastPath == nil || !XenstoreTree.sameParent(path, lastPath!) { accessed.append(XenstoreTree.parent(path)) }
            accessed.append(path)
            lastPath = path
        }
    }
    var transactions: [UInt32: Transaction] = [:]
    var nextTransaction: UInt32 = 1
    var nextHandle = 1

    // event channels
    enum PortState { case unbound(remote: DomID), interdomain(remote: DomID, port: EvtchnPort) }
    typealias InPlaceHandler = (EvtchnPort) -> Void
    struct Port {
        var handle: Int; var state: PortState; var pending = false; var masked = false
        /// MockDomain.deliverInPlace: notifies from the peer call this instead.
        var inPlace: InPlaceHandler?

        /// Marks it pending; when it was not masked, masks it and returns
        /// the handle to queue it on (one delivery until the owner unmasks).
        mutating func raise() -> Int? {
            pending = true
            if masked { return nil }
            masked = true
            return handle
        }
    }
    struct PortKey: Hashable {
        var dom: DomID; var port: EvtchnPort
        // One word to hash: ports are looked up several times per notify.
        func hash(into h: inout Hasher) { h.combine(UInt64(dom) << 32 | UInt64(port)) }
    }
    var ports: [PortKey: Port] = [:]
    var evtchnHandles: [Int: MockEventChannels] = [:]

    // grants
    struct GrantKey: Hashable { var owner: DomID; var ref: GrantRef }
    struct Grant { var handle: Int; var grantee: DomID; var writable: Bool; var page: UnsafeMutableRawPointer; var ended = false; var maps = 0 }
    var grants: [GrantKey: Grant] = [:]
    struct Mapping { var handle: Int; var mapper: DomID; var key: GrantKey }
    var mappings: [GrantHandle: Mapping] = [:]
    var nextGrantHandle: GrantHandle = 1
    var gnttabHandles: [Int: MockGrantTable] = [:]
    var gntshrHandles: [Int: MockGrantSharing] = [:]

    // pirqs (PCI platform)
    struct PirqKey: Hashable { var dom: DomID; var pirq: UInt32 }
    var pirqs: [PirqKey: (handle: Int, vector: MockPirqVector)] = [:]
    /// Functions whose MSI-X table a handle registered (prepare_msix).
    var preparedMSIX: [PCIAddress: Int] = [:]
    var routingHandles: [Int: MockInterruptRouting] = [:]
    var nextPirq: UInt32 = 32

    public init() {
        tree.bootstrap()
    }

    /// A domain of this hypervisor; created (with `/local/domain/<id>` laid
    /// out as libxl does) on first use.
    public func domain(_ id: DomID, name: String? = nil) -> MockDomain {
        locked {
            if domains[id] == nil {
                domains[id] = name ?? (id == 0 ? "Domain-0" : "guest\(id)")
                let home = "/local/domain/\(id)"
                try! tree.write(home + "/name", domains[id]!, dom: 0)
                try! tree.write(home + "/domid", String(id), dom: 0)
                try! tree.setPermissions(home, [XenstorePermission(0, .none), XenstorePermission(id, .read)], dom: 0)
                try! tree.setPermissions(home + "/name", [XenstorePermission(0, .none), XenstorePermission(id, .read)], dom: 0)
                try! tree.setPermissions(home + "/domid", [XenstorePermission(0, .none), XenstorePermission(id, .read)], dom: 0)
                for dir in ["device", "data"] {
                    try! tree.mkdir(home + "/" + dir, dom: 0)
                    try! tree.setPermissions(home + "/" + dir, [XenstorePermission(id, .none)], dom: 0)
                }
                fire("@introduceDomain", recurse: false, before: nil)
            }
        }
        return MockDomain(hypervisor: self, id: id)
    }

    /// Destroys a domain as the hypervisor would: every handle it holds is
    /// closed (ports unbound, grants ended, mappings undone), its xenstore
    /// home removed, and `@releaseDomain` fired.
    public func destroyDomain(_ id: DomID) {
        let (xs, ev, gt, gs): ([MockXenStore], [MockEventChannels], [MockGrantTable], [MockGrantSharing]) = locked {
            (connections.values.filter { $0.dom == id }, evtchnHandles.values.filter { $0.dom == id },
             gnttabHandles.values.filter { $0.dom == id }, gntshrHandles.values.filter { $0.dom == id })
        }
        // The guest's pirqs go with it (the mapping domain keeps its handle).
        locked { for (k, _) in pirqs where k.dom == id { pirqs[k] = nil } }
        xs.forEach { $0.close() }
        ev.forEach { $0.close() }
        gt.forEach { $0.close() }
        gs.forEach { $0.close() }
        locked {
            domains[id] = nil
            let home = "/local/domain/\(id)"
            if tree.node(home) != nil {
                let events = collectWatchEvents(home, recurse: true, tree: tree)
                try? tree.remove(home, dom: 0)
                deliver(events)
            }
            fire("@releaseDomain", recurse: false, before: nil)
        }
    }

    public var domainIDs: [DomID] { locked { domains.keys.sorted() } }

    /// Signals raised under the lock, written once it is released (the
    /// first in a slot: one per notify, no array).
    private var unlockSignal: ReadySignal?
    private var unlockSignals: [ReadySignal] = []

    /// Lock held: `signal`'s eventfd is written when the lock is released.
    func signalAfterUnlock(_ signal: ReadySignal) {
        if unlockSignal == nil { unlockSignal = signal } else { unlockSignals.append(signal) }
    }

    @inline(__always) func locked<T>(_ body: () throws -> T) rethrows -> T {
        lock.lock()
        defer {
            if let first = unlockSignal {
                unlockSignal = nil
                let more = unlockSignals
                if !more.isEmpty { unlockSignals = [] }
                lock.unlock()
                first.write()
                for s in more { s.write() }
            } else {
                lock.unlock()
            }
        }
        return try body()
    }

    // MARK: watches

    /// Watch events for a change at `path`, checked against `tree` for the
    /// watcher's read permission.
    func collectWatchEvents(_ path: String, recurse: Bool, tree: XenstoreTree) -> [(Int, XenstoreWatchEvent)] {
        var out: [(Int, XenstoreWatchEvent)] = []
        var below: String? // path + "/", made once and only for a removal
        for w in watches {
            guard let conn = connections[w.conn] else { continue }
            var reported: String?
            if path == w.path || path.hasPrefix(w.under) { reported = path }
            else if recurse {
                if below == nil { below = path + "/" }
                if w.path.hasPrefix(below!) { reported = w.path }
            }
            guard let r = reported else { continue }
            if !r.hasPrefix("@") {
                guard XenstoreTree.readable(tree.nearestPerms(r), conn.dom) else { continue }
            }
            out.append((w.conn, XenstoreWatchEvent(path: r, token: w.token)))
        }
        return out
    }

    /// Watch events for a change at `path` (no removal), whose node has
    /// `perms` after it: collectWatchEvents with the node already found.
    func watchEvents(_ path: String, perms: [XenstorePermission], into out: inout [(Int, XenstoreWatchEvent)]) {
        for w in watches where path == w.path || path.hasPrefix(w.under) {
            guard let conn = connections[w.conn], XenstoreTree.readable(perms, conn.dom) else { continue }
            out.append((w.conn, XenstoreWatchEvent(path: path, token: w.token)))
        }
    }

    /// Delivers the watch events of a change at `path` (no removal) made on
    /// the live store, whose node has `perms` after it.
    func fire(_ path: String, perms: [XenstorePermission]) {
        for w in watches where path == w.path || path.hasPrefix(w.under) {
            guard let conn = connections[w.conn], XenstoreTree.readable(perms, conn.dom) else { continue }
            conn.enqueue(XenstoreWatchEvent(path: path, token: w.token))
        }
    }

    func deliver(_ events: [(Int, XenstoreWatchEvent)]) {
        for (c, e) in events { connections[c]?.enqueue(e) }
    }

    func fire(_ path: String, recurse: Bool, before: XenstoreTree?) {
        deliver(collectWatchEvents(path, recurse: recurse, tree: before ?? tree))
    }

    // MARK: leak check

    /// Everything still open: grants, mappings, ports, watches, transactions,
    /// pirqs and handles. Empty when all was released.
    public func leaks() -> [String] {
        locked {
            var out: [String] = []
            for (k, g) in grants.sorted(by: { ($0.key.owner, $0.key.ref) < ($1.key.owner, $1.key.ref) }) {
                out.append(g.ended ? "dom\(k.owner): grant ref \(k.ref) ended but still mapped \(g.maps) time(s) by dom\(g.grantee)"
                                   : "dom\(k.owner): grant ref \(k.ref) to dom\(g.grantee) still shared")
            }
            for (h, m) in mappings.sorted(by: { $0.key < $1.key }) {
                out.append("dom\(m.mapper): grant mapping \(h) of dom\(m.key.owner) ref \(m.key.ref) still mapped")
            }
            for (k, p) in ports.sorted(by: { ($0.key.dom, $0.key.port) < ($1.key.dom, $1.key.port) }) {
                switch p.state {
                case .unbound(let r): out.append("dom\(k.dom): event channel port \(k.port) still allocated (unbound, for dom\(r))")
                case .interdomain(let r, let rp): out.append("dom\(k.dom): event channel port \(k.port) still bound to dom\(r) port \(rp)")
                }
            }
            for w in watches { out.append("dom\(connections[w.conn]?.dom ?? 0): xenstore watch '\(w.path)' token '\(w.token)' still registered") }
            for (id, t) in transactions.sorted(by: { $0.key < $1.key }) { out.append("dom\(t.dom): xenstore transaction \(id) still open") }
            for (k, p) in pirqs.sorted(by: { ($0.key.dom, $0.key.pirq) < ($1.key.dom, $1.key.pirq) }) {
                out.append("dom\(k.dom): pirq \(k.pirq) (\(p.vector)) still mapped")
            }
            for (a, h) in preparedMSIX.sorted(by: { $0.key < $1.key }) {
                out.append("dom\(routingHandles[h]?.dom ?? 0): MSI-X table of \(a) still prepared")
            }
            for c in connections.values.sorted(by: { $0.id < $1.id }) { out.append(c.leakLine) }
            for h in evtchnHandles.values.sorted(by: { $0.id < $1.id }) { out.append(h.leakLine) }
            for h in gnttabHandles.values.sorted(by: { $0.id < $1.id }) { out.append(h.leakLine) }
            for h in gntshrHandles.values.sorted(by: { $0.id < $1.id }) { out.append(h.leakLine) }
            for h in routingHandles.values.sorted(by: { $0.id < $1.id }) { out.append(h.leakLine) }
            return out
        }
    }

    /// Every pirq mapped for `guest` (all guests when nil), by pirq: what a
    /// test checks to see which vectors a backend asked for.
    public func pirqVectors(guest: DomID? = nil) -> [MockPirqVector] {
        locked { pirqs.filter { guest == nil || $0.key.dom == guest }.map(\.value.vector).sorted { ($0.guest, $0.pirq) < ($1.guest, $1.pirq) } }
    }

    /// The functions whose MSI-X table is prepared.
    public var preparedMSIXDevices: [PCIAddress] { locked { preparedMSIX.keys.sorted() } }

    /// A readable dump of the store, `xenstore-ls -f -p` style, for tests and the demo.
    public func dumpXenstore(under root: String = "/") -> String {
        locked {
            tree.nodes.keys.filter { $0 == root || $0.hasPrefix(root == "/" ? "/" : root + "/") }.sorted().map { p in
                let n = tree.nodes[p]!
                return "\(p) = \"\(n.value)\"  (\(n.perms.map(\.description).joined(separator: ",")))"
            }.joined(separator: "\n")
        }
    }

    func newHandleID() -> Int { defer { nextHandle += 1 }; return nextHandle }
}

extension XenstoreTree {
    /// The skeleton every Xen host has.
    mutating func bootstrap() {
        try! mkdir("/local/domain", dom: 0)
        try! mkdir("/tool", dom: 0)
        try! mkdir("/vm", dom: 0)
    }
}

/// One domain's view of the mock: the `Hypervisor` a driver is given.
public final class MockDomain: Hypervisor {
    public let hypervisor: MockHypervisor
    public let id: DomID
    public var name: String { "mock" }

    init(hypervisor: MockHypervisor, id: DomID) {
        self.hypervisor = hypervisor
        self.id = id
    }

    public func domid() throws -> DomID { id }

    /// Opens a handle: the fault check first, then it is registered for the leak check.
    private func open<H: MockHandle>(_ op: MockOperation, _ make: (MockHypervisor, Int, DomID) -> H,
                                     _ register: (MockHypervisor, H) -> Void) throws -> H {
        try hypervisor.locked {
            try hypervisor.faults.check(op, domain: id, "")
            let h = make(hypervisor, hypervisor.newHandleID(), id)
            register(hypervisor, h)
            return h
        }
    }

    public func openXenStore() throws -> XenStore {
        try open(.openXenStore, MockXenStore.init) { $0.connections[$1.id] = $1 }
    }

    public func openEventChannels() throws -> EventChannels {
        try open(.openEventChannels, MockEventChannels.init) { $0.evtchnHandles[$1.id] = $1 }
    }

    public func openGrantTable() throws -> GrantTable {
        try open(.openGrantTable, MockGrantTable.init) { $0.gnttabHandles[$1.id] = $1 }
    }

    public func openGrantSharing() throws -> GrantSharing {
        try open(.openGrantSharing, MockGrantSharing.init) { $0.gntshrHandles[$1.id] = $1 }
    }

    public func openInterruptRouting() throws -> InterruptRouting {
        try open(.openInterruptRouting, MockInterruptRouting.init) { $0.routingHandles[$1.id] = $1 }
    }
}
