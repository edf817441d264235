import Foundation
import Testing
@testable import PCIBack
import XenMock
import PCIModel
import CXenPCI
import XenPCIABI
import XenHypervisor

/// Restart without harm (issue 13): a backend started while a guest uses its
/// functions takes the guest over; nothing is reset under it.
@Suite("pciback restart: takeover of running guests", .serialized)
struct TakeoverTests {
    /// A guest using the NVMe (MSI-X on, decoding and bus mastering on) and
    /// the e1000, served by a backend that saves its state in `store`.
    func running(_ store: BackendStateStore) throws -> (Harness, RawFrontend) {
        let h = try Harness(stateStore: store)
        try h.claim(Fixture.nvme, Fixture.e1000)
        let f = try h.connectGuest(Fixture.nvme, Fixture.e1000)
        try f.setState(.connected)
        #expect(try f.write(v00, 4, 2, 0x0006) == .success)
        #expect(try f.send(msixOp(v00, entries: [0, 1]))?.err == 0)
        return (h, f)
    }

    func restart(_ h: Harness, _ store: BackendStateStore, claim: [PCIAddress] = [Fixture.nvme, Fixture.e1000]) throws -> (PCIBack, [String]) {
        let b = try PCIBack(hypervisor: h.dom0, stateStore: store)
        var errors: [String] = []
        for a in claim {
            do { _ = try b.claim(h.device(a)) } catch { errors.append("\(error)") }
        }
        try b.start()
        return (b, errors)
    }

    @Test("planned restart: no Closing, no reset, pirqs kept; a request posted while no backend ran is answered; the new backend serves and releases")
    func plannedRestart() throws {
        let store = MemoryStateStore()
        let (h, f) = try running(store)
        let nvme = try h.device(Fixture.nvme)
        let resets = nvme.resetCount
        let pirqs = h.hv.pirqVectors(guest: 1).map(\.pirq)
        #expect(pirqs.count == 2)
        h.back.stop(keepGuests: true)
        #expect(h.read(h.be(1) + "/state") == "4", "the guest is not told anything")
        #expect(h.hv.pirqVectors(guest: 1).map(\.pirq) == pirqs, "its vectors stay mapped")
        #expect(nvme.readConfig4(4) & 0x6 == 0x6, "decoding and bus mastering untouched")

        // The guest posts a request while no backend runs (its notify goes nowhere).
        f.page.postRequest(xen_pci_op(command: .confRead, address: v00, offset: 0, size: 4))
        try? f.ev.notify(f.port!)

        let (b, errors) = try restart(h, store)
        #expect(errors.isEmpty, "\(errors)")
        #expect(eventually("the pending request is answered") { f.page.flags & XenPCI.frontendActive == 0 })
        let id = try nvme.readConfig(0, 4)
        let reply = f.page.snapshotRequestCopy()
        #expect(reply.err == 0 && reply.value == id)
        #expect(nvme.resetCount == resets, "taken over without a reset")
        let bar0 = try nvme.readConfig(0x10, 4)
        #expect(try f.read(v00, 0x10, 4) == (.success, bar0), "the same guest address, BARs as before")
        #expect(h.read(h.be(1) + "/state") == "4")
        #expect(try f.send(xen_pci_op(command: .disableMSIX, address: v00))?.err == 0, "the new backend unmaps the old one's pirqs")
        #expect(h.hv.pirqVectors().isEmpty)
        #expect(try f.send(msixOp(v00, entries: [3]))?.err == 0)
        f.close()
        b.stop()
        h.toolstack.close()
        #expect(nvme.resetCount > resets, "reset when released at stop")
        #expect(h.hv.leaks().isEmpty, "\(h.hv.leaks())")
    }

    @Test("without saved state, a function a running guest holds is refused and left alone (not reset); the error names the file")
    func noStateLeftAlone() throws {
        let (h, _) = try running(MemoryStateStore())
        let nvme = try h.device(Fixture.nvme)
        let resets = nvme.resetCount
        h.back.stop(keepGuests: true)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("xenpci-state-\(UUID())").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = FileStateStore(path: dir + "/state.json")
        let (b, errors) = try restart(h, file)
        #expect(errors.count == 2 && errors.allSatisfy { $0.contains("left alone, not reset") && $0.contains(dir + "/state.json") }, "\(errors)")
        #expect(nvme.resetCount == resets)
        b.stop()
        // A corrupt file is named too.
        try "{not json".write(toFile: dir + "/state.json", atomically: true, encoding: .utf8)
        let (b2, errors2) = try restart(h, file)
        #expect(errors2.count == 2 && errors2.allSatisfy { $0.contains("not a xenpci state file") && $0.contains("state.json") }, "\(errors2)")
        #expect(nvme.resetCount == resets)
        b2.stop()
        h.toolstack.close()
    }

    @Test("a guest that died while no backend ran: its functions are claimed afresh (reset); the old MSI-X table is released")
    func guestGoneMeanwhile() throws {
        let store = MemoryStateStore()
        let (h, f) = try running(store)
        let nvme = try h.device(Fixture.nvme)
        let resets = nvme.resetCount
        h.back.stop(keepGuests: true)
        h.hv.destroyDomain(1)
        try? h.toolstack.remove(h.be(1).replacingOccurrences(of: "/0", with: ""))
        let (b, errors) = try restart(h, store)
        #expect(errors.isEmpty, "\(errors)")
        #expect(nvme.resetCount == resets + 1)
        #expect(h.hv.preparedMSIXDevices == [Fixture.nvme])
        f.close()
        b.stop()
        h.toolstack.close()
        #expect(h.hv.leaks().isEmpty, "\(h.hv.leaks())")
    }

    @Test("the state file: written atomically with mode 0600, read back equal")
    func fileStore() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("xenpci-state-\(UUID())").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let s = FileStateStore(path: dir + "/run/state.json")
        #expect(try s.load() == nil)
        let st = PersistedState(devices: [.init(address: "0000:01:00.0", golden: String(repeating: "ab", count: 256), msixPrepared: true,
                                                guest: 3, guestAddress: "0000:00:00.0", msiPirqs: [], msixPirqs: [40, 41],
                                                permissive: false, quirks: [])])
        try s.save(st)
        #expect(try s.load() == st)
        let mode = try FileManager.default.attributesOfItem(atPath: dir + "/run/state.json")[.posixPermissions] as? Int
        #expect(mode == 0o600)
        #expect(!FileManager.default.fileExists(atPath: dir + "/run/state.json.tmp"))
    }
}

@Suite struct StateFileTrustTests {
    static func tempDir() throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("xenpci-state-\(UUID())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        return dir
    }

    @Test("a file from another boot is not used for a takeover: the function is left alone, saying why")
    func anotherBoot() throws {
        try #require(PersistedState.currentBootID != nil, "this kernel has no boot_id")
        let store = MemoryStateStore()
        var old = PersistedState(devices: [])
        old.bootID = "00000000-0000-0000-0000-000000000000"
        try store.save(old)
        let h = try Harness(stateStore: store)
        defer { h.shutdown() }
        let problem = h.back.loop.submit { h.back.registry.recoveryProblem }
        #expect(problem?.contains("another boot") == true, "\(problem ?? "none")")
    }

    @Test("the temporary file is never followed: a planted symbolic link is replaced, its target untouched")
    func plantedLink() throws {
        let dir = try Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let target = dir + "/victim"
        try "keep".write(toFile: target, atomically: true, encoding: .utf8)
        try FileManager.default.createSymbolicLink(atPath: dir + "/state.json.tmp", withDestinationPath: target)
        let s = FileStateStore(path: dir + "/state.json")
        try s.save(PersistedState())
        #expect(try String(contentsOfFile: target, encoding: .utf8) == "keep")
        #expect(try s.load() == PersistedState())
    }

    @Test("a directory others can write, a symbolic link as the file, an oversized file: refused, naming the path")
    func refused() throws {
        let dir = try Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let s = FileStateStore(path: dir + "/state.json")
        try s.save(PersistedState())
        chmod(dir, 0o777)
        #expect { try s.load() } throws: { "\($0)".contains(dir) && "\($0)".contains("writable by others") }
        #expect { try s.save(PersistedState()) } throws: { "\($0)".contains("writable by others") }
        chmod(dir, 0o700)
        try FileManager.default.removeItem(atPath: dir + "/state.json")
        try FileManager.default.createSymbolicLink(atPath: dir + "/state.json", withDestinationPath: "/etc/hostname")
        #expect { try s.load() } throws: { "\($0)".contains("not a regular file") }
        try FileManager.default.removeItem(atPath: dir + "/state.json")
        try Data(count: PersistedState.maxFileSize + 1).write(to: URL(fileURLWithPath: dir + "/state.json"))
        #expect { try s.load() } throws: { "\($0)".contains("bytes") }
    }
}

extension SysfsPCIDevice {
    func readConfig4(_ o: Int) -> UInt32 { (try? readConfig(o, 4)) ?? 0 }
}

extension SharedPage {
    /// The op as the backend left it (tests only).
    func snapshotRequestCopy() -> xen_pci_op {
        var op = xen_pci_op()
        snapshotRequest(into: &op)
        return op
    }
}
