import Foundation
import Synchronization
import Testing
@testable import XenReal
import XenHypervisor

let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

/// Runs a program to completion, its output (stdout and stderr) collected
/// through a file. posix_spawn rather than Foundation's Process: the child
/// starts with an empty signal mask and default SIGTERM (so a daemon it
/// leaves behind can be stopped), and nothing waits on a pipe a daemon
/// might inherit.
func run(_ path: String, _ args: [String]) throws -> (status: Int32, output: String) {
    let out = FileManager.default.temporaryDirectory.appendingPathComponent("xenpci-run-\(getpid())-\(UUID().uuidString.prefix(8))").path
    defer { unlink(out) }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    var attr = posix_spawnattr_t()
    posix_spawnattr_init(&attr)
    defer { posix_spawnattr_destroy(&attr) }
    var none = sigset_t(), defaults = sigset_t()
    sigemptyset(&none)
    sigemptyset(&defaults)
    sigaddset(&defaults, SIGTERM)
    sigaddset(&defaults, SIGINT)
    sigaddset(&defaults, SIGPIPE)
    posix_spawnattr_setsigmask(&attr, &none)
    posix_spawnattr_setsigdefault(&attr, &defaults)
    posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
    let argv = ([path] + args).map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, path, &actions, &attr, argv, environ)
    guard rc == 0 else { throw XenError(rc, "posix_spawn", path) }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    let text = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
    let exited = status & 0x7f == 0
    return (exited ? (status >> 8) & 0xff : 128 + (status & 0x7f), text)
}

func errnoOf(_ body: () throws -> Void) -> Int32? {
    do { try body(); return nil } catch let e as XenError { return e.code } catch { return -1 }
}

/// A temporary directory removed at deinit.
final class TempDir: Sendable {
    let path: String
    init(_ name: String) {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("xenpci-\(name)-\(getpid())-\(UUID().uuidString.prefix(8))").path
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    func write(_ rel: String, _ text: String) {
        let p = path + "/" + rel
        try! FileManager.default.createDirectory(atPath: (p as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try! text.write(toFile: p, atomically: false, encoding: .utf8)
    }
    func write(_ rel: String, bytes: [UInt8]) {
        let p = path + "/" + rel
        try! FileManager.default.createDirectory(atPath: (p as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: p, contents: Data(bytes))
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// One real xenstored for the whole test process, started on first use by
/// tools/xenstored-test/start-xenstored.sh and stopped at exit.
final class Xenstored: Sendable {
    static let shared = Xenstored()
    let socket: String?
    let reason: String
    private let work = TempDir("xenstored")

    private init() {
        let script = repoRoot.appendingPathComponent("tools/xenstored-test/start-xenstored.sh").path
        guard let r = try? run("/bin/bash", [script, work.path]) else {
            socket = nil; reason = "could not run \(script)"; return
        }
        let lines = r.output.split(separator: "\n").map(String.init)
        func value(_ key: String) -> String? { lines.first { $0.hasPrefix(key + "=") }.map { String($0.dropFirst(key.count + 1)) } }
        if r.status == 0, let s = value("SOCKET"), let pid = value("PID").flatMap({ pid_t($0) }) {
            socket = s
            reason = "xenstored \(value("XENSTORED") ?? "") at \(s)"
            xenstoredAtExit.withLock { $0 = (pid, work.path) }
            atexit {
                let (pid, work) = xenstoredAtExit.withLock { $0 }
                if pid > 0 { kill(pid, SIGTERM) }
                if let w = work { try? FileManager.default.removeItem(atPath: w) }
            }
        } else if r.status == 2 {
            socket = nil
            reason = lines.first { $0.hasPrefix("SKIP: ") }.map { String($0.dropFirst(6)) } ?? r.output
        } else {
            socket = nil
            reason = "start-xenstored.sh failed (status \(r.status)): \(r.output)"
        }
    }

    /// A connection to it, or the test is cancelled with the reason.
    func connect() throws -> XenStoreConnection {
        guard let s = socket else { try Test.cancel(Comment(rawValue: "no real xenstored: \(reason)")) }
        return try XenStoreConnection(path: s)
    }
}

/// What the exit handler stops and removes (a C function pointer: no captures).
let xenstoredAtExit = Mutex<(pid: pid_t, work: String?)>((0, nil))
