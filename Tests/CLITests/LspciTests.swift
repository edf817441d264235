import Foundation
import Testing
@testable import xenpci
import PCIBack
import PCIModel
import XPCI

/// Our lspci against pciutils' on the same bytes: the captured outputs in
/// the fixtures, live lspci on this machine, and `lspci -F` on a dump of
/// what the guest's frontend reads through the backend.
@Suite struct LspciTests {
    static let fixtureDevices: [(String, PCIAddress)] = [q35, hostVirtio].flatMap { root in
        ((try? listSysfsDevices(root: root)) ?? []).map { (root, $0) }
    }

    @Test("-n, -x, -xxx and -xxxx equal pciutils' captured output for every fixture device",
          arguments: fixtureDevices.map { "\($0.0)|\($0.1)" })
    func capturedOutput(_ key: String) throws {
        let parts = key.split(separator: "|")
        let root = String(parts[0]), a = try PCIAddress(parsing: String(parts[1]))
        let f = try function(root: root, a)
        let fmt = LspciFormatter()
        for (flag, file) in [("-n", "n"), ("-x", "x"), ("-xxx", "xxx"), ("-xxxx", "xxxx")] {
            let path = "\(root)/lspci/\(a).\(file).txt"
            guard let expected = try? String(contentsOfFile: path, encoding: .utf8) else { continue }
            let ours = fmt.render([f], try options(flag))
            if PCIIDs.shared != nil || flag == "-n" {
                #expect(ours == expected, "\(a) \(flag)")
            } else {
                // Without pci.ids the header names differ; the dump must not.
                #expect(ours.split(separator: "\n").dropFirst() == expected.split(separator: "\n").dropFirst(), "\(a) \(flag)")
            }
        }
    }

    @Test("-n, -nn, -x and -xxx equal live lspci on this machine's devices", .enabled(if: realLspci != nil, noLspci),
          .enabled(if: hostSysfsUsable, noHostDevices))
    func thisMachine() throws {
        let lspci = try #require(realLspci)
        let fmt = LspciFormatter()
        for a in try listSysfsDevices(root: "/sys") {
            let f = try function(root: "/sys", a)
            for flag in ["-n", "-nn", "-x", "-xxx"] {
                let theirs = try run(lspci, ["-s", a.description, flag]).stdout
                #expect(fmt.render([f], try options(flag)) == theirs, "\(a) \(flag)")
            }
        }
    }

    /// Dumps the guest's view with our -xxxx and lets pciutils format it.
    func compareGuestView(_ rig: DemoRig) throws {
        let lspci = try #require(realLspci, noLspci)
        let devices = rig.host.front!.devices
        #expect(!devices.isEmpty)
        for d in devices {
            let sel = "-s \(d.address.shortDescription)"
            let dump = try rig.output("lspci -xxxx \(sel)")
            let file = FileManager.default.temporaryDirectory.appendingPathComponent("xenpci-\(UUID()).dump").path
            try dump.write(toFile: file, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(atPath: file) }
            for flag in ["-n", "-nn", "-x", "-xxx", "-xxxx"] {
                let theirs = try run(lspci, ["-F", file, flag]).stdout
                #expect(try rig.output("lspci \(flag) \(sel)") == theirs, "guest \(d.address) \(flag)")
            }
        }
    }

    @Test("the guest's view of the fixtures: our -n/-nn/-x/-xxx/-xxxx equal lspci -F on the same bytes",
          .enabled(if: realLspci != nil, noLspci))
    func guestViewFixtures() throws {
        let rig = try DemoRig()
        defer { rig.finish() }
        try compareGuestView(rig)
    }

    @Test("the guest's view of this machine's devices (read-only snapshots) equals lspci -F on the same bytes",
          .enabled(if: realLspci != nil, noLspci), .enabled(if: hostSysfsUsable, noHostDevices))
    func guestViewThisMachine() throws {
        let rig = try DemoRig(fixtures: nil)
        defer { rig.finish() }
        try compareGuestView(rig)
    }

    @Test("the guest sees mediated bytes: BARs as the host set them, the host irq as interrupt line")
    func guestBytesAreMediated() throws {
        let rig = try DemoRig(hide: "(00:03.0)")
        defer { rig.finish() }
        let host = try function(root: q35, try PCIAddress(parsing: "0000:00:03.0"))
        let out = try rig.output("lspci -xxx -s 00:00.0")
        let guest = try #require(LspciDump(out).bytes)
        #expect(Array(guest[0x10..<0x28]) == Array(host.config.bytes[0x10..<0x28]), "BARs read back as the host set them")
        #expect(guest[0x3C] == 11, "interrupt line = the host irq (sysfs irq 11)")
        #expect(Array(guest[0..<4]) == Array(host.config.bytes[0..<4]))
    }

    @Test("-v lists BARs with sizes and capabilities as pciutils words them")
    func verbose() throws {
        let rig = try DemoRig(hide: "(01:00.0)(00:04.0)")
        defer { rig.finish() }
        let nvme = try rig.output("lspci -v -s 00:01.0")
        #expect(nvme.contains("\tMemory at fe800000 (64-bit, non-prefetchable) [size=16K]"))
        #expect(nvme.contains("\tCapabilities: [40] MSI-X: Enable- Count=63 Masked-"))
        #expect(nvme.contains("\tCapabilities: [120] Single Root I/O Virtualization (SR-IOV)"))
        // As pciutils at -v (seen against Linux pcifront on real Xen): no "(v2)".
        #expect(nvme.contains("\tCapabilities: [80] Express Endpoint, MSI 00"), "\(nvme)")
        let net = try rig.output("lspci -v -s 00:00.0")
        #expect(net.contains("\tI/O ports at c0c0 [size=32]"))
        #expect(net.contains("\tMemory at fe200000 (64-bit, prefetchable) [size=16K]"))
        #expect(net.contains("\tExpansion ROM at fea40000 [disabled] [size=256K]"))
    }

    @Test("--json: one parsable line with ids, BARs, capabilities and (with -x) the bytes")
    func json() throws {
        let rig = try DemoRig(hide: "(00:04.0)")
        defer { rig.finish() }
        let line = try rig.output("lspci -x --json")
        let doc = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [[String: Any]])
        #expect(doc.count == 1)
        #expect(doc[0]["vendor"] as? String == "1af4")
        #expect(doc[0]["slot"] as? String == "0000:00:00.0")
        #expect((doc[0]["bars"] as? [Any])?.count == 3)
        #expect((doc[0]["config"] as? String)?.count == 128)
    }

    @Test("-s selects as pciutils does; bad selectors and options are one-line usage errors")
    func selectors() throws {
        let a = try PCIAddress(parsing: "0000:00:04.2")
        for (s, hit) in [("00:04.2", true), ("04.2", true), ("04", true), ("4.", true), (":04", true), ("*:*.2", true),
                         ("0000:00:04.2", true), ("01:04.2", false), ("04.3", false), (".2", true)] {
            #expect(try SlotSelector(parsing: s).matches(a) == hit, "\(s)")
        }
        for bad in ["zz:00.0", "00:32.0", "00:00.8", "1:2:3:4.0", "00:00.x"] {
            #expect(throws: CLIError.self) { try SlotSelector(parsing: bad) }
        }
        #expect(throws: CLIError.self) { try LspciOptions(parsing: ["-q"]) }
        #expect(throws: CLIError.self) { try LspciOptions(parsing: ["-s"]) }
        #expect(try options("-nnvxxx") == { var o = LspciOptions(); o.numeric = 2; o.verbose = true; o.hexBytes = 256; return o }())
    }
}

/// Reads a pciutils hex dump back into bytes.
struct LspciDump {
    var bytes: [UInt8]?
    init(_ text: String) {
        var out: [UInt8] = []
        for line in text.split(separator: "\n") where line.first?.isHexDigit == true && line.contains(": ") && !line.contains(".") {
            out += line.split(separator: ":", maxSplits: 1)[1].split(separator: " ").compactMap { UInt8($0, radix: 16) }
        }
        bytes = out.isEmpty ? nil : out
    }
}
