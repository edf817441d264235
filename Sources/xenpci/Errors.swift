import Foundation
import PCIBack
import XPCI
import XenHypervisor
import PCIModel
import XenPCIABI

/// A failure the command reports in one line, with a sysexits(3) status.
struct CLIError: Error, CustomStringConvertible {
    var message: String
    var status: Int32

    var description: String { message }

    static let ok: Int32 = 0
    static let failed: Int32 = 1       // an operation failed or was refused
    static let usageStatus: Int32 = 64 // EX_USAGE: bad BDF, hide list, offset, size, value
    static let noInput: Int32 = 66     // EX_NOINPUT: missing fixture tree or script
    static let unavailable: Int32 = 69 // EX_UNAVAILABLE: no Xen
    static let software: Int32 = 70    // EX_SOFTWARE: something leaked
    static let noPerm: Int32 = 77      // EX_NOPERM

    static func usage(_ m: String) -> CLIError { CLIError(message: m, status: usageStatus) }
    static func failure(_ m: String) -> CLIError { CLIError(message: m, status: failed) }
    static func permission(_ m: String) -> CLIError { CLIError(message: m, status: noPerm) }

    /// Any error the drivers throw, as one line and a status.
    static func from(_ error: Error) -> CLIError {
        switch error {
        case let e as CLIError: return e
        case let e as ConfigErrors: return CLIError(message: e.description, status: DaemonConfig.errorStatus)
        case let e as PCIAddressError: return .usage(e.description)
        case let e as HideListError: return .usage(e.description)
        case PCIBackError.badQuirk(let m): return .usage("quirk: \(m)")
        case let e as XPCIError:
            switch e {
            case .badArgument: return .usage(e.description)
            case .backend(.accessDenied, _, _): return .permission(e.description)
            default: return .failure(e.description)
            }
        case let e as XenError where e.code == EACCES || e.code == EPERM: return .permission(e.description)
        default: return .failure(String(describing: error))
        }
    }
}

/// An error as the one line (or, for a config file, lines) a user reads.
func userMessage(_ error: Error) -> String { CLIError.from(error).message }

/// Writes lines from several threads without interleaving them.
final class Console: @unchecked Sendable {
    private let lock = NSLock()
    private let outSink: (String) -> Void
    private let errSink: (String) -> Void
    /// Lines to standard error carry their syslog priority (the journal).
    let journal: Bool

    init(out: @escaping (String) -> Void, err: @escaping (String) -> Void, journal: Bool = false) {
        outSink = out
        errSink = err
        self.journal = journal
    }

    /// Standard output and standard error of the process.
    static let standard = Console(out: { s in FileHandle.standardOutput.write(Data(s.utf8)) },
                                  err: { s in FileHandle.standardError.write(Data(s.utf8)) },
                                  journal: Journal.isStandardError)

    func out(_ s: String) { lock.lock(); outSink(s.hasSuffix("\n") || s.isEmpty ? s : s + "\n"); lock.unlock() }
    /// A line (or lines) for standard error: events are info, errors error.
    func err(_ s: String, priority: Priority = .info) {
        let text = journal ? Journal.prefixed(s, priority) : s.hasSuffix("\n") ? s : s + "\n"
        lock.lock(); errSink(text); lock.unlock()
    }
    /// Raw text to stderr (progress lines rewritten with \r).
    func errRaw(_ s: String) { lock.lock(); errSink(s); lock.unlock() }
}

/// A collecting console, for tests and for capturing a command's output.
final class Transcript: @unchecked Sendable {
    private let lock = NSLock()
    private var o = "", e = ""
    var stdout: String { lock.lock(); defer { lock.unlock() }; return o }
    var stderr: String { lock.lock(); defer { lock.unlock() }; return e }
    lazy var console = Console(out: { [unowned self] s in lock.lock(); o += s; lock.unlock() },
                               err: { [unowned self] s in lock.lock(); e += s; lock.unlock() })
}
