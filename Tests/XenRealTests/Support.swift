import Foundation
import Testing
@testable import XenReal

let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

func run(_ path: String, _ args: [String], env: [String: String]? = nil) throws -> (status: Int32, output: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = args
    if let env { p.environment = ProcessInfo.processInfo.environment.merging(env) { $1 } }
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = pipe
    try p.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
}

func errnoOf(_ body: () throws -> Void) -> Int32? {
    do { try body(); return nil } catch let e as XenError { return e.code } catch { return -1 }
}

/// A temporary directory removed at deinit.
final class TempDir {
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
        FileManager.default.createFile(atPath: p, contents: Data(bytes))
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// One real xenstored for the whole test process, started on first use by
/// tools/xenstored-test/start-xenstored.sh and stopped at exit.
final class Xenstored: @unchecked Sendable {
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
            xenstoredPid = pid
            atexit { if xenstoredPid > 0 { kill(xenstoredPid, SIGTERM) } }
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

nonisolated(unsafe) var xenstoredPid: pid_t = 0
