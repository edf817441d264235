import ArgumentParser
import Foundation
import Logging
import PCIBack
import XenHypervisor
import XenToolstack
import XenReal
import XenMock
import XPCI
import XenPCIABI
import PCIModel

struct XenPCICommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "xenpci",
        abstract: "Xen PCI pass-through: pciback(4) and xpci(4) in Swift",
        discussion: "See xenpci(8), xenpci-pciback(4) and xenpci-xpci(4).",
        version: xenpciVersion,
        subcommands: [Demo.self, List.self, Frontend.self, Backend.self, Attach.self, Detach.self,
                      AssignableAdd.self, AssignableRemove.self, AssignableList.self, SetCommand.self, QuirkCommand.self, StatusCommand.self,
                      ReloadCommand.self, CheckConfig.self])
}

enum HypervisorKind: String, ExpressibleByArgument, CaseIterable { case auto, mock, xen }

/// Options shared by the commands that take devices from a tree.
struct DeviceOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Take devices from this sysfs-shaped fixture tree.", valueName: "DIR"))
    var fixtures: String?
    @Option(name: .long, help: ArgumentHelp("This machine's sysfs root (default /sys; without readable PCI devices, the committed fixtures are used).", valueName: "ROOT"))
    var sysfs: String?
    @Option(name: .long, help: ArgumentHelp("Devices to claim, pciback.hide syntax: (BB:SS.F)(DDDD:BB:SS.F)(BB:SS.*) (default: every function but bridges).", valueName: "LIST"))
    var hide: String?
    @Option(name: .long, help: ArgumentHelp("vpci (one virtual root, default) or passthrough (real addresses).", valueName: "TOPOLOGY"))
    var topology: String = "vpci"

    /// Validates what a parser cannot: one line per problem, before anything starts.
    func validated() throws -> PCIBack.Topology {
        guard let t = PCIBack.Topology(rawValue: topology) else { throw CLIError.usage("--topology '\(topology)': expected vpci or passthrough") }
        if let h = hide { _ = try parseHideList(h) }
        return t
    }
}

/// Lines from a script file, `-` (standard input) or standard input.
struct LineInput {
    var name: String
    var interactive: Bool
    var next: () -> String?

    static func open(script: String?) throws -> LineInput {
        if let s = script, s != "-" {
            guard FileManager.default.fileExists(atPath: s) else { throw CLIError(message: "--script \(s): no such file", status: CLIError.noInput) }
            // Read a line at a time: FILE may be a FIFO whose writer waits for
            // each answer before sending the next command.
            guard let fp = fopen(s, "r") else { throw CLIError.permission("--script \(s): cannot be read (\(String(cString: strerror(errno))))") }
            var done = false
            return LineInput(name: s, interactive: false) {
                guard !done else { return nil }
                var buf: UnsafeMutablePointer<CChar>?
                var cap = 0
                defer { free(buf) }
                let n = getline(&buf, &cap, fp)
                guard n >= 0, let b = buf else { done = true; fclose(fp); return nil }
                var line = String(decoding: UnsafeRawBufferPointer(start: b, count: n), as: UTF8.self)
                if line.hasSuffix("\n") { line.removeLast() }
                return line
            }
        }
        return LineInput(name: "stdin", interactive: script == nil && isatty(STDIN_FILENO) == 1) { readLine(strippingNewline: true) }
    }
}

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run pciback and xpci on the mock hypervisor, then a shell on the guest's bus.",
        discussion: "dom0 claims this machine's PCI devices (read-only where a host driver owns them; in-memory snapshots, never the hardware) or the committed fixtures, dom1's frontend attaches, the xenbus states are shown as they change, and the guest's bus is printed. Commands come from --script, --tour or standard input; 'help' lists them.")

    @OptionGroup var devices: DeviceOptions
    @Option(name: .long, help: ArgumentHelp("Run the commands in FILE ('-': standard input) instead of an interactive shell; stop at the first failing one.", valueName: "FILE"))
    var script: String?
    @Flag(name: .long, help: "Run a short built-in tour of the shell's commands.")
    var tour = false
    @Flag(name: .long, help: "Listings as JSON (one line each) on standard output; events stay on standard error.")
    var json = false

    func run() throws {
        let topology = try devices.validated()
        let input = tour ? nil : try LineInput.open(script: script)
        let status = try runDemo(console: .standard, topology: topology, input: input)
        if status != 0 { throw ExitCode(status) }
    }

    /// The whole demo; returns the exit status. Tests call this.
    func runDemo(console: Console, topology: PCIBack.Topology, input: LineInput?) throws -> Int32 {
        let source = try DeviceSource.choose(fixtures: devices.fixtures, sysfs: devices.sysfs, console: console)
        console.err("xenpci demo: mock hypervisor with dom0 (pciback) and dom1 (xpci); devices from \(source.kind == .host ? "this machine" : "fixtures") at \(source.root)")
        let host = try MockHost(source: source, topology: topology, console: console)
        try host.start(hide: devices.hide)
        guard let front = host.front else { return CLIError.failed }
        let shell = Shell(frontend: front, host: host, console: console, json: json)
        var status: Int32 = 0
        do {
            if script == nil {
                console.err("[dom1 xpci]    the guest's bus:")
                try shell.lspci([])
            }
            if let input {
                status = shell.run(source: input.name, interactive: input.interactive, echo: !input.interactive && !json, next: input.next)
            } else {
                var lines = Tour.lines(front: front, host: host)[...]
                // The tour shows refusals too (read-only devices), announced: they do not fail it.
                _ = shell.run(source: "tour", interactive: false, echo: !json, stopOnError: false, narrate: true) { lines.popFirst() }
            }
        } catch {
            console.err("xenpci: \(CLIError.from(error).message)", priority: .error)
            status = CLIError.from(error).status
        }
        let leaks = host.shutdown()
        for l in leaks { console.err("[mock] leak: \(l)") }
        guard leaks.isEmpty else {
            console.err("xenpci: \(leaks.count) hypervisor resource(s) leaked", priority: .error)
            return CLIError.software
        }
        console.err("[mock] frontend detached, backend stopped, devices released; leaks: none")
        return status
    }
}

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the devices pciback claims, as NetBSD's /kern/xen/pci/<BDF> shows them.")
    @OptionGroup var devices: DeviceOptions
    @Option(help: "auto (default: xen on a Xen domain, else mock), mock (claim from the device tree in this process) or xen (ask the running backend).")
    var hypervisor: HypervisorKind = .auto
    @Flag(help: "One line of JSON.")
    var json = false
    @OptionGroup var control: ControlOptions

    func run() throws {
        let topology = try devices.validated()
        let console = Console.standard
        if try resolveHypervisor(hypervisor, console: console) == .xen {
            // On Xen the devices are the running backend's: it is asked.
            if hypervisor == .xen { _ = try openXenHypervisor() }
            let r = try ControlClient.request(control.control, "list")
            console.out(json ? jsonLine(r.listing ?? []) : r.message ?? "")
            return
        }
        // A running backend's functions are what an administrator means,
        // unless the devices were named.
        if devices.fixtures == nil && devices.sysfs == nil && devices.hide == nil {
            do {
                let r = try ControlClient.request(control.control, "list")
                console.out(json ? jsonLine(r.listing ?? []) : r.message ?? "")
                return
            } catch let e as CLIError where e.status == CLIError.unavailable && e.message.contains("is not running") {
                // None runs: the functions are claimed here, as the backend would.
            }
        }
        let source = try DeviceSource.choose(fixtures: devices.fixtures, sysfs: devices.sysfs, console: console)
        let host = try MockHost(source: source, topology: topology, console: Console(out: { _ in }, err: { _ in }))
        defer { _ = host.shutdown() }
        try host.claim(hide: devices.hide)
        let l = host.listing()
        console.out(json ? jsonLine(l.map(FunctionRecord.listing)) : l.map(\.text).joined())
    }
}

struct Frontend: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Attach xpci to the backend and run the shell on the guest's bus (in a Xen guest).")
    @Option(help: "auto (default) or xen (the mock hypervisor exists only inside 'xenpci demo').")
    var hypervisor: HypervisorKind = .auto
    @Option(help: ArgumentHelp("Commands from FILE ('-': standard input).", valueName: "FILE"))
    var script: String?
    @Option(help: "device/pci/<instance> (default 0).")
    var instance: Int = 0
    @Option(help: ArgumentHelp("How long to wait for the backend to connect (the bus scan included), in seconds.", valueName: "SECONDS"))
    var timeout: Int = 60
    @Option(help: ArgumentHelp("How long one request waits for the backend's reply, in seconds.", valueName: "SECONDS"))
    var requestTimeout: Int = 10
    @Flag(help: "Listings as JSON.")
    var json = false

    func run() throws {
        guard instance >= 0 else { throw CLIError.usage("--instance \(instance) is negative") }
        guard timeout > 0, requestTimeout > 0 else { throw CLIError.usage("--timeout and --request-timeout must be positive") }
        let input = try LineInput.open(script: script)
        guard try resolveHypervisor(hypervisor, console: .standard, xenOnly: true) == .xen else {
            throw CLIError.usage("frontend: the mock hypervisor lives inside one process; 'xenpci demo' runs the frontend and this shell on it")
        }
        let hv = try openXenHypervisor()
        // A whole bus is read while connecting: under emulation (QEMU TCG)
        // that takes seconds, so the waits are longer than the library's.
        let front = try XPCIFrontend(hypervisor: hv, options: .init(requestTimeout: .seconds(requestTimeout),
                                                                    connectTimeout: .seconds(timeout), instance: instance))
        let t0 = ContinuousClock.now
        try front.attach()
        defer { try? front.detach() }
        try front.waitConnected()
        Console.standard.err("[xpci] \(front.frontendPath) connected to \(front.backendPath) in \(humanDuration(ContinuousClock.now - t0)): \(front.devices.count) function(s)")
        let shell = Shell(frontend: front, host: nil, console: .standard, json: json)
        let status = shell.run(source: input.name, interactive: input.interactive, echo: false, next: input.next)
        if status != 0 { throw ExitCode(status) }
    }
}

struct Backend: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run pciback until SIGINT or SIGTERM, printing xenbus state changes; SIGHUP re-reads the config file.",
        discussion: "On the mock hypervisor the backend claims the device tree (or the --config file's functions) and offers what it claims at start to dom1, whose frontend is not started: use 'xenpci demo' for both. The running backend is administered through its control socket: xenpci assignable-add, assignable-remove, assignable-list, set, quirk, status.")
    @OptionGroup var devices: DeviceOptions
    @Option(help: "auto (default: xen on a Xen domain, else mock), mock or xen.")
    var hypervisor: HypervisorKind = .auto
    /// EX_TEMPFAIL: the exit status of a stop for a restart (SIGUSR1).
    static let restartStatus: Int32 = 75
    @Option(name: .long, help: ArgumentHelp("On Xen: the file that lets a restarted backend take running guests over without resetting their devices (default /run/xenpci/state.json; 'none' for no file: a function a running guest holds is then left alone).", valueName: "FILE"))
    var state: String?
    @Option(name: .long, help: ArgumentHelp("The functions to claim at start, with their options (default on Xen: /etc/xenpci.conf when it exists; on the mock: none). SIGHUP re-reads it.", valueName: "FILE"))
    var config: String?
    @Option(name: .long, help: ArgumentHelp("The control socket to serve (default /run/xenpci/control; 'none' for none).", valueName: "PATH"))
    var control: String = ControlServer.defaultPath
    @Flag(help: "On Xen: time every request on the service thread (poll wake, handling, reply and notify) and log the percentiles at stop.")
    var profile = false
    @Option(name: .long, help: ArgumentHelp("On Xen, experimental: after serving a request, watch the request flags of the guests just served this many microseconds before unmasking their ports and blocking, with no system call, so a guest's next request is taken without a wake-up. Costs dom0 CPU; 0 (the default) unmasks and blocks at once.", valueName: "US"))
    var spinUs: Int = 0

    func run() throws {
        let started = StartGate()
        do { try runBackend(started) } catch where !started.ready && !(error is ExitCode) {
            // systemd restarts on failure (Restart=on-failure): a start that
            // cannot succeed would loop. Before READY=1 the status is one the
            // unit does not restart on: 64, 77, 78 when the error says so, else 69.
            let e = CLIError.from(error)
            throw Self.startStatuses.contains(e.status) ? e : CLIError(message: e.message, status: CLIError.unavailable)
        }
    }

    /// The exit statuses of a start that failed: the unit's RestartPreventExitStatus.
    static let startStatuses: Set<Int32> = [CLIError.usageStatus, CLIError.unavailable, CLIError.noPerm, DaemonConfig.errorStatus]

    /// A --hide that names nothing claimable is bad usage, not a failure.
    private func hideError(_ error: Error) -> Error {
        let e = CLIError.from(error)
        return e.status == CLIError.failed ? CLIError.usage("--hide: \(e.message)") : e
    }

    private func runBackend(_ started: StartGate) throws {
        let topology = try devices.validated()
        let console = Console.standard
        let kind = try resolveHypervisor(hypervisor, console: console)
        let configPath = config ?? (kind == .xen ? DaemonConfig.defaultPath : nil)
        // The default file is optional; one named with --config is not.
        let readConfig = configPath.map { config != nil || FileManager.default.fileExists(atPath: $0) } ?? false
        if kind == .xen {
            guard devices.fixtures == nil else { throw CLIError.usage("--fixtures: on Xen the backend serves this machine's devices (use --sysfs ROOT)") }
            let target = try ConfigTarget.xen(sysfsRoot: devices.sysfs ?? "/sys")
            // Checked whole (syntax and functions) before anything is claimed:
            // every problem is reported and nothing is claimed.
            let configFile = readConfig ? try DaemonConfig.loadChecked(configPath!, against: target) : nil
            return try runXen(topology: topology, console: console, configPath: configPath, config: configFile, target: target, started: started)
        }
        let source = try DeviceSource.choose(fixtures: devices.fixtures, sysfs: devices.sysfs, console: console)
        let target = ConfigTarget.mock(source)
        let configFile = readConfig ? try DaemonConfig.loadChecked(configPath!, against: target) : nil
        // SIGUSR1 is caught too, to refuse it: left to its default it would
        // kill the process and leave the control socket behind.
        let term = TerminationSignal(plannedRestart: true, reload: true) // before any thread starts: no signal is lost
        let host = try MockHost(source: source, topology: topology, console: console)
        let box = DaemonBox()
        let server: ControlServer?
        do { server = try box.server(control) } catch where control == ControlServer.defaultPath {
            // The mock's default socket is a convenience; --control makes it required.
            console.err("[dom0 pciback] no control socket: \(CLIError.from(error).message)", priority: .warning)
            server = nil
        } catch {
            _ = host.shutdown()
            throw error
        }
        let daemon = AdminDaemon(host: host, configPath: configPath, config: configFile, target: target)
        box.daemon = daemon
        do {
            do { try host.claim(hide: devices.hide, defaultSelection: configFile == nil) } catch { throw hideError(error) }
            try daemon.applyConfigAtStart()
            try host.serve(frontend: false)
        } catch {
            server?.stop()
            _ = host.shutdown()
            throw error
        }
        server?.start()
        started.ready = true
        sdNotify("READY=1")
        console.err("[dom0 pciback] running\(server.map { " (control socket \($0.path))" } ?? ""); SIGINT or SIGTERM stops it, SIGHUP re-reads the config file")
        while true {
            let sig = term.wait()
            if sig == SIGUSR1 {
                console.err("[dom0 pciback] SIGUSR1 ignored: a stop that keeps guests connected needs Xen; on the mock the guests live in this process (SIGTERM stops it)", priority: .warning)
                continue
            }
            guard sig == SIGHUP else { break }
            sdNotify("RELOADING=1")
            sdNotify("READY=1\nSTATUS=\(daemon.reload().lines.last ?? "")")
        }
        sdNotify("STOPPING=1")
        server?.stop()
        console.err("[dom0 pciback] stopping")
        let leaks = host.shutdown()
        for l in leaks { console.err("[mock] leak: \(l)", priority: .error) }
        if !leaks.isEmpty { throw ExitCode(CLIError.software) }
        console.err("[dom0 pciback] stopped; devices released; leaks: none")
    }

    /// On the real Xen: the host's own devices (sysfs, no snapshot), served
    /// to whichever guests the toolstack gives them until SIGINT or SIGTERM.
    func runXen(topology: PCIBack.Topology, console: Console, configPath: String?, config: DaemonConfig?, target: ConfigTarget, started: StartGate) throws {
        let hv = try openXenHypervisor()
        // Signals are taken before anything is claimed, so a SIGTERM during
        // start-up still releases everything.
        let term = TerminationSignal(plannedRestart: true, reload: true)
        LoggingSystem.bootstrap { label in
            Console.standard.journal ? JournalLogHandler() : StreamLogHandler.standardError(label: label) as LogHandler
        }
        // Bound before anything is claimed: a second backend stops here.
        let box = DaemonBox()
        let server = try box.server(control)
        let statePath = state ?? "/run/xenpci/state.json"
        let host: XenBackendHost
        do {
            guard (0...10_000).contains(spinUs) else { throw CLIError.usage("--spin-us \(spinUs): from 0 to 10000 microseconds") }
            host = try XenBackendHost(hypervisor: hv, topology: topology, sysfsRoot: devices.sysfs ?? "/sys",
                                      statePath: statePath == "none" ? nil : statePath, spin: .microseconds(spinUs))
        } catch { server?.stop(); throw error }
        let log = host.log
        if profile { host.back.profile.enable() }
        let daemon = AdminDaemon(host: host, configPath: configPath, config: config, target: target)
        box.daemon = daemon
        do {
            if let hide = devices.hide { do { try host.claim(hide: hide) } catch { throw hideError(error) } }
            try daemon.applyConfigAtStart()
            try host.start()
        } catch {
            server?.stop()
            host.stop()
            throw error
        }
        let n = host.back.listing().count
        if n == 0 { log.info("no function is assignable yet: name them in \(configPath ?? DaemonConfig.defaultPath) or add them with xenpci assignable-add") }
        server?.start()
        started.ready = true
        sdNotify("READY=1\nSTATUS=\(n) function(s) assignable")
        log.info("running on Xen as dom\((try? hv.domid()).map(String.init) ?? "?")\(server.map { ", control socket \($0.path)" } ?? ""); SIGINT or SIGTERM stops it, SIGUSR1 stops it leaving guests connected, SIGHUP re-reads the config file")
        var sig = term.wait()
        while sig == SIGHUP {
            sdNotify("RELOADING=1")
            let summary = daemon.reload()
            sdNotify("READY=1\nSTATUS=\(summary.lines.last ?? "")")
            sig = term.wait()
        }
        sdNotify("STOPPING=1")
        server?.stop()
        if sig == SIGUSR1 {
            log.info("stopping for a restart: guests stay connected")
            host.stop(keepGuests: true)
            log.info("stopped; guests, devices and interrupts left as they are: the next xenpci backend takes them over")
            throw ExitCode(Self.restartStatus) // a service manager restarts on it (RestartForceExitStatus=75)
        }
        log.info("stopping")
        host.stop()
        if profile { log.info("[dom0 pciback] \(host.back.profile.report())") }
        log.info("stopped; guests closed, grants unmapped, ports unbound, devices reset and released")
    }
}

/// Whether the backend has started (READY=1): failures before it have
/// their own exit statuses.
final class StartGate { var ready = false }

/// The daemon the control socket serves, set once it exists: the socket is
/// bound first (a second backend must stop before it claims anything) and
/// served only after the claims.
final class DaemonBox: @unchecked Sendable {
    var daemon: AdminDaemon?

    /// The control socket at `path`, nil for 'none'.
    func server(_ path: String) throws -> ControlServer? {
        guard path != "none" else { return nil }
        return try ControlServer(path: path, handler: { [self] line in
            self.daemon?.handle(line) ?? ControlReply(ok: false, error: "the backend is starting", status: CLIError.failed)
        }, tick: { [self] in
            self.daemon?.sample()
            self.daemon?.enforce()
        })
    }
}

/// SIGINT and SIGTERM (and SIGUSR1, SIGHUP when asked for), caught from creation on (a signal that arrives before
/// `wait` is not lost).
final class TerminationSignal {
    private var set = sigset_t()

    /// Blocks SIGINT and SIGTERM in this thread and every thread started
    /// after it, so a signal that comes early stays pending for `wait`
    /// instead of being lost (a dispatch source is armed asynchronously).
    /// `plannedRestart`: SIGUSR1 too (the daemon stops leaving guests connected).
    /// `reload`: SIGHUP too (the daemon re-reads its config file and waits again).
    init(plannedRestart: Bool = false, reload: Bool = false) {
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        if plannedRestart { sigaddset(&set, SIGUSR1) }
        if reload { sigaddset(&set, SIGHUP) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// The signal that came.
    @discardableResult
    func wait() -> Int32 {
        var sig: Int32 = 0
        _ = sigwait(&set, &sig)
        return sig
    }
}

/// What `attach` and `detach` take: `xl pci-attach` / `xl pci-detach`.
struct ToolstackArguments: ParsableArguments {
    @Option(help: "auto (default) or xen (on the mock, use 'hotadd' and 'hotremove' inside 'xenpci demo').")
    var hypervisor: HypervisorKind = .auto
    @Argument(help: "The guest: its domain id or its name (as xl takes them).") var domid: String
    @Argument(help: "The host functions, [DDDD:]BB:SS.F ...") var bdf: [String]
}

struct Attach: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Hot-add a host PCI function to a running guest (as xl pci-attach).")
    @OptionGroup var target: ToolstackArguments
    func run() throws { try toolstackCommand(target.hypervisor, target.domid, target.bdf, add: true) }
}

struct Detach: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Hot-remove a PCI function from a running guest (as xl pci-detach).")
    @OptionGroup var target: ToolstackArguments
    func run() throws { try toolstackCommand(target.hypervisor, target.domid, target.bdf, add: false) }
}

/// A domain id as the operator types it: ASCII decimal below the reserved
/// ids (DOMID_FIRST_RESERVED, 0x7FF0); `DomID(_:)` alone takes a sign.
func parseDomainID(_ text: String) throws -> DomID {
    guard !text.isEmpty, text.utf8.count <= 5, text.utf8.allSatisfy({ (48...57).contains($0) }), let d = DomID(text), d < 0x7FF0 else {
        throw CLIError.usage("domain id '\(text)' is not a domain (0...32751)")
    }
    return d
}

/// A domain named by id or by name (`/local/domain/N/name`, as xl looks it up).
func domainID(_ text: String, _ xs: XenStore) throws -> DomID {
    if text.utf8.first.map({ (48...57).contains($0) }) == true { return try parseDomainID(text) }
    let matches = ((try? xs.directory("/local/domain")) ?? []).compactMap { n -> DomID? in
        guard let d = DomID(n), (try? xs.readIfPresent("/local/domain/\(n)/name")) ?? nil == text else { return nil }
        return d
    }
    guard let d = matches.first else { throw CLIError.usage("no domain named '\(text)' (xl list shows the running ones)") }
    guard matches.count == 1 else { throw CLIError.usage("domain name '\(text)' is taken by \(matches.count) domains: give its id") }
    return d
}

func toolstackCommand(_ kind: HypervisorKind, _ domidText: String, _ bdfs: [String], add: Bool) throws {
    if domidText.utf8.first.map({ (48...57).contains($0) }) == true { _ = try parseDomainID(domidText) } // a bad id says so before anything opens
    guard !bdfs.isEmpty else { throw CLIError.usage("\(add ? "attach" : "detach"): give at least one PCI function") }
    let devices = try bdfs.map { try PCIAddress(parsing: $0) }
    guard try resolveHypervisor(kind, console: .standard, xenOnly: true) == .xen else {
        throw CLIError.usage("\(add ? "attach" : "detach"): the mock hypervisor lives inside one process; use '\(add ? "hotadd" : "hotremove")' inside 'xenpci demo'")
    }
    let hv = try openXenHypervisor()
    let xs = try hv.openXenStore()
    defer { xs.close() }
    // Domain 0 is allowed: the loopback case, a frontend in the backend's own domain.
    let dom = try domainID(domidText, xs)
    // libxl's grants for PV pass-through go through libxenctrl.
    let ctrl: XenCtrl
    do { ctrl = try XenCtrl() } catch { throw CLIError(message: "no Xen: libxenctrl: \(error)", status: CLIError.unavailable) }
    let t = XenToolstack(xenstore: xs, permissions: ctrl, backendDomid: try hv.domid())
    // The guest must answer Reconfiguring; a loaded or emulated guest can take
    // well over libxl's usual 10 s.
    t.timeout = .seconds(30)
    if add { try t.attach(domid: dom, devices: devices) } else { try t.detach(domid: dom, devices: devices) }
}
