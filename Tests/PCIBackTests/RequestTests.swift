import Foundation
import Testing
@testable import PCIBack
import XenMock
import CXenPCI
import XenPCIABI
import PCIModel
import XenHypervisor

/// docs/PROTOCOL.md §5, row by row, through raw requests in the shared page.
@Suite("pciback requests (PROTOCOL §5)", .serialized)
struct RequestTests {
    @Test("conf_read of 1, 2 and 4 bytes returns the device's bytes")
    func reads() throws {
        let (h, f) = try connected([Fixture.nvme], options: { var o = PCIBack.Options(); o.allowHostDriverReadOnly = true; return o }())
        let cs = try h.device(Fixture.nvme)
        for (o, s) in [(0, 4), (0, 2), (2, 2), (1, 1), (8, 4), (0x40, 4), (0x100, 4), (0x120, 2), (0xFFC, 4)] as [(Int32, Int32)] {
            let want = try cs.readConfig(Int(o), Int(s))
            #expect(try f.read(v00, o, s) == (.success, want), "offset \(o) size \(s)")
        }
        f.close()
        h.expectClean()
    }

    @Test("bad size, misalignment and offsets past the config space: invalid_offset, value 0, device untouched",
          arguments: [(0, 3), (0, 0), (0, 8), (0, -4), (1, 2), (2, 4), (3, 4), (-4, 4), (0x100, 4), (0xFFF, 1), (0x1000, 1), (Int32.max - 3, 4)] as [(Int32, Int32)])
    func invalidOffset(offset: Int32, size: Int32) throws {
        let (h, f) = try connected([Fixture.e1000]) // 256-byte config space
        let dev = try h.device(Fixture.e1000)
        let before = dev.accessCount
        for cmd in [PCIOpCommand.confRead, .confWrite] {
            let r = try #require(try f.send(xen_pci_op(command: cmd, address: v00, offset: offset, size: size, value: 0xFFFF_FFFF)))
            #expect(r.err == PCIOpError.invalidOffset.rawValue)
            #expect(r.value == 0)
        }
        #expect(dev.accessCount == before, "an invalid request must never reach the device")
        f.close()
        h.expectClean()
    }

    @Test("a read made only of virtual registers (BARs, ROM, interrupt line) never reaches the device; one that spans a device byte does")
    func virtualReadsStayOffTheDevice() throws {
        let (h, f) = try connected([Fixture.e1000])
        let dev = try h.device(Fixture.e1000)
        let n = dev.accessCount
        let bar0 = try f.read(v00, 0x10, 4)
        let (lo, hi) = (try f.read(v00, 0x10, 2), try f.read(v00, 0x12, 2))
        #expect(bar0.0 == .success && bar0.1 == lo.1 | hi.1 << 16)
        #expect(try f.read(v00, 0x30, 4).0 == .success)
        let line = try f.read(v00, 0x3C, 1)
        #expect(dev.accessCount == n, "BAR, ROM and interrupt-line reads reached the device")
        let dword = try f.read(v00, 0x3C, 4) // interrupt pin, min_gnt, max_lat are the device's
        let pin = try dev.readConfig(0x3D, 1)
        #expect(dword.0 == .success && dword.1 & 0xFF == line.1 && dword.1 >> 8 & 0xFF == pin)
        #expect(dev.accessCount > n)
        f.close()
        h.expectClean()
    }

    @Test("a device not exported to this guest: dev_not_found, for every command")
    func unknownDevice() throws {
        let (h, f) = try connected([Fixture.e1000])
        for cmd in [PCIOpCommand.confRead, .confWrite, .enableMSI, .disableMSI, .enableMSIX, .disableMSIX, .enableMultiMSI] {
            for a in [v01, PCIAddress(segment: 1, bus: 0, device: 0, function: 0), PCIAddress(bus: 0, device: 0, function: 1), Fixture.e1000] where a != v00 {
                let r = try #require(try f.send(xen_pci_op(command: cmd, address: a, offset: 0, size: 4)))
                #expect(r.err == PCIOpError.devNotFound.rawValue, "\(cmd) to \(a)")
            }
        }
        var op = xen_pci_op(command: .confRead, address: v00, size: 4)
        op.devfn = 0x1_0000 // out of range: never truncated into a valid devfn
        #expect(try f.send(op)?.err == PCIOpError.devNotFound.rawValue)
        f.close()
        h.expectClean()
    }

    @Test("unknown commands, AER commands from the guest and multi-MSI: not_implemented")
    func notImplemented() throws {
        let (h, f) = try connected([Fixture.ahci])
        for cmd: UInt32 in [6, 7, 8, 9, 11, 99, 0xFFFF_FFFF] {
            var op = xen_pci_op(command: .confRead, address: ahciV, size: 4)
            op.cmd = cmd
            #expect(try f.send(op)?.err == PCIOpError.notImplemented.rawValue, "cmd \(cmd)")
        }
        var multi = xen_pci_op(command: .enableMultiMSI, address: ahciV)
        multi.info = 4
        #expect(try f.send(multi)?.err == PCIOpError.notImplemented.rawValue)
        f.close()
        h.expectClean()
    }

    @Test("MSI: enable gives a pirq and sets the enable bit; twice is refused; disable returns the INTx irq")
    func msi() throws {
        let (h, f) = try connected([Fixture.ahci])
        let dev = try h.device(Fixture.ahci)
        let cap = 0x80 // the AHCI fixture's MSI capability
        #expect(try dev.readConfig(cap, 1) == 0x05)
        let on = try #require(try f.send(xen_pci_op(command: .enableMSI, address: ahciV)))
        #expect(on.err == 0)
        #expect(on.value >= 32, "a pirq from the hypervisor")
        #expect(try dev.readConfig(cap + 2, 2) & 1 == 1)
        #expect(h.hv.leaks().contains { $0.contains("pirq \(on.value)") })
        #expect(try f.send(xen_pci_op(command: .enableMSI, address: ahciV))?.err == PCIOpError.opFailed.rawValue, "already on")
        #expect(try f.send(msixOp(ahciV, entries: [0]))?.err == PCIOpError.opFailed.rawValue, "MSI-X while MSI is on (no MSI-X cap either)")
        let off = try #require(try f.send(xen_pci_op(command: .disableMSI, address: ahciV)))
        #expect(off.err == 0)
        #expect(off.value == 10, "the fixture's INTx irq")
        #expect(try dev.readConfig(cap + 2, 2) & 1 == 0)
        #expect(!h.hv.leaks().contains { $0.contains("pirq") })
        #expect(try f.send(xen_pci_op(command: .disableMSI, address: ahciV))?.err == 0, "disable when off is harmless")
        f.close()
        h.expectClean()
    }

    @Test("XSA-157: MSI-X: nvec vectors out, entries untouched, value 0; refused when on, when MSI is on, with decode off, over 128, bad entries")
    func msix() throws {
        let (h, f) = try connected([Fixture.virtioNet])
        let dev = try h.device(Fixture.virtioNet)
        let ctrl = 0x98 + 2
        let tableSize = Int(try dev.readConfig(ctrl, 2) & 0x7FF) + 1
        // Refusals first, while off.
        for bad in [[UInt16](), Array(repeating: 0, count: 2), [UInt16(tableSize)], Array(0..<UInt16(129))] {
            var op = msixOp(v00, entries: Array(bad.prefix(128)))
            op.value = UInt32(bad.count) // 129: more than the op can carry
            #expect(try f.send(op)?.err == PCIOpError.opFailed.rawValue, "entries \(bad.prefix(3))… (\(bad.count))")
        }
        #expect(try dev.readConfig(ctrl, 2) & 0x8000 == 0)
        let r = try #require(try f.send(msixOp(v00, entries: [0, 2, 1])))
        #expect(r.err == 0)
        #expect(r.value == 0, "pcifront reads a non-zero value as an error")
        let vectors = (0..<3).map { r.msixEntry($0).vector }
        #expect(Set(vectors).count == 3 && vectors.allSatisfy { $0 >= 32 })
        #expect((0..<3).map { r.msixEntry($0).entry } == [0, 2, 1])
        #expect(r.msixEntry(3).vector == 0)
        #expect(try dev.readConfig(ctrl, 2) & 0x8000 != 0)
        #expect(try f.send(msixOp(v00, entries: [0]))?.err == PCIOpError.opFailed.rawValue, "already on")
        #expect(try f.send(xen_pci_op(command: .enableMSI, address: v00))?.err == PCIOpError.opFailed.rawValue, "MSI while MSI-X is on")
        #expect(try f.send(xen_pci_op(command: .disableMSIX, address: v00))?.err == 0)
        #expect(try dev.readConfig(ctrl, 2) & 0x8000 == 0)
        #expect(!h.hv.leaks().contains { $0.contains("pirq") })
        // XSA-157: MSI-X with memory decoding off.
        try dev.writeConfig(4, 2, try dev.readConfig(4, 2) & ~2)
        #expect(try f.send(msixOp(v00, entries: [0]))?.err == PCIOpError.opFailed.rawValue)
        f.close()
        h.expectClean()
    }

    @Test("XSA-157: random MSI/MSI-X op sequences follow the state machine and never leak or double-map pirqs")
    func msiSequences() throws {
        let (h, f) = try connected([Fixture.virtioNet, Fixture.ahci])
        let virtio = try h.device(Fixture.virtioNet), ahci = try h.device(Fixture.ahci)
        var rng = SystemRandomNumberGenerator()
        // The model: which of MSI / MSI-X each device has on, and its pirq count.
        var msixOn = false, msiOn = false, msixCount = 0
        for step in 0..<400 {
            let onVirtio = Bool.random(using: &rng)
            let a = onVirtio ? v00 : PCIAddress(bus: 0, device: 1, function: 2) // AHCI is function 2; slot 1 here
            let cmd = [PCIOpCommand.enableMSI, .disableMSI, .enableMSIX, .disableMSIX].randomElement(using: &rng)!
            let n = Int.random(in: 1...4, using: &rng)
            let op = cmd == .enableMSIX ? msixOp(a, entries: Array(0..<UInt16(n))) : xen_pci_op(command: cmd, address: a)
            let r = try #require(try f.send(op))
            let ok = r.err == 0
            switch (cmd, onVirtio) {
            case (.enableMSIX, true): #expect(ok == !msixOn, "step \(step)"); if ok { msixOn = true; msixCount = n }
            case (.enableMSIX, false): #expect(!ok, "AHCI has no MSI-X")
            case (.enableMSI, false): #expect(ok == !msiOn, "step \(step)"); if ok { msiOn = true }
            case (.enableMSI, true): #expect(!ok, "virtio has no MSI")
            case (.disableMSIX, true): #expect(ok); msixOn = false
            case (.disableMSI, false): #expect(ok); msiOn = false
            case (.disableMSI, true): #expect(ok); msixOn = false // Linux pcifront's MSI-X teardown
            default: #expect(ok, "disabling what is off is harmless")
            }
            let pirqs = h.hv.leaks().filter { $0.contains("pirq") }.count
            let want = (msiOn ? 1 : 0) + (msixOn ? msixCount : 0)
            #expect(pirqs == want, "step \(step): \(pirqs) pirqs mapped, model says \(want)")
            #expect((try virtio.readConfig(0x9A, 2) & 0x8000 != 0) == msixOn)
            #expect((try ahci.readConfig(0x82, 2) & 1 != 0) == msiOn)
        }
        f.close()
        h.expectClean()
    }

    @Test("XSA-302/306: a hot-removed device is quarantined: the former guest cannot reach it, it is reset, bus mastering off")
    func quarantine() throws {
        let (h, f) = try connected([Fixture.e1000, Fixture.virtioNet])
        let dev = try h.device(Fixture.e1000)
        #expect(try f.write(v00, 4, 2, 0x0006) == .success) // guest turns on memory and bus mastering
        #expect(try dev.readConfig(4, 2) & 0x4 != 0)
        let resets = dev.resetCount
        try h.hotRemove(1, index: 0)
        try f.setState(.reconfiguring)
        #expect(h.waitBackend(1, .reconfigured))
        #expect(try f.read(v00, 0, 4).0 == .devNotFound)
        #expect(try f.write(v00, 4, 2, 0x0006) == .devNotFound)
        #expect(dev.resetCount == resets + 1)
        #expect(try dev.readConfig(4, 2) & 0x4 == 0, "no DMA from a released device")
        #expect(h.back.listing().first { $0.address == Fixture.e1000 }?.guest == nil, "still held by pciback, owned by no guest")
        f.close()
        h.expectClean()
    }

    @Test("pirqs mapped by a guest are unmapped when its device is hot-removed")
    func pirqsReleasedOnRemove() throws {
        let (h, f) = try connected([Fixture.virtioNet])
        #expect(try f.send(msixOp(v00, entries: [0, 1, 2, 3]))?.err == 0)
        #expect(h.hv.leaks().filter { $0.contains("pirq") }.count == 4)
        try h.hotRemove(1, index: 0)
        try f.setState(.reconfiguring)
        #expect(h.waitBackend(1, .reconfigured))
        #expect(!h.hv.leaks().contains { $0.contains("pirq") })
        #expect(try h.device(Fixture.virtioNet).readConfig(0x9A, 2) & 0x8000 == 0)
        f.close()
        h.expectClean()
    }

    @Test("err only ever carries one of the six values, whatever the guest sends")
    func errIsAlwaysOneOfSix() throws {
        let (h, f) = try connected([Fixture.virtioNet, Fixture.ahci])
        var rng = SystemRandomNumberGenerator()
        let six = Set(PCIOpError.allCases.map(\.rawValue))
        for _ in 0..<3000 {
            var op = xen_pci_op()
            op.cmd = UInt32.random(in: 0...12, using: &rng)
            op.domain = [0, 0, 0, 1, UInt32.max].randomElement(using: &rng)!
            op.bus = [0, 0, 1, 255].randomElement(using: &rng)!
            op.devfn = [0, 0, 8, 9, 300].randomElement(using: &rng)!
            op.offset = Int32.random(in: -8...0x1010, using: &rng)
            op.size = Int32.random(in: -1...5, using: &rng)
            op.value = UInt32.random(in: 0...UInt32.max, using: &rng) % 200
            for n in 0..<4 { op.setMSIXEntry(n, xen_msix_entry(vector: 7, entry: UInt16.random(in: 0...4, using: &rng))) }
            let r = try #require(try f.send(op))
            #expect(six.contains(r.err), "err \(r.err) for cmd \(op.cmd)")
            if r.err != 0 { #expect(r.value == 0) }
        }
        f.close()
        h.expectClean()
    }

    @Test("XSA-155: the request is read once; a guest rewriting it meanwhile gets a reply consistent with one snapshot",
          .disabled(if: ProcessInfo.processInfo.environment["XENPCI_SANITIZER"] == "thread",
                    "the guest thread races on the shared page on purpose; ThreadSanitizer would report the race it simulates"))
    func doubleFetch() throws {
        let (h, f) = try connected([Fixture.e1000])
        let dev = try h.device(Fixture.e1000)
        let vendor = try dev.readConfig(0, 4), rev = try dev.readConfig(8, 4)
        let stop = ManagedAtomicFlag()
        let page = f.page
        let joined = DispatchSemaphore(value: 0)
        let t = Thread {
            defer { joined.signal() }
            var flip = false
            while !stop.isSet {
                page.pointer.pointee.op.offset = flip ? 0 : 8 // both valid: reply must match one
                page.pointer.pointee.op.size = flip ? 4 : 3   // sometimes invalid
                flip.toggle()
            }
        }
        t.start()
        for _ in 0..<2000 {
            let r = try #require(try f.send(xen_pci_op(command: .confRead, address: v00, offset: 8, size: 4)))
            #expect(r.err == 0 && (r.value == vendor || r.value == rev) || r.err == PCIOpError.invalidOffset.rawValue && r.value == 0,
                    "err \(r.err) value \(hex(r.value, 8))")
        }
        stop.set()
        joined.wait() // the writer must be gone before the page is
        f.close()
        h.expectClean()
    }

    @Test("XSA-332: an event flood without requests is throttled and does not stop the guest's own requests")
    func floodThrottled() throws {
        var o = PCIBack.Options()
        o.spuriousLimit = 50
        o.floodPause = .milliseconds(5)
        let (h, f) = try connected([Fixture.e1000], options: o)
        // Masked notifications coalesce, so keep notifying until the backend has seen a flood.
        #expect(eventually("a throttled flood") {
            for _ in 0..<100 { try? f.ev.notify(f.port!) }
            return (h.back.guestStatistics().first?.throttled ?? 0) >= 1
        })
        #expect(try f.read(v00, 0, 2) == (.success, 0x8086))
        let s = try #require(h.back.guestStatistics().first)
        #expect(s.throttled >= 1, "spurious \(s.spurious), throttled \(s.throttled)")
        f.close()
        h.expectClean()
    }
}

final class ManagedAtomicFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
    func set() { lock.lock(); value = true; lock.unlock() }
}

/// The AHCI fixture is function 2 of its slot; vpci keeps the function number.
let ahciV = PCIAddress(bus: 0, device: 0, function: 2)
