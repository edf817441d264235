import Foundation
import Testing
@testable import PCIBack
import XenMock
import CXenPCI
import XenHypervisor
import XenPCIABI
import PCIModel

let fixtureRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Fixtures/qemu-q35").path

enum Fixture {
    static let e1000 = try! PCIAddress(parsing: "0000:00:03.0")
    static let virtioNet = try! PCIAddress(parsing: "0000:00:04.0")   // MSI-X
    static let rootPort = try! PCIAddress(parsing: "0000:00:05.0")    // PCIe bridge, pcieport bound
    static let mfE1000 = try! PCIAddress(parsing: "0000:00:06.0")     // multi-function, fn 0
    static let mfRng = try! PCIAddress(parsing: "0000:00:06.1")       // fn 1
    static let ahci = try! PCIAddress(parsing: "0000:00:1f.2")        // MSI
    static let nvme = try! PCIAddress(parsing: "0000:01:00.0")        // 4 KiB, MSI-X, PCIe, ext caps
}

/// Polls `cond` until true or the deadline; tests never hang.
func eventually(_ what: String, timeout: Duration = .seconds(3), _ cond: () throws -> Bool) rethrows -> Bool {
    let end = ContinuousClock.now + timeout
    while ContinuousClock.now < end {
        if try cond() { return true }
        usleep(1000)
    }
    let ok = try cond()
    if !ok { Issue.record("timed out waiting for \(what)") }
    return ok
}

/// A mock host with dom0 running the backend and guests, a toolstack that
/// writes xenstore as libxl does, and fixture devices in memory.
// Sendable: tests hand it to threads; its event list is under `eventLock`.
final class Harness: @unchecked Sendable {
    let hv = MockHypervisor()
    let dom0: MockDomain
    let toolstack: XenStore
    let back: PCIBack
    var opened: [PCIAddress: SysfsPCIDevice] = [:]
    private var recorded: [PCIBack.Event] = []
    /// Events so far (the backend's thread appends).
    var events: [PCIBack.Event] { eventLock.lock(); defer { eventLock.unlock() }; return recorded }
    let eventLock = NSLock()

    init(options: PCIBack.Options = .init(), guests: [DomID] = [1], start: Bool = true, stateStore: BackendStateStore? = nil) throws {
        dom0 = hv.domain(0)
        for g in guests { _ = hv.domain(g) }
        toolstack = try dom0.openXenStore()
        back = try PCIBack(hypervisor: dom0, options: options, stateStore: stateStore)
        back.onEvent = { [unowned self] e in eventLock.lock(); recorded.append(e); eventLock.unlock() }
        if start { try back.start() }
    }

    func device(_ a: PCIAddress, root: String = fixtureRoot) throws -> SysfsPCIDevice {
        if let d = opened[a] { return d }
        let d = try SysfsPCIDevice(root: root, address: a, inMemory: true)
        opened[a] = d
        return d
    }

    @discardableResult
    func claim(_ addrs: PCIAddress...) throws -> [ClaimedDeviceInfo] { try addrs.map { try back.claim(device($0)) } }

    /// Claims `dev` (a fixture or a device model), exports it to dom1 and
    /// connects a raw frontend.
    func export(_ dev: PCIDeviceAccess, opts: String = Harness.defaultOpts) throws -> RawFrontend {
        try back.claim(dev)
        return try connectGuest([(dev.address, opts)])
    }

    /// Dom1 given functions already claimed, its frontend connected.
    func connectGuest(_ devs: [(PCIAddress, String)]) throws -> RawFrontend {
        try create(1, devs)
        #expect(waitBackend(1, .initialised))
        let f = try RawFrontend(self)
        try f.connect()
        #expect(waitBackend(1, .connected))
        return f
    }

    func connectGuest(_ addrs: PCIAddress...) throws -> RawFrontend { try connectGuest(addrs.map { ($0, Self.defaultOpts) }) }

    /// Dom1 given `first`, dom2 given `second` (both claimed), each frontend connected.
    func connectTwoGuests(_ first: PCIAddress, _ second: PCIAddress) throws -> (RawFrontend, RawFrontend) {
        try create(1, first)
        try create(2, second)
        #expect(waitBackend(1, .initialised) && waitBackend(2, .initialised))
        let f1 = try RawFrontend(self, dom: 1), f2 = try RawFrontend(self, dom: 2)
        try f1.connect()
        try f2.connect()
        #expect(waitBackend(1, .connected) && waitBackend(2, .connected))
        return (f1, f2)
    }

    func be(_ dom: DomID) -> String { "/local/domain/0/backend/pci/\(dom)/0" }
    func fe(_ dom: DomID) -> String { "/local/domain/\(dom)/device/pci/0" }

    /// libxl's device creation: both directories with state 1, the backend
    /// owned by dom0 and readable by the guest, the frontend the reverse.
    func create(_ dom: DomID, _ devs: [(PCIAddress, String)], overrides: [String: String] = [:]) throws {
        let b = be(dom), f = fe(dom)
        try toolstack.transaction { t in
            try toolstack.write(f + "/backend", b, transaction: t)
            try toolstack.write(f + "/backend-id", "0", transaction: t)
            try toolstack.write(f + "/state", "1", transaction: t)
            try toolstack.setPermissions(f, [XenstorePermission(dom, .none), XenstorePermission(0, .read)], transaction: t)
            for k in ["backend", "backend-id", "state"] {
                try toolstack.setPermissions(f + "/" + k, [XenstorePermission(dom, .none), XenstorePermission(0, .read)], transaction: t)
            }
            try toolstack.mkdir(b, transaction: t)
            try toolstack.setPermissions(b, [XenstorePermission(0, .none), XenstorePermission(dom, .read)], transaction: t)
            try toolstack.write(b + "/frontend", f, transaction: t)
            try toolstack.write(b + "/frontend-id", String(dom), transaction: t)
            try toolstack.write(b + "/online", "1", transaction: t)
            try toolstack.write(b + "/domain", "guest\(dom)", transaction: t)
            for (n, (a, opts)) in devs.enumerated() {
                try toolstack.write(b + "/dev-\(n)", a.description, transaction: t)
                try toolstack.write(b + "/key-\(n)", a.description, transaction: t)
                try toolstack.write(b + "/opts-\(n)", opts, transaction: t)
                try toolstack.write(b + "/state-\(n)", "1", transaction: t)
            }
            try toolstack.write(b + "/num_devs", String(devs.count), transaction: t)
            for (k, v) in overrides { try toolstack.write(b + "/" + k, v, transaction: t) }
            try toolstack.write(b + "/state", "1", transaction: t)
        }
    }

    static let defaultOpts = "msitranslate=0,power_mgmt=0,permissive=0,rdm_policy=strict"

    func create(_ dom: DomID, _ addrs: PCIAddress...) throws { try create(dom, addrs.map { ($0, Self.defaultOpts) }) }

    /// The toolstack's hot-add for a running guest: one transaction.
    func hotAdd(_ dom: DomID, _ a: PCIAddress, opts: String = Harness.defaultOpts) throws {
        let b = be(dom)
        try toolstack.transaction { t in
            let n = Int(try toolstack.read(b + "/num_devs", transaction: t))!
            try toolstack.write(b + "/dev-\(n)", a.description, transaction: t)
            try toolstack.write(b + "/key-\(n)", a.description, transaction: t)
            try toolstack.write(b + "/opts-\(n)", opts, transaction: t)
            try toolstack.write(b + "/state-\(n)", "1", transaction: t)
            try toolstack.write(b + "/num_devs", String(n + 1), transaction: t)
            try toolstack.write(b + "/state", "7", transaction: t)
        }
    }

    func hotRemove(_ dom: DomID, index n: Int) throws {
        let b = be(dom)
        try toolstack.transaction { t in
            try toolstack.write(b + "/state-\(n)", "5", transaction: t)
            try toolstack.write(b + "/state", "7", transaction: t)
        }
    }

    func read(_ p: String) -> String? { (try? toolstack.readIfPresent(p)) ?? nil }

    @discardableResult
    func waitBackend(_ dom: DomID, _ s: XenState, timeout: Duration = .seconds(3)) -> Bool {
        let ok = eventually("backend dom\(dom) state \(s) (now \(read(be(dom) + "/state") ?? "none"))", timeout: timeout) {
            read(be(dom) + "/state") == s.xenstoreValue
        }
        back.waitForResets() // resets run on workers: a state reached includes the resets it started
        return ok
    }

    func shutdown() {
        back.stop()
        toolstack.close()
    }

    /// Stop everything, then nothing may be left open.
    func expectClean(_ extra: [AnyObject] = [], sourceLocation: SourceLocation = #_sourceLocation) {
        shutdown()
        #expect(hv.leaks().isEmpty, "leaks: \(hv.leaks())", sourceLocation: sourceLocation)
        for (a, d) in opened where d.resetCount < 2 {
            Issue.record("\(a) was reset \(d.resetCount) time(s): claim and release must both reset", sourceLocation: sourceLocation)
        }
    }
}

/// A guest's frontend reduced to the wire: it grants the page, allocates
/// the port, writes the keys, and posts raw requests into the shared page.
// Sendable: a test's thread uses it while the test waits for that thread.
final class RawFrontend: @unchecked Sendable {
    let dom: DomID
    let xs: XenStore
    let gs: GrantSharing
    let ev: EventChannels
    var grant: SharedGrant?
    var port: EvtchnPort?
    let path: String

    init(_ h: Harness, dom: DomID = 1) throws {
        self.dom = dom
        let d = h.hv.domain(dom)
        xs = try d.openXenStore()
        gs = try d.openGrantSharing()
        ev = try d.openEventChannels()
        path = h.fe(dom)
    }

    var page: SharedPage { SharedPage(grant!.address) }

    /// Grant, port and keys in one transaction, then Initialised.
    func connect(magic: String = "7", ref: String? = nil, eventChannel: String? = nil, aerHandler: Bool = true) throws {
        let g = try gs.share(with: 0, writable: true)
        grant = g
        if aerHandler { page.setFlags(XenPCI.aerHandler) }
        let p = try ev.allocateUnbound(remote: 0)
        port = p
        try xs.transaction { t in
            try xs.write(path + "/pci-op-ref", ref ?? String(g.ref), transaction: t)
            try xs.write(path + "/event-channel", eventChannel ?? String(p), transaction: t)
            try xs.write(path + "/magic", magic, transaction: t)
            try xs.write(path + "/state", "3", transaction: t)
        }
    }

    func setState(_ s: XenState) throws { try xs.write(path + "/state", s.xenstoreValue) }

    /// Posts `op`, notifies, waits for bit 0 to clear; nil on timeout.
    func send(_ op: xen_pci_op, timeout: Duration = .seconds(2)) throws -> xen_pci_op? {
        page.postRequest(op)
        try ev.notify(port!)
        let end = ContinuousClock.now + timeout
        while page.flags & XenPCI.frontendActive != 0 {
            guard ContinuousClock.now < end else { return nil }
            if let p = try ev.wait(timeout: .milliseconds(50)) { try ev.unmask(p) }
        }
        return page.readReply()
    }

    func read(_ a: PCIAddress, _ offset: Int32, _ size: Int32) throws -> (PCIOpError, UInt32) {
        let r = try #require(try send(xen_pci_op(command: .confRead, address: a, offset: offset, size: size)))
        return (PCIOpError(rawValue: r.err) ?? .opFailed, r.value)
    }

    @discardableResult
    func write(_ a: PCIAddress, _ offset: Int32, _ size: Int32, _ value: UInt32) throws -> PCIOpError {
        let r = try #require(try send(xen_pci_op(command: .confWrite, address: a, offset: offset, size: size, value: value)))
        return PCIOpError(rawValue: r.err) ?? .opFailed
    }

    func close() {
        if let g = grant { try? gs.endAccess(g) }
        if let p = port { try? ev.unbind(p) }
        grant = nil
        port = nil
        gs.close(); ev.close(); xs.close()
    }
}

/// A connected guest on the mock: harness, devices exported, frontend on.
func connected(_ addrs: [PCIAddress], options: PCIBack.Options = .init(), opts: String = Harness.defaultOpts) throws -> (Harness, RawFrontend) {
    let h = try Harness(options: options)
    for a in addrs { try h.claim(a) }
    try h.create(1, addrs.map { ($0, opts) })
    #expect(h.waitBackend(1, .initialised))
    let f = try RawFrontend(h)
    try f.connect()
    #expect(h.waitBackend(1, .connected))
    return (h, f)
}

let v00 = PCIAddress(segment: 0, bus: 0, device: 0, function: 0)
let v01 = PCIAddress(segment: 0, bus: 0, device: 1, function: 0)
