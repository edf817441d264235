import Foundation
import PCIBack
import PCIModel
import XPCI
import XenPCIABI
import PCIHost

/// What the shell can ask of the host side. Inside `xenpci demo` the mock
/// host answers; against a real backend (`xenpci frontend`) there is none
/// and the dom0 commands say so.
protocol HostControls: AnyObject {
    func hotAdd(_ host: PCIAddress) throws -> PCIAddress
    func hotRemove(_ host: PCIAddress) throws -> PCIAddress
    func raiseAER(_ host: PCIAddress, _ cmd: PCIOpCommand, channel: PCIBack.ChannelState) throws -> Int32
    func backendStatistics() -> [DeviceStatistics]
    func listing() -> [ClaimedDeviceInfo]
    func xenstore(under path: String) -> String
    func addQuirk(_ q: PCIQuirk) throws
    func setPermissive(_ a: PCIAddress, _ on: Bool) throws
}

/// The commands a user types or pipes in, over any `XPCIFrontend`: lspci,
/// read/write in setpci's spirit, MSI/MSI-X, hot-add/remove, AER, stats.
final class Shell {
    let front: XPCIFrontend
    let host: HostControls?
    let console: Console
    var json: Bool
    var formatter = LspciFormatter()

    init(frontend: XPCIFrontend, host: HostControls?, console: Console, json: Bool = false) {
        front = frontend
        self.host = host
        self.console = console
        self.json = json
    }

    static let help = """
        lspci [-n|-nn] [-v] [-x|-xxx|-xxxx] [-s [[[[DDDD]:]BB]:][SS][.[F]]] [--json]
                                       the guest's view of the bus, as pciutils' lspci prints it
        read BDF REG SIZE              read 1, 2 or 4 bytes (SIZE 1|2|4|b|w|l; REG hex or a setpci name)
        write BDF REG SIZE VALUE       write them (VALUE hex)
        msi enable|disable BDF         MSI through the backend (prints the pirq)
        msix enable|disable BDF [N]    MSI-X with N vectors (default 1)
        hotadd HOSTBDF                 dom0: assign a host function to the guest (xl pci-attach)
        hotremove HOSTBDF              dom0: take it back (xl pci-detach)
        aer HOSTBDF [detected|mmio|slotreset|resume] [normal|frozen|failure]
                                       dom0: report a PCIe error to the guest's AER handler
        quirk [DDDD:]BB:SS.F-REG:SIZE:MASK
                                       dom0: let the guest write MASK bits of one more register (as 'stats' suggests)
        permissive HOSTBDF on|off      dom0: pass unhandled registers through (cleared when the device leaves the guest)
        stats [--json]                 per device: ops, errors, refused writes with their quirk line, timeouts
        list [--json]                  dom0: claimed devices, /kern/xen/pci style
        xenstore [PATH]                dom0: the store under PATH (default the PCI directories)
        bench BDF [COUNT]              time COUNT conf_read round trips (default 10000)
        help                           this text
        quit                           leave the shell
        """

    // MARK: running

    /// Runs lines from `next` until EOF or `quit`. A script (not
    /// interactive) stops at the first failing command: its error is
    /// printed as `xenpci: NAME:LINE: message` and its status returned.
    /// `narrate`: comment lines are printed too (the tour's explanations).
    func run(source name: String, interactive: Bool, echo: Bool, stopOnError: Bool = true, narrate: Bool = false, next: () -> String?) -> Int32 {
        var n = 0
        var status = CLIError.ok
        while true {
            if interactive { console.errRaw("xenpci> ") }
            guard let line = next() else { if interactive { console.errRaw("\n") }; return interactive ? CLIError.ok : status }
            n += 1
            let words = Self.words(line)
            if narrate && echo, line.hasPrefix("# ") { console.err(line) }
            guard let cmd = words.first else { continue }
            if cmd == "quit" || cmd == "exit" { return interactive ? CLIError.ok : status }
            if echo { console.err("xenpci> " + line.trimmingCharacters(in: .whitespaces)) } // as sh -x: stdout stays the output
            do {
                try execute(words)
            } catch {
                let e = CLIError.from(error)
                console.err(interactive ? "xenpci: \(e.message)" : "xenpci: \(name):\(n): \(e.message)", priority: .error)
                if !interactive && stopOnError { return e.status }
                status = e.status
            }
        }
    }

    /// Words of a line; `#` starts a comment.
    static func words(_ line: String) -> [String] {
        let code = line.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        return code.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" }).map(String.init)
    }

    func execute(_ w: [String]) throws {
        guard let command = w.first else { return } // a blank or comment line
        let args = Array(w.dropFirst())
        switch command {
        case "lspci": try lspci(args)
        case "read": try read(args)
        case "write": try write(args)
        case "msi", "msix": try msi(command == "msix", args)
        case "hotadd", "hot-add": try hotplug(add: true, args)
        case "hotremove", "hot-remove": try hotplug(add: false, args)
        case "aer": try aer(args)
        case "stats": try stats(args)
        case "quirk":
            guard args.count == 1 else { throw CLIError.usage("usage: quirk [DDDD:]BB:SS.F-REG:SIZE:MASK") }
            try needHost("quirk").addQuirk(try parseQuirk(args[0]))
        case "permissive":
            guard args.count == 2, args[1] == "on" || args[1] == "off" else { throw CLIError.usage("usage: permissive HOSTBDF on|off") }
            try needHost("permissive").setPermissive(try Self.address(args[0]), args[1] == "on")
        case "list": try list(args)
        case "xenstore": try xenstore(args)
        case "bench": try bench(args)
        case "help": console.out(Self.help)
        default: throw CLIError.usage("unknown command '\(command)' (type 'help')")
        }
    }

    // MARK: arguments

    static func address(_ s: String) throws -> PCIAddress { try PCIAddress(parsing: s) }

    /// A function of the guest's bus.
    func guestDevice(_ s: String) throws -> PCIFunction {
        let a = try Self.address(s)
        guard let f = front.device(a) else {
            throw CLIError.failure("\(a): no such device on the guest's bus (see 'lspci')")
        }
        return f
    }

    func needHost(_ what: String) throws -> HostControls {
        guard let h = host else { throw CLIError.usage("\(what): a dom0 command; this shell runs in the guest against a real backend") }
        return h
    }

    static let registerNames: [String: (Int, Int)] = [
        "VENDOR_ID": (0x00, 2), "DEVICE_ID": (0x02, 2), "COMMAND": (0x04, 2), "STATUS": (0x06, 2),
        "REVISION": (0x08, 1), "CLASS_PROG": (0x09, 1), "CLASS_DEVICE": (0x0A, 2), "CACHE_LINE_SIZE": (0x0C, 1),
        "LATENCY_TIMER": (0x0D, 1), "HEADER_TYPE": (0x0E, 1), "BIST": (0x0F, 1),
        "BASE_ADDRESS_0": (0x10, 4), "BASE_ADDRESS_1": (0x14, 4), "BASE_ADDRESS_2": (0x18, 4),
        "BASE_ADDRESS_3": (0x1C, 4), "BASE_ADDRESS_4": (0x20, 4), "BASE_ADDRESS_5": (0x24, 4),
        "SUBSYSTEM_VENDOR_ID": (0x2C, 2), "SUBSYSTEM_ID": (0x2E, 2), "ROM_ADDRESS": (0x30, 4),
        "CAPABILITY_LIST": (0x34, 1), "INTERRUPT_LINE": (0x3C, 1), "INTERRUPT_PIN": (0x3D, 1),
        "MIN_GNT": (0x3E, 1), "MAX_LAT": (0x3F, 1),
    ]

    /// `REG` is hex (0x optional) or a setpci register name, optionally
    /// with setpci's `.b`/`.w`/`.l` width; SIZE is 1, 2, 4, b, w or l.
    static func register(_ reg: String, _ sizeText: String?) throws -> (offset: Int, size: Int) {
        var name = Substring(reg), size: Int?
        if let dot = reg.lastIndex(of: "."), let s = width(reg[reg.index(after: dot)...]) {
            name = reg[..<dot]
            size = s
        }
        var offset: Int
        if let (o, natural) = registerName(name) {
            offset = o
            size = size ?? natural
        } else {
            let h = name.lowercased().hasPrefix("0x") ? name.dropFirst(2) : name
            guard h.utf8.count <= 4, let o = parseASCIIHex(h).map(Int.init) else {
                throw CLIError.usage("offset '\(reg)' is not a hex number or a register name (COMMAND, STATUS, BASE_ADDRESS_0...)")
            }
            offset = o
        }
        if let t = sizeText {
            guard let s = width(Substring(t)) else { throw CLIError.usage("size '\(t)' is not 1, 2 or 4 (or b, w, l)") }
            size = s
        }
        guard let s = size else { throw CLIError.usage("no size: give SIZE (1, 2 or 4) or REG.b/.w/.l") }
        // The backend would answer these with XEN_PCI_ERR_invalid_offset: the
        // message names the error in the words its answers are printed with.
        guard offset < 0x1000 else { throw CLIError.usage("invalid offset: 0x\(hex(offset, 1)) is outside the 4096-byte config space") }
        guard offset % s == 0 else { throw CLIError.usage("invalid offset: 0x\(hex(offset, 2)) is not aligned to its size \(s)") }
        offset += 0
        return (offset, s)
    }

    /// A setpci register name, any case, ASCII only: `uppercased()` maps
    /// "ſ" to "S" and "ı" to "I", which would let "ſtatus" through.
    static func registerName(_ s: Substring) -> (Int, Int)? {
        s.utf8.allSatisfy({ $0 < 0x80 }) ? registerNames[s.uppercased()] : nil
    }

    static func width(_ s: Substring) -> Int? {
        switch s {
        case "1", "b", "B": return 1
        case "2", "w", "W": return 2
        case "4", "l", "L": return 4
        default: return nil
        }
    }

    static func value(_ s: String, size: Int) throws -> UInt32 {
        let h = s.lowercased().hasPrefix("0x") ? s.dropFirst(2) : Substring(s)
        guard let v = parseASCIIHex(h) else { throw CLIError.usage("value '\(s)' is not a hex number of at most 8 digits") }
        guard size == 4 || v >> (8 * UInt32(size)) == 0 else {
            throw CLIError.usage("value 0x\(hex(v, 1)) does not fit in \(size) byte\(size == 1 ? "" : "s")")
        }
        return v
    }

    // MARK: commands

    /// The function as it is now: config space re-read through the backend
    /// (as lspci reads it), BAR sizes from the scan.
    func live(_ f: PCIFunction, bytes: Int) throws -> PCIFunction {
        var g = f
        var out: [UInt8] = []
        out.reserveCapacity(bytes)
        for o in stride(from: 0, to: min(bytes, f.config.size), by: 4) {
            let v: UInt32
            do { v = try front.configRead(f.address, offset: o, size: 4) } catch XPCIError.backend { v = 0xFFFF_FFFF }
            withUnsafeBytes(of: v.littleEndian) { out += $0 }
        }
        // Bytes not re-read keep the scan's values (capability walks need 256).
        g.config.bytes = out + f.config.bytes.dropFirst(out.count)
        return g
    }

    func lspci(_ args: [String]) throws {
        var o = try LspciOptions(parsing: args)
        o.json = o.json || json
        let fs = front.devices.filter { o.selector?.matches($0.address) ?? true }
        let need = o.hexBytes == 4096 || o.verbose ? 4096 : o.hexBytes == 256 ? 256 : 64
        let live = try fs.map { try self.live($0, bytes: need) }
        var fmt = formatter
        fmt.showDomain = live.contains { $0.address.segment != 0 }
        if o.json {
            console.out(jsonLine(fmt.json(live, o)))
        } else {
            console.out(fmt.render(live, o))
        }
    }

    func read(_ args: [String]) throws {
        guard args.count == 3 || (args.count == 2 && args[1].contains(".")) || args.count == 2 && Self.registerName(Substring(args[1])) != nil else {
            throw CLIError.usage("usage: read BDF REG SIZE")
        }
        let f = try guestDevice(args[0])
        let (off, size) = try Self.register(args[1], args.count == 3 ? args[2] : nil)
        let v = try front.configRead(f.address, offset: off, size: size)
        if json {
            console.out(jsonLine(["slot": f.address.description, "offset": "0x" + hex(off, 2), "size": String(size), "value": "0x" + hex(v, size * 2)]))
        } else {
            console.out(hex(v, size * 2))
        }
    }

    func write(_ args: [String]) throws {
        guard args.count == 4 || args.count == 3 else { throw CLIError.usage("usage: write BDF REG SIZE VALUE") }
        let f = try guestDevice(args[0])
        let (off, size) = try Self.register(args[1], args.count == 4 ? args[2] : nil)
        let v = try Self.value(args[args.count - 1], size: size)
        try front.configWrite(f.address, offset: off, size: size, value: v)
        let back = try front.configRead(f.address, offset: off, size: size)
        if json {
            console.out(jsonLine(["slot": f.address.description, "offset": "0x" + hex(off, 2), "size": String(size),
                                  "wrote": "0x" + hex(v, size * 2), "reads": "0x" + hex(back, size * 2)]))
        } else if back != v {
            console.out("\(f.address.shortDescription) 0x\(hex(off, 2)).\(size): wrote \(hex(v, size * 2)), reads \(hex(back, size * 2)) (mediated by the backend: see 'stats')")
        }
    }

    func msi(_ x: Bool, _ args: [String]) throws {
        let name = x ? "msix" : "msi"
        guard args.count >= 2, args[0] == "enable" || args[0] == "disable", args.count <= (x ? 3 : 2) else {
            throw CLIError.usage("usage: \(name) enable|disable BDF\(x ? " [N]" : "")")
        }
        let f = try guestDevice(args[1])
        let what = x ? "MSI-X" : "MSI"
        if args[0] == "disable" {
            if x { try front.disableMSIX(f.address) } else { try front.disableMSI(f.address) }
            console.out(json ? jsonLine(["slot": f.address.description, name: "disabled"]) : "\(f.address.shortDescription): \(what) disabled")
            return
        }
        var pirqs: [UInt32]
        if x {
            var n = 1
            if args.count == 3 {
                guard let v = Int(args[2]), (1...128).contains(v) else { throw CLIError.usage("msix: vector count '\(args[2])' is not 1...128") }
                n = v
            }
            pirqs = try front.enableMSIX(f.address, entries: (0..<n).map(UInt16.init))
        } else {
            pirqs = [try front.enableMSI(f.address)]
        }
        if json {
            console.out(jsonLine(MSIJSON(slot: f.address.description, kind: name, pirqs: pirqs)))
        } else {
            console.out("\(f.address.shortDescription): \(what) enabled, pirq\(pirqs.count > 1 ? "s" : "") \(pirqs.map(String.init).joined(separator: " "))")
        }
    }

    func hotplug(add: Bool, _ args: [String]) throws {
        let h = try needHost(add ? "hotadd" : "hotremove")
        guard args.count == 1 else { throw CLIError.usage("usage: \(add ? "hotadd" : "hotremove") HOSTBDF") }
        let a = try Self.address(args[0])
        let g = add ? try h.hotAdd(a) : try h.hotRemove(a)
        console.out("\(a) \(add ? "added to the guest as" : "removed from the guest, was") \(g.shortDescription)")
    }

    func aer(_ args: [String]) throws {
        let h = try needHost("aer")
        guard (1...3).contains(args.count) else { throw CLIError.usage("usage: aer HOSTBDF [detected|mmio|slotreset|resume] [normal|frozen|failure]") }
        let a = try Self.address(args[0])
        let cmds: [String: PCIOpCommand] = ["detected": .aerDetected, "mmio": .aerMMIO, "slotreset": .aerSlotReset, "resume": .aerResume]
        let chans: [String: PCIBack.ChannelState] = ["normal": .normal, "frozen": .frozen, "failure": .permanentFailure]
        let cmd = args.count > 1 ? cmds[args[1]] : .aerDetected
        guard let cmd else { throw CLIError.usage("aer: '\(args[1])' is not detected, mmio, slotreset or resume") }
        let ch = args.count > 2 ? chans[args[2]] : .frozen
        guard let ch else { throw CLIError.usage("aer: channel '\(args[2])' is not normal, frozen or failure") }
        let r = try h.raiseAER(a, cmd, channel: ch)
        let result = AERResult(rawValue: r).map(aerWords) ?? "\(r)"
        console.out(json ? jsonLine(["host": a.description, "request": cmd.description, "result": result]) : "\(a): \(cmd) answered \(result)")
    }

    func list(_ args: [String]) throws {
        let h = try needHost("list")
        let j = try Self.jsonFlag(args, "list") || json
        let l = h.listing()
        console.out(j ? jsonLine(l.map(FunctionRecord.listing)) : l.map(\.text).joined())
    }

    func xenstore(_ args: [String]) throws {
        let h = try needHost("xenstore")
        guard args.count <= 1 else { throw CLIError.usage("usage: xenstore [PATH]") }
        if let p = args.first { console.out(h.xenstore(under: p)) } else {
            console.out(h.xenstore(under: "/local/domain/0/backend/pci"))
            console.out(h.xenstore(under: "/local/domain/1/device/pci"))
        }
    }

    static func jsonFlag(_ args: [String], _ cmd: String) throws -> Bool {
        guard args.allSatisfy({ $0 == "--json" }) else { throw CLIError.usage("\(cmd): unknown argument '\(args.first { $0 != "--json" }!)'") }
        return !args.isEmpty
    }

    func stats(_ args: [String]) throws {
        let j = try Self.jsonFlag(args, "stats") || json
        let fs = front.statistics
        let listing = host?.listing() ?? []
        var rows: [FunctionRecord] = []
        func frontend(_ r: inout FunctionRecord, _ fe: XPCIDeviceStatistics) {
            r.frontendRequests = fe.ops; r.frontendErrors = fe.errors; r.frontendTimeouts = fe.timeouts
        }
        if let h = host {
            for s in h.backendStatistics() {
                var r = FunctionRecord(keys: FunctionRecord.statsKeys)
                let g = listing.first { $0.address == s.address }?.guestAddress
                r.function = s.address.description
                r.guestAddress = g?.description
                r.setCounters(s)
                frontend(&r, g.map { fs[$0] } ?? XPCIDeviceStatistics())
                rows.append(r)
            }
        } else {
            // In a guest: only the frontend's side is known.
            for (a, fe) in fs.devices.sorted(by: { $0.key < $1.key }) {
                var r = FunctionRecord(keys: FunctionRecord.statsKeys)
                r.guestAddress = a.description
                frontend(&r, fe)
                rows.append(r)
            }
        }
        if j { console.out(jsonLine(rows)); return }
        var out: [String] = []
        for r in rows {
            out.append("\(r.function ?? "?")" + (r.guestAddress.map { " -> guest \($0)" } ?? " (not assigned)"))
            if let ops = r.requestsByKind, !ops.isEmpty { out.append("\trequests: " + ops.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")) }
            if let errs = r.errors, !errs.isEmpty { out.append("\terrors: " + errs.sorted { $0.key < $1.key }.map { "\($0.key.replacingOccurrences(of: "_", with: " ")) \($0.value)" }.joined(separator: ", ")) }
            for w in r.deniedWrites ?? [] {
                out.append("\t\(w.action) write at \(w.offset) size \(w.size): \(w.count) time\(w.count == 1 ? "" : "s")"
                           + (w.quirk.map { "; to allow it: quirk \($0)" } ?? "; an emulated register, no quirk can open it"))
            }
            if r.permissive == true { out.append("\tpermissive on") }
            for q in r.quirks ?? [] { out.append("\tquirk \(q)") }
            out.append("\tfrontend: \(r.frontendRequests ?? 0) requests, \(r.frontendErrors ?? 0) errors, \(r.frontendTimeouts ?? 0) timeouts")
        }
        console.out(out.isEmpty ? "no devices" : out.joined(separator: "\n"))
    }

    func bench(_ args: [String]) throws {
        guard (1...2).contains(args.count) else { throw CLIError.usage("usage: bench BDF [COUNT]") }
        let f = try guestDevice(args[0])
        var n = 10000
        if args.count == 2 {
            guard let v = Int(args[1]), (1...10_000_000).contains(v) else { throw CLIError.usage("bench: count '\(args[1])' is not 1...10000000") }
            n = v
        }
        let p = Progress("bench \(f.address.shortDescription)", total: n, console: console)
        let start = ContinuousClock.now
        for _ in 0..<n {
            _ = try front.configRead(f.address, offset: 0, size: 4)
            p.step()
        }
        p.finish()
        let secs = (ContinuousClock.now - start).seconds
        let text = "\(n) conf_read round trips in \(String(format: "%.3f", secs)) s: \(Int(Double(n) / secs)) per second, \(String(format: "%.1f", secs / Double(n) * 1e6)) us each"
        console.out(json ? jsonLine(BenchJSON(slot: f.address.description, count: n, seconds: secs)) : text)
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}

struct MSIJSON: Encodable { var slot: String; var kind: String; var pirqs: [UInt32] }
struct BenchJSON: Encodable { var slot: String; var count: Int; var seconds: Double }


/// Linux's pci_ers_result_t as words.
func aerWords(_ r: AERResult) -> String {
    switch r {
    case .none: return "none"
    case .canRecover: return "can recover"
    case .needReset: return "needs a reset"
    case .disconnect: return "disconnect"
    case .recovered: return "recovered"
    case .noAERDriver: return "no AER driver"
    }
}
