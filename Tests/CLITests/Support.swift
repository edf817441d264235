import Foundation
import Synchronization
import Testing
@testable import xenpci
import PCIBack
import PCIModel
import XPCI

let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
let q35 = repoRoot + "/Tests/Fixtures/qemu-q35"
let hostVirtio = repoRoot + "/Tests/Fixtures/host-virtio"

/// The pciutils lspci, when installed (`make deps` installs it).
let realLspci: String? = ["/usr/bin/lspci", "/usr/sbin/lspci", "/bin/lspci", "/sbin/lspci"].first { FileManager.default.isExecutableFile(atPath: $0) }

let noLspci: Comment = "pciutils' lspci is not installed (make deps installs it)"

/// Whether this machine has PCI devices whose whole config space we can read.
let hostSysfsUsable: Bool = (try? DeviceSource.open("/sys", kind: .host)).map { s in !s.addresses.isEmpty && (try? s.checkReadable()) != nil } ?? false
let noHostDevices: Comment = "this machine has no PCI devices readable in full in /sys (needs root)"

/// The directory of the running test bundle: the build (scratch path,
/// configuration, sanitizer) that compiled these tests put the `xenpci`
/// executable next to it. /proc/self/exe first: Bundle.main can name the
/// test runner rather than the bundle.
let testBuildDirectory: String? = {
    let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? Bundle.main.executablePath
    guard let exe else { return nil }
    return URL(fileURLWithPath: exe).resolvingSymlinksInPath().deletingLastPathComponent().path
}()

/// The command of the very build that runs these tests; nil (and the CLI
/// tests skipped, saying so) when it is not there.
let xenpciBinary: String? = testBuildDirectory.map { $0 + "/xenpci" }.flatMap {
    FileManager.default.isExecutableFile(atPath: $0) ? $0 : nil
}

/// Why the tests that run the command are skipped when `xenpciBinary` is nil.
let noXenpciBinary: Comment = "no xenpci executable next to the test bundle in \(testBuildDirectory ?? "(unknown directory)") (swift build --build-tests builds it)"

/// Where mandoc is, when installed (`make deps` installs it).
let mandoc: String? = ["/usr/bin/mandoc", "/usr/local/bin/mandoc"].first { FileManager.default.isExecutableFile(atPath: $0) }

struct RunResult {
    var status: Int32
    var stdout: String
    var stderr: String
    var stderrLines: [String] { stderr.split(separator: "\n").map(String.init) }
    /// The lines the command itself wrote as errors (events are prefixed with "[").
    var errorLines: [String] { stderrLines.filter { $0.hasPrefix("xenpci:") || $0.hasPrefix("Error:") } }
}

/// Runs a program with `input` on its standard input.
@discardableResult
/// `journal`: JOURNAL_STREAM names its standard error, as systemd does for a
/// service whose output goes to the journal.
func run(_ exe: String, _ args: [String], input: String = "", prefix: [String] = [], journal: Bool = false,
         environment: [String: String] = [:]) throws -> RunResult {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: prefix.first ?? exe)
    p.arguments = prefix.isEmpty ? args : Array(prefix.dropFirst()) + [exe] + args
    p.currentDirectoryURL = URL(fileURLWithPath: repoRoot)
    let out = Pipe(), err = Pipe(), inp = Pipe()
    var env = ProcessInfo.processInfo.environment
    env["JOURNAL_STREAM"] = nil
    if journal {
        var st = stat()
        fstat(err.fileHandleForWriting.fileDescriptor, &st)
        env["JOURNAL_STREAM"] = "\(st.st_dev):\(st.st_ino)"
    }
    p.environment = env.merging(environment) { $1 }
    p.standardOutput = out
    p.standardError = err
    p.standardInput = inp
    try p.run()
    inp.fileHandleForWriting.write(Data(input.utf8))
    try inp.fileHandleForWriting.close()
    // Read both pipes while it runs, so a full pipe never blocks it.
    let read = Mutex((o: Data(), e: Data()))
    let g = DispatchGroup()
    g.enter(); DispatchQueue.global().async { let d = out.fileHandleForReading.readDataToEndOfFile(); read.withLock { $0.o = d }; g.leave() }
    g.enter(); DispatchQueue.global().async { let d = err.fileHandleForReading.readDataToEndOfFile(); read.withLock { $0.e = d }; g.leave() }
    p.waitUntilExit()
    g.wait()
    let (o, e) = read.withLock { $0 }
    let r = RunResult(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self))
    capturedOutput.add(r.stdout + r.stderr)
    return r
}

/// Everything the commands these tests ran printed, for checks over all of
/// it (no internal names in what a user sees).
final class CapturedOutput: @unchecked Sendable {
    private let lock = NSLock()
    private var texts: [String] = []
    func add(_ s: String) { lock.lock(); texts.append(s); lock.unlock() }
    var all: [String] { lock.lock(); defer { lock.unlock() }; return texts }
}
let capturedOutput = CapturedOutput()

/// A function as lspci sees it from its config bytes alone.
func function(root: String, _ a: PCIAddress) throws -> PCIFunction {
    let data = try #require(FileManager.default.contents(atPath: "\(root)/bus/pci/devices/\(a)/config"))
    return PCIFunction(address: a, config: ConfigSpace(bytes: Array(data)))
}

func options(_ args: String...) throws -> LspciOptions { try LspciOptions(parsing: args) }

/// A demo host on `source` with a shell whose output is captured.
final class DemoRig {
    let transcript = Transcript()
    let host: MockHost
    let shell: Shell

    init(fixtures: String? = q35, topology: PCIBack.Topology = .vpci, hide: String? = nil) throws {
        let c = transcript.console
        let source = try fixtures.map { try DeviceSource.open($0, kind: .fixtures) } ?? DeviceSource.open("/sys", kind: .host)
        host = try MockHost(source: source, topology: topology, console: c)
        try host.start(hide: hide)
        shell = Shell(frontend: host.front!, host: host, console: c)
    }

    /// Runs one shell line; returns what it printed on stdout.
    func output(_ line: String) throws -> String {
        let before = transcript.stdout.count
        try shell.execute(Shell.words(line))
        return String(transcript.stdout.dropFirst(before))
    }

    /// Stops everything; nothing may leak.
    func finish(sourceLocation: SourceLocation = #_sourceLocation) {
        let leaks = host.shutdown()
        #expect(leaks.isEmpty, "leaks: \(leaks)", sourceLocation: sourceLocation)
    }
}
