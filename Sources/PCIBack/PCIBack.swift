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
/// handlers rolled into one loop, and hands each event to the guest's
/// `GuestConnection`; the claimed functions are the `DeviceRegistry`'s.
/// That thread owns the state: other threads claim, release, list and raise
/// AER by handing it jobs (`ServiceLoop`), and do their slow device work
/// (resets) on their own threads.
// Sendable: callable from any thread; its state is reached only through
// `loop` (submit, post), which runs the work on the thread that is the loop.
public final class PCIBack: @unchecked Sendable {
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
        /// Adaptive mode (docs/PERFORMANCE.md): before unmasking the
        /// ports of the guests just served and blocking in poll, spin this
        /// long watching their bit 0 (`HeldPorts`). Zero (the default)
        /// unmasks and blocks at once.
        public var spinBeforeBlock: Duration = .zero
        /// sched_yield now and then while spinning: for guests whose threads
        /// share the backend's CPUs (the mock). On Xen each guest has vCPUs
        /// of its own, and in a PV dom0 a yield is a system call through Xen.
        public var spinYields = true
        /// False: the deterministic mode (what NIOEmbedded is to SwiftNIO).
        /// `start()` starts no thread and resets wait in a queue; the caller
        /// steps the backend with `drain()`, which serves what is pending
        /// and runs the queued device work. For tests and fuzzers.
        public var serviceThread = true
        /// The service thread's nice value (nil, the default: inherit, as
        /// Linux's pciback's work items run at normal priority). A guest
        /// flooding requests then shares dom0's CPU with the toolstack and
        /// xenstored instead of taking it. Refused (not root): reported,
        /// and the thread runs at the inherited priority.
        public var servicePriority: Int32?
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

        /// The guest behind a line, which it may be causing on purpose
        /// (its state changes, its connects, its errors): such lines are
        /// rate-limited per guest. Exports are the toolstack's.
        var guestCaused: DomID? {
            switch self {
            case .error(let d?, _), .notice(let d?, _), .backendState(let d, _), .frontendState(let d, _),
                 .connected(let d, _), .disconnected(let d):
                return d
            default: return nil
            }
        }

        /// The text with what a guest may have written in it made visible:
        /// control and non-ASCII bytes as \xNN, a backslash doubled.
        var escaped: Event {
            switch self {
            case .error(let d, let s): return .error(d, Self.escape(s))
            case .notice(let d, let s): return .notice(d, Self.escape(s))
            default: return self
            }
        }

        static func escape(_ s: String) -> String {
            guard s.utf8.contains(where: { $0 < 0x20 || $0 >= 0x7F || $0 == UInt8(ascii: "\\") }) else { return s }
            var out = ""
            for b in s.utf8 {
                switch b {
                case UInt8(ascii: "\\"): out += "\\\\"
                case 0x20..<0x7F: out.unicodeScalars.append(Unicode.Scalar(b))
                default: out += "\\x" + String(b, radix: 16).uppercased().leftPadded(2)
                }
            }
            return out
        }
    }

    let hv: BackendServices
    let options: Options
    let loop: ServiceLoop
    /// What the guest connections work with: handles, registry, event sink.
    let ctx: BackendContext
    var registry: DeviceRegistry { ctx.registry }
    var xs: XenStore { ctx.xs }
    var evtchn: EventChannels { ctx.evtchn }
    var routing: InterruptRouting { ctx.routing }
    /// One connection per guest with a `backend/pci/<domid>/0`.
    var connections: [DomID: GuestConnection] = [:]
    static let watchEventsPerTurn = 16
    static let requestsPerTurn = 64
    private var thread: Thread?
    /// Stopping: guests' events are no longer taken, jobs still run.
    private var stopping = false
    private var exiting = false
    private let stopped = DispatchSemaphore(value: 0)
    /// Per-request timing (`xenpci backend --profile`), off unless enabled.
    public let profile: RequestProfile
    /// Called on the service thread, or the caller's, for every change.
    /// Set from any thread, also while the service thread runs (it is
    /// handed over like any other change of the state).
    public var onEvent: ((Event) -> Void)? {
        get { loop.submit { [ctx] in ctx.onEvent } }
        set { loop.submit { [ctx] in ctx.onEvent = newValue } }
    }

    public var backendRoot: String { ctx.backendRoot }

    /// Opens the handles the backend needs; nothing runs until `start()`.
    public init(hypervisor: BackendServices, options: Options = Options(), stateStore: BackendStateStore? = nil) throws {
        hv = hypervisor
        self.options = options
        let loop = ServiceLoop(), profile = RequestProfile()
        self.loop = loop
        self.profile = profile
        let registry = DeviceRegistry(store: stateStore)
        let me = try hypervisor.domid()
        let xs = try hypervisor.openXenStore()
        let evtchn: EventChannels, gnttab: GrantTable, routing: InterruptRouting
        do {
            evtchn = try hypervisor.openEventChannels()
            do {
                gnttab = try hypervisor.openGrantTable()
                do { routing = try hypervisor.openInterruptRouting() } catch { gnttab.close(); throw error }
            } catch { evtchn.close(); throw error }
        } catch { xs.close(); throw error }
        ctx = BackendContext(options: options, me: me, xs: xs, evtchn: evtchn, gnttab: gnttab, routing: routing,
                             registry: registry, loop: loop, profile: profile)
        ctx.resetDone = { [unowned self] in resumeWaitingForReset() }
    }

    func emit(_ e: Event) { ctx.emit(e) }
    func persist() { ctx.persist() }

    // MARK: devices (pciback_pci_match / pciback_pci_attach)

    /// Claims one function for pass-through (hides it from dom0). Refused,
    /// with the reason, when already claimed or when a host driver owns it.
    /// Its reset and golden-state read run on the caller's thread, with the
    /// function reserved meanwhile; guests are served throughout.
    @discardableResult
    public func claim(_ access: PCIDeviceAccess) throws -> ClaimedDeviceInfo {
        let a = access.address
        let plan = try loop.submit { [self] () throws -> ClaimPlan in
            guard !registry.isClaimed(a) else { throw PCIBackError.refused("\(a): already claimed") }
            let plan = try planClaim(access)
            registry.claiming.insert(a)
            return plan
        }
        let built = Result { try plan.build(access, allowHostDriver: options.allowHostDriverReadOnly) }
        return try loop.submit { [self] () throws -> ClaimedDeviceInfo in
            registry.claiming.remove(a)
            let d = try built.get()
            try completeClaim(d, plan)
            registry.add(d)
            if !d.msixPrepared {
                do { try ctx.prepareMSIX(d) } catch {
                    emit(.error(nil, "\(d.address): prepare MSI-X: \(error) (retried when a guest enables MSI-X)"))
                }
            }
            persist()
            return d.info
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

    public func listing() -> [ClaimedDeviceInfo] { loop.submit { [self] in registry.sorted.map(\.info) } }

    public func statistics() -> [DeviceStatistics] { loop.submit { [self] in registry.statistics() } }

    /// Per-guest counters: requests served, of them those served without
    /// an event (seen waiting while the port was held), spurious events,
    /// throttled pauses.
    public func guestStatistics() -> [(domid: DomID, requests: Int, withoutEvent: Int, spurious: Int, throttled: Int)] {
        loop.submit { [self] in
            connections.values.sorted { $0.domid < $1.domid }.map { ($0.domid, $0.requests, $0.withoutEvent, $0.spurious, $0.throttled) }
        }
    }

    /// Adds a quirk to a claimed device (cleared when it leaves its guest).
    public func addQuirk(_ q: PCIQuirk) throws {
        try loop.submit { [self] () throws in
            guard let d = registry[q.address] else { throw PCIBackError.badDevice("\(q.address): not claimed by pciback") }
            try d.mediation.addQuirk(q)
            persist()
        }
    }

    public func setPermissive(_ a: PCIAddress, _ on: Bool) throws {
        try loop.submit { [self] () throws in
            guard let d = registry[a] else { throw PCIBackError.badDevice("\(a): not claimed by pciback") }
            d.mediation.permissive = on
            persist()
        }
    }

    // MARK: running

    /// Watches `backend/pci`, takes over the guests a previous backend
    /// served, and serves guests on a thread of its own.
    public func start() throws {
        try loop.submit { [self] () throws in
            try xs.watch(backendRoot, token: "pciback")
            do { try xs.watch("@releaseDomain", token: "release") } catch { try? xs.unwatch(backendRoot, token: "pciback"); throw error }
            if let p = registry.recoveryProblem { emit(.error(nil, "saved state unusable: \(p); functions a running guest holds are left alone")) }
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
    /// guest events; the device work it started finishes first.
    public func stop(keepGuests: Bool = false) {
        loop.submit { [self] in stopping = true }
        waitForResets()
        if keepGuests {
            loop.submit { [self] in
                ctx.state.save(registry.snapshot(), force: true)
                for i in connections.values { i.disconnect() }
                connections.removeAll()
                registry.removeAll()
            }
        } else {
            loop.submit { [self] in
                for i in connections.values.sorted(by: { $0.domid < $1.domid }) {
                    i.setState(.closing)
                    forget(i)
                }
            }
            waitForResets()
            // Every function reset here, on this thread, then released.
            let list = loop.submit { [self] in registry.sorted.map { d in d.resetting = true; d.heldByWorker = true; return d } }
            let results = list.map { d in Result { try d.resetHardware() } }
            loop.submit { [self] in
                for (d, r) in zip(list, results) {
                    d.resetting = false
                    d.heldByWorker = false
                    if case .failure(let error) = r { emit(.error(nil, "\(d.address): reset at shutdown: \(error)")) }
                    ctx.releaseMSIX(d)
                }
                registry.removeAll()
                persist()
            }
        }
        if thread != nil {
            loop.submit { [self] in exiting = true }
            stopped.wait()
            thread = nil
        }
        loop.submit { [self] in closeHandles(keepingInterrupts: keepGuests) }
        ctx.state.flush()
    }

    /// The end of `stop`: watches gone, handles closed. Keeping interrupts
    /// (a planned restart), pirqs stay mapped and MSI-X tables prepared.
    private func closeHandles(keepingInterrupts: Bool) {
        try? xs.unwatch(backendRoot, token: "pciback")
        try? xs.unwatch("@releaseDomain", token: "release")
        if keepingInterrupts { routing.abandon() } else { routing.close() }
        ctx.gnttab.close()
        evtchn.close()
        xs.close()
    }

    /// Milliseconds until `at` for poll (rounded up), 0 when it is past.
    private static func pollTimeout(until at: ContinuousClock.Instant) -> Int32 {
        let left = ContinuousClock.now.duration(to: at)
        guard left > .zero else { return 0 }
        return Int32(clamping: left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000 + 1)
    }

    /// The service thread's loop: jobs handed over, then requests, then
    /// watch events, then the timers due, each a bounded amount per turn.
    private func run() {
        var fds = [pollfd(fd: loop.wake, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: xs.fileDescriptor, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: evtchn.fileDescriptor, events: Int16(POLLIN), revents: 0)]
        var moreWork = false
        while !exiting {
            var timeout: Int32 = loop.nextDeadline.map(Self.pollTimeout(until:)) ?? -1
            if moreWork || ctx.held.hasReady { timeout = 0 }
            // Stopping: only jobs (the guests' handles are left unread).
            _ = poll(&fds, stopping ? 1 : 3, timeout)
            profile.woke()
            if fds[0].revents != 0 { xenpci_eventfd_drain(loop.wake) }
            loop.runJobs()
            if exiting { break }
            // Device continuations (settles) run while stopping too.
            loop.runDueTimers()
            if stopping { moreWork = false; continue }
            // Bounded work per turn, requests first, then watches: a
            // toolstack writing 2N+2 keys, or 256 guests connecting, cannot
            // keep requests waiting past pcifront's 2 s (nor the reverse).
            var requestBudget = Self.requestsPerTurn
            var watchBudget = Self.watchEventsPerTurn
            // Every ready port in one read, and none when poll said none:
            // each system call of a PV dom0 goes through Xen.
            var ports = fds[2].revents != 0 ? (try? evtchn.pendingBatch(max: requestBudget)) ?? [] : []
            var round = 0
            while true {
                let ready = ctx.held.takeReady()
                if ports.isEmpty && ready.isEmpty { break }
                for p in ports { loop.step { serve(p) } }
                for p in ready { loop.step { serve(p, fromEvent: false) } }
                requestBudget -= ports.count + ready.count
                loop.step { settleHeld(spin: options.spinBeforeBlock) }
                // Jobs and watch events between rounds too: an administrator's
                // command and a toolstack's steps (a hot-plug) wait for a
                // round of requests, not a turn of them.
                loop.runJobs()
                if stopping || exiting { break } // a job stopped us: no guest's event is taken from here
                if watchBudget > 0 { watchBudget -= serveWatches(max: min(watchBudget, 2)) }
                guard requestBudget > 0 else { break }
                // While the held guests are served without a system call,
                // the others' events are read every 4th round: one guest
                // whose requests keep coming delays another by 4 of them.
                round += 1
                ports = round % 4 == 0 && ctx.ports.count > 1 ? (try? evtchn.pendingBatch(max: requestBudget)) ?? [] : []
            }
            if exiting { break }
            if stopping { moreWork = false; continue }
            if watchBudget > 0 { watchBudget -= serveWatches(max: watchBudget) }
            moreWork = watchBudget == 0 || requestBudget <= 0
            // A turn that used its whole budget gives the CPU up before the
            // next: dom0's toolstack and xenstored share it with us (a guest
            // that floods gets a turn's worth, not the vCPU).
            if moreWork { sched_yield() }
        }
    }

    /// The deterministic mode's step (the service thread runs the same
    /// code): runs the jobs handed over, serves every pending watch event
    /// and channel event, the timers due, then the queued device work,
    /// until nothing is left; a timer not yet due (a power-state settle) is
    /// waited for in real time. Returns how many things it did; a cap keeps
    /// a backend that feeds itself from spinning forever. Each event's
    /// callbacks run as soon as it is served. Refused while a service
    /// thread serves: it alone owns the state then.
    @discardableResult
    public func drain(limit: Int = 100_000) throws -> Int {
        guard !loop.serving else {
            throw PCIBackError.refused("drain() steps the deterministic mode; this backend's service thread is serving (stop() it first)")
        }
        var done = 0
        while done < limit {
            var n = loop.submit(asStep: false) { [self] () -> Int in
                var n = loop.runJobs()
                while let e = xs.nextWatchEvent() { loop.step { watchFired(e) }; n += 1 }
                while let p = try? evtchn.pending() { loop.step { serve(p) }; n += 1 }
                for p in ctx.held.takeReady() { loop.step { serve(p, fromEvent: false) }; n += 1 }
                loop.step { settleHeld(spin: .zero) }
                n += loop.runDueTimers()
                return n
            }
            n += ctx.deviceWork.runQueued()
            if n == 0 {
                // Only a timer left: wait for it, as the device needs.
                guard let next = loop.submit({ [loop] in loop.nextDeadline }) else { break }
                let left = ContinuousClock.now.duration(to: next)
                if left > .zero { Thread.sleep(forTimeInterval: Double(left.components.seconds) + Double(left.components.attoseconds) / 1e18) }
                continue
            }
            done += n
        }
        ctx.state.flush()
        return done
    }

    /// Up to `max` watch events, each a step; returns how many were taken.
    /// A frontend's state that fired again in the same batch is read once:
    /// a guest rewriting its state node costs a read, not one per write.
    private func serveWatches(max: Int) -> Int {
        var batch: [XenstoreWatchEvent] = []
        while batch.count < max, let e = xs.nextWatchEvent() { batch.append(e) }
        for (k, e) in batch.enumerated() {
            // A frontend's state is read when acted on: its last event in
            // the batch stands for the ones before.
            if e.token.hasPrefix("front:") && batch[(k + 1)...].contains(where: { $0.token == e.token }) { continue }
            loop.step { watchFired(e) }
        }
        return batch.count
    }

    /// A request of the guest bound to `p`: on its event, or seen waiting
    /// while the port was held. A port that served one stays masked, held.
    private func serve(_ p: EvtchnPort, fromEvent: Bool = true) {
        if ctx.connection(port: p)?.evthandler(p, fromEvent: fromEvent) == true { ctx.held.hold(p) }
    }

    private func settleHeld(spin: Duration) {
        ctx.held.settle({ [ctx] in ctx.connection(port: $0) }, others: { [self] in
            connections.values.compactMap { i in i.port.flatMap { ctx.held.isHeld($0) ? nil : i.shared } }
        }, spin: spin, yields: options.spinYields)
    }

    // MARK: xenbus (pciback_xenbus_create, the watch callbacks)

    /// Routes a watch event to the connection it concerns.
    private func watchFired(_ e: XenstoreWatchEvent) {
        if e.token == "release" {
            for i in connections.values.sorted(by: { $0.domid < $1.domid })
            where (try? xs.readIfPresent("/local/domain/\(i.domid)/domid")) == nil {
                emit(.error(i.domid, "dom\(i.domid) is gone: releasing its devices"))
                forget(i)
                // What libxl does for the devices it created itself: the
                // directory of a dead guest goes (a toolstack other than
                // libxl, like `xenpci attach`, is not around to do it).
                try? xs.remove("\(backendRoot)/\(i.domid)")
            }
            return
        }
        if e.token.hasPrefix("front:"), let d = DomID(e.token.dropFirst(6)), let i = connections[d] {
            i.frontendChanged()
            return
        }
        guard e.token == "pciback", e.path.hasPrefix(backendRoot + "/") else { return }
        let rest = e.path.dropFirst(backendRoot.count + 1).split(separator: "/")
        guard let first = rest.first, let domid = XenstoreValue.decimal(String(first), max: 0x7FEF).map(DomID.init) else { return }
        backendChanged(domid)
    }

    /// The toolstack changed `backend/pci/<domid>/0`: create, update or
    /// destroy the guest's connection.
    func backendChanged(_ domid: DomID) {
        let path = "\(backendRoot)/\(domid)/0"
        guard let st = try? xs.readIfPresent(path + "/state") else {
            if let i = connections[domid] { forget(i) }
            return
        }
        guard let i = connections[domid] ?? create(domid, path) else { return }
        guard let state = XenState(xenstore: st) else {
            i.fatal("backend state '\(st)' is not a xenbus state")
            return
        }
        i.backendChanged(state)
    }

    /// pciback_xenbus_create: read the frontend's location and watch its state.
    func create(_ domid: DomID, _ path: String) -> GuestConnection? {
        let expected = "/local/domain/\(domid)/device/pci/0"
        guard let fe = try? xs.readIfPresent(path + "/frontend"), let feid = try? xs.readIfPresent(path + "/frontend-id") else {
            return nil // the toolstack has not finished writing; the next event retries
        }
        guard fe == expected, feid == String(domid) else {
            emit(.error(domid, "\(path): frontend '\(fe)' (id '\(feid)') is not \(expected) of dom\(domid): refused"))
            try? xs.write(path + "/error", "frontend must be \(expected)")
            return nil
        }
        let i = GuestConnection(ctx, domid: domid, backendPath: path, frontendPath: fe)
        do {
            try xs.watch(fe + "/state", token: "front:\(domid)")
        } catch {
            emit(.error(domid, "watch \(fe)/state: \(error)"))
            return nil // nothing was allocated that outlives `i`
        }
        connections[domid] = i
        ctx.logLimits[domid] = GuestLogLimit()
        return i
    }

    /// The guest or its directory is gone: its connection releases
    /// everything (pciback_xenbus_destroy) and is dropped.
    func forget(_ i: GuestConnection) {
        i.destroy()
        connections[i.domid] = nil
        ctx.logLimits[i.domid] = nil
    }

    /// A reset is done: the connections that waited for it go on.
    func resumeWaitingForReset() {
        for i in connections.values.sorted(by: { $0.domid < $1.domid }) { i.resumeAfterReset() }
    }

    /// Waits until no reset is running and what the workers handed back
    /// is installed.
    func waitForResets() { ctx.waitForResets() }
}

extension String {
    fileprivate func leftPadded(_ n: Int) -> String { count >= n ? self : String(repeating: "0", count: n - count) + self }
}
