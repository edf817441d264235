import Foundation
import PCIBack
import XenHypervisor
import PCIModel
import XenPCIABI

/// What the administrator's daemon needs of the host the backend runs on:
/// the mock (`MockHost`) or Xen (`XenBackendHost`).
protocol DaemonHost: AnyObject {
    var back: PCIBack { get }
    /// Opens a function of this host for claiming (on Xen: enabled in dom0
    /// too, for its interrupt routing; undone by `released`).
    func openFunction(_ a: PCIAddress) throws -> PCIDeviceAccess
    /// Whether the function has a reset method (the strict reset policy).
    func hasResetMethod(_ access: PCIDeviceAccess) -> Bool
    /// Functions no longer claimed, or whose claim failed after `openFunction`.
    func released(_ addresses: [PCIAddress])
    func logInfo(_ s: String)
    func logError(_ s: String)
    /// A xenstore value dom0 may read (a guest's name, a backend's state); nil when absent.
    func xenstoreRead(_ path: String) -> String?
    /// How a claimed function is reset: Linux's reset_method, or "none".
    func resetMethod(_ a: PCIAddress) -> String
}

/// The running backend's administration: run-time claims and
/// releases, permissive and quirks, status, the config file and its reload.
/// One administrator's command at a time (`lock`, held across a command's
/// claims and resets, never taken by the backend's service thread). Backend
/// events ask for `enforce`, which runs at once when no command is in
/// progress, else when that command ends: the service thread never waits
/// for a command that may be waiting for it.
final class AdminDaemon {
    let host: DaemonHost
    var back: PCIBack { host.back }
    /// The file SIGHUP re-reads (nil: none was given and the default is absent).
    let configPath: String?
    private(set) var config: DaemonConfig?
    /// The options the administrator set, by function: applied again after
    /// the backend clears them (a function leaving its guest, an export
    /// taking permissive from the toolstack's options).
    private(set) var options: [PCIAddress: FunctionOptions] = [:]
    /// Request counts seen by `sample`, and when they last changed: the time
    /// since a function's last request without touching the request path.
    private var activity: [PCIAddress: (ops: Int, at: ContinuousClock.Instant?)] = [:]
    private var reportedEnforceErrors: Set<String> = []
    /// How long each function's last claim took (its reset), for the reply;
    /// touched only under the command lock (clients are served concurrently).
    private var claimTimes: [PCIAddress: Duration] = [:]
    private let lock = NSLock()
    private let pendingLock = NSLock()
    private var enforcePending = false

    /// The functions a reloaded file is checked against before anything
    /// changes (nil: its syntax only).
    let configTarget: ConfigTarget?

    init(host: DaemonHost, configPath: String?, config: DaemonConfig?, target: ConfigTarget? = nil) {
        self.host = host
        self.configPath = configPath
        self.config = config
        self.configTarget = target
        let back = host.back
        let previous = back.onEvent
        back.onEvent = { [weak self] e in
            previous?(e)
            switch e {
            case .error, .notice: break
            default: self?.requestEnforce()
            }
        }
    }

    /// Runs `body` as the one command in progress; an `enforce` asked for
    /// meanwhile runs before the lock is given up (or just after, when it
    /// was asked for in between).
    private func command<T>(_ body: () throws -> T) rethrows -> T {
        lock.lock()
        defer {
            while takePending() { enforceLocked() }
            lock.unlock()
            runPendingEnforce()
        }
        return try body()
    }

    private func takePending() -> Bool {
        pendingLock.lock(); defer { pendingLock.unlock() }
        let p = enforcePending
        enforcePending = false
        return p
    }

    /// From a backend event (the service thread, or the thread of the
    /// command that caused it): never waits for the command lock.
    private func requestEnforce() {
        pendingLock.lock(); enforcePending = true; pendingLock.unlock()
        runPendingEnforce()
    }

    private func runPendingEnforce() {
        while true {
            pendingLock.lock()
            let pending = enforcePending
            pendingLock.unlock()
            guard pending, lock.try() else { return } // the holder runs it as it ends
            while takePending() { enforceLocked() }
            lock.unlock()
        }
    }

    // MARK: claims

    /// Claims the config file's functions with their options: all, or none
    /// (an error names FILE:LINE). Functions already claimed (the hide list)
    /// only get their options.
    func applyConfigAtStart() throws {
        guard let c = config else { return }
        try command {
            var claimed: [PCIAddress] = []
            do {
                for e in c.entries {
                    if !back.isClaimed(e.address) {
                        try claimOne(e.address, e.options, at: e)
                        claimed.append(e.address)
                    } else {
                        try apply(e.address, e.options, from: e)
                    }
                    options[e.address] = e.options
                }
            } catch {
                try? back.releaseAll(claimed)
                host.released(claimed)
                options = [:]
                throw error
            }
            if !c.entries.isEmpty { host.logInfo("[dom0 pciback] \(c.path): \(c.entries.count) function(s) assignable") }
        }
    }

    /// Opens, checks the reset policy, claims and sets the options of one
    /// function; on failure nothing of it stays.
    private func claimOne(_ a: PCIAddress, _ o: FunctionOptions, at e: DaemonConfig.Entry?) throws {
        let access: PCIDeviceAccess
        do { access = try host.openFunction(a) } catch { throw located(e, error) }
        do {
            if !o.noStrictReset && !host.hasResetMethod(access) {
                throw CLIError.failure("\(a): has no reset method (strict reset); set no-strict-reset = on in its section, or use 'assignable-add --no-strict-reset', to claim it with only its saved state restored")
            }
            let t0 = ContinuousClock.now
            try back.claim(access)
            claimTimes[a] = ContinuousClock.now - t0
            host.logInfo("[dom0 pciback] \(a): claimed: reset (\(host.resetMethod(a))) and golden state saved in \(humanDuration(claimTimes[a]!))")
        } catch {
            host.released([a])
            throw located(e, error)
        }
        do { try apply(a, o, from: e) } catch {
            try? back.releaseAll([a])
            host.released([a])
            throw error
        }
    }

    /// Sets `o` on a claimed function: its quirks replace the current ones.
    private func apply(_ a: PCIAddress, _ o: FunctionOptions, from e: DaemonConfig.Entry?, keeping kept: [PCIQuirk] = []) throws {
        try back.setQuirks(a, kept)
        // One at a time: a quirk the device refuses is named by its own line.
        var have = kept
        for (i, q) in o.quirks.enumerated() where !have.contains(q) {
            have.append(q)
            do { try back.setQuirks(a, have) } catch { throw located(e, error, line: e?.quirkLines[safe: i]) }
        }
        if o.permissive { try back.setPermissive(a, true) }
    }

    /// An error about a config entry, as FILE:LINE (the section's line unless given).
    private func located(_ e: DaemonConfig.Entry?, _ error: Error, line: Int? = nil) -> Error {
        guard let e, let path = config?.path ?? configPath else { return error }
        let c = CLIError.from(error)
        if c.message.hasPrefix(path + ":") { return c } // located already
        // The file named something the function refuses: a configuration error.
        return CLIError(message: "\(path):\(line ?? e.line): [\(e.address)]: \(c.message)", status: DaemonConfig.errorStatus)
    }

    /// `assignable-add`: every function claimed, or none.
    /// Returns how long each claim (its reset) took.
    @discardableResult
    func addAssignable(_ addresses: [PCIAddress], noStrictReset: Bool) throws -> [PCIAddress: Duration] {
        try command {
            for a in addresses where back.isClaimed(a) { throw CLIError.failure("\(a): already assignable") }
            var done: [PCIAddress] = []
            do {
                for a in addresses {
                    var o = options[a] ?? config?.entry(a)?.options ?? FunctionOptions()
                    if noStrictReset { o.noStrictReset = true }
                    try claimOne(a, o, at: nil)
                    done.append(a)
                    if o != FunctionOptions() { options[a] = o }
                }
            } catch {
                try? back.releaseAll(done)
                host.released(done)
                throw error
            }
            for a in done { host.logInfo("[dom0 pciback] \(a): assignable (claimed at run time)") }
            return claimTimes.filter { done.contains($0.key) }
        }
    }

    /// `assignable-remove`: every function released (reset, golden state),
    /// or none: refused, naming the guest, while a guest holds one.
    @discardableResult
    func removeAssignable(_ addresses: [PCIAddress]) throws -> Duration {
        try command {
            let t0 = ContinuousClock.now
            try back.releaseAll(addresses)
            let took = ContinuousClock.now - t0
            host.released(addresses)
            for a in addresses {
                options[a] = nil
                activity[a] = nil
                host.logInfo("[dom0 pciback] \(a): released at run time: reset, golden state restored (\(humanDuration(took)) for \(addresses.count == 1 ? "it" : "all \(addresses.count)"))")
            }
            return took
        }
    }

    func setPermissive(_ a: PCIAddress, _ on: Bool) throws {
        try command {
            try back.setPermissive(a, on)
            options[a, default: FunctionOptions()].permissive = on
            host.logInfo("[dom0 pciback] \(a): permissive \(on ? "on" : "off")")
        }
    }

    func addQuirk(_ q: PCIQuirk) throws {
        try command {
            try back.addQuirk(q)
            options[q.address, default: FunctionOptions()].quirks.append(q)
            host.logInfo("[dom0 pciback] \(q.address): quirk \(q) added")
        }
    }

    func removeQuirk(_ q: PCIQuirk) throws {
        try command {
            try back.removeQuirk(q)
            options[q.address]?.quirks.removeAll { $0 == q }
            host.logInfo("[dom0 pciback] \(q.address): quirk \(q) removed")
        }
    }

    /// Puts the administrator's options back where the backend cleared them.
    /// Asked for by every backend event, and called once a second.
    func enforce() { command { enforceLocked() } }

    private func enforceLocked() {
        do {
            for (a, o) in options.sorted(by: { $0.key < $1.key }) {
                guard let perm = back.permissive(of: a), let cur = back.quirks(of: a) else { continue }
                if o.permissive && !perm { try? back.setPermissive(a, true) }
                let missing = o.quirks.filter { !cur.contains($0) }
                guard !missing.isEmpty else { continue }
                do { try back.setQuirks(a, cur + missing) } catch {
                    // Reported once: it fails the same way every time.
                    if reportedEnforceErrors.insert("\(a) \(error)").inserted {
                        host.logError("[dom0 pciback] \(a): cannot put its quirks back: \(error)")
                    }
                }
            }
        }
    }

    // MARK: reload (`xenpci reload`, SIGHUP)

    /// What a reload did: the difference it applied, or why nothing changed.
    struct ReloadResult {
        var ok: Bool
        /// One summary line when `ok`; else every error (FILE:LINE: ...) and
        /// a last line saying nothing changed.
        var lines: [String]
        var text: String { lines.joined(separator: "\n") }
    }

    /// Re-reads the config file and applies only the difference: functions
    /// new in it claimed, functions gone from it released unless a guest
    /// holds them, changed options applied; unchanged entries are not
    /// touched. The file is checked whole first (syntax and functions, as at
    /// start); a bad file, or a claim or option that fails, changes nothing.
    /// The result is logged too.
    @discardableResult
    func reload() -> ReloadResult {
        guard let path = configPath else {
            let line = "reload: no config file (start the backend with --config FILE, or create \(DaemonConfig.defaultPath) before it starts)"
            host.logError("[dom0 pciback] \(line)")
            return ReloadResult(ok: false, lines: [line])
        }
        func refused(_ error: Error) -> ReloadResult {
            let lines = userMessage(error).split(separator: "\n").map(String.init) + ["reload \(path): nothing changed"]
            for l in lines { host.logError("[dom0 pciback] \(l)") }
            return ReloadResult(ok: false, lines: lines)
        }
        let new: DaemonConfig
        do {
            new = try configTarget.map { try DaemonConfig.loadChecked(path, against: $0) } ?? DaemonConfig.load(path)
        } catch {
            return refused(error)
        }
        return command {
            let old = config ?? DaemonConfig(path: path)
            var undo: [() -> Void] = []
            var claimed: [PCIAddress] = [], changed: [PCIAddress] = [], released: [PCIAddress] = [], held: [String] = []
            var newOptions = options
            let saved = config
            config = new // errors below name the new file's lines
            do {
                for e in new.entries {
                    let a = e.address
                    let before = old.entry(a)?.options
                    // Unchanged: not touched (not even claimed again after an assignable-remove).
                    if let before, before == e.options { continue }
                    if !back.isClaimed(a) {
                        try claimOne(a, e.options, at: e)
                        undo.append { [back, host] in try? back.releaseAll([a]); host.released([a]) }
                        claimed.append(a)
                        newOptions[a] = e.options
                        continue
                    }
                    let perm = back.permissive(of: a)!, quirks = back.quirks(of: a)!
                    undo.append { [back] in try? back.setQuirks(a, quirks); try? back.setPermissive(a, perm) }
                    // Quirks the old entry set and the new one lacks go; run-time ones stay.
                    let dropped = (before?.quirks ?? []).filter { !e.options.quirks.contains($0) }
                    let kept = quirks.filter { !dropped.contains($0) }
                    var o = e.options
                    o.permissive = false // set below only when the file changed it
                    try apply(a, o, from: e, keeping: kept)
                    if e.options.permissive != (before?.permissive ?? false) { try back.setPermissive(a, e.options.permissive) }
                    o.quirks = back.quirks(of: a) ?? []
                    o.permissive = before?.permissive == e.options.permissive ? options[a]?.permissive ?? perm : e.options.permissive
                    newOptions[a] = o
                    changed.append(a)
                }
            } catch {
                for u in undo.reversed() { u() }
                config = saved
                return refused(error)
            }
            for e in old.entries where new.entry(e.address) == nil && back.isClaimed(e.address) {
                if let h = back.guestHolding(e.address) {
                    held.append("\(e.address) (dom\(h.guest))")
                    continue
                }
                do {
                    try back.releaseAll([e.address])
                    host.released([e.address])
                    released.append(e.address)
                    newOptions[e.address] = nil
                    activity[e.address] = nil
                } catch {
                    host.logError("[dom0 pciback] reload: \(e.address): \(error)")
                }
            }
            options = newOptions
            func list(_ l: [PCIAddress]) -> String { l.isEmpty ? "none" : l.map(\.description).joined(separator: " ") }
            let unchanged = new.entries.count - claimed.count - changed.count
            var line = "reloaded \(path): claimed \(list(claimed)); released \(list(released)); options changed \(list(changed)); \(unchanged) unchanged"
            if !held.isEmpty { line += "; still held, left claimed: \(held.joined(separator: " "))" }
            host.logInfo("[dom0 pciback] \(line)")
            return ReloadResult(ok: true, lines: [line])
        }
    }

    // MARK: status

    /// Notes which functions' request counts moved since the last call:
    /// called once a second by the control thread, and by `status`.
    func sample() { command { sampleLocked() } }

    private func sampleLocked() {
        do {
            let now = ContinuousClock.now
            var seen: [PCIAddress: (ops: Int, at: ContinuousClock.Instant?)] = [:]
            for s in back.statistics() {
                let n = s.ops.values.reduce(0, +)
                if let prev = activity[s.address], n >= prev.ops {
                    seen[s.address] = (n, n == prev.ops ? prev.at : now)
                } else {
                    seen[s.address] = (n, n > 0 ? now : nil) // first seen (or claimed again)
                }
            }
            activity = seen
        }
    }

    func status() -> [FunctionRecord] {
        command {
            sampleLocked()
            let now = ContinuousClock.now
            return back.adminStatus().map { s in
                let i = s.info
                var r = FunctionRecord(keys: FunctionRecord.statusKeys)
                r.function = i.address.description
                r.name = FunctionRecord.name(i.vendorID, i.deviceID)
                r.vendor = hex(i.vendorID, 4)
                r.device = hex(i.deviceID, 4)
                r.readOnly = i.readOnly
                r.guest = i.guest.map(Int.init)
                r.guestName = i.guest.flatMap { host.xenstoreRead("/local/domain/\($0)/name") }
                r.guestAddress = i.guestAddress?.description
                r.xenbusState = i.guest.flatMap { host.xenstoreRead("\(back.backendRoot)/\($0)/0/state") }
                    .flatMap { XenState(xenstore: $0) }.map { $0.description.lowercased() }
                // INTx only when the function has a line at all (irq 0: none).
                let mode = s.interruptMode == "intx" && i.irq == 0 ? "none" : s.interruptMode
                r.interruptMode = mode
                r.interruptCount = mode == "msix" ? s.msixPirqs.count : mode == "msi" ? s.msiPirqs.count : mode == "intx" ? 1 : 0
                r.irq = i.irq == 0 ? nil : i.irq
                r.msiPirqs = s.msiPirqs
                r.msixPirqs = s.msixPirqs
                r.resetMethod = host.resetMethod(i.address)
                r.setCounters(s.statistics)
                r.configured = config?.entry(i.address) != nil
                r.secondsSinceLastRequest = activity[i.address]?.at.map { Int((now - $0).components.seconds) }
                return r
            }
        }
    }

    // MARK: the control protocol

    /// One request line -> one reply (docs: xenpci(8), CONTROL SOCKET).
    func handle(_ line: String) -> ControlReply {
        do { return try dispatch(line.split(separator: " ", omittingEmptySubsequences: true).map(String.init)) } catch {
            let e = CLIError.from(error)
            return ControlReply(ok: false, error: e.message, status: e.status)
        }
    }

    private func dispatch(_ w: [String]) throws -> ControlReply {
        guard let verb = w.first else { throw CLIError.usage("empty request") }
        let args = w.dropFirst()
        switch verb {
        case "assignable-add":
            let strict = args.first != "--no-strict-reset"
            let l = try parseFunctions(Array(strict ? args : args.dropFirst()), verb)
            let took = try addAssignable(l, noStrictReset: !strict)
            return ControlReply(message: l.map { a in
                "\(a): assignable (reset by \(host.resetMethod(a))\(took[a].map { " in " + humanDuration($0) } ?? ""))"
            }.joined(separator: "\n"))
        case "assignable-remove":
            let l = try parseFunctions(Array(args), verb)
            let took = try removeAssignable(l)
            return ControlReply(message: l.map { "\($0): released (reset, golden state restored)" }.joined(separator: "\n")
                                + (l.count > 1 ? "\n" : " ") + "in \(humanDuration(took))")
        case "assignable-list", "status":
            guard args.isEmpty else { throw CLIError.usage("\(verb) takes no arguments") }
            let f = status()
            if verb == "status" { return ControlReply(functions: f) }
            return ControlReply(message: f.map { s in (s.function ?? "?") + (s.guest.map { " dom\($0) as \(s.guestAddress ?? "?")" } ?? "") }.joined(separator: "\n"),
                                functions: f)
        case "reload":
            guard args.isEmpty else { throw CLIError.usage("reload takes no arguments") }
            let r = reload()
            return r.ok ? ControlReply(message: r.text) : ControlReply(ok: false, error: r.text, status: DaemonConfig.errorStatus)
        case "list":
            guard args.isEmpty else { throw CLIError.usage("list takes no arguments") }
            let l = back.listing()
            return ControlReply(message: l.map(\.text).joined(), listing: l.map(FunctionRecord.listing))
        case "set":
            guard args.count == 3 else { throw CLIError.usage("set: expected BDF permissive on|off") }
            let a = try PCIAddress(parsing: args[args.startIndex])
            guard args[args.startIndex + 1] == "permissive" else { throw CLIError.usage("set: unknown setting '\(args[args.startIndex + 1])' (expected permissive)") }
            guard let on = ["on": true, "off": false][args[args.startIndex + 2]] else {
                throw CLIError.usage("set \(a) permissive: '\(args[args.startIndex + 2])' is not on or off")
            }
            try setPermissive(a, on)
            return ControlReply(message: "\(a): permissive \(on ? "on" : "off")")
        case "quirk":
            guard args.count == 2, ["add", "remove"].contains(args[args.startIndex]) else { throw CLIError.usage("quirk: expected add|remove BDF-REG:SIZE:MASK") }
            let text = args[args.startIndex + 1]
            let q = args[args.startIndex] == "add" ? try parseQuirk(text) : try PCIQuirk(parsing: text)
            if args[args.startIndex] == "add" { try addQuirk(q) } else { try removeQuirk(q) }
            return ControlReply(message: "\(q.address): quirk \(q) \(args[args.startIndex] == "add" ? "added" : "removed")")
        default:
            throw CLIError.usage("unknown request '\(verb)' (assignable-add, assignable-remove, assignable-list, set, quirk, status, list, reload)")
        }
    }
}

/// The reply to one control request: one line of JSON.
struct ControlReply: Codable {
    var ok = true
    var error: String?
    var status: Int32?
    /// What the client prints (text mode).
    var message: String?
    var functions: [FunctionRecord]?
    var listing: [FunctionRecord]?
}

extension Array {
    subscript(safe i: Int) -> Element? { indices.contains(i) ? self[i] : nil }
}
