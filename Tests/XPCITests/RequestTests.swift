import Foundation
import Synchronization
import Testing
import XenMock
import PCIModel
@testable import XPCI
import CXenPCI
import XenPCIABI

private let addr = Rig.addr
private let rich = addr("00:01.0")

@Suite("xpci requests", .serialized)
struct RequestTests {
    @Test("NetBSD bug: 4-byte accesses only: reads and writes of 1, 2 and 4 bytes")
    func sizes() throws {
        let rig = Rig()
        defer { rig.finish() }
        let (f, b) = try rig.connected()
        #expect(try f.configRead(rich, offset: 0, size: 4) == 0x1041_1AF4)
        #expect(try f.configRead(rich, offset: 2, size: 2) == 0x1041)
        #expect(try f.configRead(rich, offset: 1, size: 1) == 0x1A)
        try f.configWrite(rich, offset: 0x0C, size: 1, value: 0x10)
        try f.configWrite(rich, offset: 0x3C, size: 2, value: 0x0B0A)
        try f.configWrite(rich, offset: 0x44, size: 4, value: 0xDEAD_BEEF)
        #expect(b.pool[rich]!.config.read8(0x0C) == 0x10)
        #expect(try f.configRead(rich, offset: 0x3C, size: 2) == 0x0B0A)
        #expect(try f.configRead(rich, offset: 0x46, size: 2) == 0xDEAD)
        expectError({ _ = try f.configRead(rich, offset: 1, size: 2) }) { if case .badArgument = $0 { return true }; return false }
        expectError({ _ = try f.configRead(rich, offset: 0, size: 3) }) { if case .badArgument = $0 { return true }; return false }
        expectError({ try f.configWrite(rich, offset: 0, size: 1, value: 0x100) }) { if case .badArgument = $0 { return true }; return false }
    }

    @Test("NetBSD bug: swallows config errors: backend errors reach the caller typed")
    func typedErrors() throws {
        let rig = Rig()
        defer { rig.finish() }
        var be = Behaviour()
        be.corrupt = { req, reply in
            if req.offset == 0x48 && req.cmd == PCIOpCommand.confWrite.rawValue { reply.err = PCIOpError.accessDenied.rawValue }
        }
        let (f, _) = try rig.connected(be)
        let before = f.statistics[rich], otherBefore = f.statistics.other.errors
        expectError({ _ = try f.configRead(addr("00:1f.0"), offset: 0, size: 4) }) { $0.backendError == .devNotFound }
        expectError({ try f.configWrite(rich, offset: 0x48, size: 4, value: 1) }) { e in
            e.backendError == .accessDenied && e.description.contains("conf_write on 0000:00:01.0")
        }
        expectError({ _ = try f.configRead(rich, offset: 0x100, size: 4) }) { $0.backendError == .invalidOffset }
        let s = f.statistics[rich]
        #expect(s.errors - before.errors == 2 && s.timeouts == 0 && s.ops - before.ops == 2, "\(s)")
        #expect(f.statistics.other.errors == otherBefore + 1, "an address not on the bus counts under other")
        #expect(f.statistics.devices[addr("00:1f.0")] == nil)
    }

    @Test("NetBSD bug: spins forever with no timeout: a silent backend gives a timeout, then a broken channel")
    func silent() throws {
        let rig = Rig()
        defer { rig.finish() }
        let (f, b) = try rig.connected(requestTimeout: .milliseconds(150))
        b.behaviour.answers = false
        let t0 = ContinuousClock.now
        expectError({ _ = try f.configRead(rich, offset: 0, size: 4) }) { $0.isTimeout && $0.description.contains("conf_read on 0000:00:01.0") }
        let took = ContinuousClock.now - t0
        #expect(took >= .milliseconds(150) && took < .seconds(2), "\(took)")
        expectError({ _ = try f.configRead(rich, offset: 0, size: 4) }) { $0.isChannelBroken }
        #expect(f.statistics[rich].timeouts == 1)
    }

    @Test("slow backend: a late reply is never taken for the next request")
    func slow() throws {
        let rig = Rig()
        defer { rig.finish() }
        let (f, b) = try rig.connected(requestTimeout: .milliseconds(100))
        b.behaviour.delay = .milliseconds(250)
        expectError({ _ = try f.configRead(rich, offset: 0, size: 4) }) { $0.isTimeout }
        // Before the late reply lands nothing is posted.
        expectError({ _ = try f.configRead(addr("00:02.1"), offset: 0, size: 4) }) { $0.isChannelBroken }
        #expect(eventually { b.requests > 0 && (f.page!.flags & XenPCI.frontendActive) == 0 })
        b.behaviour.delay = nil
        // The late reply (vendor 0x1af4 of 00:01.0) must not answer this one.
        #expect(try f.configRead(addr("00:02.1"), offset: 0, size: 4) == 0x0021_8086)
        #expect(try f.configRead(rich, offset: 2, size: 2) == 0x1041)
    }

    @Test("lying backend: err outside the six values is rejected, naming it")
    func lyingErr() throws {
        let rig = Rig()
        defer { rig.finish() }
        var be = Behaviour()
        be.corrupt = { req, reply in if req.offset == 0x3C && req.size == 1 { reply.err = -22 } }
        let (f, _) = try rig.connected(be)
        expectError({ _ = try f.configRead(rich, offset: 0x3C, size: 1) }) { $0.lie?.contains("err = -22") == true }
    }

    @Test("lying backend: a 1- or 2-byte read with bits above its size is rejected")
    func lyingWidth() throws {
        let rig = Rig()
        defer { rig.finish() }
        var be = Behaviour()
        be.corrupt = { req, reply in if req.offset == 0x3C { reply.value |= 0x1_0000 } }
        let (f, _) = try rig.connected(be)
        expectError({ _ = try f.configRead(rich, offset: 0x3C, size: 2) }) { $0.lie?.contains("bits above the size") == true }
        expectError({ _ = try f.configRead(rich, offset: 0x3C, size: 1) }) { $0.lie != nil }
        #expect(try f.configRead(rich, offset: 0x3C, size: 4) == 0x1_010B)
    }

    @Test("lying backend: bad root_num / root-N never reach the bus",
          arguments: [
            (["root_num": "999"], "above the bound"), (["root_num": "-1"], "not a decimal"),
            (["root_num": "01"], "not a decimal"), (["root_num": "\u{0661}"], "not a decimal"),
            (["root_num": "2", "root-1": "0000:00"], "duplicate"), (["root-0": "0:0"], "not DDDD:BB"),
            (["root-0": "0000:zz"], "not DDDD:BB"), (["root-0": "00000:00"], "not DDDD:BB"),
          ] as [([String: String], String)])
    func lyingRoots(_ keys: [String: String], _ why: String) throws {
        let rig = Rig()
        defer { rig.finish() }
        try rig.backend(Behaviour(xenstoreOverride: keys))
        let f = try rig.frontend()
        expectError({ try f.waitConnected() }) { $0.lie?.contains(why) == true }
        #expect(f.devices.isEmpty && f.state == .initialised)
    }

    @Test("NetBSD bug: ignores errors reading root-N")
    func missingRoot() throws {
        let rig = Rig()
        defer { rig.finish() }
        try rig.backend(Behaviour(xenstoreOverride: ["root_num": "2", "root-1": nil]))
        let f = try rig.frontend()
        expectError({ try f.waitConnected() }) { $0.lie == "root-1 is missing (root_num = 2)" }
    }

    @Test("no root_num: the single root 0000:00 is scanned")
    func defaultRoot() throws {
        let rig = Rig()
        defer { rig.finish() }
        try rig.backend(Behaviour(xenstoreOverride: ["root_num": nil, "root-0": nil]))
        let f = try rig.frontend()
        try f.waitConnected()
        #expect(f.roots == [PCIRoot(segment: 0, bus: 0)] && f.devices.count == 4)
    }

    @Test("MSI, MSI-X (128 vectors) and multi-MSI enable and disable")
    func msi() throws {
        let rig = Rig()
        defer { rig.finish() }
        let (f, b) = try rig.connected(Behaviour(multiMSI: true))
        let p = try f.enableMSI(rich)
        #expect(p >= 40)
        expectError({ _ = try f.enableMSIX(rich, entries: [0]) }) { $0.backendError == .opFailed }
        try f.disableMSI(rich)
        let entries = (0..<128).map { UInt16($0 * 2) }
        let pirqs = try f.enableMSIX(rich, entries: entries)
        #expect(pirqs.count == 128 && Set(pirqs).count == 128)
        #expect(b.pool[rich]!.msixOn)
        try f.disableMSIX(rich)
        expectError({ _ = try f.enableMSIX(rich, entries: Array(0..<129)) }) { if case .badArgument = $0 { return true }; return false }
        let first = try f.enableMultiMSI(addr("00:02.1"), count: 4)
        #expect(first > pirqs.max()!)
        expectError({ _ = try f.enableMultiMSI(rich, count: 3) }) { if case .badArgument = $0 { return true }; return false }
    }

    @Test("lying backend: enable_msix with a non-zero value, pirq 0 or repeated pirqs",
          arguments: ["value", "zero", "repeat"])
    func lyingMSIX(_ how: String) throws {
        let rig = Rig()
        defer { rig.finish() }
        var be = Behaviour()
        be.corrupt = { req, reply in
            guard req.cmd == PCIOpCommand.enableMSIX.rawValue else { return }
            switch how {
            case "value": reply.value = 3
            case "zero": reply.setMSIXEntry(1, xen_msix_entry(vector: 0, entry: 1))
            default: reply.setMSIXEntry(1, reply.msixEntry(0))
            }
        }
        let (f, _) = try rig.connected(be)
        expectError({ _ = try f.enableMSIX(rich, entries: [0, 1, 2]) }) { e in
            guard let s = e.lie else { return false }
            return how == "value" ? s.contains("value = 3") : s.contains("msix_entries[1].vector")
        }
    }

    @Test("AER: per-device handlers answer bit-2 requests, also while a request is in flight")
    func aer() throws {
        let rig = Rig()
        defer { rig.finish() }
        let (f, b) = try rig.connected(requestTimeout: .seconds(2))
        let requests = Mutex<[AERRequest]>([])
        f.setAERHandler(rich) { r in requests.withLock { $0.append(r) }; return r.command == .errorDetected ? .needReset : .recovered }
        #expect(b.postAER(6, rich, channelState: 2) == AERResult.needReset.rawValue)
        #expect(b.postAER(9, rich) == AERResult.recovered.rawValue)
        #expect(b.postAER(6, addr("00:02.1")) == AERResult.none.rawValue, "no handler: NONE, as Linux")
        let seen = requests.withLock { $0 }
        #expect(seen.map(\.command) == [.errorDetected, .slotReset] && seen.first?.channelState == 2)
        // An AER request posted while a (slow) config request is in flight is answered after it.
        b.behaviour.delay = .milliseconds(200)
        let t = Thread { _ = try? f.configRead(rich, offset: 0, size: 4) }
        t.start()
        usleep(50_000)
        let t0 = ContinuousClock.now
        let r = b.postAER(7, rich, timeout: .seconds(3))
        #expect(r == AERResult.recovered.rawValue)
        #expect(ContinuousClock.now - t0 < .seconds(2))
        b.behaviour.delay = nil
        #expect(b.postAER(42, rich) == AERResult.none.rawValue)
        #expect(eventually { rig.recorded.contains { if case .error(let e) = $0 { return e.lie?.contains("aer_op.cmd = 42") == true }; return false } })
    }
}
