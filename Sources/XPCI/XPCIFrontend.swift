import Foundation
import Synchronization
import XenHypervisor
import PCIModel
import CXenPCI
import XenPCIABI
import CXenPCISoftc

/// xpci(4): the Xen PV PCI frontend, ported from NetBSD's
/// `sys/arch/xen/xen/xpci_xenbus.c` onto the C softc mirror
/// (`struct xpci_xenbus_softc`), with what Linux's pcifront adds:
/// hotplug (Reconfiguring/Reconfigured), teardown and reconnect, MSI/MSI-X,
/// AER, several instances and segments, timeouts, and distrust of the backend.
///
/// Life-cycle order, as in the original: attach, the xenbus callback
/// (`backendChanged`), connect, the bus scan (XPCIBus.swift), the op path
/// (XPCIOp.swift), detach.
///
/// Threads: requests run on the caller's thread, serialised by `opLock`,
/// which waits on the event channel itself. A "xenbus" thread follows the
/// backend's state through a xenstore watch and serves AER requests (bit 2);
/// with `Options.xenbusThread` false there is none and the caller runs that
/// work with `drain()` (tests and fuzzing: no threads, no timing).
// @unchecked Sendable: it owns the C softc (a raw pointer). Its state is guarded as its properties'
// comments say (`stateCond` via `locked`; `opLock` for the channel, which connect() publishes to
// requests under it); attach() opens the handles before the xenbus thread starts, detach() closes
// them after it stopped.
public final class XPCIFrontend: @unchecked Sendable {
    public struct Options: Sendable {
        /// How long a request waits for the backend (docs/PROTOCOL.md §4).
        public var requestTimeout: Duration = .seconds(2)
        /// How long `waitConnected` and `detach`'s Closing handshake wait.
        public var connectTimeout: Duration = .seconds(10)
        /// `device/pci/<instance>`.
        public var instance: Int = 0
        /// NetBSD's behaviour: a device found with I/O and memory decode both
        /// off gets them enabled according to its BAR types.
        public var enableDecodeOnScan: Bool = true
        /// Upper bound accepted for the backend's `root_num`.
        public var maxRoots: Int = 256
        /// Adaptive mode (docs/PERFORMANCE.md): after notifying,
        /// spin on the flag word this long before blocking on the event
        /// channel. Zero (the default) blocks at once.
        public var spinBeforeBlock: Duration = .zero
        /// false: attach starts no xenbus thread; the caller does its work
        /// (backend state changes, the scan they start, AER requests) with
        /// `drain()`, on its own thread, when it chooses (like NIO's
        /// EmbeddedEventLoop). For tests and fuzzing; real use keeps true.
        public var xenbusThread: Bool = true
        /// How many backend AER requests run the handler.
        public var aerRateLimit = AERRateLimit()

        public init(requestTimeout: Duration = .seconds(2), connectTimeout: Duration = .seconds(10),
                    instance: Int = 0, enableDecodeOnScan: Bool = true, maxRoots: Int = 256) {
            self.requestTimeout = requestTimeout
            self.connectTimeout = connectTimeout
            self.instance = instance
            self.enableDecodeOnScan = enableDecodeOnScan
            self.maxRoots = maxRoots
        }
    }

    /// Highest pirq accepted in a reply (MSI-X vectors are 16-bit on the wire).
    public static let maxPirq: UInt32 = 0xFFFF
    /// XPCI_GRANT_INVALID ((grant_ref_t)-1; the C macro does not import).
    static let grantInvalid = GrantRef.max

    let hv: FrontendServices
    public let options: Options
    /// The NetBSD softc, allocated here: sc_evtchn, sc_backend_status,
    /// sc_shutdown, sc_shared, sc_shared_gntref. sc_dev/sc_xbusd stay nil.
    let sc: UnsafeMutablePointer<xpci_xenbus_softc>

    // Handles: open from attach() to detach().
    var xs: XenStore?
    var evtchn: EventChannels?
    var gntshr: GrantSharing?
    var grant: SharedGrant?
    /// Wakes the xenbus thread: shutdown, or an AER request seen by a requester.
    var kickFD: Int32 = -1
    /// Signalled once by detach and left readable: a request waiting for the
    /// backend wakes and gives up (a slow backend must not hold detach).
    var abortFD: Int32 = -1

    var domid: DomID = 0
    public private(set) var frontendPath = ""
    public private(set) var backendPath = ""
    public private(set) var backendID: DomID = 0
    let watchToken: String

    /// Guards everything below and signals state changes (waitConnected).
    let stateCond = NSCondition()
    var frontState: XenState = .unknown
    var backendState: XenState?
    var connectError: XPCIError?
    var bus: [PCIAddress: PCIFunction] = [:]
    var rootList: [PCIRoot] = []
    /// New functions a scan in progress is reading (their requests are
    /// counted under their address before they reach `bus`).
    var scanning: Set<PCIAddress> = []
    var aerHandlers: [PCIAddress: @Sendable (AERRequest) -> AERResult] = [:]
    var stats = XPCIStatistics()
    var aerThrottle: AERThrottle
    var eventHandler: (@Sendable (XPCIEvent) -> Void)?

    /// Serialises requests; guards `channelBroken` and the channel itself.
    let opLock = NSLock()
    var channelBroken = false

    var thread: Thread?
    /// Requests posted so far: the xenbus thread stands aside while they come.
    let requestsPosted = Atomic<UInt64>(0)
    let threadDone = DispatchSemaphore(value: 0)

    public init(hypervisor: FrontendServices, options: Options = .init()) throws {
        guard options.instance >= 0 else { throw XPCIError.badArgument("instance \(options.instance) is negative") }
        guard options.requestTimeout > .zero else { throw XPCIError.badArgument("request timeout must be positive") }
        guard options.aerRateLimit.burst >= 0, options.aerRateLimit.window > .zero else {
            throw XPCIError.badArgument("AER rate limit \(options.aerRateLimit): the burst must not be negative, the window must be positive")
        }
        hv = hypervisor
        self.options = options
        sc = .allocate(capacity: 1)
        sc.initialize(to: xpci_xenbus_softc())
        sc.pointee.sc_shared_gntref = Self.grantInvalid
        sc.pointee.sc_backend_status = Int32(XPCI_BACKEND_DISCONNECTED)
        watchToken = "xpci\(options.instance)"
        aerThrottle = AERThrottle(options.aerRateLimit)
    }

    deinit {
        if xs != nil { try? detach() }
        sc.deallocate()
    }

    // MARK: public state

    public var state: XenState { locked { frontState } }
    public var backendStateSeen: XenState? { locked { backendState } }
    public var roots: [PCIRoot] { locked { rootList } }
    public var devices: [PCIFunction] { locked { bus.values.sorted { $0.address < $1.address } } }
    public func device(_ a: PCIAddress) -> PCIFunction? { locked { bus[a] } }
    public var statistics: XPCIStatistics { locked { stats } }
    /// Called on the thread that made the change, often the xenbus thread.
    public var onEvent: (@Sendable (XPCIEvent) -> Void)? {
        get { locked { eventHandler } }
        set { locked { eventHandler = newValue } }
    }

    /// Registers the AER handler of one device (nil removes it). Devices
    /// without a handler answer `PCI_ERS_RESULT_NONE`, as Linux does.
    /// The handler runs on the xenbus thread (or in `drain()`).
    public func setAERHandler(_ a: PCIAddress, _ h: (@Sendable (AERRequest) -> AERResult)?) {
        locked { aerHandlers[a] = h }
    }

    func locked<T>(_ body: () throws -> T) rethrows -> T {
        stateCond.lock()
        defer { stateCond.unlock() }
        return try body()
    }

    func emit(_ e: XPCIEvent) {
        let h = locked { eventHandler }
        h?(e)
    }

    var page: SharedPage? { sc.pointee.sc_shared.map { SharedPage(UnsafeMutableRawPointer($0)) } }

    // MARK: attach

    /// xpci_xenbus_attach: find the backend, grant the page, allocate the
    /// event channel, publish the three keys and Initialised in one
    /// transaction, then follow the backend from the xenbus thread.
    /// On failure everything acquired so far is released.
    public func attach() throws {
        guard xs == nil else { throw XPCIError.badArgument("\(frontendPath) is already attached") }
        do {
            domid = try hv.domid()
            frontendPath = "/local/domain/\(domid)/device/pci/\(options.instance)"
            let store = try hv.openXenStore()
            xs = store
            evtchn = try hv.openEventChannels()
            gntshr = try hv.openGrantSharing()
            kickFD = xenpci_eventfd_open()
            guard kickFD >= 0 else { throw XenError(errno, "eventfd", "xenbus thread wakeup") }
            abortFD = xenpci_eventfd_open()
            guard abortFD >= 0 else { throw XenError(errno, "eventfd", "detach wakeup") }
            try readBackendLocation(store)
            locked { connectError = nil; frontState = .initialising; backendState = nil }
            try store.watch(backendPath + "/state", token: watchToken)
            try talkToBackend()
        } catch {
            teardownChannel()
            closeHandles()
            throw XPCIError.wrap(error)
        }
        locked { sc.pointee.sc_shutdown = 0 }
        guard options.xenbusThread else { return }
        let t = Thread { [unowned self] in self.xenbusThread() }
        t.name = "xpci\(options.instance) xenbus"
        thread = t
        t.start()
    }

    /// `backend` and `backend-id`, written by the toolstack.
    func readBackendLocation(_ store: XenStore) throws {
        backendPath = try store.read(frontendPath + "/backend")
        let idText = try store.read(frontendPath + "/backend-id")
        guard !backendPath.isEmpty, let id = DomID(idText) else {
            throw XPCIError.badArgument("\(frontendPath): backend '\(backendPath)' / backend-id '\(idText)' unusable")
        }
        backendID = id
    }

    /// The publishing half of xpci_xenbus_attach (Linux pcifront_publish_info):
    /// a zeroed page granted to the backend with the AER handler bit set, an
    /// unbound port, and `pci-op-ref`, `event-channel`, `magic` and state
    /// Initialised written in ONE transaction (retried on EAGAIN).
    func talkToBackend() throws {
        guard let store = xs, let gntshr, let evtchn else { throw XPCIError.notConnected(state) }
        let g = try gntshr.share(with: backendID, writable: true)
        grant = g
        sc.pointee.sc_shared = g.address.bindMemory(to: xen_pci_sharedinfo.self, capacity: 1)
        sc.pointee.sc_shared_gntref = g.ref
        SharedPage(g.address).setFlags(XenPCI.aerHandler)
        let port = try evtchn.allocateUnbound(remote: backendID)
        sc.pointee.sc_evtchn = port
        let dir = frontendPath
        try store.transaction { t in
            try store.write(dir + "/pci-op-ref", String(g.ref), transaction: t)
            try store.write(dir + "/event-channel", String(port), transaction: t)
            try store.write(dir + "/magic", XenPCI.magic, transaction: t)
            try store.write(dir + "/state", XenState.initialised.xenstoreValue, transaction: t)
        }
        opLock.lock()
        channelBroken = false
        opLock.unlock()
        setFrontState(.initialised)
    }

    /// xenbus_switch_state
    func switchState(_ s: XenState) throws {
        try xs?.write(frontendPath + "/state", s.xenstoreValue)
        setFrontState(s)
    }

    func setFrontState(_ s: XenState) {
        let be: XenState? = locked {
            frontState = s
            stateCond.broadcast()
            return backendState
        }
        emit(.stateChanged(frontend: s, backend: be))
    }

    // MARK: the xenbus thread

    /// Follows the backend (watch on its `state`) and serves AER requests.
    func xenbusThread() {
        defer { threadDone.signal() }
        guard let store = xs, let ev = evtchn else { return }
        // (docs/PERFORMANCE.md) While requests are in flight every
        // reply is an event the requester takes itself; waking here for each
        // one and queueing on opLock cost two context switches and a futex
        // wake per request. So when the event channel fires during a request
        // this thread stands aside: it leaves the port out of its poll set for
        // up to `standAside`, then looks again, and stays aside while requests
        // keep coming (with many guests each one is used every few ms, and
        // rejoining in between cost a wake-up per request). An AER request
        // is not delayed by it during requests (a requester that sees bit 2
        // kicks this thread), and by at most `standAside` between them.
        let standAside: Duration = .milliseconds(50)
        var aside = false
        var seen = requestsPosted.load(ordering: .relaxed)
        while !shutdownRequested {
            let fds = [store.fileDescriptor, aside ? -1 : ev.fileDescriptor, kickFD]
            guard let ready = try? pollReadable(fds, timeout: aside ? standAside : nil) else { break }
            if ready[2] { xenpci_eventfd_drain(kickFD) }
            if shutdownRequested { break }
            while let e = store.nextWatchEvent() {
                if e.token == watchToken { backendChanged(readBackendState()) }
            }
            if ready[2] { serviceEvents(); aside = false }
            else if ready[1] || aside {
                let posted = requestsPosted.load(ordering: .relaxed)
                let busy = serviceEvents(unlessBusy: true) == .busy
                aside = busy || posted != seen
                seen = posted
            }
        }
    }

    /// The xenbus thread's work, done on the caller's thread when
    /// `Options.xenbusThread` is false: backend state changes (and the
    /// connect, scan or teardown they start), then AER requests, until
    /// nothing is left or `maxRounds` rounds ran (a backend answering every
    /// notify with a new AER request cannot keep the caller here).
    /// Returns the number of watch events and AER requests handled.
    @discardableResult
    public func drain(maxRounds: Int = 1000) throws -> Int {
        guard !options.xenbusThread else {
            throw XPCIError.badArgument("drain() is for Options.xenbusThread = false; the xenbus thread does this work")
        }
        guard let store = xs else { throw XPCIError.notConnected(state) }
        var handled = 0
        for _ in 0..<maxRounds {
            var n = 0
            xenpci_eventfd_drain(kickFD)
            while let e = store.nextWatchEvent() {
                if e.token == watchToken { backendChanged(readBackendState()) }
                n += 1
            }
            if serviceEvents() == .answeredAER { n += 1 }
            if n == 0 { break }
            handled += n
        }
        return handled
    }

    var shutdownRequested: Bool { locked { sc.pointee.sc_shutdown != 0 } }

    /// The backend's state now; nil when its directory is gone or unreadable.
    func readBackendState() -> XenState? {
        guard let text = try? xs?.readIfPresent(backendPath + "/state") else { return nil }
        return XenState(xenstore: text) ?? .unknown
    }

    /// xpci_backend_changed. NetBSD handles only Connected and panics on
    /// Reconfiguring/Reconfigured; this follows docs/PROTOCOL.md §3.
    func backendChanged(_ new: XenState?) {
        let fe: XenState = locked {
            backendState = new
            stateCond.broadcast()
            return frontState
        }
        emit(.stateChanged(frontend: fe, backend: new))
        switch new {
        case .initialising?, .initWait?, .initialised?:
            // A backend coming back after a close: publish again (reconnect).
            if fe == .initialising || fe == .closed { report { try talkToBackend() } }
        case .connected?:
            if fe == .initialised { connect() }
            else if fe == .reconfiguring { report { try attachDevices() } }
        case .reconfiguring?:
            // Missed-Connected race: the backend went 7 while we were still 3.
            if fe == .initialised { connect() }
            if state == .connected { report { try detachDevices() } }
        case .reconfigured?:
            if fe == .initialised { connect() }
            else if fe == .reconfiguring { report { try attachDevices() } }
        case .closing?, .closed?, .unknown?, nil:
            // Only a connection is torn down: a backend still Closed from an
            // earlier session while we wait Initialised is left to come back.
            if fe == .connected || fe == .reconfiguring || fe == .closing { closeDown() }
        }
    }

    func report(_ body: () throws -> Void) {
        do { try body() } catch { reportError(XPCIError.wrap(error)) }
    }

    /// An abandoned request is what detach asked for, not an error to log.
    func reportError(_ e: XPCIError) {
        if case .detaching = e { return }
        emit(.error(e))
    }

    // MARK: connect

    /// xpci_connect (Linux pcifront_try_connect): the backend is Connected;
    /// read and validate the roots, scan every one, go Connected. A failure
    /// (lying backend, silent backend) is kept for waitConnected.
    func connect() {
        locked { connectError = nil }
        opLock.lock()
        sc.pointee.sc_backend_status = Int32(XPCI_BACKEND_CONNECTED)
        channelBroken = false
        opLock.unlock()
        do {
            let rs = try readRoots()
            var found: [PCIFunction] = []
            for r in rs { found += try scanRoot(r, known: [:]) }
            locked { setBus(Dictionary(uniqueKeysWithValues: found.map { ($0.address, $0) }), roots: rs) }
            for f in found { emit(.deviceAdded(f)) }
            try switchState(.connected)
        } catch {
            let e = XPCIError.wrap(error)
            locked { setBus(bus, roots: rootList); connectError = e; stateCond.broadcast() }
            reportError(e)
        }
    }

    /// Lock held. Replaces the bus and ends any scan; statistics of
    /// functions no longer on it move to `other`, so per-address entries
    /// stay bounded by the functions present however often addresses change.
    func setBus(_ new: [PCIAddress: PCIFunction], roots: [PCIRoot]) {
        bus = new
        rootList = roots
        scanning = []
        for (a, s) in stats.devices where bus[a] == nil {
            stats.other.add(s)
            stats.devices[a] = nil
        }
    }

    /// Hot-remove half of Reconfiguring (Linux pcifront_detach_devices):
    /// drop every device whose `state-N` is Closing (5), then go Reconfiguring.
    func detachDevices() throws {
        guard let store = xs else { return }
        let n = try readBoundedDecimal(store, "num_devs", max: 256)
        var gone: [PCIAddress] = []
        for i in 0..<n {
            guard try store.readIfPresent(backendPath + "/state-\(i)") == XenState.closing.xenstoreValue else { continue }
            guard let text = try store.readIfPresent(backendPath + "/vdev-\(i)") else {
                throw XPCIError.backendLied("vdev-\(i) is missing while state-\(i) is Closing")
            }
            guard let a = try? PCIAddress(parsing: text) else {
                throw XPCIError.backendLied("vdev-\(i) = '\(text)' is not a PCI address")
            }
            gone.append(a)
        }
        let removed: [PCIAddress] = locked {
            let r = gone.filter { bus[$0] != nil }
            setBus(bus.filter { !r.contains($0.key) }, roots: rootList)
            return r
        }
        for a in removed { emit(.deviceRemoved(a)) }
        try switchState(.reconfiguring)
    }

    /// Hot-add half (Linux pcifront_attach_devices): re-read the roots,
    /// rescan them (new functions are read in full, known ones kept, vanished
    /// ones dropped), then go Connected.
    func attachDevices() throws {
        let rs = try readRoots()
        let known = locked { bus }
        var found: [PCIFunction] = []
        for r in rs { found += try scanRoot(r, known: known) }
        let now = Dictionary(uniqueKeysWithValues: found.map { ($0.address, $0) })
        locked { setBus(now, roots: rs) }
        for a in known.keys.sorted() where now[a] == nil { emit(.deviceRemoved(a)) }
        for f in found where known[f.address] == nil { emit(.deviceAdded(f)) }
        try switchState(.connected)
    }

    /// A decimal key of the backend directory, bounded.
    func readBoundedDecimal(_ store: XenStore, _ key: String, max: Int) throws -> Int {
        let text = try store.read(backendPath + "/" + key)
        guard let n = XenstoreValue.decimal(text, max: UInt64.max).map(Int.init(clamping:)) else {
            throw XPCIError.backendLied("\(key) = '\(text)' is not a decimal number")
        }
        guard n <= max else { throw XPCIError.backendLied("\(key) = \(n) is above the bound of \(max)") }
        return n
    }

    /// Reads `root_num` and `root-N` (absent: the single root 0000:00).
    /// NetBSD ignored errors reading `root-N`; here every key is bounded and
    /// validated (strict `DDDD:BB`, no duplicates), else backendLied.
    func readRoots() throws -> [PCIRoot] {
        guard let store = xs else { throw XPCIError.notConnected(state) }
        guard try store.readIfPresent(backendPath + "/root_num") != nil else { return [PCIRoot(segment: 0, bus: 0)] }
        let n = try readBoundedDecimal(store, "root_num", max: options.maxRoots)
        var out: [PCIRoot] = []
        for i in 0..<n {
            guard let text = try store.readIfPresent(backendPath + "/root-\(i)") else {
                throw XPCIError.backendLied("root-\(i) is missing (root_num = \(n))")
            }
            guard text.count == 7, text.allSatisfy(\.isASCII), text.dropFirst(4).first == ":",
                  let r = PCIRoot(xenstore: text) else {
                throw XPCIError.backendLied("root-\(i) = '\(text)' is not DDDD:BB")
            }
            guard !out.contains(r) else { throw XPCIError.backendLied("root-\(i) = \(r) is a duplicate") }
            out.append(r)
        }
        return out
    }

    // MARK: waiting

    /// Waits until the frontend is Connected. Throws the connect error when
    /// connecting failed, or a timeout naming both states (never hangs).
    public func waitConnected(timeout: Duration? = nil) throws {
        let d = timeout ?? options.connectTimeout
        let deadline = Date().addingTimeInterval(d.seconds)
        stateCond.lock()
        defer { stateCond.unlock() }
        guard xs != nil else { throw XPCIError.notConnected(frontState) }
        while frontState != .connected {
            if let e = connectError { throw e }
            if !stateCond.wait(until: deadline) {
                if frontState == .connected { return }
                if let e = connectError { throw e }
                throw XPCIError.connectTimeout(after: d, frontend: frontState, backend: backendState)
            }
        }
    }

    /// Waits until the frontend reaches `s` (tests, the command line).
    @discardableResult
    public func waitState(_ s: XenState, timeout: Duration) -> Bool {
        let deadline = Date().addingTimeInterval(timeout.seconds)
        stateCond.lock()
        defer { stateCond.unlock() }
        while frontState != s { if !stateCond.wait(until: deadline) { return frontState == s } }
        return true
    }

    // MARK: teardown

    /// Backend went Closing/Closed (or vanished): free the bus, end the grant,
    /// close the port, go Closed, then Initialising so that a backend coming
    /// back can be reconnected (docs/PROTOCOL.md §3 Decision). NetBSD had no
    /// teardown at all.
    func closeDown() {
        removeAllDevices()
        flushAERReports()
        opLock.lock()
        teardownChannel()
        opLock.unlock()
        report { try switchState(.closed) }
        report { try switchState(.initialising) }
    }

    func removeAllDevices() {
        let gone: [PCIAddress] = locked {
            let a = bus.keys.sorted()
            setBus([:], roots: [])
            return a
        }
        for a in gone { emit(.deviceRemoved(a)) }
    }

    /// Ends the grant and unbinds the port; the softc goes back to empty.
    func teardownChannel() {
        sc.pointee.sc_backend_status = Int32(XPCI_BACKEND_DISCONNECTED)
        if sc.pointee.sc_evtchn != 0 {
            try? evtchn?.unbind(sc.pointee.sc_evtchn)
            sc.pointee.sc_evtchn = 0
        }
        if let g = grant {
            try? gntshr?.endAccess(g)
            grant = nil
        }
        sc.pointee.sc_shared = nil
        sc.pointee.sc_shared_gntref = Self.grantInvalid
        channelBroken = false
    }

    func closeHandles() {
        if let store = xs { try? store.unwatch(backendPath + "/state", token: watchToken) }
        xs?.close(); xs = nil
        evtchn?.close(); evtchn = nil
        gntshr?.close(); gntshr = nil
        if kickFD >= 0 { Foundation.close(kickFD); kickFD = -1 }
        if abortFD >= 0 { Foundation.close(abortFD); abortFD = -1 }
    }

    /// xpci_xenbus_detach: stop the xenbus thread, Closing, wait for the
    /// backend to follow, free the bus, end the grant, close the port,
    /// Closed, close every handle. Afterwards attach() works again.
    /// Returns within the connect timeout even mid-scan against a backend
    /// that answers slowly or never: requests in flight give up and new ones
    /// fail at once (`XPCIError.detaching`), so the scan ends at its next
    /// request, and the Closing handshake gets what is left of the time.
    public func detach() throws {
        guard let store = xs else { return }
        let deadline = ContinuousClock.now + options.connectTimeout
        locked { sc.pointee.sc_shutdown = 1 }
        _ = xenpci_eventfd_signal(abortFD)
        _ = xenpci_eventfd_signal(kickFD)
        if thread != nil { threadDone.wait(); thread = nil }
        var firstError: Error?
        let fe = state
        if fe != .initialising && fe != .closed && fe != .unknown {
            do {
                try switchState(.closing)
                try waitBackendClosing(store, until: deadline)
            } catch { firstError = firstError ?? error }
        }
        removeAllDevices()
        flushAERReports()
        opLock.lock()
        teardownChannel()
        opLock.unlock()
        do { try switchState(.closed) } catch { firstError = firstError ?? error }
        closeHandles()
        if let e = firstError { throw XPCIError.wrap(e) }
    }

    /// Waits until `deadline` for the backend to reach Closing or Closed (or
    /// disappear); a silent backend does not hang detach.
    func waitBackendClosing(_ store: XenStore, until deadline: ContinuousClock.Instant) throws {
        while true {
            let be = readBackendState()
            locked { backendState = be }
            if be == nil || be == .closing || be == .closed { return }
            let left = ContinuousClock.now.duration(to: deadline)
            if left <= .zero { return }
            _ = try store.waitWatchEvent(timeout: left)
        }
    }
}

extension Duration {
    var seconds: Double {
        let c = components
        return Double(c.seconds) + Double(c.attoseconds) / 1e18
    }
}

