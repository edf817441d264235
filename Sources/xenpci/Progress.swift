import Foundation

/// Progress of a long operation on standard error: a line rewritten with
/// `\r` when stderr is a terminal, a line every `interval` otherwise. Quiet
/// for operations that finish before `delay`.
final class Progress {
    let label: String
    let total: Int
    let console: Console
    let tty: Bool
    let delay: Duration
    let interval: Duration
    private let start = ContinuousClock.now
    private var lastShown: ContinuousClock.Instant?
    private var done = 0
    private var shown = false

    init(_ label: String, total: Int, console: Console = .standard, tty: Bool = isatty(STDERR_FILENO) == 1,
         delay: Duration = .milliseconds(300), interval: Duration = .seconds(1)) {
        self.label = label
        self.total = total
        self.console = console
        self.tty = tty
        self.delay = delay
        self.interval = interval
    }

    private var line: String {
        let pct = total > 0 ? " (\(done * 100 / total)%)" : ""
        return "\(label): \(done)/\(total)\(pct)"
    }

    /// One more item done; `detail` names it.
    func step(_ detail: String = "") {
        done += 1
        let now = ContinuousClock.now
        guard now - start >= delay else { return }
        if tty {
            console.errRaw("\r\u{1B}[K\(line) \(detail)")
            shown = true
        } else if lastShown.map({ now - $0 >= interval }) ?? true {
            console.err("\(line) \(detail)")
            lastShown = now
            shown = true
        }
    }

    /// The final count, if anything was shown.
    func finish() {
        guard shown else { return }
        if tty { console.errRaw("\r\u{1B}[K") }
        let ms = (ContinuousClock.now - start).components
        console.err("\(label): \(done)/\(total) done in \(ms.seconds).\(String(format: "%03d", ms.attoseconds / 1_000_000_000_000_000))s")
    }
}
