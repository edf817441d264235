import Foundation
import PCIModel
import XenHypervisor
import CXenPCI
import XenPCIABI
import PCIHost

/// pciback(4): exports claimed PCI functions to guests over xenbus.
///
/// One thread serves everything: it polls the xenstore connection (watch on
/// `backend/pci` and on each frontend's state) and the event channel handle
/// (requests from every guest), like NetBSD's xenwatch and interrupt
/// handlers rolled into one loop. That thread owns the state: other threads
/// claim, release, list and raise AER by handing it jobs (`ServiceLoop`),
/// and do their slow device work (resets) on their own threads.
public final class PCIBack {
    public enum Topology: String, Sendable { case vpci, passthrough }

    public struct Options: Sendable {
        public var topology: Topology = .vpci
        /// Export functions a host driver owns, with every write refused,
        /// instead of refusing to claim them.
        public var allowHostDriverReadOnly = false
        /// How long raiseAER waits for the guest (Linux: 300 s).
        public var aerTimeout: Duration = .seconds(300)
        /// Flood control: events that find no request, per 100 ms, before
        /// the guest's port is left masked for `floodPause`.
        public var spuriousLimit = 256
        public var floodPause: Duration = .milliseconds(20)
        /// Adaptive mode (issue 9, docs/PERFORMANCE.md): before blocking in
        /// poll, spin this long watching every connected guest's bit 0.
        /// Zero (the default) blocks at once.
        public var spinBeforeBlock: Duration = .zero
        /// False: the deterministic mode (what NIOEmbedded is to SwiftNIO).
        /// `start()` starts no thread and resets wait in a queue; the caller
        /// steps the backend with `drain()`, which serves what is pending
        /// and runs the queued device work. For tests and fuzzers.
        public var serviceThread = true
        /// The service thread's nice value (nil: inherit). Linux's pciback
        /// serves requests in kernel work items, ahead of dom0's processes;
        /// a busy dom0 (device models, 256 guests connecting) must not keep
        /// a guest's request waiting past pcifront's 2 s. Refused (not
        /// root): reported, and the thread runs at the inherited priority.
        public var servicePriority: Int32? = -10
        public init() {}
    }

    public enum Event: Sendable {
        case backendState(DomID, XenState)
        case frontendState(DomID, XenState)
        case exported(DomID, host: PCIAddress, guest: PCIAddress)
        case unexported(DomID, host: PCIAddress)
        case connected(DomID, port: EvtchnPort)
        case disconnected(DomID)
        case error(DomID?, String)
        /// Worth a line in the log, not an error (a takeover, say).
        case notice(DomID?, String)

        /// The guest behind an error or notice, which it may be causing on
        /// purpose: such lines are rate-limited per guest.
        var guestCaused: DomID? {
            switch self {
            case .error(let d?, _), .notice(let d?, _): return d
            default: return nil
            }
        }
    }

    let hv: BackendServices
    let options: Options
    let me: DomID
    let xs: XenStore
    let evtchn: EventChannels
    let gnttab: GrantTable
    let routing: InterruptRouting
    let loop = ServiceLoop()
    let aerCondition = NSCondition()
    var devices: [PCIAddress: ClaimedDevice] = [:]
    var instances: [DomID: Instance] = [:]
    /// Event handler registrations: port -> the instance it was bound for.
    var handlers: [EvtchnPort: Instance] = [:]
    var deferredUnmask: [(port: EvtchnPort, at: ContinuousClock.Instant)] = []
    static let watchEventsPerTurn = 16
    static let requestsPerTurn = 64
    /// Resets run here, off the service thread.
    let deviceWork: DeviceWork
    /// Functions being claimed (their device I/O runs on the caller's thread).
    var claiming: Set<PCIAddress> = []
    private var thread: Thread?
    /// Stopping: guests' events are no longer taken, jobs still run.
    private var stopping = false
    private var exiting = false
    private let stopped = DispatchSemaphore(value: 0)
    /// Per-request timing (`xenpci backend --profile`), off unless enabled.
    public let profile = RequestProfile()
    /// Called on the service thread, or the caller's, for every change.
    public var onEvent: ((Event) -> Void)?

    public var backendRoot: String { "/local/domain/\(me)/backend/pci" }

    /// Where the state a restarted backend needs is kept (nil: nowhere; a
    /// restart then resets every function, as before issue 13).
    let store: BackendStateStore?
    /// What the previous backend saved, by function; taken at claim.
    var recovered: [PCIAddress: PersistedState.Device] = [:]
    /// Why the saved state could not be used (reported at start).
    var recoveryProblem: String?

    /// Opens the handles the backend needs; nothing runs until `start()`.
    public init(hypervisor: BackendServices, options: Options = Options(), stateStore: BackendStateStore? = nil) throws {
        hv = hypervisor
        self.options = options
        deviceWork = DeviceWork(workers: options.serviceThread)
        store = stateStore
        do {
            for d in try stateStore?.load()?.devices ?? [] {
                if let a = try? PCIAddress(parsing: d.address) { recovered[a] = d }
            }
        } catch {
            recoveryProblem = "\(error)"
        }
        me = try hypervisor.domid()
        xs = try hypervisor.openXenStore()
        do {
            evtchn = try hypervisor.openEventChannels()
            do {
                gnttab = try hypervisor.openGrantTable()
                do { routing = try hypervisor.openInterruptRouting() } catch { gnttab.close(); throw error }
            } catch { evtchn.close(); throw error }
        } catch { xs.close(); throw error }
    }

    /// Every event reaches `onEvent` once the job or guest event that caused
    /// it is done (owner only). What a guest can cause is rate-limited per
    /// guest (see `GuestLogLimit`).
    func emit(_ e: Event) {
        var events = [e]
        if let d = e.guestCaused, let i = instances[d] {
            guard let summary = i.logLimit.admit(now: ContinuousClock.now) else { return }
            if summary > 0 { events.insert(.error(d, "\(summary) more message(s) about dom\(d) suppressed (rate limit)"), at: 0) }
        }
        guard let handler = onEvent else { return }
        loop.later { for ev in events { handler(ev) } }
    }

    // MARK: devices (pciback_pci_match / pciback_pci_attach)

    /// Claims one function for pass-through (hides it from dom0). Refused,
    /// with the reason, when already claimed or when a host driver owns it.
    /// Its reset and golden-state read run on the caller's thread, with the
    /// function reserved meanwhile; guests are served throughout.
    @discardableResult
    public func claim(_ access: PCIDeviceAccess) throws -> ClaimedDeviceInfo {
        let a = access.address
        let plan = try loop.sync { [self] () throws -> ClaimPlan in
            guard devices[a] == nil, !claiming.contains(a) else { throw PCIBackError.refused("\(a): already claimed") }
            let plan = try planClaim(access)
            claiming.insert(a)
            return plan
        }
        let built = Result { try plan.build(access, allowHostDriver: options.allowHostDriverReadOnly) }
        return try loop.sync { [self] () throws -> ClaimedDeviceInfo in
            claiming.remove(a)
            let d = try built.get()
            try completeClaim(d, plan)
            devices[a] = d
            if !d.msixPrepared {
                do { try prepareMSIX(d) } catch {
                    emit(.error(nil, "\(d.address): prepare MSI-X: \(error) (retried when a guest enables MSI-X)"))
                }
            }
            persist()
            return info(d)
        }
    }

    /// Claims every device of `source` the hide list names. The list is
    /// parsed whole first and every match resolved before anything is
    /// claimed: on any error nothing is claimed (NetBSD kept the devices
    /// parsed before a syntax error).
    @discardableResult
    public func claim(hideList: String, from available: [PCIAddress], open: (PCIAddress) throws -> PCIDeviceAccess) throws -> [PCIAddress] {
        let patterns = try parseHideList(hideList)
        var chosen: [PCIAddress] = []
        for p in patterns {
            let m = available.filter(p.matches)
            guard !m.isEmpty else { throw PCIBackError.badDevice("hide list entry \(p) matches no device") }
            chosen += m.filter { !chosen.contains($0) }
        }
        let accesses = try chosen.map(open)
        var done: [PCIAddress] = []
        do {
            for a in accesses where !isClaimed(a.address) {
                try claim(a)
                done.append(a.address)
            }
        } catch {
            for a in done { try? release(a) }
            throw error
        }
        return done
    }

    /// Gives a function back to dom0: reset and golden state restored.
    /// Refused while a guest has it.
    public func release(_ a: PCIAddress) throws { try releaseAll([a]) }

    public func listing() -> [ClaimedDeviceInfo] { loop.sync { [self] in devices.values.sorted { $0.address < $1.address }.map(info) } }

    func info(_ d: ClaimedDevice) -> ClaimedDeviceInfo {
        var bars: [Int: PCIResource] = [:]
        for (i, r) in d.bars { bars[i] = r }
        return ClaimedDeviceInfo(address: d.address, vendorID: d.vendorID, deviceID: d.deviceID,
                                 subsystemVendorID: d.golden.read16(PCIReg.subsystemVendorID), subsystemID: d.golden.read16(PCIReg.subsystemID),
                                 classCode: d.golden.classCode, bars: bars, irq: d.access.irq, guest: d.guest,
                                 guestAddress: d.guestAddress, readOnly: d.readOnly, driver: d.access.driver, text: d.kernfsText())
    }

    public func statistics() -> [DeviceStatistics] {
        loop.sync { [self] in
            devices.values.sorted { $0.address < $1.address }.map { d in
                DeviceStatistics(address: d.address, guest: d.guest, ops: d.ops, errors: d.errors,
                                 refusedWrites: d.mediation.refusalReport(d.address), permissive: d.mediation.permissive,
                                 quirks: d.mediation.quirks)
            }
        }
    }

    /// Per-guest counters: requests served, spurious events, throttled pauses.
    public func guestStatistics() -> [(domid: DomID, requests: Int, spurious: Int, throttled: Int)] {
        loop.sync { [self] in instances.values.sorted { $0.domid < $1.domid }.map { ($0.domid, $0.requests, $0.spurious, $0.throttled) } }
    }

    /// Adds a quirk to a claimed device (cleared when it leaves its guest).
    public func addQuirk(_ q: PCIQuirk) throws {
        try loop.sync { [self] () throws in
            guard let d = devices[q.address] else { throw PCIBackError.badDevice("\(q.address): not claimed by pciback") }
            try d.mediation.addQuirk(q)
            persist()
        }
    }

    public func setPermissive(_ a: PCIAddress, _ on: Bool) throws {
        try loop.sync { [self] () throws in
            guard let d = devices[a] else { throw PCIBackError.badDevice("\(a): not claimed by pciback") }
            d.mediation.permissive = on
            persist()
        }
    }

    // MARK: running

    /// Watches `backend/pci`, takes over the guests a previous backend
    /// served, and serves guests on a thread of its own.
    public func start() throws {
        try loop.sync { [self] () throws in
            try xs.watch(backendRoot, token: "pciback")
            do { try xs.watch("@releaseDomain", token: "release") } catch { try? xs.unwatch(backendRoot, token: "pciback"); throw error }
            if let p = recoveryProblem { emit(.error(nil, "saved state unusable: \(p); functions a running guest holds are left alone")) }
            adoptGuests()
        }
        guard options.serviceThread else { return }
        let began = DispatchSemaphore(value: 0)
        let t = Thread { [unowned self] in
            loop.beginService()
            began.signal()
            if let nice = options.servicePriority, xenpci_thread_set_nice(nice) != 0 {
                let why = String(cString: strerror(errno))
                loop.step { emit(.notice(nil, "service thread priority \(nice): \(why); running at the inherited priority")) }
            }
            run()
            loop.endService()
            stopped.signal()
        }
        t.name = "pciback"
        thread = t
        t.start()
        began.wait() // from here other threads' calls are the service thread's jobs
    }

    /// Clean shutdown: every guest told Closing, grants unmapped, ports
    /// unbound, pirqs unmapped, devices reset and released.
    /// `keepGuests`: a planned restart instead. Guests stay connected as far
    /// as they can tell (no state change, devices untouched, pirqs mapped,
    /// MSI-X tables prepared); only this process's grant mappings, ports and
    /// watches go. The state is saved for the next backend, which takes over.
    /// The service thread does it all (it owns the state) but takes no more
    /// guest events; the resets it queued finish first.
    public func stop(keepGuests: Bool = false) {
        loop.sync { [self] in stopping = true }
        waitForResets()
        if keepGuests {
            loop.sync { [self] in
                persist()
                for i in instances.values { disconnect(i) }
                instances.removeAll()
                devices.removeAll()
            }
        } else {
            loop.sync { [self] in
                for i in instances.values.sorted(by: { $0.domid < $1.domid }) {
                    setState(i, .closing)
                    destroy(i)
                }
            }
            waitForResets()
            // Every function reset here, on this thread, then released.
            let list = loop.sync { [self] in
                devices.values.sorted { $0.address < $1.address }.map { d in d.resetting = true; return d }
            }
            let results = list.map { d in Result { try d.resetHardware() } }
            loop.sync { [self] in
                for (d, r) in zip(list, results) {
                    d.resetting = false
                    if case .failure(let error) = r { emit(.error(nil, "\(d.address): reset at shutdown: \(error)")) }
                    releaseMSIX(d)
                }
                devices.removeAll()
                persist()
            }
        }
        if thread != nil {
            loop.sync { [self] in exiting = true }
            stopped.wait()
            thread = nil
        }
        loop.sync { [self] in closeHandles(keepingInterrupts: keepGuests) }
    }

    /// The end of `stop`: watches gone, handles closed. Keeping interrupts
    /// (a planned restart), pirqs stay mapped and MSI-X tables prepared.
    private func closeHandles(keepingInterrupts: Bool) {
        try? xs.unwatch(backendRoot, token: "pciback")
        try? xs.unwatch("@releaseDomain", token: "release")
        if keepingInterrupts { routing.abandon() } else { routing.close() }
        gnttab.close()
        evtchn.close()
        xs.close()
    }

    /// The service thread's loop: jobs handed over, then requests, then
    /// watch events, each a bounded amount per turn.
    private func run() {
        var fds = [pollfd(fd: loop.wake, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: xs.fileDescriptor, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: evtchn.fileDescriptor, events: Int16(POLLIN), revents: 0)]
        var served = false, moreWork = false
        while !exiting {
            var timeout: Int32 = -1
            if let next = deferredUnmask.map(\.at).min() {
                let left = ContinuousClock.now.duration(to: next)
                timeout = left <= .zero ? 0 : Int32(left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000 + 1)
            }
            // Adaptive mode: spin only after a round that served an event, so a
            // guest that sets bit 0 without notifying cannot keep us spinning.
            if served && options.spinBeforeBlock > .zero && timeout != 0 && spinForRequest() { timeout = 0 }
            if moreWork { timeout = 0 }
            // Stopping: only jobs (the guests' handles are left unread).
            _ = poll(&fds, stopping ? 1 : 3, timeout)
            profile.woke()
            if fds[0].revents != 0 { xenpci_eventfd_drain(loop.wake) }
            loop.runJobs()
            if exiting { break }
            if stopping { moreWork = false; continue }
            // Bounded work per turn, requests first, then watches: a
            // toolstack writing 2N+2 keys, or 256 guests connecting, cannot
            // keep requests waiting past pcifront's 2 s (nor the reverse).
            served = false
            var requestBudget = Self.requestsPerTurn
            while requestBudget > 0, let p = try? evtchn.pending() { loop.step { handleEvent(p) }; served = true; requestBudget -= 1 }
            var watchBudget = Self.watchEventsPerTurn
            while watchBudget > 0, let e = xs.nextWatchEvent() { loop.step { watchFired(e) }; watchBudget -= 1 }
            moreWork = watchBudget == 0 || requestBudget == 0
            loop.step { unmaskDue() }
        }
    }

    /// Adaptive mode: true as soon as a connected guest has bit 0 set
    /// (its event is then taken from the handle as usual), false when the
    /// spin ran out. Only the flag words are read: pages are unmapped on
    /// this thread only, so none goes away during the spin.
    private func spinForRequest() -> Bool {
        let pages = instances.values.compactMap { $0.connected ? $0.shared : nil }
        let end = ContinuousClock.now + options.spinBeforeBlock
        var n = 0
        while ContinuousClock.now < end {
            for _ in 0..<256 {
                for p in pages where p.flags & XenPCI.frontendActive != 0 { return true }
            }
            n += 1
            if n % 16 == 0 { sched_yield() } // the guest may be waiting for this CPU
        }
        return false
    }

    /// The deterministic mode's step (the service thread runs the same
    /// code): runs the jobs handed over, serves every pending watch event
    /// and channel event, then the queued device work, until nothing is
    /// left. Returns how many things it did; a cap keeps a backend that
    /// feeds itself from spinning forever. Each event's callbacks run as
    /// soon as it is served.
    @discardableResult
    public func drain(limit: Int = 100_000) -> Int {
        var done = 0
        while done < limit {
            var n = loop.owned { loop.runJobs() }
            while let e = xs.nextWatchEvent() { loop.owned { watchFired(e) }; n += 1 }
            while let p = try? evtchn.pending() { loop.owned { handleEvent(p) }; n += 1 }
            loop.owned { unmaskDue() }
            n += deviceWork.runQueued()
            if n == 0 { break }
            done += n
        }
        return done
    }

    private func unmaskDue() {
        let now = ContinuousClock.now
        let due = deferredUnmask.filter { $0.at <= now }
        deferredUnmask.removeAll { $0.at <= now }
        for d in due where instance(port: d.port) != nil {
            try? evtchn.unmask(d.port)
            // Anything that arrived while paused is now delivered again.
        }
    }

    // MARK: xenbus (pciback_xenbus_create, the watch callbacks)

    private func watchFired(_ e: XenstoreWatchEvent) {
        if e.token == "release" {
            for i in instances.values where (try? xs.readIfPresent("/local/domain/\(i.domid)/domid")) == nil {
                emit(.error(i.domid, "dom\(i.domid) is gone: releasing its devices"))
                destroy(i)
                // What libxl does for the devices it created itself: the
                // directory of a dead guest goes (a toolstack other than
                // libxl, like `xenpci attach`, is not around to do it).
                try? xs.remove("\(backendRoot)/\(i.domid)")
            }
            return
        }
        if e.token.hasPrefix("front:"), let d = DomID(e.token.dropFirst(6)), let i = instances[d] {
            frontendChanged(i)
            return
        }
        guard e.token == "pciback", e.path.hasPrefix(backendRoot + "/") else { return }
        let rest = e.path.dropFirst(backendRoot.count + 1).split(separator: "/")
        guard let first = rest.first, let domid = XenstoreValue.decimal(String(first), max: 0x7FEF).map(DomID.init) else { return }
        backendChanged(domid)
    }

    /// The toolstack changed `backend/pci/<domid>/0`: create, update or
    /// destroy the guest's instance.
    func backendChanged(_ domid: DomID) {
        let path = "\(backendRoot)/\(domid)/0"
        guard let st = try? xs.readIfPresent(path + "/state") else {
            if let i = instances[domid] { destroy(i) }
            return
        }
        let i: Instance
        if let existing = instances[domid] {
            i = existing
        } else {
            guard let created = create(domid, path) else { return }
            i = created
        }
        guard let state = XenState(xenstore: st) else {
            fatal(i, "backend state '\(st)' is not a xenbus state")
            return
        }
        i.state = state
        switch state {
        case .initialising:
            setState(i, .initWait)
            setupBackend(i)
        case .reconfiguring:
            // Missed-Connected race: finish the connect before the reconfigure.
            if !i.connected && i.frontState == .initialised { attach(i) }
            if i.frontState == .reconfiguring { reconfigure(i) }
        default:
            break
        }
    }

    /// pciback_xenbus_create: read the frontend's location and watch its state.
    func create(_ domid: DomID, _ path: String) -> Instance? {
        let expected = "/local/domain/\(domid)/device/pci/0"
        guard let fe = try? xs.readIfPresent(path + "/frontend"), let feid = try? xs.readIfPresent(path + "/frontend-id") else {
            return nil // the toolstack has not finished writing; the next event retries
        }
        guard fe == expected, feid == String(domid) else {
            emit(.error(domid, "\(path): frontend '\(fe)' (id '\(feid)') is not \(expected) of dom\(domid): refused"))
            try? xs.write(path + "/error", "frontend must be \(expected)")
            return nil
        }
        let i = Instance(domid: domid, backendPath: path, frontendPath: fe)
        do {
            try xs.watch(fe + "/state", token: "front:\(domid)")
        } catch {
            emit(.error(domid, "watch \(fe)/state: \(error)"))
            return nil // nothing was allocated that outlives `i`
        }
        instances[domid] = i
        return i
    }

    func setState(_ i: Instance, _ s: XenState) {
        do {
            try xs.write(i.backendPath + "/state", s.xenstoreValue)
            i.state = s
            emit(.backendState(i.domid, s))
        } catch {
            emit(.error(i.domid, "write \(i.backendPath)/state: \(error)"))
        }
    }

    /// xenbus_dev_fatal: say why in `error`, go Closing, drop the connection.
    func fatal(_ i: Instance, _ why: String) {
        emit(.error(i.domid, why))
        try? xs.write(i.backendPath + "/error", why)
        disconnect(i)
        setState(i, .closing)
    }

    /// The frontend's state changed (pciback_xenbus_frontend_changed).
    private func frontendChanged(_ i: Instance) {
        let raw = (try? xs.readIfPresent(i.frontendPath + "/state")) ?? nil
        let fs = raw.flatMap(XenState.init(xenstore:)) ?? .unknown
        let previous = i.frontState
        i.frontState = fs
        if fs != previous { emit(.frontendState(i.domid, fs)) }
        switch fs {
        case .initialising:
            // A frontend that closed and starts again (Mini-OS, kexec).
            if i.state == .closing || i.state == .closed {
                setState(i, .initWait)
                setupBackend(i)
            }
        case .initialised:
            // A frontend that closed and attaches again without passing Initialising.
            if i.state == .closing || i.state == .closed {
                setState(i, .initWait)
                setupBackend(i) // attaches and goes Connected: the frontend is ready
                return
            }
            if !i.connected && (i.state == .initialised || i.state == .reconfiguring) { attach(i) }
            if i.connected && i.state == .initialised { setState(i, .connected) }
        case .connected:
            if i.state == .reconfigured { setState(i, .connected) }
        case .reconfiguring:
            if i.state == .reconfiguring { reconfigure(i) }
        case .closing:
            disconnect(i)
            setState(i, .closing)
        case .closed:
            disconnect(i)
            quiesceDevices(i)
            setState(i, .closed)
        case .unknown:
            if raw == nil && previous != .unknown { disconnect(i); quiesceDevices(i) }
        default:
            break
        }
    }
}

