import Foundation
import Synchronization
import Testing
@testable import xenpci
import PCIBack
import PCIModel
import XPCI
import XenPCIABI

/// The built binary: exit statuses and one-line errors for every class of
/// bad input, and nothing left half-done.
@Suite(.serialized, .enabled(if: xenpciBinary != nil, noXenpciBinary)) struct CommandTests {
    func xenpci(_ args: [String], input: String = "") throws -> RunResult {
        try run(try #require(xenpciBinary, noXenpciBinary), args, input: input)
    }

    /// Exactly one error line naming `what`, and `status`.
    func expectOneLine(_ r: RunResult, _ status: Int32, _ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(r.status == status, "status \(r.status), stderr: \(r.stderr)", sourceLocation: sourceLocation)
        #expect(r.errorLines.count == 1, "error lines: \(r.errorLines)", sourceLocation: sourceLocation)
        #expect(r.errorLines.first?.contains(what) == true, "\(r.errorLines) should name \(what)", sourceLocation: sourceLocation)
    }

    static let demo = ["demo", "--fixtures", "Tests/Fixtures/qemu-q35"]

    @Test("bad options: hide list, topology, fixture tree, script: one line, nothing started")
    func badOptions() throws {
        let r = try xenpci(Self.demo + ["--hide", "(00:zz.0)"])
        expectOneLine(r, 64, "hide list")
        #expect(!r.stderr.contains("[dom0"), "nothing may start on a bad hide list")
        expectOneLine(try xenpci(Self.demo + ["--hide", "(00:1e.0)"]), 1, "matches no device")
        // Fullwidth digits pass Character.isHexDigit: this used to trap.
        expectOneLine(try xenpci(["list", "--fixtures", "Tests/Fixtures/qemu-q35", "--hide", "(００:00.0)"]), 64, "'(００:00.0)'")
        expectOneLine(try xenpci(Self.demo + ["--topology", "mesh"]), 64, "--topology 'mesh'")
        expectOneLine(try xenpci(["demo", "--fixtures", "/nonexistent"]), 66, "/nonexistent/bus/pci/devices")
        expectOneLine(try xenpci(Self.demo + ["--script", "/nonexistent.txt"]), 66, "--script /nonexistent.txt")
    }

    @Test("bad shell input: BDF, offset, size, value, unknown device, missing permission: one line FILE:LINE, a status, no leak",
          arguments: [
              ("read 00:zz.0 0 4", 64, "bad PCI address '00:zz.0'"),
              ("read 00:00.0 0xq 4", 64, "offset '0xq'"),
              ("read 00:00.0 0x10000 4", 64, "offset '0x10000'"),
              ("read 00:00.0 0x40 3", 64, "size '3'"),
              ("read 00:00.0 0x41 4", 64, "invalid offset: 0x41 is not aligned"),
              ("write 00:00.0 0x40 1 0x1ff", 64, "value 0x1ff does not fit in 1 byte"),
              ("write 00:00.0 0x40 4 zz", 64, "value 'zz'"),
              ("read 00:1e.0 0 4", 1, "00:1e.0: no such device"),
              ("hotadd 0000:00:1e.0", 1, "0000:00:1e.0: no such device"),
              ("quirk 0000:00:03.0-0x10:4:0xffffffff", 64, "overlaps the emulated BAR0"),
              ("lspci -q", 64, "unknown option '-q'"),
              ("frobnicate", 64, "unknown command 'frobnicate'"),
          ] as [(String, Int32, String)])
    func badShellInput(_ line: String, _ status: Int32, _ what: String) throws {
        let r = try xenpci(Self.demo + ["--hide", "(00:03.0)", "--script", "-"], input: "lspci -n\n\(line)\nlspci\n")
        expectOneLine(r, status, what)
        #expect(r.errorLines.first?.hasPrefix("xenpci: stdin:2: ") == true)
        #expect(r.stderr.components(separatedBy: "xenpci> ").count == 3, "the script stops at the failing line")
        #expect(r.stderr.contains("leaks: none"), "torn down cleanly")
    }

    @Test("missing permission: a write to a device a host driver owns is refused (77)")
    func readOnlyWrite() throws {
        // The root port is bound to pcieport in the fixtures: exported read-only (passthrough keeps its address).
        let r = try xenpci(Self.demo + ["--topology", "passthrough", "--hide", "(00:05.0)", "--script", "-"],
                                 input: "read 00:05.0 COMMAND\nwrite 00:05.0 0x0c 1 0x10\n")
        expectOneLine(r, 77, "access denied")
        #expect(r.stderr.contains("host driver 'pcieport' owns it: exported read-only"))
        #expect(r.stderr.contains("leaks: none"))
    }

    @Test("missing permission: an unprivileged user cannot read the whole config space (77)",
          .enabled(if: getuid() == 0 && hostSysfsUsable && FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv"),
                   "needs root, /usr/bin/setpriv and PCI devices readable in /sys"))
    func unprivileged() throws {
        let r = try run(try #require(xenpciBinary), ["list", "--sysfs", "/sys"], prefix: ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
        expectOneLine(r, 77, "the full config space needs root")
    }

    @Test("no Xen: every --hypervisor xen path says so in one line (69); the mock-only limits are usage errors")
    func noXen() throws {
        let r = try xenpci(["backend", "--hypervisor", "xen"])
        expectOneLine(r, 69, "no Xen")
        expectOneLine(try xenpci(["frontend"]), 69, "no Xen")
        expectOneLine(try xenpci(["list", "--hypervisor", "xen"]), 69, "no Xen")
        expectOneLine(try xenpci(["attach", "1", "0000:00:03.0"]), 69, "no Xen")
        expectOneLine(try xenpci(["detach", "1", "00:03.0"]), 69, "no Xen")
        expectOneLine(try xenpci(["attach", "1", "00:3.9"]), 64, "bad PCI address")
        expectOneLine(try xenpci(["attach", "32752", "00:03.0"]), 64, "domain id '32752'")
        expectOneLine(try xenpci(["frontend", "--hypervisor", "mock"]), 64, "xenpci demo")
    }

    @Test("a good script: every command works, exit 0, no leak; --json listings parse")
    func goodScript() throws {
        let script = """
            # comments and blank lines are fine

            lspci -n
            read 00:00.0 COMMAND
            write 00:00.0 0x40 4 0x12345678
            msix enable 00:01.0 3
            msix disable 00:01.0
            msi enable 00:02.2
            msi disable 00:02.2
            hotremove 0000:00:04.0
            hotadd 0000:00:04.0
            aer 0000:00:04.0 detected frozen
            stats
            """
        let r = try xenpci(Self.demo + ["--hide", "(00:03.0)(00:04.0)(00:1f.2)", "--script", "-"], input: script)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.errorLines.isEmpty)
        #expect(r.stdout.contains("00:01.0: MSI-X enabled, pirqs"))
        #expect(r.stdout.contains("00:02.2: MSI enabled, pirq"))
        #expect(r.stdout.contains("0000:00:04.0: aer_detected answered can recover"))
        #expect(r.stdout.contains("quirk 0000:00:03.0-0x040:4:0xffffffff"))
        #expect(r.stderr.contains("[dom0 pciback] backend/pci/1/0 state Connected (4)"))
        #expect(r.stderr.contains("[dom1 xpci]    device/pci/0 state Reconfiguring (7)"))
        #expect(r.stderr.contains("leaks: none"))

        let j = try xenpci(Self.demo + ["--json", "--hide", "(00:03.0)", "--script", "-"], input: "lspci\nstats\nlist\nread 00:00.0 0 4\n")
        #expect(j.status == 0, "\(j.stderr)")
        let lines = j.stdout.split(separator: "\n")
        #expect(lines.count == 4, "one line per command: \(lines)")
        for l in lines { #expect((try? JSONSerialization.jsonObject(with: Data(l.utf8))) != nil, "not JSON: \(l)") }

        let list = try xenpci(["list", "--fixtures", "Tests/Fixtures/qemu-q35", "--json"])
        let doc = try JSONSerialization.jsonObject(with: Data(list.stdout.utf8)) as? [[String: Any]]
        #expect(doc?.map { $0["function"] as? String } == ["0000:00:01.0", "0000:00:03.0", "0000:00:04.0", "0000:00:06.0", "0000:00:06.1",
                                                          "0000:00:1f.2", "0000:00:1f.3", "0000:01:00.0"])
        let text = try xenpci(["list", "--fixtures", "Tests/Fixtures/qemu-q35", "--hide", "(00:03.0)"])
        #expect(text.stdout == """
            0000:00:03.0: vendor 0x8086 product 0x100e subsys vendor 0x1af4 subsys product 0x1100
              bar 0: mem 0xfeac0000-0xfeadffff (size 0x20000)
              bar 1: i/o 0xc000-0xc03f (size 0x40)
              rom: mem 0xfea00000-0xfea3ffff (size 0x40000)
              irq 11
              guest: none

            """)
    }

    @Test("the tour runs on the fixtures and ends clean")
    func tour() throws {
        let r = try xenpci(Self.demo + ["--tour"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.errorLines.isEmpty, "\(r.errorLines)")
        #expect(r.stderr.contains("xenpci> quirk 0000:00:01.0-0x040:4:0xffffffff"))
        #expect(r.stdout.hasPrefix("00:00.0 VGA compatible controller"), "the guest's bus first")
        #expect(r.stdout.contains("12345678\n"), "the quirk let the write through")
    }

    @Test("backend runs until SIGTERM, prints the xenbus states, stops clean")
    func backendSignal() throws {
        let exe = try #require(xenpciBinary)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: exe)
        p.arguments = ["backend", "--fixtures", q35]
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        // A reader thread collects stderr; the test polls it (never blocks on the pipe).
        let collected = Mutex(Data())
        let reader = Thread {
            while true {
                let d = err.fileHandleForReading.availableData
                if d.isEmpty { break }
                collected.withLock { $0 += d }
            }
        }
        reader.start()
        func text() -> String { collected.withLock { String(decoding: $0, as: UTF8.self) } }
        let end = Date().addingTimeInterval(20)
        while !text().contains("SIGINT or SIGTERM stops it") && Date() < end { usleep(10_000) }
        kill(p.processIdentifier, SIGTERM)
        p.waitUntilExit()
        while !text().contains("leaks") && Date() < end { usleep(10_000) }
        let text = text()
        #expect(p.terminationStatus == 0, "\(text)")
        #expect(text.contains("backend/pci/1/0 state InitWait (2)"))
        #expect(text.contains("leaks: none"))
    }
}

/// The pieces, in-process.
@Suite struct PieceTests {
    @Test("setpci-style registers: names, widths, hex offsets; errors name what was wrong")
    func registers() throws {
        #expect(try Shell.register("COMMAND", nil) == (4, 2))
        #expect(try Shell.register("command.b", nil) == (4, 1))
        #expect(try Shell.register("0x3c", "b") == (0x3C, 1))
        #expect(try Shell.register("100", "4") == (0x100, 4))
        #expect(try Shell.value("ff", size: 1) == 0xFF)
        for (r, s, msg) in [("0x3c", "3", "size '3'"), ("zz", "4", "offset 'zz'"), ("0x1000", "4", "outside"), ("0x3", "2", "aligned"), ("0x10", nil, "no size")] as [(String, String?, String)] {
            #expect { try Shell.register(r, s) } throws: { ($0 as? CLIError)?.message.contains(msg) == true && ($0 as? CLIError)?.status == 64 }
        }
    }

    @Test("errors from the drivers become one line with the right status")
    func errorMapping() throws {
        #expect(CLIError.from(try #require({ () -> Error? in do { _ = try PCIAddress(parsing: "x"); return nil } catch { return error } }())).status == 64)
        #expect(CLIError.from(try #require({ () -> Error? in do { _ = try parseHideList("(0"); return nil } catch { return error } }())).status == 64)
        #expect(CLIError.from(XPCIError.backend(.accessDenied, op: .confWrite, address: PCIAddress(bus: 0, device: 0, function: 0))).status == 77)
        #expect(CLIError.from(XPCIError.backend(.devNotFound, op: .confRead, address: PCIAddress(bus: 0, device: 0, function: 0))).status == 1)
        #expect(throws: CLIError.self) { try openXenHypervisor() }
        #expect(!CLIError.from(PCIBackError.refused("a\nb")).message.isEmpty)
    }

    @Test("progress: periodic lines off a terminal, a rewritten line on one, silence for quick work")
    func progress() throws {
        let t = Transcript()
        let p = Progress("scan", total: 3, console: t.console, tty: false, delay: .zero, interval: .zero)
        for i in 0..<3 { p.step("dev\(i)") }
        p.finish()
        #expect(t.stderr.split(separator: "\n").count == 4)
        #expect(t.stderr.contains("scan: 3/3 (100%) dev2"))
        let tty = Transcript()
        let q = Progress("scan", total: 2, console: tty.console, tty: true, delay: .zero)
        q.step(); q.step(); q.finish()
        #expect(tty.stderr.hasPrefix("\r\u{1B}[Kscan: 1/2 (50%)"))
        let quiet = Transcript()
        let r = Progress("scan", total: 2, console: quiet.console, tty: false)
        r.step(); r.step(); r.finish()
        #expect(quiet.stderr.isEmpty)
    }

    @Test("the toolstack writes what libxl writes, with its permissions")
    func toolstack() throws {
        let rig = try DemoRig(hide: "(00:03.0)")
        defer { rig.finish() }
        let dump = rig.host.xenstore(under: "/local/domain/0/backend/pci/1/0")
        #expect(dump.contains("/local/domain/0/backend/pci/1/0 = \"\"  (n0,r1)"))
        #expect(dump.contains("/dev-0 = \"0000:00:03.0\""))
        #expect(dump.contains("/vdev-0 = \"0000:00:00.00\""))
        #expect(dump.contains("/root_num = \"1\""))
        #expect(rig.host.xenstore(under: "/local/domain/1/device/pci/0").contains("/magic = \"7\""))
    }
}

@Suite struct ManualTests {
    static let pages = ["xenpci.8", "xenpci-pciback.4", "xenpci-xpci.4"]

    @Test("the manual pages are mdoc with a SECURITY CONSIDERATIONS section", arguments: pages)
    func sections(_ page: String) throws {
        let text = try String(contentsOfFile: repoRoot + "/man/" + page, encoding: .utf8)
        #expect(text.contains(".Sh SECURITY CONSIDERATIONS"))
        #expect(text.contains(".Dt "))
    }

    @Test("the manual pages lint clean under mandoc", .enabled(if: mandoc != nil, "mandoc is not installed (make deps installs it)"),
          arguments: pages)
    func lint(_ page: String) throws {
        let r = try run(try #require(mandoc), ["-Tlint", "-W", "warning", repoRoot + "/man/" + page])
        #expect(r.status == 0 && r.stderr.isEmpty && r.stdout.isEmpty, "\(r.stdout)\(r.stderr)")
    }
}
