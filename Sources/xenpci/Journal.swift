import Foundation
import Logging

/// syslog(3) priorities, as journald reads them from a "<N>" line prefix.
enum Priority: Int {
    case critical = 2, error = 3, warning = 4, notice = 5, info = 6, debug = 7

    init(_ level: Logger.Level) {
        switch level {
        case .trace, .debug: self = .debug
        case .info: self = .info
        case .notice: self = .notice
        case .warning: self = .warning
        case .error: self = .error
        case .critical: self = .critical
        }
    }
}

/// Whether standard error is connected to the systemd journal: systemd sets
/// JOURNAL_STREAM to the device and inode of the stream it gave the service,
/// and a child whose stderr was redirected elsewhere inherits the variable, so
/// both must match. Then each line starts with its priority (sd-daemon(3)'s
/// "<3>"), which `journalctl -p` filters on; elsewhere lines stay plain.
enum Journal {
    static let isStandardError: Bool = {
        guard let v = ProcessInfo.processInfo.environment["JOURNAL_STREAM"] else { return false }
        return matches(v, fd: STDERR_FILENO)
    }()

    /// "DEV:INODE" (decimal) names the file `fd` is open on.
    static func matches(_ value: String, fd: Int32) -> Bool {
        let parts = value.split(separator: ":")
        guard parts.count == 2, let dev = UInt64(parts[0]), let ino = UInt64(parts[1]) else { return false }
        var st = stat()
        guard fstat(fd, &st) == 0 else { return false }
        return UInt64(st.st_dev) == dev && UInt64(st.st_ino) == ino
    }

    /// Every line of `s` prefixed with `<N>`.
    static func prefixed(_ s: String, _ p: Priority) -> String {
        let body = s.hasSuffix("\n") ? String(s.dropLast()) : s
        return body.split(separator: "\n", omittingEmptySubsequences: false).map { "<\(p.rawValue)>\($0)\n" }.joined()
    }
}

/// swift-log into the journal: the message with its priority; journald adds
/// the time, the unit and the process.
struct JournalLogHandler: LogHandler {
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) {
        Console.standard.err("\(event.message)", priority: Priority(event.level))
    }
}
