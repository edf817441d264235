import Foundation
import XenMock
import PCIModel
@testable import XPCI
import CXenPCI
import XenHypervisor
import XenPCIABI

/// A function the fake backend exports: config bytes plus the BAR and ROM
/// sizes the backend emulates sizing with (docs/PROTOCOL.md §6).
final class FakeDevice {
    var config: ConfigSpace
    var barSizes: [Int: UInt64]
    var romSize: UInt32
    var sizing: Set<Int> = []
    var msiOn = false, msixOn = false

    init(config: ConfigSpace, barSizes: [Int: UInt64] = [:], romSize: UInt32 = 0) {
        self.config = config; self.barSizes = barSizes; self.romSize = romSize
    }

    /// A synthetic type-0 function.
    static func make(vendor: UInt16 = 0x8086, device: UInt16 = 0x1234, classCode: UInt32 = 0x020000,
                     multiFunction: Bool = false, extended: Bool = false, command: UInt16 = 0,
                     bars: [(Int, UInt32, UInt64)] = [], romSize: UInt32 = 0,
                     build: (inout ConfigSpace) -> Void = { _ in }) -> FakeDevice {
        var c = ConfigSpace(size: extended ? 4096 : 256)
        c.write(PCIReg.vendorID, 2, UInt32(vendor))
        c.write(PCIReg.deviceID, 2, UInt32(device))
        c.write(PCIReg.command, 2, UInt32(command))
        c.write(PCIReg.revision, 4, classCode << 8 | 1)
        c.write(PCIReg.headerType, 1, multiFunction ? 0x80 : 0)
        c.write(PCIReg.subsystemVendorID, 2, 0x1AF4)
        c.write(PCIReg.subsystemID, 2, 0x1100)
        c.write(PCIReg.interruptPin, 1, 1)
        c.write(PCIReg.interruptLine, 1, 11)
        var sizes: [Int: UInt64] = [:]
        for (i, raw, size) in bars {
            c.write(PCIReg.bar0 + 4 * i, 4, UInt32(truncatingIfNeeded: raw))
            sizes[i] = size
        }
        build(&c)
        return FakeDevice(config: c, barSizes: sizes, romSize: romSize)
    }

    /// The value a BAR/ROM register reads while being sized.
    func sizingValue(_ reg: Int) -> UInt32 {
        if let rom = config.romOffset, reg == rom { return romSize == 0 ? 0 : ~(romSize - 1) & 0xFFFF_F800 }
        let i = (reg - PCIReg.bar0) / 4
        if let s = barSizes[i] {
            let flags = BARFlags(raw: config.read32(reg))
            return UInt32(truncatingIfNeeded: ~(s - 1)) & ~flags.mask | (config.read32(reg) & flags.mask)
        }
        if i > 0, let s = barSizes[i - 1], BARFlags(raw: config.read32(reg - 4)).is64Bit {
            return UInt32(truncatingIfNeeded: ~(s - 1) >> 32)
        }
        return 0
    }

    func isBARRegister(_ reg: Int) -> Bool {
        (reg >= PCIReg.bar0 && reg < PCIReg.bar0 + 4 * config.barCount) || reg == config.romOffset
    }
}

/// What the fake backend does wrong, if anything.
struct Behaviour {
    var answers = true                    // false: silent
    var delay: Duration?                  // slow: answer this much later
    var connects = true                   // false: stays in InitWait for ever
    var restartAfterClose = false         // back to InitWait when the frontend returns to Initialising
    var multiMSI = false                  // implement enable_multi_msi (Linux answers not_implemented)
    var xenstoreOverride: [String: String?] = [:] // keys written (nil: removed) after the roots
    var raceHotAdd: (PCIAddress, FakeDevice)?  // on connect: hot-add instead of writing Connected
    var corrupt: ((xen_pci_op, inout xen_pci_op) -> Void)?
}

/// A scripted dom0 backend on the mock: it lays out its xenstore directory
/// as libxl and pciback would, maps the frontend's grant, binds its event
/// channel and answers requests from per-device config bytes on its own thread.
// @unchecked Sendable: a test fake; what its thread and the test share is under `lock`
// (`state` under `stateLock`), and a test sets `behaviour` before posting the request it is for.
final class FakeBackend: @unchecked Sendable {
    let hv: MockHypervisor
    let guest: DomID
    let instance: Int
    var behaviour: Behaviour
    let lock = NSLock()
    /// Guest-visible address -> function (exported or waiting to be).
    var pool: [PCIAddress: FakeDevice]
    var exported: Set<PCIAddress> = []
    private var served = 0
    /// Requests answered so far (read from the test thread, written by the backend's).
    var requests: Int { lock.lock(); defer { lock.unlock() }; return served }
    var nextPirq: UInt32 = 40

    let xs: XenStore
    let ev: EventChannels
    let gt: GrantTable
    var mapping: GrantMapping?
    var port: EvtchnPort = 0
    private let stateLock = NSLock()
    private var currentState: XenState = .initialising
    /// The backend state it last wrote (read by tests while its thread runs).
    var state: XenState {
        get { stateLock.lock(); defer { stateLock.unlock() }; return currentState }
        set { stateLock.lock(); currentState = newValue; stateLock.unlock() }
    }
    let stopFD = xenpci_eventfd_open()
    var thread: Thread?
    let done = DispatchSemaphore(value: 0)
    var stopping = false

    var frontPath: String { "/local/domain/\(guest)/device/pci/\(instance)" }
    var backPath: String { "/local/domain/0/backend/pci/\(guest)/\(instance)" }
    var page: SharedPage? { mapping.map { SharedPage($0.address) } }

    init(hv: MockHypervisor, guest: DomID = 1, instance: Int = 0, devices: [PCIAddress: FakeDevice],
         behaviour: Behaviour = Behaviour()) throws {
        self.hv = hv
        self.guest = guest
        self.instance = instance
        self.behaviour = behaviour
        pool = devices
        let dom0 = hv.domain(0)
        _ = hv.domain(guest)
        xs = try dom0.openXenStore()
        ev = try dom0.openEventChannels()
        gt = try dom0.openGrantTable()
        try Toolstack.create(xs, guest: guest, instance: instance, devices: devices.keys.sorted())
    }

    func start() throws {
        try xs.watch(frontPath + "/state", token: "fe")
        try xs.watch(backPath + "/state", token: "be")
        let t = Thread { [self] in run() }
        thread = t
        t.start()
    }

    /// Stops the thread and releases everything (the leak check follows).
    func stop() {
        lock.lock(); stopping = true; lock.unlock()
        _ = xenpci_eventfd_signal(stopFD)
        if thread != nil { done.wait(); thread = nil }
        disconnect()
        xs.close(); ev.close(); gt.close()
        Foundation.close(stopFD)
    }

    func run() {
        defer { done.signal() }
        while true {
            guard let r = try? pollReadable([xs.fileDescriptor, ev.fileDescriptor, stopFD], timeout: nil) else { return }
            lock.lock(); let s = stopping; lock.unlock()
            if s { return }
            if r[0] {
                var any = false
                while xs.nextWatchEvent() != nil { any = true }
                if any { step() }
            }
            if r[1] { serve() }
        }
    }

    func setState(_ s: XenState) {
        state = s
        try? xs.write(backPath + "/state", s.xenstoreValue)
    }

    // MARK: state machine (level-triggered on both states)

    func step() {
        let fe = (try? xs.readIfPresent(frontPath + "/state")).flatMap { $0 }.flatMap { XenState(xenstore: $0) }
        state = (try? xs.readIfPresent(backPath + "/state")).flatMap { $0 }.flatMap { XenState(xenstore: $0) } ?? state
        switch (state, fe) {
        case (.initialising, _):
            setState(.initWait)
            guard behaviour.connects else { return }
            exportPending()
            setState(.initialised)
            if fe == .initialised { connect() }
        case (.initWait, .initialised?), (.initialised, .initialised?):
            if behaviour.connects { connect() }
        case (.reconfiguring, .reconfiguring?):
            exportPending()
            setState(.reconfigured)
        case (.reconfigured, .connected?):
            setState(.connected)
        case (let s, .closing?) where s != .closing && s != .closed:
            disconnect()
            setState(.closing)
        case (let s, .closed?) where s != .closed:
            disconnect()
            setState(.closed)
        case (.closing, .initialising?), (.closed, .initialising?):
            disconnect()
            setState(.closed)
            if behaviour.restartAfterClose { setState(.initialising); step() }
        case (.closing, .initialised?), (.closed, .initialised?):
            disconnect()
            setState(.initialising)
            step()
        default: break
        }
    }

    /// Exports every `state-N` = 1 device, releases every 5, republishes roots.
    func exportPending() {
        let n = Int((try? xs.read(backPath + "/num_devs")) ?? "0") ?? 0
        for i in 0..<n {
            guard let st = try? xs.read(backPath + "/state-\(i)"), let bdf = try? xs.read(backPath + "/dev-\(i)"),
                  let a = try? PCIAddress(parsing: bdf) else { continue }
            if st == "1" {
                lock.lock(); exported.insert(a); lock.unlock()
                try? xs.write(backPath + "/vdev-\(i)", a.vdevString)
                try? xs.write(backPath + "/state-\(i)", "3")
            } else if st == "5" {
                lock.lock(); exported.remove(a); lock.unlock()
                try? xs.write(backPath + "/state-\(i)", "6")
            }
        }
        lock.lock()
        let roots = Set(exported.map { PCIRoot(segment: $0.segment, bus: $0.bus) }).sorted()
        lock.unlock()
        try? xs.write(backPath + "/root_num", String(roots.count))
        for (i, r) in roots.enumerated() { try? xs.write(backPath + "/root-\(i)", r.description) }
        for (k, v) in behaviour.xenstoreOverride {
            if let v { try? xs.write(backPath + "/" + k, v) } else { try? xs.remove(backPath + "/" + k) }
        }
    }

    /// Checks magic, maps the grant, binds the event channel, goes Connected.
    func connect() {
        guard mapping == nil,
              (try? xs.read(frontPath + "/magic")) == XenPCI.magic,
              let ref = (try? xs.read(frontPath + "/pci-op-ref")).flatMap({ GrantRef($0) }),
              let remote = (try? xs.read(frontPath + "/event-channel")).flatMap({ EvtchnPort($0) }),
              let m = try? gt.map(domain: guest, ref: ref, writable: true) else { return }
        guard let p = try? ev.bindInterdomain(remote: guest, remotePort: remote) else { try? gt.unmap(m); return }
        lock.lock(); mapping = m; port = p; lock.unlock()
        if let (a, d) = behaviour.raceHotAdd {
            behaviour.raceHotAdd = nil
            state = .reconfiguring
            try? Toolstack.hotAdd(xs, self, a, d)
        } else {
            setState(.connected)
        }
    }

    func disconnect() {
        lock.lock()
        let m = mapping, p = port
        mapping = nil; port = 0
        lock.unlock()
        if let m { try? gt.unmap(m) }
        if p != 0 { try? ev.unbind(p) }
    }

    // MARK: requests

    func serve() {
        guard let p = try? ev.pending() else { return }
        try? ev.unmask(p)
        lock.lock(); let page = self.page, port = self.port; lock.unlock()
        guard let page, page.flags & XenPCI.frontendActive != 0 else { return }
        guard behaviour.answers else { return }
        if let d = behaviour.delay { Thread.sleep(forTimeInterval: d.seconds) }
        var req = xen_pci_op()
        page.snapshotRequest(into: &req)
        var reply = answer(req)
        behaviour.corrupt?(req, &reply)
        let nvec = req.cmd == PCIOpCommand.enableMSIX.rawValue ? Int(min(req.value, 128)) : 0
        page.completeRequest(&reply, msixVectors: nvec)
        try? ev.notify(port)
    }

    func answer(_ req: xen_pci_op) -> xen_pci_op {
        lock.lock()
        defer { lock.unlock() }
        served += 1
        var r = req
        r.value = 0
        func fail(_ e: PCIOpError) -> xen_pci_op { r.err = e.rawValue; return r }
        guard let a = req.address, exported.contains(a), let d = pool[a] else { return fail(.devNotFound) }
        switch req.command {
        case .confRead?, .confWrite?:
            let off = Int(req.offset), size = Int(req.size)
            guard [1, 2, 4].contains(size), off >= 0, off % size == 0, off + size <= d.config.size else { return fail(.invalidOffset) }
            let reg = off & ~3
            if req.command == .confRead {
                r.value = d.isBARRegister(reg) && d.sizing.contains(reg) ? d.sizingValue(reg) : d.config.read(off, size)
            } else if d.isBARRegister(reg) {
                let mask: UInt32 = reg == d.config.romOffset ? 0x7FF : (d.barSizes[(reg - PCIReg.bar0) / 4] != nil ? BARFlags(raw: d.config.read32(reg)).mask : 0)
                if size == 4 && req.value | mask == 0xFFFF_FFFF { d.sizing.insert(reg) } else { d.sizing.remove(reg) }
            } else {
                d.config.write(off, size, req.value)
            }
        case .enableMSI?:
            guard !d.msiOn, !d.msixOn else { return fail(.opFailed) }
            d.msiOn = true
            r.value = nextPirq; nextPirq += 1
        case .disableMSI?:
            guard d.msiOn else { return fail(.opFailed) }
            d.msiOn = false
        case .enableMSIX?:
            guard !d.msiOn, !d.msixOn, req.value <= 128 else { return fail(.opFailed) }
            d.msixOn = true
            for i in 0..<Int(req.value) {
                var e = req.msixEntry(i)
                e.vector = UInt16(nextPirq); nextPirq += 1
                r.setMSIXEntry(i, e)
            }
        case .disableMSIX?:
            guard d.msixOn else { return fail(.opFailed) }
            d.msixOn = false
        case .enableMultiMSI?:
            guard behaviour.multiMSI else { return fail(.notImplemented) }
            guard !d.msiOn, (1...32).contains(req.info) else { return fail(.opFailed) }
            d.msiOn = true
            r.value = nextPirq; nextPirq += req.info
        default: return fail(.notImplemented)
        }
        r.err = 0
        return r
    }

    /// Posts an AER request (bit 2) and waits for the frontend to clear it;
    /// returns `aer_op.err` (the pci_ers_result) or nil on timeout.
    func postAER(_ cmd: UInt32, _ a: PCIAddress, channelState: Int32 = 2, timeout: Duration = .seconds(5)) -> Int32? {
        guard let page = sendAER(cmd, a, channelState: channelState) else { return nil }
        let deadline = ContinuousClock.now + timeout
        while page.flags & XenPCI.backendActive != 0 {
            if ContinuousClock.now > deadline { return nil }
            usleep(500)
        }
        return page.snapshotAER().err
    }

    /// Posts an AER request and notifies, without waiting; nil when not connected.
    func sendAER(_ cmd: UInt32, _ a: PCIAddress, channelState: Int32 = 2) -> SharedPage? {
        lock.lock(); let page = self.page, port = self.port; lock.unlock()
        guard let page else { return nil }
        var op = xen_pcie_aer_op()
        op.cmd = cmd; op.err = channelState
        op.domain = UInt32(a.segment); op.bus = UInt32(a.bus); op.devfn = UInt32(a.devfn)
        page.postAER(op)
        try? ev.notify(port)
        return page
    }
}

/// What libxl writes: both directories with their permissions, and the
/// hotplug transactions.
enum Toolstack {
    static func create(_ xs: XenStore, guest: DomID, instance: Int, devices: [PCIAddress]) throws {
        let fe = "/local/domain/\(guest)/device/pci/\(instance)"
        let be = "/local/domain/0/backend/pci/\(guest)/\(instance)"
        try xs.mkdir(fe)
        try xs.setPermissions(fe, [XenstorePermission(guest, .none), XenstorePermission(0, .read)])
        try xs.mkdir(be)
        try xs.setPermissions(be, [XenstorePermission(0, .none), XenstorePermission(guest, .read)])
        try xs.transaction { t in
            for (k, v) in ["backend": be, "backend-id": "0", "state": "1"] { try xs.write(fe + "/" + k, v, transaction: t) }
            var keys = ["frontend": fe, "frontend-id": String(guest), "online": "1", "state": "1",
                        "domain": "guest\(guest)", "num_devs": String(devices.count)]
            for (i, a) in devices.enumerated() {
                keys["dev-\(i)"] = a.description
                keys["key-\(i)"] = a.description
                keys["opts-\(i)"] = "msitranslate=0,power_mgmt=0,permissive=0,rdm_policy=strict"
                keys["state-\(i)"] = "1"
            }
            for (k, v) in keys { try xs.write(be + "/" + k, v, transaction: t) }
        }
    }

    /// Hot-add: dev-N, opts-N, state-N = 1, num_devs and backend state 7 in one transaction.
    static func hotAdd(_ xs: XenStore, _ b: FakeBackend, _ a: PCIAddress, _ d: FakeDevice) throws {
        b.lock.lock(); b.pool[a] = d; b.lock.unlock()
        try xs.transaction { t in
            let n = Int(try xs.read(b.backPath + "/num_devs", transaction: t)) ?? 0
            try xs.write(b.backPath + "/dev-\(n)", a.description, transaction: t)
            try xs.write(b.backPath + "/opts-\(n)", "msitranslate=0,power_mgmt=0,permissive=0,rdm_policy=strict", transaction: t)
            try xs.write(b.backPath + "/state-\(n)", "1", transaction: t)
            try xs.write(b.backPath + "/num_devs", String(n + 1), transaction: t)
            try xs.write(b.backPath + "/state", "7", transaction: t)
        }
    }

    /// Hot-remove: state-N = 5 and backend state 7 in one transaction.
    static func hotRemove(_ xs: XenStore, _ b: FakeBackend, _ a: PCIAddress) throws {
        try xs.transaction { t in
            let n = Int(try xs.read(b.backPath + "/num_devs", transaction: t)) ?? 0
            for i in 0..<n where try xs.read(b.backPath + "/dev-\(i)", transaction: t) == a.description {
                try xs.write(b.backPath + "/state-\(i)", "5", transaction: t)
            }
            try xs.write(b.backPath + "/state", "7", transaction: t)
        }
    }
}
