import Foundation
import Synchronization
import Testing
import XenMock
@testable import XenToolstack
import XenReal
import XenHypervisor
import XenPCIABI
import PCIModel

/// Records the libxenctrl calls the toolstack would make; can fail one.
final class RecordingPermissions: PassthroughPermissions, Sendable {
    private struct State { var calls: [String] = []; var failOn: String? }
    private let state = Mutex(State())
    var calls: [String] {
        get { state.withLock { $0.calls } }
        set { state.withLock { $0.calls = newValue } }
    }
    var failOn: String? {
        get { state.withLock { $0.failOn } }
        set { state.withLock { $0.failOn = newValue } }
    }
    private func note(_ s: String) throws {
        let f = state.withLock { $0.calls.append(s); return $0.failOn }
        if let f, s.hasPrefix(f) { throw XenError(EPERM, s) }
    }
    func assignDevice(_ d: PCIAddress, to guest: DomID, relaxedRDM: Bool) throws { try note("assign \(d) dom\(guest) relaxed=\(relaxedRDM)") }
    func deassignDevice(_ d: PCIAddress, from guest: DomID) throws { try note("deassign \(d) dom\(guest)") }
    func iomemPermission(guest: DomID, firstFrame: UInt64, frames: UInt64, allow: Bool) throws {
        try note("iomem dom\(guest) 0x\(String(firstFrame, radix: 16))+\(frames) \(allow)")
    }
    func ioportPermission(guest: DomID, firstPort: UInt32, ports: UInt32, allow: Bool) throws {
        try note("ioport dom\(guest) 0x\(String(firstPort, radix: 16))+\(ports) \(allow)")
    }
    func mapPirq(guest: DomID, irq: Int32) throws -> Int32 { try note("map_pirq dom\(guest) irq \(irq)"); return irq }
    func unmapPirq(guest: DomID, pirq: UInt32) throws { try note("unmap_pirq dom\(guest) \(pirq)") }
    func irqPermission(guest: DomID, pirq: UInt32, allow: Bool) throws { try note("irq dom\(guest) \(pirq) \(allow)") }
}

/// A backend that only answers Reconfiguring: on backend state 7 it writes
/// 4 again (what pciback and pcifront end with after 7/8), and remembers
/// which `state-N` values it saw then.
final class FakeBackend: Sendable {
    private let stopped = Atomic(false)
    private let seenStorage = Mutex<[String]>([])
    var seen: [String] { seenStorage.withLock { $0 } }
    private let done = DispatchSemaphore(value: 0)

    init(_ xs: XenStore, _ be: String) {
        Thread.detachNewThread { [self] in
            while !stopped.load(ordering: .sequentiallyConsistent) {
                if (try? xs.readIfPresent(be + "/state")) == "7" {
                    let n = Int((try? xs.readIfPresent(be + "/num_devs")) ?? nil ?? "0") ?? 0
                    let states = (0..<n).map { (try? xs.readIfPresent(be + "/state-\($0)")) ?? nil ?? "-" }
                    seenStorage.withLock { $0.append("7 with state-N \(states.joined(separator: ","))") }
                    try? xs.write(be + "/state", "4")
                }
                usleep(2000)
            }
            done.signal()
        }
    }

    func stop() {
        stopped.store(true, ordering: .sequentiallyConsistent)
        done.wait()
    }
}

struct ToolstackWorld {
    let hv = MockHypervisor()
    let sysfs = TempDir("sysfs")
    let perms = RecordingPermissions()
    let xs: XenStore
    let ts: XenToolstack
    let guest: DomID = 3
    let be = XenToolstack.backendPath(backend: 0, guest: 3)
    let fe = XenToolstack.frontendPath(guest: 3)
    static let a = PCIAddress(bus: 3, device: 0, function: 0)
    static let b = PCIAddress(bus: 3, device: 0, function: 1)
    static let c = PCIAddress(bus: 4, device: 2, function: 0)

    init() throws {
        _ = hv.domain(0)
        _ = hv.domain(3, name: "web")
        xs = try hv.domain(0).openXenStore()
        ts = XenToolstack(xenstore: xs, permissions: perms, sysfs: PCISysfs(root: sysfs.path))
        ts.timeout = .seconds(5)
        ts.pollInterval = .milliseconds(2)
        // 03:00.0: 128 KiB memory BAR0, 64 I/O ports in BAR1, an unused
        // 64-bit upper half, a ROM; INTx on irq 11. The others: one BAR, no irq.
        sysfs.write("0000:03:00.0/resource", """
            0x00000000fe000000 0x00000000fe01ffff 0x0000000000040200
            0x000000000000c000 0x000000000000c03f 0x0000000000040101
            0x0000000000000000 0x0000000000000000 0x0000000000000000
            0x0000000000000000 0x0000000000000000 0x0000000000000000
            0x0000000000000000 0x0000000000000000 0x0000000000000000
            0x0000000000000000 0x0000000000000000 0x0000000000000000
            0x00000000fe100000 0x00000000fe13ffff 0x0000000000046200
            0x0000000000000000 0x0000000000000000 0x0000000000000000

            """)
        sysfs.write("0000:03:00.0/irq", "11\n")
        for d in ["0000:03:00.1", "0000:04:02.0"] {
            sysfs.write("\(d)/resource", "0x00000000fd000000 0x00000000fd000fff 0x0000000000040200\n"
                        + String(repeating: "0x0000000000000000 0x0000000000000000 0x0000000000000000\n", count: 6))
            sysfs.write("\(d)/irq", "0\n")
        }
    }

    func close() {
        xs.close()
        #expect(hv.leaks().isEmpty, "\(hv.leaks())")
    }
}

@Suite("Toolstack: the xenstore nodes and grants libxl makes, on the mock")
struct ToolstackTests {
    @Test("first attach: backend and frontend directories as libxl writes them, with their permissions")
    func create() throws {
        let w = try ToolstackWorld()
        defer { w.close() }
        let kind = try w.ts.attach(domid: 3, devices: [ToolstackWorld.a, ToolstackWorld.b], opts: PCIDeviceOptions(permissive: true))
        #expect(kind == .created)
        let be = w.be, fe = w.fe
        let expected: [String: String] = [
            "frontend": fe, "frontend-id": "3", "online": "1", "state": "1", "domain": "web", "num_devs": "2",
            "dev-0": "0000:03:00.0", "key-0": "0000:03:00.0", "state-0": "1",
            "opts-0": "msitranslate=0,power_mgmt=0,permissive=1,rdm_policy=strict",
            "dev-1": "0000:03:00.1", "key-1": "0000:03:00.1", "state-1": "1",
            "opts-1": "msitranslate=0,power_mgmt=0,permissive=1,rdm_policy=strict",
        ]
        #expect(Set(try w.xs.directory(be)) == Set(expected.keys))
        for (k, v) in expected { #expect(try w.xs.read(be + "/" + k) == v, "\(k)") }
        #expect(Set(try w.xs.directory(fe)) == ["backend", "backend-id", "state"])
        #expect(try w.xs.read(fe + "/backend") == be)
        #expect(try w.xs.read(fe + "/backend-id") == "0")
        #expect(try w.xs.read(fe + "/state") == "1")

        // Backend: owned by dom0, readable by the guest; frontend: owned by the guest, readable by dom0.
        let backPerms = [XenstorePermission(0, .none), XenstorePermission(3, .read)]
        let frontPerms = [XenstorePermission(3, .none), XenstorePermission(0, .read)]
        #expect(try w.xs.permissions(be) == backPerms)
        #expect(try w.xs.permissions(be + "/dev-1") == backPerms)
        #expect(try w.xs.permissions(fe) == frontPerms)
        #expect(try w.xs.permissions(fe + "/state") == frontPerms)
        let guest = try w.hv.domain(3).openXenStore()
        defer { guest.close() }
        #expect(try guest.read(be + "/num_devs") == "2")
        #expect(errnoOf { try guest.write(be + "/state", "4") } == EACCES)
        try guest.write(fe + "/state", "3")
        let other = try w.hv.domain(4).openXenStore()
        defer { other.close() }
        #expect(errnoOf { _ = try other.read(be + "/dev-0") } == EACCES)
        #expect(errnoOf { _ = try other.read(fe + "/state") } == EACCES)

        // Grants in libxl's order; the ROM counts as memory, empty BARs are skipped.
        #expect(w.perms.calls == [
            "iomem dom3 0xfe000+32 true", "ioport dom3 0xc000+64 true", "iomem dom3 0xfe100+64 true",
            "map_pirq dom3 irq 11", "irq dom3 11 true", "assign 0000:03:00.0 dom3 relaxed=false",
            "iomem dom3 0xfd000+1 true", "assign 0000:03:00.1 dom3 relaxed=false",
        ])
    }

    @Test("hot-add to a connected guest: one transaction with state 7, then back to 4")
    func hotAdd() throws {
        let w = try ToolstackWorld()
        defer { w.close() }
        try w.ts.attach(domid: 3, devices: [ToolstackWorld.a])
        try w.xs.write(w.be + "/state", "4")
        let backendXS = try w.hv.domain(0).openXenStore()
        let backend = FakeBackend(backendXS, w.be)
        defer { backend.stop(); backendXS.close() }

        let kind = try w.ts.attach(domid: 3, devices: [ToolstackWorld.b, ToolstackWorld.c],
                                   opts: PCIDeviceOptions(msitranslate: true, rdmPolicy: .relaxed))
        #expect(kind == .hotAdded)
        #expect(try w.xs.read(w.be + "/state") == "4")
        #expect(try w.xs.read(w.be + "/num_devs") == "3")
        #expect(try w.xs.read(w.be + "/dev-1") == "0000:03:00.1")
        #expect(try w.xs.read(w.be + "/dev-2") == "0000:04:02.0")
        #expect(try w.xs.read(w.be + "/opts-2") == "msitranslate=1,power_mgmt=0,permissive=0,rdm_policy=relaxed")
        // The backend saw the new devices (state-N 1) together with state 7.
        #expect(backend.seen == ["7 with state-N 1,1,1"])
        #expect(w.perms.calls.last == "assign 0000:04:02.0 dom3 relaxed=true")
    }

    @Test("hot-add when the backend never gets back to Connected: ETIMEDOUT naming the state, grants undone")
    func hotAddTimeout() throws {
        let w = try ToolstackWorld()
        defer { w.close() }
        try w.ts.attach(domid: 3, devices: [ToolstackWorld.b])
        try w.xs.write(w.be + "/state", "4")
        w.ts.timeout = .milliseconds(60)
        w.perms.calls = []
        do {
            try w.ts.attach(domid: 3, devices: [ToolstackWorld.a])
            Issue.record("attach returned without a backend answering")
        } catch let e as XenError {
            #expect(e.code == ETIMEDOUT)
            #expect(e.description.contains("state is 7 (Reconfiguring)"), "\(e)")
        }
        #expect(try w.xs.read(w.be + "/num_devs") == "2")
        #expect(w.perms.calls == [
            "iomem dom3 0xfe000+32 true", "ioport dom3 0xc000+64 true", "iomem dom3 0xfe100+64 true",
            "map_pirq dom3 irq 11", "irq dom3 11 true", "assign 0000:03:00.0 dom3 relaxed=false",
            "deassign 0000:03:00.0 dom3", "irq dom3 11 false", "unmap_pirq dom3 11",
            "iomem dom3 0xfe100+64 false", "ioport dom3 0xc000+64 false", "iomem dom3 0xfe000+32 false",
        ])
    }

    @Test("a grant failing undoes the grants before it and writes nothing to xenstore")
    func grantFailure() throws {
        let w = try ToolstackWorld()
        defer { w.close() }
        w.perms.failOn = "assign"
        #expect(errnoOf { try w.ts.attach(domid: 3, devices: [ToolstackWorld.b]) } == EPERM)
        #expect(w.perms.calls == ["iomem dom3 0xfd000+1 true", "assign 0000:03:00.1 dom3 relaxed=false", "iomem dom3 0xfd000+1 false"])
        #expect(try w.xs.readIfPresent(w.be + "/num_devs") == nil)
        #expect(try w.xs.readIfPresent(w.fe + "/state") == nil)
    }

    @Test("refusals: no device, a device twice, one already given, an unknown domain")
    func refusals() throws {
        let w = try ToolstackWorld()
        defer { w.close() }
        #expect(errnoOf { try w.ts.attach(domid: 3, devices: []) } == EINVAL)
        #expect(errnoOf { try w.ts.attach(domid: 3, devices: [ToolstackWorld.a, ToolstackWorld.a]) } == EINVAL)
        #expect(errnoOf { try w.ts.attach(domid: 9, devices: [ToolstackWorld.a]) } == ESRCH)
        try w.ts.attach(domid: 3, devices: [ToolstackWorld.a])
        #expect(errnoOf { try w.ts.attach(domid: 3, devices: [ToolstackWorld.a]) } == EEXIST)
        w.ts.timeout = .milliseconds(50)
        #expect(errnoOf { try w.ts.detach(domid: 3, devices: [ToolstackWorld.c]) } == ETIMEDOUT)  // backend not connected
        #expect(errnoOf { try w.ts.detach(domid: 5, devices: [ToolstackWorld.c]) } == ENOENT)
    }

    @Test("detach: state-i 5 with backend 7, then the keys compacted; the last device removes both directories")
    func detach() throws {
        let w = try ToolstackWorld()
        defer { w.close() }
        try w.ts.attach(domid: 3, devices: [ToolstackWorld.a, ToolstackWorld.b, ToolstackWorld.c])
        try w.xs.write(w.be + "/state", "4")
        try w.xs.write(w.be + "/vdev-0", "0000:00:00.00")
        try w.xs.write(w.be + "/vdev-1", "0000:00:00.01")
        try w.xs.write(w.be + "/vdev-2", "0000:00:01.00")
        let backendXS = try w.hv.domain(0).openXenStore()
        let backend = FakeBackend(backendXS, w.be)
        defer { backend.stop(); backendXS.close() }
        w.perms.calls = []

        try w.ts.detach(domid: 3, devices: [ToolstackWorld.b])
        #expect(backend.seen == ["7 with state-N 1,5,1"])
        #expect(try w.xs.read(w.be + "/num_devs") == "2")
        #expect(try w.xs.read(w.be + "/dev-0") == "0000:03:00.0")
        #expect(try w.xs.read(w.be + "/dev-1") == "0000:04:02.0")
        #expect(try w.xs.read(w.be + "/key-1") == "0000:04:02.0")
        #expect(try w.xs.read(w.be + "/vdev-1") == "0000:00:01.00")
        #expect(try w.xs.read(w.be + "/state-1") == "1")
        #expect(try w.xs.readIfPresent(w.be + "/dev-2") == nil)
        #expect(try w.xs.readIfPresent(w.be + "/vdev-2") == nil)
        #expect(try w.xs.readIfPresent(w.be + "/opts-2") == nil)
        #expect(w.perms.calls == ["iomem dom3 0xfd000+1 false", "deassign 0000:03:00.1 dom3"])

        try w.ts.detach(domid: 3, devices: [ToolstackWorld.a, ToolstackWorld.c])
        #expect(try w.xs.readIfPresent(w.be + "/num_devs") == nil)
        #expect(errnoOf { _ = try w.xs.directory(w.be) } == ENOENT)
        #expect(errnoOf { _ = try w.xs.directory(w.fe) } == ENOENT)
        #expect(w.perms.calls.contains("unmap_pirq dom3 11") && w.perms.calls.contains("irq dom3 11 false"))
    }
}

@Suite("Sysfs reads for pass-through")
struct SysfsTests {
    @Test("resources of a function sysfs does not have: ENOENT naming the file")
    func missingResources() throws {
        let root = TempDir("res")
        let s = PCISysfs(root: root.path)
        #expect(errnoOf { _ = try s.resources(PCIAddress(bus: 6, device: 0, function: 0)) } == ENOENT)
    }
}
