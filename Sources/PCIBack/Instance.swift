import Foundation
import PCIModel
import XenHypervisor

/// One guest's connection: NetBSD's `pb_xenbus_instance`. The C struct
/// holds the domid, the bound port, the mapped shared page, the grant
/// handle and the private copy of the request being served.
final class Instance {
    let c: UnsafeMutablePointer<pb_xenbus_instance>
    let domid: DomID
    let backendPath: String      // /local/domain/<be>/backend/pci/<domid>/0
    let frontendPath: String     // /local/domain/<domid>/device/pci/0
    var state: XenState = .unknown
    var frontState: XenState = .unknown
    var mapping: GrantMapping?
    var port: EvtchnPort?
    /// Host address -> the device exported from it. Keyed by address, not by
    /// `dev-N` index: the toolstack compacts the `*-N` keys after a removal.
    var exported: [PCIAddress: ClaimedDevice] = [:]
    var roots: [PCIRoot] = []
    // Flood control (XSA-332).
    var spuriousInWindow = 0
    var windowStart = ContinuousClock.now
    var requests = 0
    var spurious = 0
    var throttled = 0
    /// Log lines this guest can cause, per window.
    var logLimit = GuestLogLimit()
    // AER handshake in progress.
    var aerPending = false
    var aerDone = false

    init(domid: DomID, backendPath: String, frontendPath: String) {
        self.domid = domid
        self.backendPath = backendPath
        self.frontendPath = frontendPath
        c = .allocate(capacity: 1)
        c.initialize(to: pb_xenbus_instance())
        c.pointee.pbx_domid = domid
        c.pointee.pbx_shinfo_handle = UInt32.max
    }

    deinit { c.deallocate() }

    var connected: Bool { mapping != nil && port != nil }
    var shared: SharedPage? { c.pointee.pbx_sh_info.map { SharedPage(UnsafeMutableRawPointer($0)) } }

    /// The device a guest addresses, by its guest-visible address.
    func device(_ a: PCIAddress) -> ClaimedDevice? { exported.values.first { $0.guestAddress == a } }

    /// SLIST upkeep of the C mirror: the guest's device list and back pointers.
    func link(_ d: ClaimedDevice) {
        d.pb.pointee.pbx_instance = c
        d.pb.pointee.pb_guest_next.sle_next = c.pointee.pbx_pb_pci_dev.slh_first
        c.pointee.pbx_pb_pci_dev.slh_first = d.pb
    }

    func unlink(_ d: ClaimedDevice) {
        var p = c.pointee.pbx_pb_pci_dev.slh_first
        if p == d.pb {
            c.pointee.pbx_pb_pci_dev.slh_first = d.pb.pointee.pb_guest_next.sle_next
        } else {
            while let cur = p, cur.pointee.pb_guest_next.sle_next != d.pb { p = cur.pointee.pb_guest_next.sle_next }
            p?.pointee.pb_guest_next.sle_next = d.pb.pointee.pb_guest_next.sle_next
        }
        d.pb.pointee.pb_guest_next.sle_next = nil
        d.pb.pointee.pbx_instance = nil
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
