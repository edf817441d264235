import Foundation
import Testing
@testable import xenpci
import PCIBack
import PCIModel
import XenHypervisor
import XenMock
import Logging
import XPCI

/// A scratch directory for a socket and a config file (sun_path is short:
/// /tmp, not the test's temporary directory).
func scratchDirectory(_ tag: String) throws -> String {
    let d = "/tmp/xenpci-\(tag)-\(getpid())-\(UUID().uuidString.prefix(6))"
    try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    return d
}

func address(_ s: String) -> PCIAddress { try! PCIAddress(parsing: s) }

/// The daemon of `xenpci backend` on the mock, in this process: 00:03.0
/// claimed from the hide list and held by dom1, the config file's functions
/// claimed after it (not given to any guest), the control socket served.
/// The client is the built `xenpci`, so its parsing and exit statuses are tested too.
final class AdminRig {
    let transcript = Transcript()
    let host: MockHost
    let daemon: AdminDaemon
    let server: ControlServer
    let dir: String
    var socket: String { dir + "/run/control" } // the server creates run/, 0700
    var configPath: String { dir + "/xenpci.conf" }
    var back: PCIBack { host.back }

    init(config: String? = nil, frontend: Bool = false, allowedUIDs: Set<uid_t> = [0, geteuid()]) throws {
        dir = try scratchDirectory("admin")
        var parsed: DaemonConfig?
        if let config {
            try config.write(toFile: dir + "/xenpci.conf", atomically: true, encoding: .utf8)
            parsed = try DaemonConfig.load(dir + "/xenpci.conf")
        }
        let source = try DeviceSource.open(q35, kind: .fixtures)
        host = try MockHost(source: source, topology: .vpci, console: transcript.console)
        try host.start(hide: "(00:03.0)", frontend: frontend)
        daemon = AdminDaemon(host: host, configPath: config == nil ? nil : dir + "/xenpci.conf", config: parsed, target: .mock(source))
        try daemon.applyConfigAtStart()
        let d = daemon
        server = try ControlServer(path: dir + "/run/control", allowedUIDs: allowedUIDs, handler: { d.handle($0) }, tick: { d.sample(); d.enforce() })
        server.start()
        let end = ContinuousClock.now + .seconds(10)
        while back.guestHolding(address("00:03.0")) == nil && ContinuousClock.now < end { usleep(5000) }
    }

    /// The built command, talking to this daemon.
    func xenpci(_ args: [String]) throws -> RunResult {
        try run(try #require(xenpciBinary, noXenpciBinary), args + ["--control", socket])
    }

    func device(_ a: String) throws -> SysfsPCIDevice { try #require(try host.openFunction(address(a)) as? SysfsPCIDevice) }

    func finish(sourceLocation: SourceLocation = #_sourceLocation) {
        server.stop()
        let leaks = host.shutdown()
        #expect(leaks.isEmpty, "leaks: \(leaks)", sourceLocation: sourceLocation)
        #expect(!FileManager.default.fileExists(atPath: socket), "the socket goes at stop", sourceLocation: sourceLocation)
        try? FileManager.default.removeItem(atPath: dir)
    }
}

func expectOneErrorLine(_ r: RunResult, _ status: Int32, _ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(r.status == status, "status \(r.status), stderr: \(r.stderr)", sourceLocation: sourceLocation)
    #expect(r.errorLines.count == 1 && r.errorLines.first?.contains(what) == true, "\(r.stderr) should be one line naming \(what)", sourceLocation: sourceLocation)
}

@Suite("The administrator's daemon: control socket", .serialized, .enabled(if: xenpciBinary != nil, noXenpciBinary))
struct ControlSocketTests {
    @Test("assignable-add claims at run time, assignable-list shows it, assignable-remove releases it (reset)")
    func addListRemove() throws {
        let rig = try AdminRig()
        defer { rig.finish() }
        let r = try rig.xenpci(["assignable-add", "00:04.0", "0000:00:06.0"])
        #expect(r.status == 0, "\(r.stderr)")
        // Each with how it was reset and how long that took.
        #expect(r.stdout.range(of: #"^0000:00:04.0: assignable \(reset by snapshot in \d+ ms\)\n0000:00:06.0: assignable \(reset by snapshot in \d+ ms\)\n$"#,
                               options: .regularExpression) != nil, "\(r.stdout)")
        #expect(rig.transcript.stderr.contains("[dom0 pciback] 0000:00:04.0: claimed: reset (snapshot) and golden state saved in "))
        #expect(rig.back.isClaimed(address("00:04.0")) && rig.back.isClaimed(address("00:06.0")))
        let l = try rig.xenpci(["assignable-list"])
        #expect(l.stdout == "0000:00:03.0 dom1 as 0000:00:00.0\n0000:00:04.0\n0000:00:06.0\n")
        let resets = try rig.device("00:06.0").resetCount
        let rm = try rig.xenpci(["assignable-remove", "00:06.0"])
        #expect(rm.status == 0, "\(rm.stderr)")
        #expect(rm.stdout.range(of: #"^0000:00:06.0: released \(reset, golden state restored\) in \d+ ms\n$"#, options: .regularExpression) != nil, "\(rm.stdout)")
        #expect(!rig.back.isClaimed(address("00:06.0")))
        #expect(try rig.device("00:06.0").resetCount == resets + 1, "released: reset")
        expectOneErrorLine(try rig.xenpci(["assignable-add", "00:04.0"]), 1, "0000:00:04.0: already assignable")
    }

    @Test("assignable-remove is refused, naming the guest, while a guest holds the function; nothing is released")
    func removeRefusedWhileHeld() throws {
        let rig = try AdminRig()
        defer { rig.finish() }
        #expect(try rig.xenpci(["assignable-add", "00:04.0"]).status == 0)
        let resets = try rig.device("00:04.0").resetCount
        let r = try rig.xenpci(["assignable-remove", "00:04.0", "00:03.0"])
        expectOneErrorLine(r, 1, "0000:00:03.0: held by dom1 as 0000:00:00.0")
        #expect(rig.back.isClaimed(address("00:04.0")), "all or nothing: 00:04.0 stays")
        #expect(try rig.device("00:04.0").resetCount == resets)
        #expect(rig.back.guestHolding(address("00:03.0"))?.guest == 1)
    }

    @Test("assignable-add is all or nothing; bad input is one line and sends nothing")
    func addAllOrNothing() throws {
        let rig = try AdminRig()
        defer { rig.finish() }
        expectOneErrorLine(try rig.xenpci(["assignable-add", "00:06.0", "00:1e.0"]), 1, "0000:00:1e.0: no such function")
        #expect(!rig.back.isClaimed(address("00:06.0")))
        expectOneErrorLine(try rig.xenpci(["assignable-add", "00:06.0", "00:zz.0"]), 64, "'00:zz.0'")
        expectOneErrorLine(try rig.xenpci(["assignable-add"]), 64, "give at least one PCI function")
        expectOneErrorLine(try rig.xenpci(["assignable-remove", "00:06.0"]), 1, "0000:00:06.0: not assignable")
        expectOneErrorLine(try rig.xenpci(["set", "00:03.0", "colour", "on"]), 64, "unknown setting 'colour'")
        expectOneErrorLine(try rig.xenpci(["set", "00:03.0", "permissive", "maybe"]), 64, "'maybe' is not on or off")
        expectOneErrorLine(try rig.xenpci(["quirk", "frob", "00:03.0-0xf0:4:0xff"]), 64, "'frob' is not add or remove")
        expectOneErrorLine(try rig.xenpci(["quirk", "add", "00:03.0-0xf0:3:0xff"]), 64, "size 3")
        #expect(rig.back.listing().map(\.address) == [address("00:03.0")])
    }

    @Test("set permissive and quirk add/remove reach the backend, and are put back when the backend clears them")
    func permissiveAndQuirks() throws {
        let rig = try AdminRig()
        defer { rig.finish() }
        let a = address("00:03.0")
        #expect(try rig.xenpci(["set", "00:03.0", "permissive", "on"]).status == 0)
        #expect(rig.back.permissive(of: a) == true)
        let q = try PCIQuirk(parsing: "00:03.0-0xf0:4:0xffff")
        #expect(try rig.xenpci(["quirk", "add", "00:03.0-0xf0:4:0xffff"]).status == 0)
        #expect(rig.back.quirks(of: a) == [q])
        expectOneErrorLine(try rig.xenpci(["quirk", "add", "00:03.0-0x04:2:0xffff"]), 64, "overlaps the emulated command register")
        expectOneErrorLine(try rig.xenpci(["quirk", "remove", "00:03.0-0xf0:4:0xff"]), 64, "no such quirk (it has 0000:00:03.0-0x0f0:4:0x0000ffff)")
        // What a guest leaving does to them (permissive and quirks cleared): the daemon puts them back.
        try rig.back.setQuirks(a, [])
        try rig.back.setPermissive(a, false)
        rig.daemon.enforce()
        #expect(rig.back.quirks(of: a) == [q] && rig.back.permissive(of: a) == true)
        #expect(try rig.xenpci(["quirk", "remove", "00:03.0-0xf0:4:0xffff"]).status == 0)
        #expect(try rig.xenpci(["set", "00:03.0", "permissive", "off"]).status == 0)
        #expect(rig.back.quirks(of: a) == [] && rig.back.permissive(of: a) == false)
    }

    @Test("status: aligned columns with name, guest name and domid, xenbus state, interrupts, reset, denied writes; --json has them all")
    func statusJSON() throws {
        let rig = try AdminRig(frontend: true)
        defer { rig.finish() }
        #expect(try rig.xenpci(["assignable-add", "00:06.0"]).status == 0)
        let front = try #require(rig.host.front)
        let g = try #require(rig.back.guestHolding(address("00:03.0"))?.address)
        try front.configWrite(g, offset: 0xF0, size: 4, value: 0x1234) // no field: dropped, and counted
        let r = try rig.xenpci(["status", "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let rows = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]])
        let row = try #require(rows.first { $0["function"] as? String == "0000:00:03.0" })
        #expect(Set(row.keys) == Set(FunctionRecord.statusKeys.map(\.rawValue)), "every status key, and no other")
        #expect(row["guest"] as? Int == 1)
        #expect(row["guestName"] as? String == "guest1")
        #expect(row["guestAddress"] as? String == g.description)
        #expect(row["xenbusState"] as? String == "connected")
        #expect(row["interruptMode"] as? String == "intx" && row["interruptCount"] as? Int == 1 && row["irq"] as? Int == 11)
        #expect((row["requests"] as? Int ?? 0) > 0)
        #expect(((row["requestsByKind"] as? [String: Int])?["conf_write"] ?? 0) >= 1)
        #expect((row["secondsSinceLastRequest"] as? Int).map { $0 >= 0 && $0 < 10 } == true)
        let denied = try #require(row["deniedWrites"] as? [[String: Any]])
        #expect(denied.contains { $0["offset"] as? String == "0x0f0" && $0["action"] as? String == "dropped" && $0["quirk"] as? String == "0000:00:03.0-0x0f0:4:0xffffffff" })
        let free = try #require(rows.first { $0["function"] as? String == "0000:00:06.0" })
        #expect(free["guest"] is NSNull && free["xenbusState"] is NSNull && free["secondsSinceLastRequest"] is NSNull)

        let text = try rig.xenpci(["status"])
        let lines = text.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        #expect(lines.first?.hasPrefix("FUNCTION      NAME") == true, "\(text.stdout)")
        // Aligned: every column starts where its header does.
        let header = try #require(lines.first)
        let starts = ["NAME", "GUEST ", "GUEST ADDRESS", "XENBUS", "INTERRUPTS", "RESET", "DENIED", "LAST REQUEST"].map { header.range(of: $0)!.lowerBound.utf16Offset(in: header) }
        let name = FunctionRecord.name(0x8086, 0x100e).map { $0.count > 40 ? String($0.prefix(37)) + "..." : $0 } ?? "8086:100e"
        let held = try #require(lines.first { $0.hasPrefix("0000:00:03.0") })
        let cells = starts.map { o in String(held.dropFirst(o).prefix { $0 != " " || false }) }
        #expect(held.dropFirst(starts[0]).hasPrefix(name))
        #expect(held.dropFirst(starts[1]).hasPrefix("guest1 (1)"))
        #expect(cells[2] == g.description && cells[3] == "connected" && cells[5] == "snapshot" && cells[6] == "1", "\(cells)")
        #expect(held.dropFirst(starts[4]).hasPrefix("intx (irq 11)"))
        #expect(held.dropFirst(starts[7]).hasSuffix(" s ago"), "\(held)")
        let idle = try #require(lines.first { $0.hasPrefix("0000:00:06.0") })
        #expect(idle.dropFirst(starts[1]).hasPrefix("-") && idle.hasSuffix("-"))
        #expect(text.stdout.contains("0000:00:03.0: 1 write of 4 bytes at 0x0f0 dropped; quirk 0000:00:03.0-0x0f0:4:0xffffffff would allow it"))

        // Filters: a guest by id or name, a function; a function not held is an error.
        let byDomain = try rig.xenpci(["status", "1"]).stdout
        #expect(byDomain.contains("0000:00:03.0") && !byDomain.contains("0000:00:06.0"))
        #expect(try rig.xenpci(["status", "guest1"]).stdout == byDomain)
        let byFunction = try rig.xenpci(["status", "00:06.0"]).stdout
        #expect(byFunction.contains("0000:00:06.0") && !byFunction.contains("0000:00:03.0"))
        #expect(try rig.xenpci(["status", "7"]).stdout == "no function is assigned to domain 7\n")
        expectOneErrorLine(try rig.xenpci(["status", "00:1e.0"]), 1, "0000:00:1e.0: not assignable (the backend does not hold it)")
    }

    @Test("a peer whose uid is not allowed is refused (SO_PEERCRED)")
    func peerRefused() throws {
        let rig = try AdminRig(allowedUIDs: [54321])
        defer { rig.finish() }
        expectOneErrorLine(try rig.xenpci(["assignable-list"]), 77, "uid \(getuid()) may not use")
        // The socket itself is root's: mode 0600 in a 0700 directory.
        let st = try FileManager.default.attributesOfItem(atPath: rig.socket)
        #expect((st[.posixPermissions] as? Int) == 0o600)
        #expect((try FileManager.default.attributesOfItem(atPath: rig.dir + "/run")[.posixPermissions] as? Int) == 0o700)
    }

    @Test("a daemon that is not running is reported as such")
    func notRunning() throws {
        let exe = try #require(xenpciBinary)
        expectOneErrorLine(try run(exe, ["status", "--control", "/nonexistent/xenpci/control"]), 69,
                           "xenpci backend is not running (no /nonexistent/xenpci/control)")
        // A socket left by a backend that died: nothing listens.
        let dir = try scratchDirectory("stale")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let s = try ControlServer(path: dir + "/control", handler: { _ in ControlReply() })
        s.start()
        s.stop()
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: Array((dir + "/control").utf8) + [0]) }
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        close(fd)
        expectOneErrorLine(try run(exe, ["assignable-list", "--control", dir + "/control"]), 69, "xenpci backend is not running (nothing listens on")
    }

    @Test("a slow client or an overlong line cannot wedge the control thread; a second backend is refused")
    func robustness() throws {
        let rig = try AdminRig()
        defer { rig.finish() }
        let silent = try ControlClient.connect(rig.socket) // says nothing
        defer { close(silent) }
        let t0 = ContinuousClock.now
        let r = try rig.xenpci(["assignable-list"])
        #expect(r.status == 0 && r.stdout.hasPrefix("0000:00:03.0"))
        #expect(ContinuousClock.now - t0 < .seconds(10))
        let long = String(repeating: "a", count: ControlServer.maxRequest + 10)
        #expect { try ControlClient.request(rig.socket, long) } throws: { e in
            (e as? CLIError)?.message.contains("longer than \(ControlServer.maxRequest) bytes") == true
        }
        #expect { try ControlClient.request(rig.socket, "frobnicate") } throws: { e in
            (e as? CLIError)?.message.contains("unknown request 'frobnicate'") == true
        }
        #expect { _ = try ControlServer(path: rig.socket, handler: { _ in ControlReply() }) } throws: { e in
            (e as? CLIError)?.message.contains("another xenpci backend serves") == true
        }
    }
}

@Suite("The administrator's daemon: config file")
struct ConfigFileTests {
    @Test("a good file: sections, permissive, quirks, no-strict-reset, comments, blank lines")
    func good() throws {
        let c = try DaemonConfig.parse("""
            # /etc/xenpci.conf
            [0000:00:03.0]
            permissive = on   ; trailing comment
            quirk = 0xf0:4:0xffff
            quirk = 0000:00:03.0-0xf4:2:0xff

            [00:04.0]
            no-strict-reset = on
            """, path: "x.conf")
        #expect(c.entries.map(\.address) == [address("00:03.0"), address("00:04.0")])
        #expect(c.entries[0].line == 2 && c.entries[1].line == 7)
        #expect(c.entries[0].options == FunctionOptions(permissive: true, quirks: [try PCIQuirk(parsing: "00:03.0-0xf0:4:0xffff"),
                                                                                     try PCIQuirk(parsing: "00:03.0-0xf4:2:0xff")]))
        #expect(c.entries[1].options == FunctionOptions(noStrictReset: true))
        #expect(try DaemonConfig.parse("[00:03.0]\n", path: "x").entries.count == 1)
        #expect(try DaemonConfig.parse("", path: "x").entries.isEmpty)
    }

    @Test("each kind of malformed line is refused with FILE:LINE", arguments: [
        ("permissive = on", 1, "before any [DDDD:BB:SS.F] section"),
        ("[00:03.0", 1, "no closing ']'"),
        ("[00:zz.0]", 1, "section [00:zz.0]"),
        ("[00:03.0]\n[0000:00:03.0]", 2, "repeats the section of line 1"),
        ("[00:03.0]\npermissive", 2, "expected 'key = value'"),
        ("[00:03.0]\npermissive =", 2, "'permissive' has no value"),
        ("[00:03.0]\npermissive = maybe", 2, "expected on or off"),
        ("[00:03.0]\npermissive = yes", 2, "permissive 'yes': expected on or off"),
        ("[00:03.0]\npermissive = on\npermissive = off", 3, "given twice"),
        ("[00:03.0]\ncolour = red", 2, "unknown key 'colour'"),
        ("[00:03.0]\nquirk = 0xf0:3:0xff", 2, "size 3"),
        ("[00:03.0]\nquirk = 00:04.0-0xf0:4:0xff", 2, "names 0000:00:04.0, not this section's"),
        ("[00:03.0]\nquirk = 0xf0:4:0xff\nquirk = 0xf0:2:0xff", 3, "a second quirk at register 0x0f0"),
        ("[00:03.0]\n# ok\npermissive = ｏn", 3, "U+FF4F 'ｏ' at column 14: only printable ASCII"),
        ("[00:03.0]\nquirk = 0xf0:4:0", 2, "mask 0 allows no bit"),
    ])
    func malformed(text: String, line: Int, what: String) {
        #expect { try DaemonConfig.parse(text, path: "/etc/xenpci.conf") } throws: { e in
            let c = CLIError.from(e)
            return c.status == DaemonConfig.errorStatus && c.message.hasPrefix("/etc/xenpci.conf:\(line): ") && c.message.contains(what) && !c.message.contains("\n")
        }
    }

    @Test("a file the device refuses (a quirk over an emulated register) is FILE:LINE and nothing is claimed")
    func refusedAtStart() throws {
        let dir = try scratchDirectory("conf")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/xenpci.conf"
        try "[00:04.0]\n[00:06.0]\nquirk = 0x04:2:0xffff\n".write(toFile: path, atomically: true, encoding: .utf8)
        let t = Transcript()
        let host = try MockHost(source: try DeviceSource.open(q35, kind: .fixtures), topology: .vpci, console: t.console)
        defer { _ = host.shutdown() }
        try host.claim(hide: nil, defaultSelection: false)
        let d = AdminDaemon(host: host, configPath: path, config: try DaemonConfig.load(path))
        #expect { try d.applyConfigAtStart() } throws: { e in
            CLIError.from(e).message.hasPrefix("\(path):3: [0000:00:06.0]: quirk:") && CLIError.from(e).status == DaemonConfig.errorStatus
        }
        #expect(host.back.listing().isEmpty, "nothing claimed")
    }

    @Test("`xenpci backend` with a malformed file exits 78 naming FILE:LINE before claiming anything", .enabled(if: xenpciBinary != nil, noXenpciBinary))
    func backendRefusesBadFile() throws {
        let dir = try scratchDirectory("conf")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "[00:03.0]\npermissive = perhaps\n".write(toFile: dir + "/bad.conf", atomically: true, encoding: .utf8)
        let r = try run(xenpciBinary!, ["backend", "--fixtures", q35, "--config", dir + "/bad.conf", "--control", dir + "/control"])
        expectOneErrorLine(r, 78, "\(dir)/bad.conf:2: permissive 'perhaps'")
        #expect(!r.stderr.contains("[dom0 pciback]"), "nothing claimed or started")
        expectOneErrorLine(try run(xenpciBinary!, ["backend", "--fixtures", q35, "--config", dir + "/none.conf"]), 78, "none.conf: no such file")
    }

    @Test("reload applies only the difference: new claimed, removed released (unless held), changed applied, unchanged untouched")
    func reloadDifference() throws {
        let rig = try AdminRig(config: """
            [00:03.0]
            [00:04.0]
            permissive = on
            [00:06.0]
            [00:06.1]
            quirk = 0xf0:4:0xff
            """)
        defer { rig.finish() }
        #expect(rig.back.listing().count == 4)
        // A run-time change to an unchanged function survives the reload.
        let q = try PCIQuirk(parsing: "00:04.0-0xf4:4:0xff")
        try rig.daemon.addQuirk(q)
        let resets = try ["00:03.0", "00:04.0", "00:06.1"].map { try rig.device($0).resetCount }
        try """
            [00:04.0]
            permissive = on
            [00:06.1]
            quirk = 0xf8:4:0xff
            [00:1f.3]
            """.write(toFile: rig.configPath, atomically: true, encoding: .utf8)
        let line = rig.daemon.reload().text
        #expect(line.contains("claimed 0000:00:1f.3; released 0000:00:06.0; options changed 0000:00:06.1; 1 unchanged"), "\(line)")
        #expect(line.contains("still held, left claimed: 0000:00:03.0 (dom1)"), "\(line)")
        #expect(rig.back.isClaimed(address("00:1f.3")) && !rig.back.isClaimed(address("00:06.0")))
        #expect(rig.back.guestHolding(address("00:03.0"))?.guest == 1, "held: left to its guest")
        #expect(rig.back.quirks(of: address("00:06.1")) == [try PCIQuirk(parsing: "00:06.1-0xf8:4:0xff")])
        #expect(rig.back.quirks(of: address("00:04.0")) == [q] && rig.back.permissive(of: address("00:04.0")) == true)
        #expect(try ["00:03.0", "00:04.0", "00:06.1"].map { try rig.device($0).resetCount } == resets, "no function left in the file was reset")
        // A bad file, or one the devices refuse, changes nothing.
        try "[00:04.0]\npermissive = on\n[00:06.1]\nquirk = 0x04:2:0xff\n".write(toFile: rig.configPath, atomically: true, encoding: .utf8)
        let bad = rig.daemon.reload()
        #expect(!bad.ok && bad.text.contains("\(rig.configPath):4: [0000:00:06.1]: quirk:") && bad.text.hasSuffix("nothing changed"), "\(bad.text)")
        #expect(rig.back.isClaimed(address("00:1f.3")), "the failed reload released nothing")
        #expect(rig.back.quirks(of: address("00:06.1")) == [try PCIQuirk(parsing: "00:06.1-0xf8:4:0xff")])
        try "[00:04.0\n".write(toFile: rig.configPath, atomically: true, encoding: .utf8)
        #expect(rig.daemon.reload().text.contains("\(rig.configPath):1: section"))
    }

    @Test("`xenpci backend` on the mock: control socket, SIGHUP re-reads the file, READY=1 on NOTIFY_SOCKET, SIGTERM stops clean",
          .enabled(if: xenpciBinary != nil, noXenpciBinary))
    func backendProcess() throws {
        let dir = try scratchDirectory("daemon")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "[00:04.0]\n".write(toFile: dir + "/xenpci.conf", atomically: true, encoding: .utf8)
        // systemd's side of sd_notify: a datagram socket.
        let notify = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(notify) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: Array((dir + "/notify").utf8) + [0]) }
        #expect(withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(notify, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } } == 0)
        var tv = timeval(tv_sec: 20, tv_usec: 0)
        setsockopt(notify, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))

        let p = Process()
        p.executableURL = URL(fileURLWithPath: xenpciBinary!)
        p.arguments = ["backend", "--fixtures", q35, "--hide", "(00:03.0)", "--config", dir + "/xenpci.conf", "--control", dir + "/control"]
        p.environment = ProcessInfo.processInfo.environment.merging(["NOTIFY_SOCKET": dir + "/notify"]) { $1 }
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        var buf = [UInt8](repeating: 0, count: 256)
        let n = recv(notify, &buf, buf.count, 0)
        #expect(n > 0 && String(decoding: buf[..<max(n, 0)], as: UTF8.self).hasPrefix("READY=1"), "READY=1 after the claims")
        let ctl = ["--control", dir + "/control"]
        #expect(try run(xenpciBinary!, ["assignable-list"] + ctl).stdout.contains("0000:00:04.0"))
        try "[00:04.0]\n[00:06.0]\n".write(toFile: dir + "/xenpci.conf", atomically: true, encoding: .utf8)
        kill(p.processIdentifier, SIGHUP)
        let m = recv(notify, &buf, buf.count, 0) // RELOADING=1, then READY=1
        #expect(m > 0 && String(decoding: buf[..<max(m, 0)], as: UTF8.self).hasPrefix("RELOADING=1"))
        _ = recv(notify, &buf, buf.count, 0)
        #expect(try run(xenpciBinary!, ["assignable-list"] + ctl).stdout.contains("0000:00:06.0"), "claimed by the reload")
        kill(p.processIdentifier, SIGTERM)
        p.waitUntilExit()
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(p.terminationStatus == 0, "\(text)")
        #expect(text.contains("[auto] hypervisor: mock (no Xen:") || text.contains("[auto] hypervisor: xen"))
        #expect(text.contains("reloaded \(dir)/xenpci.conf: claimed 0000:00:06.0; released none; options changed none; 1 unchanged"), "\(text)")
        #expect(text.contains("leaks: none"))
        #expect(!FileManager.default.fileExists(atPath: dir + "/control"))
    }
}

@Suite("The administrator's daemon on the Xen host code")
struct XenDaemonHostTests {
    @Test("strict reset: a function without a reset method is refused by assignable-add unless --no-strict-reset; enabled in dom0 while claimed")
    func strictReset() throws {
        let (root, _) = try RealXenPathTests().treeWithoutReset()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let dir = root + "/bus/pci/devices/0000:00:06.0"
        try "0\n".write(toFile: dir + "/enable", atomically: false, encoding: .utf8)
        let hv = MockHypervisor()
        let t = Transcript()
        let host = try XenBackendHost(hypervisor: hv.domain(0), topology: .vpci, sysfsRoot: root, statePath: nil,
                                      log: Logger(label: "test") { _ in ConsoleLogHandler(console: t.console) })
        defer { host.stop() }
        let d = AdminDaemon(host: host, configPath: nil, config: nil)
        let a = address("00:06.0")
        #expect { try d.addAssignable([a], noStrictReset: false) } throws: { e in
            CLIError.from(e).message.contains("0000:00:06.0: has no reset method")
        }
        #expect(!host.back.isClaimed(a))
        #expect(try String(contentsOfFile: dir + "/enable", encoding: .utf8).hasPrefix("0"), "a refused claim leaves it disabled in dom0")
        #expect(d.handle("assignable-add --no-strict-reset 00:06.0").ok)
        #expect(host.back.isClaimed(a))
        #expect(try String(contentsOfFile: dir + "/enable", encoding: .utf8).hasPrefix("1"))
        #expect(d.handle("assignable-remove 00:06.0").ok)
        #expect(!host.back.isClaimed(a))
        #expect(try String(contentsOfFile: dir + "/enable", encoding: .utf8).hasPrefix("0"), "disabled again at release")
        expectOneReply(d.handle("assignable-add 00:07.0"), "0000:00:07.0: no such function in \(root)/bus/pci/devices")
    }
}

func expectOneReply(_ r: ControlReply, _ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(!r.ok && r.error?.contains(what) == true, "\(r.error ?? "ok")", sourceLocation: sourceLocation)
}
