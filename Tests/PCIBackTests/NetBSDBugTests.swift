import Foundation
import Testing
@testable import PCIBack
import XenMock
import CXenPCI
import XenPCIABI
import PCIModel
import XenHypervisor

/// Each backend bug of NetBSD's pciback.c (docs/NETBSD-PORT.md), as a test that
/// fails on NetBSD's behaviour.
@Suite("NetBSD pciback bugs not carried over", .serialized)
struct NetBSDBugTests {
    @Test("NetBSD bug: dev_not_found is never written back (the guest sees success)")
    func devNotFoundWrittenBack() throws {
        let (h, f) = try connected([Fixture.e1000])
        var op = xen_pci_op(command: .confRead, address: v01, size: 4)
        op.err = 0
        op.value = 0x1234_5678
        let r = try #require(try f.send(op))
        #expect(r.err == PCIOpError.devNotFound.rawValue)
        #expect(r.value == 0)
        f.close(); h.expectClean()
    }

    @Test("NetBSD bug: a 4-byte request at an unaligned offset reaches the host accessor (dom0 panic)")
    func unalignedNeverReachesHost() throws {
        let (h, f) = try connected([Fixture.e1000])
        let dev = try h.device(Fixture.e1000)
        let n = dev.accessCount
        #expect(try f.read(v00, 2, 4).0 == .invalidOffset)
        #expect(try f.write(v00, 0x11, 4, 0) == .invalidOffset)
        #expect(dev.accessCount == n)
        f.close(); h.expectClean()
    }

    @Test("NetBSD bug: an invalid size on read returns success")
    func invalidSizeOnRead() throws {
        let (h, f) = try connected([Fixture.e1000])
        for s: Int32 in [0, 3, 5, 8, 16, -1] { #expect(try f.read(v00, 0, s).0 == .invalidOffset, "size \(s)") }
        f.close(); h.expectClean()
    }

    @Test("NetBSD bug: no config mediation (the guest reprograms BARs, bus mastering and MSI)")
    func mediated() throws {
        let t = try syntheticTree()
        let s = try MediationTests.setup(t.address, root: t.root)
        let bar0 = try s.dev.readConfig(0x10, 4)
        #expect(try s.f.write(v00, 0x10, 4, 0x1000_0000) == .success)
        #expect(try s.dev.readConfig(0x10, 4) == bar0)
        #expect(try s.f.write(v00, 0x64, 4, 0xFEE0_1000) == .success)
        #expect(try s.dev.readConfig(0x64, 4) == 0)
        #expect(try s.f.write(v00, 0x62, 2, 0x01F4) == .accessDenied)
        s.f.close(); s.h.expectClean()
    }

    @Test("NetBSD bug: use-after-free when creating an instance fails")
    func createFailureIsClean() throws {
        let h = try Harness()
        try h.claim(Fixture.e1000)
        h.hv.faults.fail(.xsWatch, errno: ENOMEM, domain: 0)
        try h.create(1, Fixture.e1000)
        #expect(eventually("the error is reported") { h.events.contains { if case .error(1, let m) = $0 { return m.contains("watch") }; return false } })
        // The next change to the directory retries, and works.
        try h.toolstack.write(h.be(1) + "/state", "1")
        #expect(h.waitBackend(1, .initialised))
        let f = try RawFrontend(h)
        try f.connect()
        #expect(h.waitBackend(1, .connected))
        f.close(); h.expectClean()
    }

    @Test("NetBSD bug: NULL dereference tearing down an instance that never connected")
    func teardownUnconnected() throws {
        let h = try Harness()
        try h.claim(Fixture.e1000)
        try h.create(1, Fixture.e1000)
        #expect(h.waitBackend(1, .initialised))
        try h.toolstack.remove(h.be(1))
        #expect(eventually("release") { h.back.listing().first?.guest == nil })
        // The frontend closes without ever connecting, too.
        try h.create(1, Fixture.e1000)
        #expect(h.waitBackend(1, .initialised))
        let f = try RawFrontend(h)
        try f.setState(.closing)
        #expect(h.waitBackend(1, .closing))
        try f.setState(.closed)
        #expect(h.waitBackend(1, .closed))
        f.close(); h.expectClean()
    }

    @Test("NetBSD bug: double unmap of the shared page")
    func noDoubleUnmap() throws {
        let (h, f) = try connected([Fixture.e1000])
        try f.setState(.closing)
        #expect(h.waitBackend(1, .closing))
        try f.setState(.closed)
        #expect(h.waitBackend(1, .closed))
        try h.toolstack.remove(h.be(1))
        #expect(eventually("release") { h.back.listing().first?.guest == nil })
        h.back.stop()
        #expect(h.hv.faults.count(.grantUnmap) == 1, "one mapping, one unmap")
        #expect(!h.events.contains { if case .error(_, let m) = $0 { return m.contains("unmap") }; return false })
        f.close(); h.toolstack.close()
        #expect(h.hv.leaks().isEmpty)
    }

    @Test("NetBSD bug: a device can be exported to two guests")
    func neverTwoGuests() throws {
        let h = try Harness(guests: [1, 2])
        try h.claim(Fixture.e1000)
        try h.create(1, Fixture.e1000)
        #expect(h.waitBackend(1, .initialised))
        try h.create(2, Fixture.e1000)
        #expect(h.waitBackend(2, .initialised))
        #expect(h.read(h.be(2) + "/vdev-0") == nil)
        #expect(h.read(h.be(2) + "/error")?.contains("already exported to dom1") == true)
        let f2 = try RawFrontend(h, dom: 2)
        try f2.connect()
        #expect(h.waitBackend(2, .connected))
        #expect(try f2.read(v00, 0, 4).0 == .devNotFound)
        #expect(h.back.listing().first?.guest == 1)
        f2.close(); h.expectClean()
    }

    @Test("NetBSD bug: Closing is ignored after Connected")
    func closingAfterConnected() throws {
        let (h, f) = try connected([Fixture.e1000])
        try f.setState(.closing)
        #expect(h.waitBackend(1, .closing))
        #expect(!h.hv.leaks().contains { $0.contains("grant mapping") })
        f.close(); h.expectClean()
    }

    @Test("NetBSD bug: magic is not checked")
    func magicChecked() throws {
        let h = try Harness()
        try h.claim(Fixture.e1000)
        try h.create(1, Fixture.e1000)
        #expect(h.waitBackend(1, .initialised))
        let f = try RawFrontend(h)
        try f.connect(magic: "6")
        #expect(h.waitBackend(1, .closing))
        #expect(h.read(h.be(1) + "/error")?.contains("magic '6'") == true)
        #expect(h.hv.faults.count(.grantMap) == 0, "nothing mapped for a wrong version")
        f.close(); h.expectClean()
    }

    @Test("hostile frontend keys: pci-op-ref and event-channel must be exact decimals", arguments: [
        ("pci-op-ref", "-1"), ("pci-op-ref", "0x8"), ("pci-op-ref", " 8"), ("pci-op-ref", "99999999999"), ("pci-op-ref", "4294967295"),
        ("event-channel", "0"), ("event-channel", "1e3"), ("event-channel", "200000"), ("event-channel", "08"), ("event-channel", ""),
    ])
    func hostileKeys(key: String, value: String) throws {
        let h = try Harness()
        try h.claim(Fixture.e1000)
        try h.create(1, Fixture.e1000)
        #expect(h.waitBackend(1, .initialised))
        let f = try RawFrontend(h)
        if key == "pci-op-ref" { try f.connect(ref: value) } else { try f.connect(eventChannel: value) }
        #expect(h.waitBackend(1, .closing))
        #expect(h.read(h.be(1) + "/error")?.contains(key) == true)
        f.close(); h.expectClean()
    }

    @Test("hostile toolstack keys: num_devs and dev-N must be exact", arguments: [("num_devs", "257"), ("num_devs", "x"), ("num_devs", "-1"), ("dev-0", "00:03.0"), ("dev-0", "0000:00:03.0 "), ("dev-0", "0000:00:03.9")])
    func hostileToolstack(key: String, value: String) throws {
        let h = try Harness()
        try h.claim(Fixture.e1000)
        // The bad value is part of the toolstack's creating transaction.
        try h.create(1, [(Fixture.e1000, Harness.defaultOpts)], overrides: [key: value])
        #expect(eventually("refused") { h.read(h.be(1) + "/error") != nil })
        #expect(h.read(h.be(1) + "/vdev-0") == nil, "nothing exported from a bad \(key)")
        h.expectClean()
    }

    @Test("NetBSD bug: the event channel is never closed")
    func eventChannelClosed() throws {
        let (h, f) = try connected([Fixture.e1000])
        try f.setState(.closing)
        #expect(h.waitBackend(1, .closing))
        #expect(!h.hv.leaks().contains { $0.contains("dom0: event channel port") }, "\(h.hv.leaks())")
        f.close(); h.expectClean()
    }

    @Test("NetBSD bug: pciback.hide is cut at 64 characters")
    func hideListHasNoLengthLimit() throws {
        let entries = (0..<32).map { "(00:\(hex($0, 2)).0)" }.joined()
        #expect(entries.count > 64)
        let p = try parseHideList("pciback.hide=" + entries)
        #expect(p.count == 32)
        #expect(p.last == PCIPattern(segment: 0, bus: 0, device: 31, function: 0))
    }

    @Test("NetBSD bug: devices parsed before a syntax error stay claimed")
    func nothingClaimedOnError() throws {
        let h = try Harness(start: false)
        let all = try listSysfsDevices(root: fixtureRoot)
        #expect(throws: HideListError.self) {
            try h.back.claim(hideList: "(00:03.0)(00:04.0)(00:06.x)", from: all, open: { try h.device($0) })
        }
        #expect(throws: PCIBackError.self) {
            try h.back.claim(hideList: "(00:03.0)(00:04.0)(00:09.0)", from: all, open: { try h.device($0) })
        }
        #expect(h.back.listing().isEmpty)
        h.expectClean()
    }

    @Test("a claim refused midway (the second device has a host driver) releases the first: reset, unlisted, claimable again")
    func partialClaimRolledBack() throws {
        let h = try Harness(start: false)
        let all = try listSysfsDevices(root: fixtureRoot)
        // The root port is bound to pcieport in the fixtures: refused at claim, after the e1000 was claimed.
        // Opened outside the harness: it is never claimed, so it must never be reset.
        let rootPort = try SysfsPCIDevice(root: fixtureRoot, address: Fixture.rootPort, inMemory: true)
        var opened: [PCIAddress] = []
        #expect {
            try h.back.claim(hideList: "(00:03.0)(00:05.0)", from: all) { a in
                opened.append(a)
                return a == Fixture.rootPort ? rootPort : try h.device(a)
            }
        } throws: { "\($0)".contains("host driver 'pcieport'") }
        #expect(opened == [Fixture.e1000, Fixture.rootPort], "both were opened, in list order")
        #expect(h.opened[Fixture.e1000]?.resetCount == 2, "claimed (reset), then released (reset)")
        #expect(rootPort.resetCount == 0)
        #expect(h.back.listing().isEmpty, "nothing left claimed: \(h.back.listing().map(\.address))")
        #expect(try h.back.claim(hideList: "(00:03.0)", from: all, open: { try h.device($0) }) == [Fixture.e1000])
        try h.back.release(Fixture.e1000)
        h.expectClean()
    }

    @Test("NetBSD bug: devices can only be hidden at boot (claim and release at run time)")
    func runtimeClaimRelease() throws {
        let (h, f) = try connected([Fixture.e1000])
        let all = try listSysfsDevices(root: fixtureRoot)
        let claimed = try h.back.claim(hideList: "(0000:00:06.*) (00:04.0)", from: all, open: { try h.device($0) })
        #expect(claimed.sorted() == [Fixture.virtioNet, Fixture.mfE1000, Fixture.mfRng].sorted())
        #expect(throws: PCIBackError.self) { try h.back.release(Fixture.e1000) } // dom1 has it
        try h.back.release(Fixture.mfRng)
        #expect(h.back.listing().map(\.address) == [Fixture.e1000, Fixture.virtioNet, Fixture.mfE1000])
        f.close(); h.expectClean()
    }
}

@Suite("Hide lists")
struct HideListTests {
    @Test("NetBSD and Linux forms, wildcards and whitespace")
    func forms() throws {
        #expect(try parseHideList("pciback.hide=(00:03.0)(01:00.0)") == [
            PCIPattern(segment: 0, bus: 0, device: 3, function: 0), PCIPattern(segment: 0, bus: 1, device: 0, function: 0)])
        #expect(try parseHideList("(0001:02:1f.7) ( 03:04.* )\t(0000:05:*.*)") == [
            PCIPattern(segment: 1, bus: 2, device: 0x1F, function: 7), PCIPattern(segment: 0, bus: 3, device: 4, function: nil),
            PCIPattern(segment: 0, bus: 5, device: nil, function: nil)])
        #expect(try parseHideList("").isEmpty)
        #expect(try parseHideList("hide=(00:01.0)").count == 1)
        let p = try parseHideList("(00:06.*)")[0]
        #expect(p.matches(Fixture.mfRng) && p.matches(Fixture.mfE1000) && !p.matches(Fixture.e1000))
    }

    @Test("errors name the position and the problem", arguments: [
        ("(00:03.0", 8, "expected ')'"), ("00:03.0", 0, "expected '('"), ("(00:20.0)", 4, "device 20 is above 1f"),
        ("(00:03.8)", 7, "function 8 is above 7"), ("(00:*.1)", 4, "'*' device needs a '*' function"),
        ("(00:03.0)x", 9, "expected '('"), ("(123:00.0)", 1, "bus 123 is above ff"), ("(0000:100:00.0)", 6, "more than 2 hex digits"),
    ])
    func errors(text: String, position: Int, reason: String) {
        do {
            _ = try parseHideList(text)
            Issue.record("'\(text)' should not parse")
        } catch let e as HideListError {
            #expect(e.position == position, "\(e)")
            #expect(e.description.contains(reason), "\(e)")
            #expect(e.description.contains("position \(position + 1)"))
        } catch { Issue.record("unexpected \(error)") }
    }
}
