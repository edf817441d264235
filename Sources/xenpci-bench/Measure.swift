import Foundation

/// CLOCK_MONOTONIC in nanoseconds.
@inline(__always) func nowNS() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

func median(_ xs: [Double]) -> Double {
    guard !xs.isEmpty else { return .nan }
    let s = xs.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

/// The q-th quantile (0...1) of samples, nearest rank.
func quantile(_ sorted: [UInt32], _ q: Double) -> Double {
    guard !sorted.isEmpty else { return .nan }
    let i = min(sorted.count - 1, max(0, Int((q * Double(sorted.count)).rounded(.up)) - 1))
    return Double(sorted[i])
}

/// Resident set size of this process in bytes (/proc/self/statm, field 2).
func residentBytes() -> Int {
    guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
    let f = text.split(separator: " ")
    guard f.count > 1, let pages = Int(f[1]) else { return 0 }
    return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
}

/// Time and CPU per request of one run: wall clock, and the user and
/// system CPU of the whole process (both sides of the round trip).
struct RunTime {
    var ns: Double
    var userNS: Double
    var systemNS: Double
}

/// User and system CPU of this process so far (every thread), in nanoseconds.
func cpuTimes() -> (user: Double, system: Double) {
    var r = rusage()
    getrusage(RUSAGE_SELF.rawValue, &r)
    func ns(_ t: timeval) -> Double { Double(t.tv_sec) * 1e9 + Double(t.tv_usec) * 1e3 }
    return (ns(r.ru_utime), ns(r.ru_stime))
}

/// Runs the C reference once: `<path> <mode> <requests> <warmup>`, which
/// prints "<mode> <ns per round trip> <requests> <checksum> <user CPU ns>
/// <system CPU ns>" (CPU per round trip, both threads).
func runReference(_ path: String, _ mode: String, requests: Int) throws -> RunTime {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = [mode, String(requests), String(max(1000, requests / 10))]
    let out = Pipe()
    p.standardOutput = out
    try p.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    let line = String(decoding: data, as: UTF8.self).split(whereSeparator: \.isWhitespace)
    guard p.terminationStatus == 0, line.count >= 6, let ns = Double(line[1]), let user = Double(line[4]), let system = Double(line[5]) else {
        throw BenchError("\(path) \(mode) failed (status \(p.terminationStatus)): '\(String(decoding: data, as: UTF8.self))'")
    }
    return RunTime(ns: ns, userNS: user, systemNS: system)
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ s: String) { description = s }
}

/// What the machine is, for the table and the JSON.
func machineDescription() -> [String: String] {
    func first(_ file: String, _ key: String) -> String? {
        guard let t = try? String(contentsOfFile: file, encoding: .utf8) else { return nil }
        for l in t.split(separator: "\n") where l.hasPrefix(key) {
            return l.split(separator: ":", maxSplits: 1).last.map { $0.trimmingCharacters(in: .whitespaces) }
        }
        return nil
    }
    var u = utsname()
    uname(&u)
    let release = withUnsafeBytes(of: &u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    let machine = withUnsafeBytes(of: &u.machine) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    return [
        "cpu": first("/proc/cpuinfo", "model name") ?? machine,
        "online_cpus": String(sysconf(Int32(_SC_NPROCESSORS_ONLN))),
        "kernel": release,
        "memory_kib": first("/proc/meminfo", "MemTotal").map { $0.replacingOccurrences(of: " kB", with: "") } ?? "?",
        "load_average_at_start": (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))
            .map { $0.split(separator: " ").prefix(3).joined(separator: " ") } ?? "?",
    ]
}
