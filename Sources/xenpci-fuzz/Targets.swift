import Foundation
import PCIBack
import PCIModel
import XPCI
import XenMock
import CXenPCI
import XenHypervisor
import XenPCIABI
import PCIHost

/// The fuzz targets. Each takes arbitrary bytes; a broken invariant is a
/// crash (fatalError), which is what libFuzzer records.
enum FuzzTarget: String, CaseIterable {
    case request, xenstore, hidelist, frontend, guests

    func run(_ data: [UInt8]) {
        switch self {
        case .request: fuzzRequest(data)
        case .xenstore: fuzzXenstore(data)
        case .hidelist: fuzzHideList(data)
        case .frontend: fuzzFrontend(data)
        case .guests: fuzzGuests(data)
        }
    }
}

let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

/// A fixture's config space read once; each input gets a fresh in-memory
/// copy in virtual time (power transitions counted, not slept).
final class FixtureImage: Sendable {
    let config: [UInt8]
    let resources: [PCIResource]
    let irq: Int

    init(_ address: PCIAddress) {
        let d = try! SysfsPCIDevice(root: repoRoot + "/Tests/Fixtures/qemu-q35", address: address, inMemory: true)
        config = stride(from: 0, to: d.configSize, by: 4).flatMap { o in withUnsafeBytes(of: try! d.readConfig(o, 4).littleEndian, Array.init) }
        resources = d.resources
        irq = d.irq
    }

    func device(at a: PCIAddress) -> MemoryPCIDevice {
        let d = MemoryPCIDevice(address: a, config: config, resources: resources, irq: irq)
        d.virtualTime = true
        return d
    }
}

let e1000Image = FixtureImage(PCIAddress(bus: 0, device: 3, function: 0))
let virtioNetImage = FixtureImage(PCIAddress(bus: 0, device: 4, function: 0)) // MSI-X

/// A backend that runs only when stepped (`drain()`): one input, no threads.
func deterministicBackend(_ dom0: MockDomain) -> PCIBack {
    var o = PCIBack.Options()
    o.serviceThread = false
    return try! PCIBack(hypervisor: dom0, options: o)
}

/// dom1's frontend and backend directories as a toolstack would write them,
/// but with the backend keys given raw (fuzzed values included).
func writeDirectories(_ ts: XenStore, dom: DomID = 1, backend keys: [(String, String)]) -> (backend: String, frontend: String) {
    let b = "/local/domain/0/backend/pci/\(dom)/0", fe = "/local/domain/\(dom)/device/pci/0"
    try! ts.transaction { t in
        for (k, v) in [("backend", b), ("backend-id", "0"), ("state", "1")] { try ts.write(fe + "/" + k, v, transaction: t) }
        try ts.setPermissions(fe, [XenstorePermission(dom, .none), XenstorePermission(0, .read)], transaction: t)
        try ts.mkdir(b, transaction: t)
        try ts.setPermissions(b, [XenstorePermission(0, .none), XenstorePermission(dom, .read)], transaction: t)
        for (k, v) in [("frontend", fe), ("frontend-id", String(dom))] + keys { try ts.write(b + "/" + k, v, transaction: t) }
    }
    return (b, fe)
}

/// Splits input into fields at 0x00 bytes.
func fields(_ data: [UInt8], _ n: Int) -> [String?] {
    var parts = data.split(separator: 0, maxSplits: n - 1, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
    while parts.count < n { parts.append("") }
    return parts.map { $0.isEmpty ? nil : $0 }
}

// MARK: request: arbitrary shared-page op and arbitrary config space

let requestHV = MockHypervisor()
// nonisolated(unsafe): every input runs on the one thread libFuzzer (or the
// replay loop) calls from, so the rigs below are never shared.
nonisolated(unsafe) let requestBack: PCIBack = { _ = requestHV.domain(0x7FEE); return deterministicBackend(requestHV.domain(0)) }()

func fuzzRequest(_ data: [UInt8]) {
    // Layout: op (548) | 7 BAR sizes (u32 each) | config (rest, up to 4096)
    let opBytes = Array(data.prefix(548))
    let sizes = stride(from: 548, to: min(data.count, 548 + 28), by: 4).map { o -> UInt64 in
        let b = data[o..<min(o + 4, data.count)]
        let v = b.enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
        return v == 0 ? 0 : UInt64(1) << (v % 32) // sizes are powers of two
    }
    let config = data.count > 576 ? Array(data[576...]) : []
    if let broken = requestBack.fuzzRequest(config: config, barSizes: sizes, op: opBytes) { fatalError("request invariant: \(broken)") }
}

// MARK: xenstore: every value the backend reads from a guest or the toolstack

/// One backend for the whole run, as in dom0: each input is one guest's
/// life (created, its keys and the toolstack's fuzzed, served, destroyed),
/// after which the backend must be exactly where it started: no instance,
/// the function free and reset, nothing open beyond its own handles. That
/// keeps inputs independent, and checks what a long-running backend needs.
final class XenstoreRig {
    let hv = MockHypervisor()
    let ts: XenStore
    let back: PCIBack
    let baseline: [String]
    /// The one function claimed.
    let function = PCIAddress(bus: 0, device: 3, function: 0)

    init() {
        let dom0 = hv.domain(0)
        ts = try! dom0.openXenStore()
        back = deterministicBackend(dom0)
        try! back.claim(e1000Image.device(at: function))
        try! back.start()
        baseline = hv.leaks()
    }
}

nonisolated(unsafe) let xenstoreRig = XenstoreRig() // one thread: see requestBack

func fuzzXenstore(_ data: [UInt8]) {
    let f = fields(data, 7)
    let r = xenstoreRig, ts = r.ts
    let guest = r.hv.domain(1)
    let (b, fe) = writeDirectories(ts, backend: [("num_devs", f[3] ?? "1"), ("dev-0", f[4] ?? "0000:00:03.0"),
                                                 ("state-0", f[5] ?? "1"), ("opts-0", f[6] ?? "permissive=0"), ("state", "1")])
    _ = try! r.back.drain() // deterministic: never serving
    // The guest: a page, a port, and its three keys (fuzzed where given).
    let xs = try! guest.openXenStore(), gs = try! guest.openGrantSharing(), ev = try! guest.openEventChannels()
    let g = try! gs.share(with: 0, writable: true)
    let p = try! ev.allocateUnbound(remote: 0)
    try! xs.transaction { t in
        try xs.write(fe + "/pci-op-ref", f[0] ?? String(g.ref), transaction: t)
        try xs.write(fe + "/event-channel", f[1] ?? String(p), transaction: t)
        try xs.write(fe + "/magic", f[2] ?? "7", transaction: t)
        try xs.write(fe + "/state", "3", transaction: t)
    }
    _ = try! r.back.drain() // deterministic: never serving
    if (try? ts.readIfPresent(b + "/state")) == "4" { // connected: one request through the real path
        let sh = SharedPage(g.address)
        sh.postRequest(xen_pci_op(command: .confRead, address: PCIAddress(bus: 0, device: 0, function: 0), offset: 0, size: 4))
        try? ev.notify(p)
        _ = try! r.back.drain() // deterministic: never serving
        if sh.flags & XenPCI.frontendActive != 0 { fatalError("xenstore: connected backend never answered") }
    }
    // The guest dies; the toolstack removes what it wrote (libxl does).
    r.hv.destroyDomain(1)
    _ = try! r.back.drain() // deterministic: never serving
    try? ts.remove("/local/domain/0/backend/pci/1")
    _ = try! r.back.drain() // deterministic: never serving
    if !r.back.guestStatistics().isEmpty { fatalError("xenstore: the backend still serves \(r.back.guestStatistics().map(\.domid)) after dom1 died") }
    // guestHolding, not listing(): the listing formats every function's kernfs text.
    if let (g, _) = r.back.guestHolding(r.function) { fatalError("xenstore: \(r.function) still exported to dom\(g) after dom1 died") }
    let leaks = r.hv.leaks()
    if leaks != r.baseline { fatalError("xenstore: after dom1 died: \(leaks.filter { !r.baseline.contains($0) }) (and gone: \(r.baseline.filter { !leaks.contains($0) }))") }
    xs.close(); gs.close(); ev.close()
}

// MARK: hide list

func fuzzHideList(_ data: [UInt8]) {
    let text = String(decoding: data, as: UTF8.self)
    do {
        let patterns = try parseHideList(text)
        // What was parsed prints back to a list that parses to the same.
        let again = try parseHideList(patterns.map(\.description).joined())
        if again != patterns { fatalError("hide list: round trip changed \(patterns) into \(again)") }
    } catch let e as HideListError {
        if e.position < 0 || e.position > text.count { fatalError("hide list: position \(e.position) outside '\(text)'") }
    } catch {
        fatalError("hide list: unexpected error \(error)")
    }
}

// MARK: frontend against a lying backend

/// One mock machine for every frontend run: building it (the xenstore
/// skeleton, two domains, both directories) cost more than a run. A run
/// starts from the directories as the toolstack wrote them and must release
/// all it took (the leak check), so runs stay independent.
final class FrontendWorld {
    let hv = MockHypervisor()
    let dom0: MockDomain, guest: MockDomain
    let ts: XenStore
    let b: String, fe: String
    /// What is open between runs (the toolstack's connection).
    var baseline: [String] = []
    /// Backend keys the last run added (the roots).
    var added: [String] = []

    init() {
        dom0 = hv.domain(0)
        guest = hv.domain(1)
        ts = try! dom0.openXenStore()
        (b, fe) = writeDirectories(ts, backend: [("state", "2")])
        baseline = hv.leaks()
    }

    /// Both states back to the toolstack's, the last run's roots removed.
    /// Plain writes: nothing runs between them (no thread), and a
    /// transaction copies the whole store twice.
    func reset() {
        for k in added { try? ts.remove(b + "/" + k) }
        added = []
        try! ts.write(fe + "/state", "1")
        try! ts.write(b + "/state", "2")
    }

    /// A fuzzed backend key (a value the store refuses is left out).
    func add(_ key: String, _ value: String) {
        guard (try? ts.write(b + "/" + key, value)) != nil else { return }
        if !added.contains(key) { added.append(key) }
    }
}

nonisolated(unsafe) let frontendWorld = FrontendWorld() // one thread: see requestBack

func fuzzFrontend(_ data: [UInt8]) {
    // Layout: root_num\0root-0\0root-1\0 | replies: 9 bytes each (err i32, value u32, vector seed u8)
    let head = fields(data, 4)
    let replyBytes = Array(data.split(separator: 0, maxSplits: 3, omittingEmptySubsequences: false).last ?? [])
    let w = frontendWorld
    w.reset()
    let hv = w.hv, dom0 = w.dom0, guest = w.guest, ts = w.ts, b = w.b, fe = w.fe
    // No threads and no timing, so runs are fast and replay the same: the
    // frontend's xenbus work is stepped with drain(), and the lying backend
    // answers each request inside the frontend's notify (deliverInPlace).
    var options = XPCIFrontend.Options(requestTimeout: .milliseconds(20), connectTimeout: .milliseconds(120))
    options.xenbusThread = false
    let front = try! XPCIFrontend(hypervisor: guest, options: options)
    try! front.attach()
    // The lying backend: maps, binds, publishes fuzzed roots, answers every request from the fuzz stream.
    let gt = try! dom0.openGrantTable(), ev = try! dom0.openEventChannels()
    var mapping: GrantMapping?, port: EvtchnPort?
    if let ref = (try? ts.readIfPresent(fe + "/pci-op-ref")).flatMap({ $0 }).flatMap(UInt32.init),
       let rp = (try? ts.readIfPresent(fe + "/event-channel")).flatMap({ $0 }).flatMap(UInt32.init) {
        mapping = try? gt.map(domain: 1, ref: ref, writable: true)
        port = try? ev.bindInterdomain(remote: 1, remotePort: rp)
    }
    if let m = mapping, let port {
        let sh = SharedPage(m.address)
        var k = 0
        try! dom0.deliverInPlace(port: port) { _ in
            guard sh.flags & XenPCI.frontendActive != 0 else { return }
            var op = xen_pci_op()
            sh.snapshotRequest(into: &op)
            // Only slots 00.0 and 00.1 of each root are exported (what is said
            // of them is fuzzed); the rest answer dev_not_found as a real
            // backend does. 256 lying functions a root cost ~100 times more
            // and reach no code two do not.
            if op.devfn >= 2 {
                op.err = PCIOpError.devNotFound.rawValue
                op.value = 0
            } else if !replyBytes.isEmpty {
                func byte(_ i: Int) -> UInt8 { replyBytes[(k * 9 + i) % replyBytes.count] }
                op.err = Int32(bitPattern: UInt32(byte(0)) | UInt32(byte(1)) << 8 | UInt32(byte(2)) << 16 | UInt32(byte(3)) << 24)
                op.value = UInt32(byte(4)) | UInt32(byte(5)) << 8 | UInt32(byte(6)) << 16 | UInt32(byte(7)) << 24
                // Vectors matter only in an enable_msix reply (the frontend reads no others).
                if op.command == .enableMSIX {
                    for n in 0..<XenPCI.maxMSIXVectors { op.setMSIXEntry(n, xen_msix_entry(vector: UInt16(byte(8)) &+ UInt16(n), entry: 0)) }
                }
                k += 1
            }
            sh.completeRequest(&op, msixVectors: op.command == .enableMSIX ? XenPCI.maxMSIXVectors : 0)
            try? ev.notify(port)
        }
    }
    // No transaction needed: the frontend sees all of it at its next drain.
    if let n = head[0] { w.add("root_num", n) }
    for i in 0..<2 { if let r = head[i + 1] { w.add("root-\(i)", r) } }
    try! ts.write(b + "/state", "4")
    _ = try? front.drain()
    if (try? front.waitConnected(timeout: .zero)) != nil {
        for d in front.devices.prefix(2) {
            _ = try? front.configRead(d.address, offset: 0, size: 2)
            _ = try? front.enableMSIX(d.address, entries: [0, 1])
            _ = try? front.enableMSI(d.address)
        }
    }
    try? ts.write(b + "/state", "6")
    _ = try? front.drain()
    try? front.detach()
    if let m = mapping { try? gt.unmap(m) }
    if let p = port { try? ev.unbind(p) }
    gt.close(); ev.close()
    let leaks = hv.leaks().filter { !w.baseline.contains($0) }
    if !leaks.isEmpty { fatalError("frontend: leaks after detach: \(leaks)") }
}

