import Foundation
import XenHypervisor
import XenPCIABI

/// The ports of guests just served, still masked (a port read from the
/// event channel handle stays masked until unmasked, as Linux's evtchn
/// device keeps it). While a guest's next request is already waiting when
/// its reply is out, that request is served without reading the port and
/// without unmasking it: two of the five system calls a request costs in a
/// PV dom0 (docs/PERFORMANCE.md). The guest's notify for it stays
/// pending behind the mask and is delivered once the port is unmasked, so
/// nothing is lost; `GuestConnection.owedEvent` keeps that one event from
/// counting as a flood. Owned by the service thread.
final class HeldPorts {
    private let evtchn: EventChannels
    /// Served this round, masked, not yet looked at again.
    private var held: [EvtchnPort] = []
    /// Masked, their guest's next request seen waiting: to serve next.
    private var ready: [EvtchnPort] = []

    init(evtchn: EventChannels) { self.evtchn = evtchn }

    var hasReady: Bool { !ready.isEmpty }

    func isHeld(_ port: EvtchnPort) -> Bool { held.contains(port) }

    /// `port` served a request and was left masked.
    func hold(_ port: EvtchnPort) { held.append(port) }

    /// The ports whose next request is waiting, to serve now (still masked).
    func takeReady() -> [EvtchnPort] {
        defer { ready = [] }
        return ready
    }

    /// The port is being unbound: nothing of it is kept.
    func forget(_ port: EvtchnPort) {
        held.removeAll { $0 == port }
        ready.removeAll { $0 == port }
    }

    /// After a round of serving: each held port whose guest has its next
    /// request waiting becomes ready; the others are unmasked, so their
    /// next notify wakes us. With `spin`, when none is waiting yet, their
    /// bit 0 is watched that long first (no system call, and a yield now
    /// and then with `yields`): a guest answers within tens of
    /// microseconds, a wake-up through Xen costs more. Bounded by `spin`
    /// after every served round, so a guest cannot keep us spinning.
    /// `others`: the pages of the connected guests not held; the spin ends
    /// as soon as one of them posts a request, so a guest we are not
    /// spinning for waits for no more than the current request.
    func settle(_ connection: (EvtchnPort) -> GuestConnection?, others: () -> [SharedPage], spin: Duration, yields: Bool) {
        guard !held.isEmpty else { return }
        let served = held
        held = []
        let pages = served.map { connection($0)?.shared }
        var waiting = pages.map(Self.requestPosted)
        if spin > .zero && !waiting.contains(true) {
            let rest = others()
            let end = ContinuousClock.now + spin
            var n = 0
            spinning: while ContinuousClock.now < end {
                for _ in 0..<256 {
                    for (i, p) in pages.enumerated() where Self.requestPosted(p) {
                        waiting[i] = true
                        break spinning
                    }
                    for p in rest where Self.requestPosted(p) { break spinning }
                }
                n += 1
                if yields && n % 16 == 0 { sched_yield() } // the guest may be waiting for this CPU
            }
        }
        for (p, w) in zip(served, waiting) {
            if w { ready.append(p) } else if connection(p) != nil { try? evtchn.unmask(p) }
        }
    }

    /// Bit 0 of a mapped page: the guest's next request is there.
    private static func requestPosted(_ page: SharedPage?) -> Bool { page.map { $0.flags & XenPCI.frontendActive != 0 } ?? false }
}
