import ArgumentParser
import Foundation
import PCIBack
import XenHypervisor
import PCIModel

/// `--control PATH` of the commands that talk to the running backend.
struct ControlOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("The running backend's control socket.", valueName: "PATH"))
    var control: String = ControlServer.defaultPath

    /// Sends one request and prints the reply's message (when there is one).
    /// A request that resets functions says so on stderr when it takes
    /// more than a second, and how long it took.
    @discardableResult
    func send(_ line: String, print: Bool = true) throws -> ControlReply {
        let waits = ["assignable-add": "claim and reset", "assignable-remove": "reset and release", "reload": "apply the configuration file"]
        let verb = line.split(separator: " ").first.map(String.init) ?? ""
        let t0 = ContinuousClock.now
        let note = waits[verb].map { what in
            DispatchWorkItem { Console.standard.err("xenpci: waiting for the backend to \(what) ...") }
        }
        if let note { DispatchQueue.global().asyncAfter(deadline: .now() + 1, execute: note) }
        defer {
            if let note {
                note.cancel()
                if ContinuousClock.now - t0 >= .seconds(1) { Console.standard.err("xenpci: ... done in \(humanDuration(ContinuousClock.now - t0))") }
            }
        }
        let r = try ControlClient.request(control, line)
        if print, let m = r.message, !m.isEmpty { Console.standard.out(m) }
        return r
    }
}

/// BDFs as the operator typed them, checked here so bad input is one line
/// naming it and nothing is sent; duplicates count once.
func parseFunctions(_ texts: [String], _ verb: String) throws -> [PCIAddress] {
    guard !texts.isEmpty else { throw CLIError.usage("\(verb): give at least one PCI function ([DDDD:]BB:SS.F)") }
    var out: [PCIAddress] = []
    for t in texts {
        let a = try PCIAddress(parsing: t)
        if !out.contains(a) { out.append(a) }
    }
    return out
}

struct AssignableAdd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "assignable-add",
        abstract: "Make functions assignable: the running backend claims them (as xl pci-assignable-add).",
        discussion: "All or none: when one cannot be claimed, none is.")
    @OptionGroup var control: ControlOptions
    @Flag(name: .customLong("no-strict-reset"), help: "Claim a function that has no reset method (only its saved state is restored at release).")
    var noStrictReset = false
    @Argument(help: "[DDDD:]BB:SS.F ...") var bdf: [String] = []

    func run() throws {
        let l = try parseFunctions(bdf, "assignable-add")
        try control.send((["assignable-add"] + (noStrictReset ? ["--no-strict-reset"] : []) + l.map(\.description)).joined(separator: " "))
    }
}

struct AssignableRemove: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "assignable-remove",
        abstract: "Give functions back to dom0: reset, golden state restored (as xl pci-assignable-remove).",
        discussion: "Refused, naming the guest, while a guest holds one of them (detach it first); all or none.")
    @OptionGroup var control: ControlOptions
    @Argument(help: "[DDDD:]BB:SS.F ...") var bdf: [String] = []

    func run() throws {
        let l = try parseFunctions(bdf, "assignable-remove")
        try control.send((["assignable-remove"] + l.map(\.description)).joined(separator: " "))
    }
}

struct AssignableList: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "assignable-list",
        abstract: "List the functions the running backend holds, with the guest of each (as xl pci-assignable-list).")
    @OptionGroup var control: ControlOptions
    func run() throws { try control.send("assignable-list") }
}

struct SetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "set",
        abstract: "Set a function's option in the running backend: permissive on|off.",
        discussion: "Permissive lets the guest write config space registers no field emulates (Linux pciback's permissive); it stays set for the function's next guests until changed.")
    @OptionGroup var control: ControlOptions
    @Argument(help: "[DDDD:]BB:SS.F") var bdf: String
    @Argument(help: "permissive") var setting: String
    @Argument(help: "on or off") var value: String

    func run() throws {
        let a = try PCIAddress(parsing: bdf)
        guard setting == "permissive" else { throw CLIError.usage("set: unknown setting '\(setting)' (expected permissive)") }
        guard value == "on" || value == "off" else { throw CLIError.usage("set \(a) permissive: '\(value)' is not on or off") }
        try control.send("set \(a) permissive \(value)")
    }
}

struct QuirkCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "quirk",
        abstract: "Add or remove a quirk in the running backend: one more register a guest may write, and only MASK's bits.",
        discussion: "'xenpci status' names, for each denied write, the quirk that would allow it.")
    @OptionGroup var control: ControlOptions
    @Argument(help: "add or remove") var action: String
    @Argument(help: "[DDDD:]BB:SS.F-REG:SIZE:MASK") var quirk: String

    func run() throws {
        guard action == "add" || action == "remove" else { throw CLIError.usage("quirk: '\(action)' is not add or remove") }
        let q = action == "add" ? try parseQuirk(quirk) : try PCIQuirk(parsing: quirk)
        try control.send("quirk \(action) \(q)")
    }
}

struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "The functions the running backend holds, one a line in aligned columns (as xl pci-list): name, guest, guest address, xenbus state, interrupts, reset method, denied writes.",
        discussion: "DOMAIN (a domain id or name) or BDF shows only that guest's functions, or that function. Below the table, a line for each write the backend did not let through, with the quirk that would allow it.")
    @OptionGroup var control: ControlOptions
    @Flag(help: "One line of JSON: an array, one object per function (xenpci(8), JSON OUTPUT).")
    var json = false
    @Argument(help: ArgumentHelp("Only this guest's functions (domain id or name), or only this function.", valueName: "DOMAIN|BDF"))
    var filter: String?

    func run() throws {
        var f = try control.send("status", print: false).functions ?? []
        if let filter { f = try Self.select(f, filter) }
        if json { Console.standard.out(jsonLine(f)); return }
        guard !f.isEmpty else {
            Console.standard.out(filter.map { f in "no function is assigned to " + (f.utf8.allSatisfy { (48...57).contains($0) } ? "domain \(f)" : f) }
                                 ?? "no function is assignable")
            return
        }
        Console.standard.out(Self.table(f))
    }

    /// A function by address (refused when the backend does not hold it), or
    /// a guest by domain id or name.
    static func select(_ f: [FunctionRecord], _ filter: String) throws -> [FunctionRecord] {
        if let a = try? PCIAddress(parsing: filter) {
            let hit = f.filter { $0.function == a.description }
            guard !hit.isEmpty else { throw CLIError.failure("\(a): not assignable (the backend does not hold it)") }
            return hit
        }
        if filter.utf8.allSatisfy({ (48...57).contains($0) }) {
            let d = try parseDomainID(filter)
            return f.filter { $0.guest == Int(d) }
        }
        guard filter.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else { throw CLIError.usage("status: '\(filter)' is not a domain id, a domain name or a PCI function") }
        return f.filter { $0.guestName == filter }
    }

    static func table(_ f: [FunctionRecord]) -> String {
        func name(_ r: FunctionRecord) -> String {
            guard let n = r.name else { return "\(r.vendor ?? "?"):\(r.device ?? "?")" }
            return n.count > 40 ? String(n.prefix(37)) + "..." : n
        }
        let rows = f.map { r -> [String] in
            let guest = r.guest.map { d in r.guestName.map { "\($0) (\(d))" } ?? "dom\(d)" } ?? "-"
            let irq = r.interruptMode == "intx" ? "intx (irq \(r.irq ?? 0))" : r.interruptMode == "none" ? "none" : "\(r.interruptMode ?? "?") \(r.interruptCount ?? 0)"
            let denied = (r.deniedWrites ?? []).reduce(0) { $0 + $1.count }
            return [r.function ?? "?", name(r), guest, r.guestAddress ?? "-", r.guest == nil ? "-" : r.xenbusState ?? "unknown", irq,
                    r.resetMethod ?? "-", String(denied), r.secondsSinceLastRequest.map { humanDuration(seconds: $0) + " ago" } ?? "-"]
        }
        var out = alignedColumns(["FUNCTION", "NAME", "GUEST", "GUEST ADDRESS", "XENBUS", "INTERRUPTS", "RESET", "DENIED", "LAST REQUEST"], rows)
        var notes: [String] = []
        for r in f {
            let a = r.function ?? "?"
            if r.readOnly == true { notes.append("\(a): read-only: a host driver owns it") }
            if r.permissive == true || !(r.quirks ?? []).isEmpty {
                notes.append("\(a): permissive \(r.permissive == true ? "on" : "off")" + ((r.quirks ?? []).isEmpty ? "" : "; quirks " + r.quirks!.joined(separator: " ")))
            }
            for w in r.deniedWrites ?? [] {
                notes.append("\(a): \(w.count) write\(w.count == 1 ? "" : "s") of \(w.size) byte\(w.size == 1 ? "" : "s") at \(w.offset) \(w.action); "
                             + (w.quirk.map { "quirk \($0) would allow \(w.count == 1 ? "it" : "them")" } ?? "an emulated register: no quirk can allow it"))
            }
        }
        if !notes.isEmpty { out += "\n\n" + notes.joined(separator: "\n") }
        return out
    }
}

struct ReloadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reload",
        abstract: "Have the running backend re-read its configuration file and apply the difference.",
        discussion: "Prints what changed. A file with errors changes nothing: every error is printed as FILE:LINE: message and the exit status is 78. The systemd unit's ExecReload runs this; SIGHUP does the same with the result in the log only.")
    @OptionGroup var control: ControlOptions
    func run() throws { try control.send("reload") }
}

struct CheckConfig: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config",
        abstract: "Check a configuration file as the backend would at start, without claiming or touching a function.",
        discussion: "Every error is printed as FILE:LINE: message on standard error: the syntax, and each section's function (it exists; on Xen no host driver holds it and it has a reset method unless no-strict-reset is on; its quirks fit its registers). Exit status 0 when the file is good, 78 when it is not.")
    @Argument(help: ArgumentHelp("The file to check (default /etc/xenpci.conf).", valueName: "FILE"))
    var file: String = DaemonConfig.defaultPath
    @Option(help: "Whose rules: auto (default: xen on a Xen domain, else mock), mock or xen.")
    var hypervisor: HypervisorKind = .auto
    @Option(name: .long, help: ArgumentHelp("Check against this sysfs-shaped fixture tree (the mock's rules).", valueName: "DIR"))
    var fixtures: String?
    @Option(name: .long, help: ArgumentHelp("This machine's sysfs root (default /sys).", valueName: "ROOT"))
    var sysfs: String?

    func run() throws {
        let console = Console.standard
        let target: ConfigTarget
        if fixtures == nil, try resolveHypervisor(hypervisor, console: console) == .xen {
            target = try ConfigTarget.xen(sysfsRoot: sysfs ?? "/sys")
        } else {
            target = .mock(try DeviceSource.choose(fixtures: fixtures, sysfs: sysfs, console: console))
        }
        let (c, problems) = try DaemonConfig.check(file, against: target)
        for p in problems { console.err("\(file):\(p.line): \(p.message)") }
        guard problems.isEmpty else {
            throw CLIError(message: "\(file): \(problems.count) error\(problems.count == 1 ? "" : "s"); a backend would start with none of its functions",
                           status: DaemonConfig.errorStatus)
        }
        let names = c.entries.map(\.address.description).joined(separator: " ")
        console.out("\(file): no errors; \(c.entries.count) function\(c.entries.count == 1 ? "" : "s")\(names.isEmpty ? "" : ": " + names) (checked against \(target.root))")
    }
}
