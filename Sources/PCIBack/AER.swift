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
        // Posted and notified on the loop, which owns the page; this thread
        // waits for the outcome: the answer's event, a disconnect, or the
        // deadline, each delivered by the loop.
        let wait = AERWait()
        let sh: SharedPage = try loop.submit { [self] () throws -> SharedPage in
            guard let d = registry[host] else { throw PCIBackError.badDevice("\(host): not claimed by pciback") }
            guard let g = d.guest, let i = connections[g], let v = d.guestAddress else {
                throw PCIBackError.notConnected("\(host): not exported to any guest")
            }
            guard let sh = i.shared, let port = i.port else { throw PCIBackError.notConnected("\(host): dom\(g)'s frontend is not connected") }
            guard sh.flags & XenPCI.aerHandler != 0 else {
                try? xs.write(i.backendPath + "/aerState", "aerfail")
                throw PCIBackError.refused("\(host): dom\(g) has no AER handler: asked the toolstack to stop it (aerState=aerfail)")
            }
            guard i.aer == nil else { throw PCIBackError.refused("\(host): an AER request to dom\(g) is already in progress") }
            var op = xen_pcie_aer_op()
            op.cmd = cmd.rawValue
            op.err = channel.rawValue
            op.domain = UInt32(v.segment)
            op.bus = UInt32(v.bus)
            op.devfn = UInt32(v.devfn)
            i.aer = wait
            sh.postAER(op)
            try? evtchn.notify(port)
            loop.schedule(at: .now + (timeout ?? options.aerTimeout)) { [weak i] in
                if let i, i.aer === wait {
                    // A late answer must not be read as the next one.
                    sh.clearFlags(XenPCI.backendActive)
                    i.finishAER(.timedOut)
                }
            }
            return sh
        }
        wait.done.wait()
        let domid = try? loop.submit { [self] in registry[host]?.guest }
        switch wait.outcome {
        case .answered?:
            // Read on the loop: the page is unmapped there, and only there.
            return try loop.submit { [self] () throws -> Int32 in
                guard let g = registry[host]?.guest, let i = connections[g], i.connected, i.shared?.pointer == sh.pointer else {
                    throw PCIBackError.notConnected("\(host): the frontend disconnected during the AER request")
                }
                return sh.snapshotAER().err
            }
        case .timedOut?:
            throw PCIBackError.timeout("\(host): dom\((domid ?? nil).map(String.init) ?? "?") did not answer the \(cmd) request in time")
        case .disconnected?, nil:
            throw PCIBackError.notConnected("\(host): the frontend disconnected during the AER request")
        }
    }
}
