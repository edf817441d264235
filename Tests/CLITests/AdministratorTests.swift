import Foundation
import Testing
@testable import xenpci
import PCIBack
import PCIModel

/// A config file in a scratch directory; removed by the caller.
func writeConfig(_ text: String, _ tag: String = "conf") throws -> (dir: String, path: String) {
    let dir = try scratchDirectory(tag)
    try text.write(toFile: dir + "/xenpci.conf", atomically: true, encoding: .utf8)
    return (dir, dir + "/xenpci.conf")
}

/// Six mistakes an administrator makes, one a line: a key outside any
/// section, a bad on/off value, a quirk over an emulated register, a quirk
/// allowing nothing, a function that does not exist, an unknown key.
let sixErrors = """
    permissive = on
    [00:03.0]
    permissive = maybe
    quirk = 0x04:2:0xffff
    quirk = 0xf0:4:0
    [00:1e.0]
    [00:04.0]
    colour = red
    """

@Suite("check-config: every error of a file, without touching a function", .serialized, .enabled(if: xenpciBinary != nil, noXenpciBinary))
struct CheckConfigTests {
    @Test("a file with six errors reports six, each FILE:LINE: message, exit 78")
    func sixErrorsReported() throws {
        let (dir, path) = try writeConfig(sixErrors)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try run(xenpciBinary!, ["check-config", path, "--fixtures", q35])
        #expect(r.status == 78, "\(r.stderr)")
        let lines = r.stderrLines.filter { $0.hasPrefix(path + ":") }
        #expect(lines == [
            "\(path):1: 'permissive' before any [DDDD:BB:SS.F] section",
            "\(path):3: permissive 'maybe': expected on or off",
            "\(path):4: [0000:00:03.0]: quirk: 0000:00:03.0-0x004:2:0xffff: overlaps the emulated command register at 0x004",
            "\(path):5: quirk '0000:00:03.0-0xf0:4:0': mask 0 allows no bit; give the bits a guest may write",
            "\(path):6: [0000:00:1e.0]: no such function in \(q35)/bus/pci/devices",
            "\(path):8: unknown key 'colour' (expected permissive, quirk or no-strict-reset)",
        ], "\(r.stderr)")
        #expect(r.stderrLines.last == "xenpci: \(path): 6 errors; a backend would start with none of its functions")
        #expect(r.stdout.isEmpty)
    }

    @Test("a CRLF file names the \\r once, with how many lines end in it; invisible characters are named with their column")
    func invisibleCharactersNamed() throws {
        let (dir, path) = try writeConfig("[00:03.0]\r\npermissive = on\r\n[00:04.0]\r\n")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try run(xenpciBinary!, ["check-config", path, "--fixtures", q35])
        #expect(r.status == 78)
        #expect(r.stderrLines.first == "\(path):1: line ends in \\r (carriage return): Windows line endings, as 2 more lines do; convert the file with dos2unix or sed -i 's/\\r$//'", "\(r.stderr)")
        #expect(r.stderrLines.filter { $0.hasPrefix(path + ":") }.count == 1)
        for (text, named) in [("permissive =\u{A0}on", "U+00A0 (no-break space) at column 13"), ("\u{FEFF}permissive = on", "U+FEFF (byte order mark) at column 1"),
                              ("permissive = o\u{200B}n", "U+200B (zero-width space) at column 15"), ("permissive = on\u{1B}", "\\e (escape) at column 16")] {
            let (_, problems) = DaemonConfig.parseCollecting(Data("[00:03.0]\n\(text)\n".utf8), path: "f")
            #expect(problems == [ConfigProblem(line: 2, message: "\(named): only printable ASCII is allowed")], "\(problems)")
        }
        let (_, bad) = DaemonConfig.parseCollecting(Data([0x5B, 0xFF, 0x5D]), path: "f")
        #expect(bad.map(\.message) == ["a byte that is not UTF-8 at column 2: only printable ASCII is allowed"])
    }

    @Test("a good file exits 0 and names its functions; a missing file is 78")
    func goodFile() throws {
        let (dir, path) = try writeConfig("[00:03.0]\npermissive = on\nquirk = 0xf0:4:0xff\n[00:04.0]\nno-strict-reset = on\n")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try run(xenpciBinary!, ["check-config", path, "--fixtures", q35])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout == "\(path): no errors; 2 functions: 0000:00:03.0 0000:00:04.0 (checked against \(q35))\n")
        expectOneErrorLine(try run(xenpciBinary!, ["check-config", dir + "/none.conf", "--fixtures", q35]), 78, "\(dir)/none.conf: no such file")
    }

    @Test("the check only reads: no function is reset or written, and the Xen rules (host driver, strict reset) are applied")
    func onlyReads() throws {
        let (root, _) = try RealXenPathTests().treeWithoutReset()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let (dir, path) = try writeConfig("[00:06.0]\nquirk = 0xf0:4:0xff\n[00:07.0]\n")
        // A second function, bound to a host driver (a fixture tree names it in a file).
        let owned = root + "/bus/pci/devices/0000:00:08.0"
        try FileManager.default.copyItem(atPath: root + "/bus/pci/devices/0000:00:06.0", toPath: owned)
        try "e1000e\n".write(toFile: owned + "/driver", atomically: true, encoding: .utf8)
        try "reset".write(toFile: owned + "/reset", atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let xen = try ConfigTarget.xen(sysfsRoot: root)
        var opened: [SysfsPCIDevice] = []
        let target = ConfigTarget(root: xen.root, available: xen.available, snapshots: false) { a in
            let d = try xen.open(a) as! SysfsPCIDevice
            opened.append(d)
            return d
        }
        let before = try FileManager.default.contentsOfDirectory(atPath: root + "/bus/pci/devices/0000:00:06.0").sorted()
            .map { try? Data(contentsOf: URL(fileURLWithPath: root + "/bus/pci/devices/0000:00:06.0/" + $0)) }
        try "[00:06.0]\nquirk = 0xf0:4:0xff\n[00:07.0]\n[00:08.0]\n".write(toFile: path, atomically: true, encoding: .utf8)
        let (_, problems) = try DaemonConfig.check(path, against: target)
        #expect(problems.map(\.line) == [1, 3, 4], "\(problems)")
        #expect(problems.last?.message == "[0000:00:08.0]: in use by the host driver 'e1000e'; unbind it, or bind it to pciback, first")
        #expect(problems.first?.message == "[0000:00:06.0]: has no reset method (strict reset); set no-strict-reset = on to claim it with only its saved state restored")
        #expect(!opened.isEmpty && opened.allSatisfy { $0.resetCount == 0 })
        let after = try FileManager.default.contentsOfDirectory(atPath: root + "/bus/pci/devices/0000:00:06.0").sorted()
            .map { try? Data(contentsOf: URL(fileURLWithPath: root + "/bus/pci/devices/0000:00:06.0/" + $0)) }
        #expect(before == after, "the function's sysfs files are as they were")
    }

    @Test("`xenpci backend` runs the same check first: all six errors, exit 78, nothing claimed")
    func backendRunsTheCheck() throws {
        let (dir, path) = try writeConfig(sixErrors)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try run(xenpciBinary!, ["backend", "--fixtures", q35, "--config", path, "--control", dir + "/control"])
        #expect(r.status == 78)
        #expect(r.errorLines.filter { $0.hasPrefix("xenpci: \(path):") }.count == 6, "\(r.stderr)")
        #expect(!r.stderr.contains("[dom0 pciback]"), "nothing claimed or started")
    }
}

@Suite("reload over the control socket: the applied difference or every error", .serialized, .enabled(if: xenpciBinary != nil, noXenpciBinary))
struct ReloadTests {
    @Test("reload of a bad file exits 78 with every error and changes nothing; a good one prints the difference")
    func reloadTellsTheTruth() throws {
        let rig = try AdminRig(config: "[00:04.0]\npermissive = on\n")
        defer { rig.finish() }
        let before = (rig.back.listing().map(\.address), rig.back.permissive(of: address("00:04.0")), rig.back.quirks(of: address("00:04.0")))
        try "[00:04.0]\npermissive = off\n[00:06.0]\nquirk = 0x04:2:0xff\n[00:1e.0]\n".write(toFile: rig.configPath, atomically: true, encoding: .utf8)
        let bad = try rig.xenpci(["reload"])
        #expect(bad.status == 78, "\(bad.stderr)")
        #expect(bad.errorLines == [
            "xenpci: \(rig.configPath):4: [0000:00:06.0]: quirk: 0000:00:06.0-0x004:2:0x00ff: overlaps the emulated command register at 0x004",
            "xenpci: \(rig.configPath):5: [0000:00:1e.0]: no such function in \(q35)/bus/pci/devices",
            "xenpci: reload \(rig.configPath): nothing changed",
        ], "\(bad.stderr)")
        #expect(bad.stdout.isEmpty)
        let after = (rig.back.listing().map(\.address), rig.back.permissive(of: address("00:04.0")), rig.back.quirks(of: address("00:04.0")))
        #expect(before.0 == after.0 && before.1 == after.1 && before.2 == after.2, "nothing changed")
        try "[00:04.0]\n[00:06.0]\n".write(toFile: rig.configPath, atomically: true, encoding: .utf8)
        let good = try rig.xenpci(["reload"])
        #expect(good.status == 0, "\(good.stderr)")
        #expect(good.stdout == "reloaded \(rig.configPath): claimed 0000:00:06.0; released none; options changed 0000:00:04.0; 0 unchanged\n")
        #expect(rig.back.isClaimed(address("00:06.0")) && rig.back.permissive(of: address("00:04.0")) == false)
    }

    @Test("reload without a config file says so, exit 78")
    func reloadWithoutFile() throws {
        let rig = try AdminRig()
        defer { rig.finish() }
        expectOneErrorLine(try rig.xenpci(["reload"]), 78, "reload: no config file")
    }
}

/// The unit's RestartPreventExitStatus, and the statuses xenpci(8) documents.
func unitValue(_ key: String) throws -> String {
    let unit = try String(contentsOfFile: repoRoot + "/tools/xenpci-backend.service", encoding: .utf8)
    return try #require(unit.split(separator: "\n").first { $0.hasPrefix(key + "=") }).dropFirst(key.count + 1).description
}

@Suite("exit statuses: sysexits(3), the same in the command, xenpci(8) and the unit", .serialized, .enabled(if: xenpciBinary != nil, noXenpciBinary))
struct ExitStatusTests {
    @Test("a backend that cannot start exits with a status the unit does not restart on")
    func startFailuresDoNotLoop() throws {
        let prevent = Set(try unitValue("RestartPreventExitStatus").split(separator: " ").compactMap { Int32($0) })
        #expect(prevent == [64, 69, 77, 78] && prevent == Backend.startStatuses)
        let dir = try scratchDirectory("exit")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "[00:1e.0]\n".write(toFile: dir + "/missing.conf", atomically: true, encoding: .utf8)
        try "[00:06.0]\nquirk = 0x04:2:0xffff\n".write(toFile: dir + "/quirk.conf", atomically: true, encoding: .utf8)
        let exe = xenpciBinary!
        let cases: [([String], Int32, String)] = [
            (["--config", dir + "/missing.conf"], 78, "\(dir)/missing.conf:1: [0000:00:1e.0]: no such function"),
            (["--config", dir + "/quirk.conf"], 78, "\(dir)/quirk.conf:2: [0000:00:06.0]: quirk:"),
            (["--hide", "(00:1e.0)"], 64, "--hide: hide list entry (0000:00:1e.0) matches no device"),
            (["--hide", "(00:zz.0)"], 64, "00:zz.0"),
            (["--topology", "ring"], 64, "--topology 'ring'"),
            (["--fixtures", dir + "/no-tree"], 69, "\(dir)/no-tree/bus/pci/devices: no such directory"),
        ]
        for (args, status, what) in cases {
            let r = try run(exe, ["backend", "--fixtures", q35, "--control", dir + "/control"] + args)
            expectOneErrorLine(r, status, what)
            #expect(prevent.contains(r.status), "\(args): \(r.status) would be restarted in a loop")
        }
        // A second backend on the same socket: unavailable, not restarted.
        let s = try ControlServer(path: dir + "/control", handler: { _ in ControlReply() })
        s.start()
        defer { s.stop() }
        expectOneErrorLine(try run(exe, ["backend", "--fixtures", q35, "--control", dir + "/control"]), 69, "another xenpci backend serves")
    }

    @Test("xenpci(8) documents every status the unit names, and the unit reloads through `xenpci reload`")
    func documented() throws {
        let page = try String(contentsOfFile: repoRoot + "/man/xenpci.8", encoding: .utf8)
        let section = try #require(page.components(separatedBy: ".Sh EXIT STATUS").last?.components(separatedBy: ".Sh ").first)
        for s in ["0", "1", "64", "66", "69", "70", "75", "77", "78"] { #expect(section.contains(".It \(s)\n"), "EXIT STATUS lacks \(s)") }
        #expect(try unitValue("ExecReload").hasSuffix("/bin/xenpci reload"))
        #expect(try unitValue("RestartForceExitStatus") == "75")
    }
}

/// A JSON value, decoded strictly: a number is never a boolean.
indirect enum JSONValue: Decodable {
    case null, bool(Bool), int(Int), double(Double), string(String), array([JSONValue]), object([String: JSONValue])
    init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let i = try? c.decode(Int.self) { self = .int(i) }
        else if let d = try? c.decode(Double.self) { self = .double(d) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([JSONValue].self) { self = .array(a) }
        else { self = .object(try c.decode([String: JSONValue].self)) }
    }

    /// Whether this value is of a type as xenpci(8) writes it:
    /// "string", "integer or null", "array of object", "object of integer or null".
    func conforms(to type: String) -> Bool {
        var t = Substring(type)
        if t.hasSuffix(" or null") {
            if case .null = self { return true }
            t = t.dropLast(" or null".count)
        }
        switch (self, t) {
        case (.string, "string"), (.int, "integer"), (.bool, "boolean"), (.object, "object"): return true
        case (.array(let a), _) where t.hasPrefix("array of "): return a.allSatisfy { $0.conforms(to: String(t.dropFirst("array of ".count))) }
        case (.object(let o), _) where t.hasPrefix("object of "): return o.values.allSatisfy { $0.conforms(to: String(t.dropFirst("object of ".count))) }
        default: return false
        }
    }
}

/// The JSON vocabulary as xenpci(8) writes it down: key -> (type, commands).
func manualSchema() throws -> [String: (type: String, commands: Set<String>)] {
    let page = try String(contentsOfFile: repoRoot + "/man/xenpci.8", encoding: .utf8)
    let section = try #require(page.components(separatedBy: ".Ss JSON output").dropFirst().first?.components(separatedBy: ".El").first)
    var schema: [String: (String, Set<String>)] = [:]
    for line in section.split(separator: "\n") where line.hasPrefix(".It Li ") {
        let cols = line.dropFirst(".It Li ".count).components(separatedBy: " Ta ")
        guard cols.count == 3 else { continue }
        schema[cols[0]] = (cols[1], Set(cols[2].split(separator: " ").map(String.init)))
    }
    return schema
}

/// Every object of `json` (an array) has exactly the keys xenpci(8) gives
/// `command`, each of its documented type.
func expectConforms(_ json: String, _ command: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let schema = try manualSchema()
    let keys = Set(schema.filter { $0.value.commands.contains(command) }.keys)
    #expect(!keys.isEmpty, sourceLocation: sourceLocation)
    guard case .array(let rows) = try JSONDecoder().decode(JSONValue.self, from: Data(json.utf8)), !rows.isEmpty else {
        Issue.record("\(command) --json is not a non-empty array: \(json.prefix(200))", sourceLocation: sourceLocation)
        return
    }
    for row in rows {
        guard case .object(let o) = row else { Issue.record("\(command): not an object", sourceLocation: sourceLocation); continue }
        #expect(Set(o.keys) == keys, "\(command): keys \(Set(o.keys).symmetricDifference(keys)) differ from xenpci(8)", sourceLocation: sourceLocation)
        for (k, v) in o {
            guard let t = schema[k]?.type else { continue }
            #expect(v.conforms(to: t), "\(command): \(k) is not \(t): \(v)", sourceLocation: sourceLocation)
        }
    }
}

@Suite("one JSON vocabulary for list, status and stats, as xenpci(8) writes it", .serialized, .enabled(if: xenpciBinary != nil, noXenpciBinary))
struct JSONVocabularyTests {
    @Test("the schema in xenpci(8) is the one the code writes")
    func schemaMatchesCode() throws {
        let schema = try manualSchema()
        #expect(Set(schema.keys) == Set(FunctionRecord.CodingKeys.allCases.map(\.rawValue)))
        for (command, keys) in [("list", FunctionRecord.listKeys), ("status", FunctionRecord.statusKeys), ("stats", FunctionRecord.statsKeys)] {
            #expect(Set(schema.filter { $0.value.commands.contains(command) }.keys) == Set(keys.map(\.rawValue)), "\(command)")
        }
    }

    @Test("list --json, status --json and the demo's stats --json validate against it")
    func validates() throws {
        let list = try run(xenpciBinary!, ["list", "--fixtures", q35, "--json"])
        #expect(list.status == 0, "\(list.stderr)")
        try expectConforms(list.stdout, "list")
        let demo = try run(xenpciBinary!, ["demo", "--fixtures", q35, "--hide", "(00:03.0)(00:04.0)", "--json", "--script", "-"],
                           input: "write 00:00.0 0x40 4 0x12345678\nstats --json\n")
        #expect(demo.status == 0, "\(demo.stderr)")
        try expectConforms(String(demo.stdout.split(separator: "\n").last ?? ""), "stats")
        let rig = try AdminRig(frontend: true)
        defer { rig.finish() }
        #expect(try rig.xenpci(["assignable-add", "00:06.0"]).status == 0)
        try expectConforms(try rig.xenpci(["status", "--json"]).stdout, "status")
    }
}

@Suite("no internal names in what a user sees", .serialized, .enabled(if: xenpciBinary != nil, noXenpciBinary))
struct UserWordsTests {
    /// The camelCase case names of the enums of our sources (CodingKeys are
    /// the documented JSON keys, and so are any names xenpci(8) lists there).
    static func enumCaseNames() throws -> Set<String> {
        var names: Set<String> = []
        let fm = FileManager.default
        for module in ["XenPCIABI", "XenHypervisor", "PCIBack", "XPCI", "XenToolstack", "XenReal", "xenpci"] {
            let dir = repoRoot + "/Sources/" + module
            for f in try fm.contentsOfDirectory(atPath: dir) where f.hasSuffix(".swift") {
                var inCodingKeys = false
                for line in try String(contentsOfFile: dir + "/" + f, encoding: .utf8).split(separator: "\n") {
                    let t = line.trimmingCharacters(in: .whitespaces)
                    if t.contains("enum ") { inCodingKeys = t.contains("CodingKey") }
                    guard !inCodingKeys, t.hasPrefix("case "), let first = t.dropFirst(5).first, first.isLowercase,
                          !t.hasPrefix("case let "), !t.hasPrefix("case var ") else { continue }
                    for piece in t.dropFirst(5).split(separator: ",") {
                        let id = piece.trimmingCharacters(in: .whitespaces).prefix { $0.isLetter || $0.isNumber }
                        if id.first?.isLowercase == true, id.contains(where: \.isUppercase) { names.insert(String(id)) }
                    }
                }
            }
        }
        return names.subtracting(try manualSchema().keys)
    }

    @Test("no output of the CLI tests contains a Swift enum case name or a Swift duration")
    func noSwiftNames() throws {
        let exe = xenpciBinary!
        // What an administrator runs, whatever else ran before in this process.
        try run(exe, ["demo", "--fixtures", q35, "--tour"])
        try run(exe, ["demo", "--fixtures", q35, "--hide", "(00:03.0)(00:04.0)", "--script", "-"],
                input: "aer 0000:00:04.0 detected frozen\nread 00:00.0 0x41 4\nwrite 00:00.0 0x40 4 1\nstats\n")
        let (dir, path) = try writeConfig(sixErrors)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try run(exe, ["check-config", path, "--fixtures", q35])
        try run(exe, ["backend", "--fixtures", q35, "--config", path])
        let rig = try AdminRig(frontend: true)
        defer { rig.finish() }
        _ = try rig.xenpci(["status"])
        _ = try rig.xenpci(["status", "--json"])
        _ = try rig.xenpci(["assignable-list"])
        let names = try Self.enumCaseNames()
        #expect(names.contains("canRecover") && names.contains("invalidOffset"), "the scan finds the enums: \(names.sorted().prefix(20))")
        let words = try NSRegularExpression(pattern: "[A-Za-z0-9_]+")
        let seconds = try NSRegularExpression(pattern: "[0-9]+\\.[0-9]+ seconds")
        for text in capturedOutput.all + [rig.transcript.stdout, rig.transcript.stderr] {
            let ns = text as NSString
            for m in words.matches(in: text, range: NSRange(location: 0, length: ns.length)) where names.contains(ns.substring(with: m.range)) {
                let at = m.range.location
                Issue.record("'\(ns.substring(with: m.range))' in: \(ns.substring(with: NSRange(location: max(0, at - 60), length: min(120, ns.length - max(0, at - 60)))))")
            }
            #expect(seconds.firstMatch(in: text, range: NSRange(location: 0, length: ns.length)) == nil, "a Swift Duration in: \(text.prefix(300))")
        }
    }
}

@Suite("logs carry syslog priorities on the journal, plain text elsewhere", .serialized, .enabled(if: xenpciBinary != nil, noXenpciBinary))
struct JournalTests {
    @Test("with JOURNAL_STREAM naming its stderr every line starts <N>: errors <3>, events <6>; a stale JOURNAL_STREAM is ignored")
    func priorities() throws {
        let (dir, path) = try writeConfig(sixErrors)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let bad = try run(xenpciBinary!, ["backend", "--fixtures", q35, "--config", path, "--control", dir + "/control"], journal: true)
        #expect(bad.status == 78)
        #expect(bad.stderrLines.filter { $0.hasPrefix("<3>xenpci: \(path):") }.count == 6, "\(bad.stderr)")
        let tour = try run(xenpciBinary!, ["demo", "--fixtures", q35, "--hide", "(00:03.0)", "--script", "-"],
                           input: "read 00:00.0 0x41 4\n", journal: true)
        #expect(tour.status == 64)
        #expect(!tour.stderrLines.isEmpty && tour.stderrLines.allSatisfy { $0.range(of: "^<[0-7]>", options: .regularExpression) != nil }, "\(tour.stderr)")
        #expect(tour.stderrLines.contains { $0.hasPrefix("<6>[dom0 pciback] backend/pci/1/0 state Connected") })
        #expect(tour.stderrLines.contains { $0.hasPrefix("<3>xenpci: stdin:1: invalid offset: 0x41 is not aligned") }, "\(tour.stderr)")
        #expect(!tour.stdout.contains("<"), "standard output is never prefixed")
        // Inherited by a process whose stderr is elsewhere: plain.
        let plain = try run(xenpciBinary!, ["backend", "--fixtures", q35, "--config", path, "--control", dir + "/control"],
                            environment: ["JOURNAL_STREAM": "8:12345"])
        #expect(plain.errorLines.count == 6 && !plain.stderr.contains("<3>"), "\(plain.stderr)")
        #expect(!Journal.matches("1:2", fd: STDERR_FILENO) && !Journal.matches("garbage", fd: STDERR_FILENO))
    }
}

@Suite("the control socket serves clients concurrently; clients say what they waited for", .serialized)
struct ConcurrentControlTests {
    @Test("five clients that connect and say nothing delay a command by less than 100 ms")
    func silentClients() throws {
        let rig = try AdminRig()
        defer { rig.finish() }
        #expect(try ControlClient.request(rig.socket, "assignable-list").ok)
        let silent = try (0..<5).map { _ in try ControlClient.connect(rig.socket) }
        defer { silent.forEach { close($0) } }
        usleep(50_000) // all five accepted and waiting for their line
        let t0 = ContinuousClock.now
        let r = try ControlClient.request(rig.socket, "assignable-list")
        let took = ContinuousClock.now - t0
        #expect(r.ok && r.message?.hasPrefix("0000:00:03.0") == true)
        #expect(took < .milliseconds(100), "took \(took) behind five silent clients")
    }

    @Test("a daemon that accepts and never answers: the client gives up naming the request and the wait, exit 69")
    func stoppedDaemon() throws {
        let dir = try scratchDirectory("stopped")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/control"
        // What a SIGSTOPped backend looks like: the kernel queues the connection, nobody reads it.
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
        #expect(withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } } == 0)
        #expect(listen(fd, 4) == 0)
        let t0 = ContinuousClock.now
        #expect { try ControlClient.request(path, "status", timeout: .milliseconds(300)) } throws: { e in
            let c = CLIError.from(e)
            return c.status == 69 && c.message == "\(path): the xenpci backend did not answer 'status' within 300 ms (stopped, or stuck in a command; see its log)"
        }
        #expect(ContinuousClock.now - t0 < .seconds(2))
        #expect(ControlClient.timeout(for: "status") == .seconds(10) && ControlClient.timeout(for: "assignable-remove 00:03.0") == .seconds(120))
    }
}

@Suite("small things an administrator meets", .serialized, .enabled(if: xenpciBinary != nil, noXenpciBinary))
struct AdministratorDetailsTests {
    @Test("--version prints the release")
    func version() throws {
        let r = try run(xenpciBinary!, ["--version"])
        #expect(r.status == 0 && r.stdout == xenpciVersion + "\n")
    }

    @Test("list asks the running backend when one answers; with devices named, or none running, it claims them itself")
    func listAsksTheDaemon() throws {
        let rig = try AdminRig()
        defer { rig.finish() }
        #expect(try rig.xenpci(["assignable-add", "00:06.0"]).status == 0)
        let r = try run(xenpciBinary!, ["list", "--hypervisor", "mock", "--json", "--control", rig.socket])
        #expect(r.status == 0, "\(r.stderr)")
        let functions = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]]).map { $0["function"] as? String }
        #expect(functions == ["0000:00:03.0", "0000:00:06.0"], "the daemon's, not a fresh claim")
        let named = try run(xenpciBinary!, ["list", "--hypervisor", "mock", "--fixtures", q35, "--hide", "(00:04.0)", "--control", rig.socket])
        #expect(named.stdout.hasPrefix("0000:00:04.0:"), "\(named.stdout)")
        let none = try run(xenpciBinary!, ["list", "--hypervisor", "mock", "--json", "--control", rig.dir + "/nothing"])
        #expect(none.status == 0 && none.stdout.hasPrefix("[{"), "\(none.stderr)")
    }

    @Test("the mock backend refuses SIGUSR1 in one line and keeps running; SIGTERM then removes its socket")
    func mockSIGUSR1() throws {
        let dir = try scratchDirectory("usr1")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: xenpciBinary!)
        p.arguments = ["backend", "--fixtures", q35, "--hide", "(00:03.0)", "--control", dir + "/control"]
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        let end = ContinuousClock.now + .seconds(20)
        while (try? ControlClient.request(dir + "/control", "assignable-list")) == nil && ContinuousClock.now < end { usleep(20_000) }
        kill(p.processIdentifier, SIGUSR1)
        usleep(200_000)
        #expect(p.isRunning)
        #expect(try ControlClient.request(dir + "/control", "assignable-list").message?.hasPrefix("0000:00:03.0") == true)
        kill(p.processIdentifier, SIGTERM)
        p.waitUntilExit()
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(p.terminationStatus == 0, "\(text)")
        #expect(text.contains("[dom0 pciback] SIGUSR1 ignored: a stop that keeps guests connected needs Xen"), "\(text)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/control"))
    }
}

@Suite("the demo tour says which steps show a refusal, and why", .serialized, .enabled(if: xenpciBinary != nil, noXenpciBinary))
struct TourNarrationTests {
    @Test("on a function a host driver owns, each refusal is announced before it; the tour still ends clean")
    func refusalsAnnounced() throws {
        // A copy of the fixtures where host drivers own two functions: both are exported read-only.
        let dir = try scratchDirectory("owned")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.copyItem(atPath: q35, toPath: dir + "/sys")
        for (f, driver) in [("0000:00:03.0", "e1000"), ("0000:00:04.0", "virtio-pci")] {
            try (driver + "\n").write(toFile: "\(dir)/sys/bus/pci/devices/\(f)/driver", atomically: true, encoding: .utf8)
        }
        let r = try run(xenpciBinary!, ["demo", "--fixtures", dir + "/sys", "--hide", "(00:03.0)(00:04.0)", "--tour"])
        #expect(r.status == 0, "\(r.stderr)")
        let lines = r.stderrLines
        let refusals = lines.indices.filter { lines[$0].hasPrefix("xenpci: tour:") }
        #expect(refusals.count == 2, "the write and the MSI-X enable: \(r.stderr)")
        for i in refusals {
            // Before the refused command's echo, the announcement naming the owner and the answer to expect.
            let announced = try #require(lines[..<i].last { $0.hasPrefix("# ") })
            #expect(announced.hasPrefix("# refused on purpose (") && announced.contains(" owns 0000:00:0"), "\(announced)")
            let answer = announced.dropFirst("# refused on purpose (".count).prefix { $0 != ")" }
            #expect(lines[i].contains("backend answered \(answer)"), "\(lines[i]) is not the announced \(answer)")
        }
        #expect(r.stderr.contains("leaks: none"))
        // Where every function is writable nothing is refused, and nothing announced as such.
        let clean = try run(xenpciBinary!, ["demo", "--fixtures", q35, "--tour"])
        #expect(clean.status == 0 && clean.errorLines.isEmpty && !clean.stderr.contains("refused on purpose"))
        #expect(clean.stderr.contains("# numbers only, as pciutils prints them"), "the tour's comments are printed")
    }
}
