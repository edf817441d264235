import Foundation
import PCIBack
import PCIModel
import XenMock
import XenToolstack
import XPCI
import XenHypervisor
import XenPCIABI

/// One machine on the mock hypervisor: dom0 runs pciback on devices from a
/// `DeviceSource`, a toolstack writes xenstore as libxl does, and dom1 runs
/// xpci. State changes are printed as they happen. This is `xenpci demo`.
// Sendable: its handlers run on the backend's and the frontend's threads and
// touch only the console (locked) and `lastFront` (the frontend's thread's).
final class MockHost: HostControls, @unchecked Sendable {
    let hv = MockHypervisor()
    let guest: DomID = 1
    let console: Console
    let source: DeviceSource
    let back: PCIBack
    let toolstack: XenToolstack
    private let toolstackXS: XenStore
    private(set) var front: XPCIFrontend?
    private var devices: [PCIAddress: SysfsPCIDevice] = [:]
    private var stopped = false

    /// Opens the backend's handles in dom0; nothing runs until `start`.
    init(source: DeviceSource, topology: PCIBack.Topology, console: Console) throws {
        self.console = console
        self.source = source
        let dom0 = hv.domain(0)
        _ = hv.domain(guest, name: "guest1")
        var o = PCIBack.Options()
        o.topology = topology
        o.allowHostDriverReadOnly = true
        o.aerTimeout = .seconds(5)
        back = try PCIBack(hypervisor: dom0, options: o)
        do { toolstackXS = try dom0.openXenStore() } catch { back.stop(); throw error }
        toolstack = XenToolstack(xenstore: toolstackXS, permissions: nil)
        toolstack.timeout = .seconds(5)
        back.onEvent = { [unowned self] e in self.show(e) }
    }

    func show(_ e: PCIBack.Event) {
        if case .frontendState = e { return } // the frontend reports its own
        if case .error = e { console.err(describe(e, listing: back.listing()), priority: .error) } else { console.err(describe(e, listing: back.listing())) }
    }

    func show(_ e: XPCIEvent) {
        let tag = "[dom1 xpci]   "
        switch e {
        case .stateChanged(let fe, _):
            if lastFront != fe { console.err("\(tag) device/pci/0 state \(fe) (\(fe.rawValue))") }
            lastFront = fe
        case .deviceAdded(let f): console.err("\(tag) found \(f.address.shortDescription) \(hex(f.vendorID, 4)):\(hex(f.deviceID, 4)) class \(hex(f.classCode >> 8, 4))")
        case .deviceRemoved(let a): console.err("\(tag) removed \(a.shortDescription)")
        case .aer(let r, let res): console.err("\(tag) AER \(r.command) on \(r.address.shortDescription) (channel \(["", "normal", "frozen", "failure"][safe: Int(r.channelState)] ?? String(r.channelState))): answered \(aerWords(res))")
        case .aerRateLimited: console.err("\(tag) \(e)")
        case .error(let err): console.err("\(tag) \(err)", priority: .error)
        }
    }
    private var lastFront: XenState?

    /// Claims the devices: the hide list, or every function but bridges
    /// (none with `defaultSelection` false: the daemon's config file names
    /// them). Nothing stays claimed when one of them cannot be.
    func claim(hide: String?, defaultSelection: Bool = true) throws {
        devices = try source.scan(console: console)
        let chosen: [PCIAddress]
        if hide == nil && !defaultSelection { return }
        if let h = hide {
            chosen = try back.claim(hideList: h, from: source.addresses) { a in
                guard let d = self.devices[a] else { throw CLIError.failure("\(a): no such device") }
                return d
            }
        } else {
            chosen = try source.defaultSelection(devices)
            var done: [PCIAddress] = []
            do {
                for a in chosen { try back.claim(devices[a]!); done.append(a) }
            } catch {
                for a in done { try? back.release(a) }
                throw error
            }
        }
        guard !chosen.isEmpty else { throw CLIError.failure("no device to export (the hide list selects none)") }
    }

    /// Claims the devices, starts the backend, creates the guest's xenbus
    /// directories, and (unless `frontend` is false) attaches the frontend
    /// and waits until it is Connected. On failure everything is undone.
    func start(hide: String?, frontend: Bool = true) throws {
        do { try claim(hide: hide) } catch { _ = shutdown(); throw error }
        try serve(frontend: frontend)
    }

    /// `start` after the claims: the backend runs and dom1 is given every
    /// claimed function. On failure everything is undone.
    func serve(frontend: Bool = true) throws {
        do {
            for i in back.listing() where i.readOnly {
                console.err("[dom0 pciback] \(i.address): host driver '\(i.driver ?? "?")' owns it: exported read-only")
            }
            try back.start()
            let claimed = back.listing().map(\.address)
            if !claimed.isEmpty { try toolstack.attach(domid: guest, devices: claimed) }
            guard frontend else { return }
            let f = try XPCIFrontend(hypervisor: hv.domain(guest), options: .init(requestTimeout: .seconds(2), connectTimeout: .seconds(10)))
            f.onEvent = { [unowned self, unowned f] e in
                if case .deviceAdded(let fn) = e { f.setAERHandler(fn.address) { r in r.command == .errorDetected ? .canRecover : .recovered } }
                self.show(e)
            }
            front = f
            try f.attach()
            try f.waitConnected()
        } catch {
            _ = shutdown()
            throw error
        }
    }

    /// Detaches the frontend, stops the backend, closes the toolstack:
    /// returns whatever the hypervisor still holds (must be empty).
    func shutdown() -> [String] {
        guard !stopped else { return hv.leaks() }
        stopped = true
        if let f = front {
            do { try f.detach() } catch { console.err("[dom1 xpci]    detach: \(error)") }
        }
        toolstack.destroy(domid: guest)
        back.stop()
        toolstackXS.close()
        return hv.leaks()
    }

    // MARK: HostControls

    func hostAddress(ofGuest a: PCIAddress) -> PCIAddress? {
        back.listing().first { $0.guest == guest && $0.guestAddress == a }?.address
    }

    /// `xl pci-attach`: claims the function first when pciback does not
    /// hold it yet (`xl pci-assignable-add`), then waits for the guest.
    func hotAdd(_ host: PCIAddress) throws -> PCIAddress {
        guard let f = front else { throw CLIError.failure("no frontend") }
        if !back.listing().contains(where: { $0.address == host }) {
            guard let d = devices[host] else { throw CLIError.failure("hot-add \(host): no such device on this host") }
            try back.claim(d)
        }
        if try toolstack.exportedDevices(XenToolstack.backendPath(backend: 0, guest: guest)).contains(where: { $0.device == host }) {
            throw CLIError.failure("hot-add \(host): already assigned to dom\(guest)")
        }
        try toolstack.attach(domid: guest, devices: [host])
        return try waitFor("hot-add of \(host)") {
            guard f.state == .connected, let g = self.back.listing().first(where: { $0.address == host })?.guestAddress,
                  f.device(g) != nil else { return nil }
            return g
        }
    }

    /// `xl pci-detach`: the guest drops it, pciback resets it.
    func hotRemove(_ host: PCIAddress) throws -> PCIAddress {
        guard let f = front else { throw CLIError.failure("no frontend") }
        guard let g = back.listing().first(where: { $0.address == host })?.guestAddress else {
            throw CLIError.failure("hot-remove \(host): not assigned to dom\(guest)")
        }
        try toolstack.detach(domid: guest, devices: [host])
        return try waitFor("hot-remove of \(host)") {
            f.state == .connected && f.device(g) == nil && self.back.listing().first(where: { $0.address == host })?.guest == nil ? g : nil
        }
    }

    private func waitFor<T>(_ what: String, timeout: Duration = .seconds(5), _ cond: () -> T?) throws -> T {
        let end = ContinuousClock.now + timeout
        while ContinuousClock.now < end {
            if let v = cond() { return v }
            usleep(2000)
        }
        if let v = cond() { return v }
        throw CLIError.failure("\(what): the guest did not finish within \(humanDuration(timeout)) (frontend \(front?.state.description ?? "gone"))")
    }

    func raiseAER(_ host: PCIAddress, _ cmd: PCIOpCommand, channel: PCIBack.ChannelState) throws -> Int32 {
        try back.raiseAER(host, cmd, channel: channel, timeout: .seconds(5))
    }

    func backendStatistics() -> [DeviceStatistics] { back.statistics() }
    func listing() -> [ClaimedDeviceInfo] { back.listing() }
    func xenstore(under path: String) -> String { hv.dumpXenstore(under: path) }
    func addQuirk(_ q: PCIQuirk) throws { try back.addQuirk(q) }
    func setPermissive(_ a: PCIAddress, _ on: Bool) throws { try back.setPermissive(a, on) }
}

/// The mock as the administrator's daemon sees it: functions come from the
/// device tree scanned at start; they are in-memory snapshots, whose reset
/// always works (it restores the snapshot).
extension MockHost: DaemonHost {
    func openFunction(_ a: PCIAddress) throws -> PCIDeviceAccess {
        guard let d = devices[a] else { throw CLIError.failure("\(a): no such function in \(source.root)") }
        return d
    }
    func hasResetMethod(_ access: PCIDeviceAccess) -> Bool { true }
    func released(_ addresses: [PCIAddress]) {}
    func logInfo(_ s: String) { console.err(s) }
    func logError(_ s: String) { console.err(s, priority: .error) }
    func xenstoreRead(_ path: String) -> String? { try? toolstackXS.read(path) }
    /// A snapshot is reset by restoring it.
    func resetMethod(_ a: PCIAddress) -> String { "snapshot" }
}
