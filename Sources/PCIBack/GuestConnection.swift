import Foundation
import PCIModel
import XenHypervisor
import CXenPCI
import XenPCIABI
import CXenPCISoftc

/// One guest's connection: its xenbus state machine (`Xenbus.swift`) and
/// its request path (`Requests.swift`), run against NetBSD's
/// `pb_xenbus_instance`, the state of record for what the guest holds. The
/// C struct holds the domid, the bound port, the mapped shared page and its
/// grant handle, the private copy of the request being served and the
/// guest's device list; what is read of them is read there. Swift adds what
/// NetBSD keeps elsewhere (xenbus paths and states, flood counters) and
/// nothing the struct already has.
final class GuestConnection {
    let c: UnsafeMutablePointer<pb_xenbus_instance>
    unowned let ctx: BackendContext
    let domid: DomID
    let backendPath: String      // /local/domain/<be>/backend/pci/<domid>/0
    let frontendPath: String     // /local/domain/<domid>/device/pci/0
    var state: XenState = .unknown
    var frontState: XenState = .unknown
    /// The mapped page's grant ref, for messages only: the unmap needs the
    /// address and handle, which the struct holds.
    private var mappedRef: GrantRef = 0
    var roots: [PCIRoot] = []
    // Flood control (XSA-332).
    var spuriousInWindow = 0
    var windowStart = ContinuousClock.now
    var requests = 0
    var withoutEvent = 0
    var spurious = 0
    var throttled = 0
    /// A request was served since the last event found none: its notify,
    /// possibly still pending behind the mask, is not a spurious event.
    var owedEvent = false
    /// A function to export is still being reset after its previous guest:
    /// the connect or reconfigure waits for it (see `waitsForReset`).
    var waitingForReset = false
    /// An AER request posted to the guest, and who waits for its answer.
    var aer: AERWait?
    /// A request is waiting on its function (a settle): its reply is still
    /// to be written, and the guest's page is not read until then.
    var inFlight = false
    /// Set by `dispatch` when the request's write left its function a wait.
    var deviceWait: (ClaimedDevice, DeviceWait)?

    // Shorthands for what the connection works with (the context's).
    var xs: XenStore { ctx.xs }
    var evtchn: EventChannels { ctx.evtchn }
    var gnttab: GrantTable { ctx.gnttab }
    var routing: InterruptRouting { ctx.routing }
    var registry: DeviceRegistry { ctx.registry }
    var options: PCIBack.Options { ctx.options }
    func emit(_ e: PCIBack.Event) { ctx.emit(e) }
    func persist() { ctx.persist() }

    init(_ ctx: BackendContext, domid: DomID, backendPath: String, frontendPath: String) {
        self.ctx = ctx
        self.domid = domid
        self.backendPath = backendPath
        self.frontendPath = frontendPath
        c = .allocate(capacity: 1)
        c.initialize(to: pb_xenbus_instance())
        c.pointee.pbx_domid = domid
        c.pointee.pbx_shinfo_handle = UInt32.max
    }

    deinit {
        // No device may keep pointing at a freed instance.
        for pb in deviceList { pb.pointee.pbx_instance = nil; pb.pointee.pb_guest_next.sle_next = nil }
        c.deallocate()
    }

    /// pbx_evtchn; 0 (never a valid port) when unbound.
    var port: EvtchnPort? {
        get { c.pointee.pbx_evtchn == 0 ? nil : EvtchnPort(c.pointee.pbx_evtchn) }
        set { c.pointee.pbx_evtchn = newValue ?? 0 }
    }

    /// pbx_sh_info and pbx_shinfo_handle.
    var mapping: GrantMapping? {
        c.pointee.pbx_sh_info.map { GrantMapping(address: UnsafeMutableRawPointer($0), handle: c.pointee.pbx_shinfo_handle, domain: domid, ref: mappedRef) }
    }

    func setMapping(_ m: GrantMapping?) {
        c.pointee.pbx_sh_info = m?.address.assumingMemoryBound(to: xen_pci_sharedinfo.self)
        c.pointee.pbx_shinfo_handle = m?.handle ?? UInt32.max
        mappedRef = m?.ref ?? 0
    }

    var connected: Bool { c.pointee.pbx_sh_info != nil && port != nil }
    var shared: SharedPage? { c.pointee.pbx_sh_info.map { SharedPage(UnsafeMutableRawPointer($0)) } }

    /// The guest's devices, newest first: the pbx_pb_pci_dev list.
    var deviceList: [UnsafeMutablePointer<pciback_pci_dev>] {
        var out: [UnsafeMutablePointer<pciback_pci_dev>] = []
        var p = c.pointee.pbx_pb_pci_dev.slh_first
        while let cur = p { out.append(cur); p = cur.pointee.pb_guest_next.sle_next }
        return out
    }

    /// SLIST upkeep of the C mirror: the guest's device list and back pointers.
    func link(_ d: ClaimedDevice) {
        d.pb.pointee.pbx_instance = c
        d.pb.pointee.pb_guest_next.sle_next = c.pointee.pbx_pb_pci_dev.slh_first
        c.pointee.pbx_pb_pci_dev.slh_first = d.pb
    }

    func unlink(_ d: ClaimedDevice) { Self.unlink(d.pb, from: c) }

    /// Takes `pb` off the list of instance `c` and clears its owner.
    static func unlink(_ pb: UnsafeMutablePointer<pciback_pci_dev>, from c: UnsafeMutablePointer<pb_xenbus_instance>) {
        var p = c.pointee.pbx_pb_pci_dev.slh_first
        if p == pb {
            c.pointee.pbx_pb_pci_dev.slh_first = pb.pointee.pb_guest_next.sle_next
        } else {
            while let cur = p, cur.pointee.pb_guest_next.sle_next != pb { p = cur.pointee.pb_guest_next.sle_next }
            p?.pointee.pb_guest_next.sle_next = pb.pointee.pb_guest_next.sle_next
        }
        pb.pointee.pb_guest_next.sle_next = nil
        pb.pointee.pbx_instance = nil
    }
}

/// An AER request's outcome, handed from the loop to the thread waiting
/// in `raiseAER` (the semaphore orders the write before the read).
final class AERWait: @unchecked Sendable {
    enum Outcome { case answered, timedOut, disconnected }
    let done = DispatchSemaphore(value: 0)
    private(set) var outcome: Outcome?
    func finish(_ o: Outcome) { outcome = o; done.signal() }
}

extension GuestConnection {
    /// The AER request in progress ends (owner).
    func finishAER(_ o: AERWait.Outcome) {
        guard let w = aer else { return }
        aer = nil
        w.finish(o)
    }
}

/// At most `burst` log lines per `window` per guest; the rest are counted
/// and reported as one line when lines are admitted again. A guest cannot
/// flood dom0's log (or slow the backend down writing it).
struct GuestLogLimit {
    var burst = 20
    var window: Duration = .seconds(10)
    private var start: ContinuousClock.Instant?
    private var used = 0
    private var suppressed = 0

    /// nil: drop this line (counted). Otherwise how many were dropped
    /// before it, to report first.
    mutating func admit(now: ContinuousClock.Instant) -> Int? {
        if start == nil || now - start! >= window { start = now; used = 0 }
        guard used < burst else { suppressed += 1; return nil }
        used += 1
        defer { suppressed = 0 }
        return suppressed
    }
}
