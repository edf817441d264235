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
    /// Resets run here, off the service thread.
    let deviceWork: DeviceWork
    let profile: RequestProfile
    /// raiseAER's thread waits on it for the guest's answer or a disconnect.
    let aerCondition = NSCondition()
    /// Event handler registrations: port -> the connection it was bound for
    /// (NetBSD establishes the handler with the instance as its argument).
    var ports: [EvtchnPort: GuestConnection] = [:]
    /// Ports left masked after serving (see `HeldPorts`).
    let held: HeldPorts
    /// Ports a flooding guest has masked until the given time.
    var deferredUnmask: [(port: EvtchnPort, at: ContinuousClock.Instant)] = []
    /// Log lines each connected guest may still cause.
    var logLimits: [DomID: GuestLogLimit] = [:]
    var onEvent: ((PCIBack.Event) -> Void)?
    /// A background reset is done (owner): whoever waited for it goes on.
    var resetDone: () -> Void = {}

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
    }

    /// The connection bound to `port`, if its pbx_evtchn still names it.
    func connection(port: EvtchnPort) -> GuestConnection? { ports[port].flatMap { $0.port == port ? $0 : nil } }

    /// Every event reaches `onEvent` once the job or guest event that caused
    /// it is done (owner only). What a guest can cause is rate-limited per
    /// connected guest (see `GuestLogLimit`).
    func emit(_ e: PCIBack.Event) {
        var events = [e]
        if let d = e.guestCaused, logLimits[d] != nil {
            guard let summary = logLimits[d]!.admit(now: ContinuousClock.now) else { return }
            if summary > 0 { events.insert(.error(d, "\(summary) more message(s) about dom\(d) suppressed (rate limit)"), at: 0) }
        }
        guard let handler = onEvent else { return }
        loop.later { for ev in events { handler(ev) } }
    }

    /// The registry saved for a restarted backend; a failure is reported.
    func persist() {
        do { try registry.save() } catch { emit(.error(nil, "saving state: \(error)")) }
    }

    // MARK: device work

    /// Resets `d` on a worker: a reset takes 100 ms and more (Linux waits up
    /// to 60 s for a device that is not ready), and every other guest and
    /// device is served meanwhile. Requests to `d` answer dev_not_found
    /// until it is done. The worker hands the fresh mediation back to the
    /// service thread; a guest holding `d` by then (the same one after a
    /// frontend close, or a new one after a hot-add) keeps its toolstack's
    /// permissive option.
    func resetInBackground(_ d: ClaimedDevice) {
        guard !d.resetting else { return }
        d.resetting = true
        // No DMA from here on (XSA-306): bus mastering off at once, the rest later.
        if !d.readOnly, let cmd = try? d.access.readConfig(PCIReg.command, 2), UInt16(cmd) & PCICommand.master != 0 {
            try? d.access.writeConfig(PCIReg.command, 2, cmd & ~UInt32(PCICommand.master))
        }
        deviceWork.submit { [self] in
            let result = Result { try d.resetHardware() }
            loop.post { [self] in
                d.resetting = false
                switch result {
                case .success(let m):
                    if d.guest != nil { m.permissive = d.mediation.permissive }
                    d.mediation = m
                case .failure(let e):
                    emit(.error(d.guest, "\(d.address): reset: \(e)"))
                }
                persist()
                resetDone()
            }
        }
    }

    /// Waits until no reset is running (the deterministic mode runs the
    /// queued ones here) and what the workers handed back is installed.
    func waitForResets() {
        deviceWork.finish()
        loop.sync { [loop] in _ = loop.runJobs() }
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
