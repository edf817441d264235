import Foundation
import PCIModel
import XenHypervisor
import XenPCIABI
import CXenPCI

/// AER (PROTOCOL.md section 5): the backend tells a guest about an error on
/// a function it holds, and waits for its handler's answer.
extension PCIBack {
    /// PCI channel states as `aer_op.err` carries them to the guest.
    public enum ChannelState: Int32, Sendable { case normal = 1, frozen = 2, permanentFailure = 3 }

    /// Runs the bit-2 handshake for an error on a host device: the guest's
    /// handler answers within `timeout` (default: options.aerTimeout).
    /// Without an AER handler the guest cannot recover: `aerState` =
    /// `aerfail` asks the toolstack to stop it.
    public func raiseAER(_ host: PCIAddress, _ cmd: PCIOpCommand, channel: ChannelState = .normal, timeout: Duration? = nil) throws -> Int32 {
        guard [.aerDetected, .aerResume, .aerMMIO, .aerSlotReset].contains(cmd) else {
            throw PCIBackError.refused("\(cmd) is not an AER request")
        }
        // Posted and notified by the service thread, which owns the page;
        // this thread waits for the answer.
        let (i, sh): (GuestConnection, SharedPage) = try loop.sync { [self] () throws -> (GuestConnection, SharedPage) in
            guard let d = registry[host] else { throw PCIBackError.badDevice("\(host): not claimed by pciback") }
            guard let g = d.guest, let i = connections[g], let v = d.guestAddress else {
                throw PCIBackError.notConnected("\(host): not exported to any guest")
            }
            guard let sh = i.shared, let port = i.port else { throw PCIBackError.notConnected("\(host): dom\(g)'s frontend is not connected") }
            guard sh.flags & XenPCI.aerHandler != 0 else {
                try? xs.write(i.backendPath + "/aerState", "aerfail")
                throw PCIBackError.refused("\(host): dom\(g) has no AER handler: asked the toolstack to stop it (aerState=aerfail)")
            }
            guard !i.aerPending else { throw PCIBackError.refused("\(host): an AER request to dom\(g) is already in progress") }
            var op = xen_pcie_aer_op()
            op.cmd = cmd.rawValue
            op.err = channel.rawValue
            op.domain = UInt32(v.segment)
            op.bus = UInt32(v.bus)
            op.devfn = UInt32(v.devfn)
            i.aerPending = true
            i.aerDone = false
            sh.postAER(op)
            try? evtchn.notify(port)
            return (i, sh)
        }
        defer { loop.sync { i.aerPending = false } }
        let deadline = ContinuousClock.now + (timeout ?? options.aerTimeout)
        // The page is read by the service thread, and only while the guest
        // is connected: a disconnect there unmaps it.
        func answered() -> Bool? { loop.sync { i.connected && i.shared?.pointer == sh.pointer ? sh.flags & XenPCI.backendActive == 0 : nil } }
        // Woken by the answer's event or a disconnect, else every 50 ms; a
        // guest that sets the bit again itself gets no busy loop.
        while let done = answered(), !done, ContinuousClock.now < deadline {
            ctx.aerCondition.lock()
            if !i.aerDone { _ = ctx.aerCondition.wait(until: Date().addingTimeInterval(0.05)) }
            i.aerDone = false
            ctx.aerCondition.unlock()
        }
        return try loop.sync { () throws -> Int32 in
            guard i.connected, i.shared?.pointer == sh.pointer else {
                throw PCIBackError.notConnected("\(host): the frontend disconnected during the AER request")
            }
            if sh.flags & XenPCI.backendActive != 0 {
                sh.clearFlags(XenPCI.backendActive) // a late answer must not be read as the next one
                throw PCIBackError.timeout("\(host): dom\(i.domid) did not answer the \(cmd) request in time")
            }
            return sh.snapshotAER().err
        }
    }
}
