import Foundation
import Synchronization
import Testing
import XenMock
import PCIModel
@testable import XPCI
import XenPCIABI

/// One mock machine: dom0 with fake backends, guest dom1 with frontends.
/// `finish()` detaches, stops, and checks that nothing leaked.
final class Rig {
    let hv = MockHypervisor()
    var backends: [FakeBackend] = []
    var frontends: [XPCIFrontend] = []
    /// What the frontends reported, from whichever thread.
    let events = EventLog()

    static func addr(_ s: String) -> PCIAddress { try! PCIAddress(parsing: s) }

    @discardableResult
    func backend(instance: Int = 0, devices: [PCIAddress: FakeDevice] = Rig.standard(),
                 _ behaviour: Behaviour = Behaviour()) throws -> FakeBackend {
        let b = try FakeBackend(hv: hv, instance: instance, devices: devices, behaviour: behaviour)
        try b.start()
        backends.append(b)
        return b
    }

    func frontend(instance: Int = 0, requestTimeout: Duration = .milliseconds(300),
                  connectTimeout: Duration = .seconds(5), decode: Bool = true, attach: Bool = true,
                  _ configure: (inout XPCIFrontend.Options) -> Void = { _ in }) throws -> XPCIFrontend {
        var o = XPCIFrontend.Options(requestTimeout: requestTimeout, connectTimeout: connectTimeout,
                                     instance: instance, enableDecodeOnScan: decode)
        configure(&o)
        let f = try XPCIFrontend(hypervisor: hv.domain(1), options: o)
        f.onEvent = { [events] e in events.append(e) }
        frontends.append(f)
        if attach { try f.attach() }
        return f
    }

    /// Attached and connected, against a well-behaved backend by default.
    func connected(devices: [PCIAddress: FakeDevice] = Rig.standard(), _ behaviour: Behaviour = Behaviour(),
                   requestTimeout: Duration = .milliseconds(300)) throws -> (XPCIFrontend, FakeBackend) {
        let b = try backend(devices: devices, behaviour)
        let f = try frontend(requestTimeout: requestTimeout)
        try f.waitConnected()
        return (f, b)
    }

    var recorded: [XPCIEvent] { events.all }

    func finish(sourceLocation: SourceLocation = #_sourceLocation) {
        for f in frontends { try? f.detach() }
        for b in backends { b.stop() }
        #expect(hv.leaks() == [], "leaks after teardown", sourceLocation: sourceLocation)
    }

    /// 00:01.0 with BARs, ROM and PM/MSI/MSI-X; 00:02.1 alone (function 0
    /// missing); 00:03.0 multi-function with 00:03.2.
    static func standard() -> [PCIAddress: FakeDevice] {
        [addr("00:01.0"): rich(), addr("00:02.1"): .make(device: 0x21),
         addr("00:03.0"): .make(device: 0x30, multiFunction: true), addr("00:03.2"): .make(device: 0x32)]
    }

    static func rich() -> FakeDevice {
        .make(vendor: 0x1AF4, device: 0x1041, classCode: 0x020000, command: 0,
              bars: [(0, 0xFEB0_0000, 0x4000), (1, 0xC001, 0x20), (2, 0x0000_000C, 0x10_0000)],
              romSize: 0x1_0000) { c in
            c.write(0x1C, 4, 0x1)                                         // BAR2 upper half
            c.write(PCIReg.status, 2, UInt32(PCIStatus.capList))
            c.write(PCIReg.capabilityPointer, 1, 0x40)
            c.write(0x40, 2, 0x5001); c.write(0x42, 2, 0x0003)           // PM v3 -> 0x50
            c.write(0x50, 2, 0x7005); c.write(0x52, 2, 0x0086)           // MSI, 64-bit, 8 vectors -> 0x70
            c.write(0x70, 2, 0x0011); c.write(0x72, 2, 0x007F)           // MSI-X, 128 entries
            c.write(0x74, 4, 0x0000_2000); c.write(0x78, 4, 0x0000_3000)
        }
    }

    /// A PCIe function with extended space: PCIe, vendor, AER, SR-IOV.
    static func express() -> FakeDevice {
        .make(vendor: 0x8086, device: 0x10FB, classCode: 0x020000, extended: true,
              bars: [(0, 0xFE00_0004, 0x8_0000)]) { c in
            c.write(PCIReg.status, 2, UInt32(PCIStatus.capList))
            c.write(PCIReg.capabilityPointer, 1, 0x40)
            c.write(0x40, 2, 0x6010); c.write(0x42, 2, 0x0002)           // PCIe v2 endpoint -> 0x60
            c.write(0x60, 2, 0x0009); c.write(0x62, 1, 0x10)             // vendor-specific, len 0x10
            c.write(0x100, 4, 0x1401_0001)                                // AER v1 -> 0x140
            c.write(0x140, 4, 0x0001_0010)                                // SR-IOV v1, end
            c.write(0x14C, 2, 8); c.write(0x14E, 2, 64); c.write(0x150, 2, 4)
            c.write(0x154, 2, 0x80); c.write(0x156, 2, 2); c.write(0x15A, 2, 0x10ED)
        }
    }
}

func expectError(_ body: () throws -> Void, sourceLocation: SourceLocation = #_sourceLocation,
                 _ match: (XPCIError) -> Bool) {
    do {
        try body()
        Issue.record("no error thrown", sourceLocation: sourceLocation)
    } catch let e as XPCIError {
        #expect(match(e), "unexpected error: \(e)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("not an XPCIError: \(error)", sourceLocation: sourceLocation)
    }
}

extension XPCIError {
    var isTimeout: Bool { if case .timeout = self { return true }; return false }
    var isChannelBroken: Bool { if case .channelBroken = self { return true }; return false }
    var lie: String? { if case .backendLied(let s) = self { return s }; return nil }
    var backendError: PCIOpError? { if case .backend(let e, _, _) = self { return e }; return nil }
}

/// Polls `cond` until true or the timeout.
func eventually(_ timeout: Duration = .seconds(5), _ cond: () -> Bool) -> Bool {
    let end = ContinuousClock.now + timeout
    while ContinuousClock.now < end { if cond() { return true }; usleep(2000) }
    return cond()
}

/// Events reported on any thread, read by the test.
final class EventLog: Sendable {
    private let events = Mutex<[XPCIEvent]>([])
    func append(_ e: XPCIEvent) { events.withLock { $0.append(e) } }
    var all: [XPCIEvent] { events.withLock { $0 } }
}
