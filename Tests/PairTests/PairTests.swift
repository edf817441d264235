import Foundation
import Synchronization
import Testing
import PCIBack
import PCIModel
import XPCI
import XenMock
import XenToolstack
import XenHypervisor
import XenPCIABI
import PCIHost

let fixtureRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Fixtures/qemu-q35").path

/// Our frontend in dom1 against our backend in dom0, on the mock, with the
/// toolstack's xenstore writes done as libxl does them.
final class Pair {
    let hv = MockHypervisor()
    let back: PCIBack
    let ts: XenStore
    let toolstack: XenToolstack
    var devices: [PCIAddress: SysfsPCIDevice] = [:]
    var fronts: [DomID: XPCIFrontend] = [:]

    init(_ addrs: [PCIAddress], options: PCIBack.Options = .init(), guests: [DomID: [PCIAddress]]? = nil) throws {
        let dom0 = hv.domain(0)
        ts = try dom0.openXenStore()
        toolstack = XenToolstack(xenstore: ts, permissions: nil)
        toolstack.timeout = .seconds(5)
        back = try PCIBack(hypervisor: dom0, options: options)
        for a in addrs {
            let d = try SysfsPCIDevice(root: fixtureRoot, address: a, inMemory: true)
            devices[a] = d
            try back.claim(d)
        }
        try back.start()
        for (g, list) in (guests ?? [1: addrs]).sorted(by: { $0.key < $1.key }) {
            _ = hv.domain(g)
            try create(g, list)
            let f = try XPCIFrontend(hypervisor: hv.domain(g), options: .init(requestTimeout: .seconds(2), connectTimeout: .seconds(5)))
            try f.attach()
            try f.waitConnected()
            fronts[g] = f
        }
    }

    var front: XPCIFrontend { fronts[1]! }
    func be(_ g: DomID) -> String { "/local/domain/0/backend/pci/\(g)/0" }

    /// libxl's part, as `xl create` with `pci=[...]` would do it.
    func create(_ g: DomID, _ addrs: [PCIAddress]) throws { try toolstack.attach(domid: g, devices: addrs) }

    /// `xl pci-attach` / `xl pci-detach`: returns when the backend is Connected again.
    func hot(_ g: DomID, add a: PCIAddress? = nil, remove r: PCIAddress? = nil) throws {
        if let a { try toolstack.attach(domid: g, devices: [a]) }
        if let r { try toolstack.detach(domid: g, devices: [r]) }
    }

    func backendState(_ g: DomID) -> String? { (try? ts.readIfPresent(be(g) + "/state")) ?? nil }

    func finish(sourceLocation: SourceLocation = #_sourceLocation) {
        for f in fronts.values { try? f.detach() }
        back.stop()
        ts.close()
        #expect(hv.leaks().isEmpty, "leaks: \(hv.leaks())", sourceLocation: sourceLocation)
    }
}

func waitUntil(_ what: String, _ timeout: Duration = .seconds(3), _ cond: () -> Bool) -> Bool {
    let end = ContinuousClock.now + timeout
    while ContinuousClock.now < end { if cond() { return true }; usleep(1000) }
    if cond() { return true }
    Issue.record("timed out waiting for \(what)")
    return false
}

let all = try! listSysfsDevices(root: fixtureRoot)
let e1000 = try! PCIAddress(parsing: "0000:00:03.0"), virtio = try! PCIAddress(parsing: "0000:00:04.0")
let ahci = try! PCIAddress(parsing: "0000:00:1f.2"), nvme = try! PCIAddress(parsing: "0000:01:00.0")
let rootPort = try! PCIAddress(parsing: "0000:00:05.0")

/// Bytes the backend mediates: command, ROM enable, interrupt line, PME support.
func mediatedBytes(_ f: PCIFunction) -> Set<Int> {
    var s: Set<Int> = [0x04, 0x05, 0x3C, f.config.isBridge ? 0x38 : 0x30]
    if let pm = f.config.capability(.pm) { s.formUnion([pm.offset + 2, pm.offset + 3]) }
    return s
}

@Suite("Pair: our xpci against our pciback on the mock", .serialized)
struct PairTests {
    @Test("enumeration of every fixture device equals the fixture's own config space, modulo mediated fields")
    func enumerationMatchesFixtures() throws {
        // Bridges are refused on vpci; everything else goes to one guest.
        let exportable = all.filter { a in
            let d = try! SysfsPCIDevice(root: fixtureRoot, address: a, inMemory: true)
            return UInt8(try! d.readConfig(0x0E, 1)) & 0x7F == 0
        }
        #expect(exportable.count >= 9)
        let p = try Pair(exportable)
        let seen = p.front.devices
        #expect(seen.count == exportable.count, "frontend sees \(seen.map(\.address))")
        for f in seen {
            let host = try #require(p.back.listing().first { $0.guestAddress == f.address }?.address)
            let bytes = try #require(FileManager.default.contents(atPath: "\(fixtureRoot)/bus/pci/devices/\(host)/config"))
            let size = f.config.size
            #expect(size == min(bytes.count, 4096) || size == 256, "\(host): frontend read \(size) bytes of \(bytes.count)")
            let skip = mediatedBytes(f)
            let differ = (0..<min(size, bytes.count)).filter { !skip.contains($0) && f.config.bytes[$0] != bytes[$0] }
            #expect(differ.isEmpty, "\(host) as \(f.address): bytes differ at \(differ.prefix(8).map { "0x" + hex($0, 3) })")
            #expect(f.interruptLine == UInt8(truncatingIfNeeded: p.devices[host]!.irq))
            // BAR sizes through the protocol equal the host's resources.
            for bar in f.bars {
                #expect(bar.size == p.devices[host]!.resources[bar.index].size, "\(host) BAR\(bar.index)")
            }
        }
        p.finish()
    }

    @Test("multi-function grouping and capabilities survive the trip: NVMe's extended list on passthrough")
    func passthroughNVMe() throws {
        var o = PCIBack.Options()
        o.topology = .passthrough
        let p = try Pair([nvme, e1000], options: o)
        #expect(p.front.roots.map(\.description) == ["0000:00", "0000:01"])
        let n = try #require(p.front.device(nvme))
        #expect(n.config.size == 4096)
        #expect(n.extendedCapabilities.map(\.id) == [0x000E, 0x0010], "ARI then SR-IOV")
        #expect(n.capabilities.map(\.id) == [0x11, 0x10, 0x01])
        p.finish()
    }

    @Test("config writes through the pair are mediated: BAR sizing works, relocation does not")
    func writesMediated() throws {
        let p = try Pair([virtio])
        let a = PCIAddress(bus: 0, device: 0, function: 0)
        let bar1 = try p.front.configRead(a, offset: 0x14, size: 4)
        try p.front.configWrite(a, offset: 0x14, size: 4, value: 0xFFFF_FFFF)
        #expect(try p.front.configRead(a, offset: 0x14, size: 4) == 0xFFFF_F000)
        try p.front.configWrite(a, offset: 0x14, size: 4, value: 0x1000_0000)
        #expect(try p.front.configRead(a, offset: 0x14, size: 4) == bar1)
        #expect(throws: XPCIError.self) { try p.front.configWrite(a, offset: 0x9A, size: 2, value: 0x0001) } // MSI-X table size
        #expect(throws: XPCIError.self) { _ = try p.front.configRead(a, offset: 0x100, size: 4) } // 256-byte device
        p.finish()
    }

    @Test("hot-add and hot-remove reach the frontend's bus model; the removed device is reset")
    func hotplug() throws {
        let p = try Pair([e1000, virtio], guests: [1: [e1000]])
        #expect(p.front.devices.count == 1)
        try p.hot(1, add: virtio)
        #expect(waitUntil("virtio appears") { p.front.devices.count == 2 })
        #expect(waitUntil("connected again") { p.front.state == .connected && p.backendState(1) == "4" })
        #expect(p.front.device(PCIAddress(bus: 0, device: 1, function: 0))?.vendorID == 0x1af4)
        let resets = p.devices[e1000]!.resetCount
        try p.hot(1, remove: e1000)
        #expect(waitUntil("e1000 disappears") { p.front.devices.map(\.vendorID) == [0x1af4] })
        #expect(waitUntil("connected again") { p.front.state == .connected && p.backendState(1) == "4" })
        #expect(waitUntil("e1000 reset (on a worker)") { p.devices[e1000]!.resetCount == resets + 1 })
        p.finish()
    }

    @Test("the frontend detaches and attaches again; the backend follows")
    func reconnect() throws {
        let p = try Pair([e1000])
        try p.front.detach()
        #expect(waitUntil("backend closed") { p.backendState(1) == "6" })
        #expect(!p.hv.leaks().contains { $0.hasPrefix("dom1") }, "\(p.hv.leaks())")
        try p.front.attach()
        try p.front.waitConnected()
        #expect(p.front.devices.map(\.vendorID) == [0x8086])
        #expect(try p.front.configRead(PCIAddress(bus: 0, device: 0, function: 0), offset: 0, size: 2) == 0x8086)
        p.finish()
    }

    @Test("MSI and MSI-X round trips: pirqs from the hypervisor, the device's enable bits follow")
    func interrupts() throws {
        let p = try Pair([ahci, virtio])
        let ga = try #require(p.back.listing().first { $0.address == ahci }?.guestAddress)
        let gv = try #require(p.back.listing().first { $0.address == virtio }?.guestAddress)
        let pirq = try p.front.enableMSI(ga)
        #expect(pirq >= 32)
        #expect(try p.devices[ahci]!.readConfig(0x82, 2) & 1 == 1)
        #expect(throws: XPCIError.self) { _ = try p.front.enableMSI(ga) }
        try p.front.disableMSI(ga)
        #expect(try p.devices[ahci]!.readConfig(0x82, 2) & 1 == 0)
        let pirqs = try p.front.enableMSIX(gv, entries: [0, 1, 2])
        #expect(Set(pirqs).count == 3)
        #expect(p.hv.leaks().filter { $0.contains("pirq") }.count == 3)
        try p.front.disableMSIX(gv)
        #expect(!p.hv.leaks().contains { $0.contains("pirq") })
        #expect(throws: XPCIError.self) { _ = try p.front.enableMultiMSI(ga, count: 4) }
        p.finish()
    }

    @Test("AER: the backend raises, the guest's handler answers within the bound")
    func aer() throws {
        let p = try Pair([e1000])
        let g = PCIAddress(bus: 0, device: 0, function: 0)
        let seen = LockedBox<[AERRequest]>([])
        p.front.setAERHandler(g) { r in seen.mutate { $0.append(r) }; return .recovered }
        let r = try p.back.raiseAER(e1000, .aerDetected, channel: .frozen, timeout: .seconds(2))
        #expect(r == AERResult.recovered.rawValue)
        #expect(seen.value == [AERRequest(command: .errorDetected, address: g, channelState: 2)])
        p.front.setAERHandler(g, nil)
        #expect(try p.back.raiseAER(e1000, .aerResume, timeout: .seconds(2)) == AERResult.none.rawValue)
        p.finish()
    }

    @Test("several guests at once, each with its own devices, and nothing leaks")
    func severalGuests() throws {
        let p = try Pair([e1000, virtio, ahci], guests: [1: [e1000], 2: [virtio], 3: [ahci]])
        #expect(p.fronts[1]!.devices.map(\.vendorID) == [0x8086])
        #expect(p.fronts[2]!.devices.map(\.deviceID) == [0x1000])
        #expect(p.fronts[3]!.devices.map(\.deviceID) == [0x2922])
        p.finish()
    }
}

final class LockedBox<T: Sendable>: Sendable {
    private let v: Mutex<T>
    init(_ v: T) { self.v = Mutex(v) }
    var value: T { v.withLock { $0 } }
    func mutate(_ f: (inout T) -> Void) { v.withLock { f(&$0) } }
}
