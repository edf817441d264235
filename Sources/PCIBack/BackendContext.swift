import Foundation
import PCIModel
import XenHypervisor
import XenPCIABI

/// What every guest connection works with: the hypervisor handles, the
/// device registry, the port registrations and the event sink. Owned by the
/// service thread like the rest of the backend's state (see `ServiceLoop`).
final class BackendContext {
    let options: PCIBack.Options
    let me: DomID
    let xs: XenStore
    let evtchn: EventChannels
    let gnttab: GrantTable
    let routing: InterruptRouting
    let registry: DeviceRegistry
    let loop: ServiceLoop
    /// Device work that blocks (resets, golden restores) runs here, off
    /// the loop; its result comes back as a posted job.
    let deviceWork: DeviceWork
    /// The state file, written off the loop when what a restart needs changed.
    let state: StateWriter
    let profile: RequestProfile
    /// Event handler registrations: port -> the connection it was bound for
    /// (NetBSD establishes the handler with the instance as its argument).
    var ports: [EvtchnPort: GuestConnection] = [:]
    /// Ports left masked after serving (see `HeldPorts`).
    let held: HeldPorts
    /// Log lines each connected guest may still cause.
    var logLimits: [DomID: GuestLogLimit] = [:]
    var onEvent: ((PCIBack.Event) -> Void)?
    /// A background reset is done (owner): whoever waited for it goes on.
    var resetDone: () -> Void = {}
    /// Threads waiting until no function is being reset (`waitForResets`).
    var resetWaiters: [DispatchSemaphore] = []

    var backendRoot: String { "/local/domain/\(me)/backend/pci" }

    init(options: PCIBack.Options, me: DomID, xs: XenStore, evtchn: EventChannels, gnttab: GrantTable,
         routing: InterruptRouting, registry: DeviceRegistry, loop: ServiceLoop, profile: RequestProfile) {
        self.options = options
        self.me = me
        self.xs = xs
        self.evtchn = evtchn
        self.gnttab = gnttab
        self.routing = routing
        self.registry = registry
        self.loop = loop
        self.profile = profile
        held = HeldPorts(evtchn: evtchn)
        deviceWork = DeviceWork(workers: options.serviceThread)
        state = StateWriter(store: registry.store, background: options.serviceThread)
        state.failed = { [loop, me = LoopBound(Unowned(self), loop)] why in loop.post { me.value.object.emit(.error(nil, "saving state: \(why)")) } }
    }

    /// The connection bound to `port`, if its pbx_evtchn still names it.
    func connection(port: EvtchnPort) -> GuestConnection? { ports[port].flatMap { $0.port == port ? $0 : nil } }

    /// Every event reaches `onEvent` once the step that caused it is done
    /// (owner only). What a guest can cause is rate-limited per connected
    /// guest (see `GuestLogLimit`), and its text escaped: it may quote what
    /// the guest wrote.
    func emit(_ e: PCIBack.Event) {
        var events = [e]
        if let d = e.guestCaused {
            events = [e.escaped]
            if logLimits[d] != nil {
                guard let summary = logLimits[d]!.admit(now: ContinuousClock.now) else { return }
                if summary > 0 { events.insert(.error(d, "\(summary) more message(s) about dom\(d) suppressed (rate limit)"), at: 0) }
            }
        }
        guard let handler = onEvent else { return }
        loop.later { for ev in events { handler(ev) } }
    }

    /// Hands what a restarted backend needs to the state writer, when it
    /// changed (owner only).
    func persist() { state.save(registry.snapshot()) }

    // MARK: device work

    /// Resets `d` on a worker: a reset takes 100 ms and more (Linux waits up
    /// to 60 s for a device that is not ready), and every other guest and
    /// device is served meanwhile. From here until it is done nothing on
    /// the loop touches the function's hardware; requests to it (or to its
    /// VFs) answer dev_not_found. A power-state settle in progress ends
    /// first. The worker hands the result back to the loop; a guest holding
    /// `d` by then (the same one after a frontend close, or a new one after
    /// a hot-add) keeps its toolstack's permissive option.
    func resetInBackground(_ d: ClaimedDevice) {
        guard !d.resetting else { return }
        // No DMA from here on (XSA-306): bus mastering off at once unless a
        // settle is in progress (the worker's sequence turns it off too).
        if !d.readOnly && !d.busy, let cmd = try? d.access.readConfig(PCIReg.command, 2), UInt16(cmd) & PCICommand.master != 0 {
            try? d.access.writeConfig(PCIReg.command, 2, cmd & ~UInt32(PCICommand.master))
        }
        d.resetting = true
        d.whenIdle { [self] in startReset(d) }
    }

    private func startReset(_ d: ClaimedDevice) {
        d.heldByWorker = true
        let job = d.resetJob()
        let back = LoopBound((self, d), loop)
        deviceWork.submit { [loop] in
            let result = Result { try job() }
            loop.post {
                let (ctx, d) = back.value
                ctx.finishReset(d, result)
            }
        }
    }

    /// A worker's reset is done (owner): the function is ours again.
    private func finishReset(_ d: ClaimedDevice, _ result: Result<Void, Error>) {
        let installed = result.flatMap { _ in Result { try ConfigMediation(device: d.access, golden: d.golden) } }
        d.resetting = false
        d.heldByWorker = false
        switch installed {
        case .success(let m):
            if d.guest != nil { m.permissive = d.mediation.permissive }
            d.mediation = m
        case .failure(let e):
            emit(.error(d.guest, "\(d.address): reset: \(e)"))
        }
        d.becameIdle()
        persist()
        resetDone()
        deviceWorkFinished()
    }

    /// A function is being reset or is settling.
    private var deviceWorkPending: Bool { registry.sorted.contains { $0.resetting || $0.settlingUntil != nil } }

    /// Waiters go on once no function is being reset or settling (owner).
    func deviceWorkFinished() {
        guard !deviceWorkPending else { return }
        for w in resetWaiters { w.signal() }
        resetWaiters = []
    }

    /// Waits until no reset is running, no settle is pending (its guest's
    /// reply sent) and what the workers handed back is installed (the
    /// deterministic mode runs the queued work and the timers here).
    func waitForResets() {
        while true {
            let wait: DispatchSemaphore? = loop.submit { [self] in
                guard deviceWorkPending else { return nil }
                let s = DispatchSemaphore(value: 0)
                resetWaiters.append(s)
                return s
            }
            guard let wait else { return }
            if deviceWork.isDeterministic {
                // Nobody else runs the queued work or the timers a settle
                // left before a reset can start: this thread does.
                if deviceWork.runQueued() > 0 { continue }
                let next = loop.submit { [loop] () -> ContinuousClock.Instant? in loop.runDueTimers(); return loop.nextDeadline }
                if let next, next > .now { Thread.sleep(forTimeInterval: Double((next - .now).components.attoseconds) / 1e18 + Double((next - .now).components.seconds)) }
                continue
            }
            wait.wait()
        }
    }

    /// Xen learns a function's MSI-X table only from dom0
    /// (PHYSDEVOP_prepare_msix, as Linux's pciback does when it takes a
    /// function); without it mapping a vector for a guest fails (ENODATA).
    /// Xen reads the table's BAR with memory decoding on: a function's own
    /// decode is turned on for the call if it was off (a VF's follows its PF).
    func prepareMSIX(_ d: ClaimedDevice) throws {
        guard !d.readOnly, !d.msixPrepared, d.mediation.capability(.msix) != nil else { return }
        let a = d.access
        let cmd = UInt16(truncatingIfNeeded: try a.readConfig(PCIReg.command, 2))
        let turnOn = !a.isVirtualFunction && cmd & PCICommand.memory == 0
        if turnOn { try a.writeConfig(PCIReg.command, 2, UInt32(cmd | PCICommand.memory)) }
        defer { if turnOn { try? a.writeConfig(PCIReg.command, 2, UInt32(cmd)) } }
        try routing.prepareMSIX(device: d.address)
        d.msixPrepared = true
    }

    /// Undoes prepareMSIX once no vector is mapped (release, shutdown).
    func releaseMSIX(_ d: ClaimedDevice) {
        guard d.msixPrepared else { return }
        do { try routing.releaseMSIX(device: d.address); d.msixPrepared = false } catch {
            emit(.error(d.guest, "\(d.address): release MSI-X: \(error)"))
        }
    }
}

/// An unowned reference, to carry in a `LoopBound` without keeping the
/// object alive.
struct Unowned<T: AnyObject> {
    unowned let object: T
    init(_ o: T) { object = o }
}
