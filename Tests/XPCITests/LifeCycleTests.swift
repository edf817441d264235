import Foundation
import Testing
import XenMock
import PCIModel
@testable import XPCI
import XenHypervisor
import XenPCIABI
import CXenPCISoftc

private let addr = Rig.addr

@Suite("xpci life cycle", .serialized)
struct LifeCycleTests {
    @Test("attach grants a page, allocates a port, publishes the keys and Initialised in one transaction")
    func attachPublishes() throws {
        let rig = Rig()
        defer { rig.finish() }
        let b = try rig.backend(Behaviour(connects: false))
        rig.hv.faults.fail(.xsTransactionEnd, errno: EAGAIN, domain: 1) // first commit conflicts: retried
        let before = rig.hv.faults.count(.xsTransactionStart)
        let f = try rig.frontend()
        #expect(rig.hv.faults.count(.xsTransactionStart) - before == 2, "EAGAIN retried once")
        let ref = try b.xs.read(b.frontPath + "/pci-op-ref"), port = try b.xs.read(b.frontPath + "/event-channel")
        #expect(try b.xs.read(b.frontPath + "/magic") == "7")
        #expect(try b.xs.read(b.frontPath + "/state") == "3")
        #expect(f.state == .initialised)
        let m = try b.gt.map(domain: 1, ref: GrantRef(ref)!, writable: true)
        #expect(SharedPage(m.address).flags == XenPCI.aerHandler, "the AER handler is announced, nothing else set")
        try b.gt.unmap(m)
        #expect(rig.hv.leaks().contains { $0.contains("dom1: event channel port \(port) still allocated (unbound, for dom0)") })
    }

    @Test("NetBSD bug: does not compile in -current (the state lives in the mirrored softc)")
    func softcMirror() throws {
        #expect(MemoryLayout<xpci_xenbus_softc>.size == 48)
        #expect(MemoryLayout<xpci_xenbus_softc>.offset(of: \.sc_shared_gntref) == 40)
        let rig = Rig()
        defer { rig.finish() }
        let (f, b) = try rig.connected()
        #expect(String(f.sc.pointee.sc_evtchn) == (try b.xs.read(b.frontPath + "/event-channel")))
        #expect(String(f.sc.pointee.sc_shared_gntref) == (try b.xs.read(b.frontPath + "/pci-op-ref")))
        #expect(f.sc.pointee.sc_backend_status == XPCI_BACKEND_CONNECTED)
        #expect(f.sc.pointee.sc_shared != nil)
        try f.detach()
        #expect(f.sc.pointee.sc_shared == nil && f.sc.pointee.sc_evtchn == 0)
        #expect(f.sc.pointee.sc_shared_gntref == GrantRef.max)
        #expect(f.sc.pointee.sc_backend_status == XPCI_BACKEND_DISCONNECTED)
    }

    @Test("NetBSD bug: boot hangs if the backend never connects")
    func neverConnects() throws {
        let rig = Rig()
        defer { rig.finish() }
        try rig.backend(Behaviour(connects: false))
        let f = try rig.frontend(connectTimeout: .milliseconds(300))
        let t0 = ContinuousClock.now
        expectError({ try f.waitConnected(timeout: .milliseconds(200)) }) { e in
            guard case .connectTimeout(_, let fe, let be) = e else { return false }
            return fe == .initialised && be == .initWait && e.description.contains("InitWait")
        }
        #expect(ContinuousClock.now - t0 < .seconds(2))
        expectError({ _ = try f.configRead(addr("00:01.0"), offset: 0, size: 4) }) {
            if case .notConnected = $0 { return true }; return false
        }
    }

    @Test("connect scans every root: function 0 missing, multi-function, sorted")
    func scan() throws {
        let rig = Rig()
        defer { rig.finish() }
        let (f, _) = try rig.connected()
        #expect(f.state == .connected)
        #expect(f.roots == [PCIRoot(segment: 0, bus: 0)])
        #expect(f.devices.map(\.address) == ["00:01.0", "00:02.1", "00:03.0", "00:03.2"].map(addr))
        #expect(f.device(addr("00:02.1"))?.deviceID == 0x21)
        #expect(f.device(addr("00:03.0"))?.isMultiFunction == true)
        #expect(rig.recorded.filter { if case .deviceAdded = $0 { return true }; return false }.count == 4)
    }

    @Test("NetBSD bug: one instance, PCI segment 0 only")
    func instancesAndSegments() throws {
        let rig = Rig()
        defer { rig.finish() }
        try rig.backend(instance: 0, devices: [addr("0002:05:00.0"): .make(device: 0x50), addr("0000:00:04.0"): .make()])
        try rig.backend(instance: 1, devices: [addr("0001:80:1f.7"): .make(device: 0x17)])
        let f0 = try rig.frontend(instance: 0), f1 = try rig.frontend(instance: 1)
        try f0.waitConnected()
        try f1.waitConnected()
        #expect(f0.roots == [PCIRoot(segment: 0, bus: 0), PCIRoot(segment: 2, bus: 5)])
        #expect(f0.devices.map(\.address) == [addr("0000:00:04.0"), addr("0002:05:00.0")])
        #expect(f1.devices.map(\.address) == [addr("0001:80:1f.7")])
        #expect(try f1.configRead(addr("0001:80:1f.7"), offset: 2, size: 2) == 0x17)
        #expect(try f0.configRead(addr("0002:05:00.0"), offset: 2, size: 2) == 0x50)
    }

    @Test("NetBSD bug: panics on backend states 7/8 (hotplug): hot-add then hot-remove")
    func hotplug() throws {
        let rig = Rig()
        defer { rig.finish() }
        let (f, b) = try rig.connected()
        try Toolstack.hotAdd(b.xs, b, addr("00:09.0"), .make(device: 0x99))
        #expect(eventually { f.device(addr("00:09.0")) != nil && f.state == .connected })
        #expect(f.device(addr("00:09.0"))?.deviceID == 0x99)
        #expect(eventually { b.state == .connected })
        try Toolstack.hotRemove(b.xs, b, addr("00:01.0"))
        #expect(eventually { f.device(addr("00:01.0")) == nil && b.state == .connected && f.state == .connected })
        #expect(f.devices.map(\.address) == ["00:02.1", "00:03.0", "00:03.2", "00:09.0"].map(addr))
        #expect(rig.recorded.contains { if case .deviceRemoved(let a) = $0 { return a == addr("00:01.0") }; return false })
    }

    @Test("missed-Connected race: the backend goes Reconfiguring while the frontend is still Initialised")
    func missedConnected() throws {
        let rig = Rig()
        defer { rig.finish() }
        let b = try rig.backend(Behaviour(raceHotAdd: (addr("00:0a.0"), .make(device: 0xA0))))
        let f = try rig.frontend()
        #expect(eventually { f.state == .connected && b.state == .connected })
        #expect(f.device(addr("00:0a.0"))?.deviceID == 0xA0)
        #expect(f.device(addr("00:01.0")) != nil)
    }

    @Test("NetBSD bug: no teardown on Closing: the backend closes, everything is released")
    func backendCloses() throws {
        let rig = Rig()
        defer { rig.finish() }
        let (f, b) = try rig.connected()
        try b.xs.write(b.backPath + "/state", "5")
        #expect(eventually { f.state == .initialising && b.state == .closed })
        #expect(f.devices.isEmpty && f.roots.isEmpty)
        let held = rig.hv.leaks().filter { $0.hasPrefix("dom1:") && ($0.contains("grant ref") || $0.contains("port")) }
        #expect(held == [], "no grant or port left after Closing")
        expectError({ _ = try f.configRead(addr("00:01.0"), offset: 0, size: 4) }) {
            if case .notConnected = $0 { return true }; return false
        }
    }

    @Test("after the backend closes and comes back, the frontend reconnects")
    func reconnectAfterBackendClose() throws {
        let rig = Rig()
        defer { rig.finish() }
        let (f, b) = try rig.connected(Behaviour(restartAfterClose: true))
        #expect(try b.xs.read(b.frontPath + "/pci-op-ref") == String(f.sc.pointee.sc_shared_gntref))
        try b.xs.write(b.backPath + "/state", "6")
        #expect(eventually { rig.recorded.contains { if case .stateChanged(.closed, _) = $0 { return true }; return false } })
        #expect(eventually { f.state == .connected && f.devices.count == 4 })
        #expect(try f.configRead(addr("00:02.1"), offset: 2, size: 2) == 0x21)
        // The first grant ended at Closing (the number may be handed out
        // again): the ref published now grants the page the frontend uses.
        let ref = try #require(GrantRef(try b.xs.read(b.frontPath + "/pci-op-ref")))
        #expect(ref == f.sc.pointee.sc_shared_gntref)
        let m = try b.gt.map(domain: 1, ref: ref, writable: true)
        #expect(UnsafeMutableRawPointer(m.address) == UnsafeMutableRawPointer(f.sc.pointee.sc_shared))
        try b.gt.unmap(m)
    }

    @Test("detach goes Closing then Closed, leaves nothing, and attach works again")
    func detachReattach() throws {
        let rig = Rig()
        defer { rig.finish() }
        let (f, b) = try rig.connected()
        try f.detach()
        #expect(f.state == .closed)
        #expect(eventually { b.state == .closed })
        #expect(rig.hv.leaks().allSatisfy { $0.hasPrefix("dom0:") }, "\(rig.hv.leaks())")
        try f.attach()
        try f.waitConnected()
        #expect(f.devices.count == 4)
        #expect(try f.configRead(addr("00:03.2"), offset: 2, size: 2) == 0x32)
    }

    static let attachCalls: [MockOperation] = [
        .openXenStore, .openEventChannels, .openGrantSharing, .xsRead, .grantShare, .evtchnAllocUnbound,
        .xsTransactionStart, .xsWrite, .xsTransactionEnd, .xsWatch,
    ]

    @Test("fault injection at attach: each hypervisor call failing gives a clean error and no leak",
          arguments: attachCalls)
    func attachFaults(_ op: MockOperation) throws {
        let rig = Rig()
        defer { rig.finish() }
        try rig.backend(Behaviour(connects: false))
        rig.hv.faults.fail(op, errno: op == .xsTransactionEnd ? EIO : EACCES, domain: 1)
        let f = try rig.frontend(attach: false)
        expectError({ try f.attach() }) { e in
            guard case .xen(let x) = e else { return false }
            return x.operation == op.rawValue && e.description.contains("injected")
        }
        #expect(f.state != .initialised)
        #expect(rig.hv.leaks().allSatisfy { $0.hasPrefix("dom0:") }, "\(op): \(rig.hv.leaks())")
    }
}
