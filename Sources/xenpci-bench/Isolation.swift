import Foundation
import PCIBack
import PCIModel
import Synchronization
import XPCI
import XenHypervisor
import XenMock
import PCIHost

/// What guest A does to its own function while guest C, on another, is
/// measured. The functions are device models that block as the kernel's
/// do: a reset holds the function for 200 ms, a power-state change takes
/// the spec's 10 ms, a VPD read 2 ms.
enum Attack: String, CaseIterable {
    case resetLoop = "reset-loop"       // its frontend Closed / Initialised, a reset each time; B floods
    case pmToggle = "pm-toggle"         // PMCSR D3hot, D0, back to back
    case closeTwice = "close-twice"     // Closed, Closed again during the reset, child nodes of its state
    case vpdPoll = "vpd-poll"           // a VPD read started and polled, again and again
    case noopFlood = "noop-flood"       // disable_msi with nothing to disable, back to back
    case stateRewrite = "state-rewrite" // its state node written again and again (and a child)
    case spin                           // the backend spins 10 ms for A, which posts again just before the spin ends
}

struct IsolationResult {
    var latencies: [UInt32]   // C's, ns, sorted
    var actions: Int          // what A (and B) got done
    var stateWrites: Int
    var logLines: Int         // lines about A reaching the log
}

/// Counts the state file's writes.
final class CountingStateStore: BackendStateStore {
    private let saves = Atomic<Int>(0)
    var location: String { "memory" }
    var count: Int { saves.load(ordering: .relaxed) }
    func load() throws -> PersistedState? { nil }
    func save(_ s: PersistedState) throws { saves.wrappingAdd(1, ordering: .relaxed) }
}

extension Template {
    /// The e1000 fixture with a PM capability at 0x40 and a VPD one at
    /// 0x48 (no fixture has VPD).
    static func pmVPD() throws -> Template {
        var t = try Template("0000:00:03.0")
        var c = t.config
        c[0x06] |= 0x10                  // status: capability list
        c[0x34] = 0x40
        c[0x40] = 0x01; c[0x41] = 0x48   // PM -> VPD
        c[0x42] = 0x03; c[0x43] = 0x00   // PMC: version 3, D1/D2 absent
        c[0x44] = 0x00; c[0x45] = 0x00   // PMCSR: D0
        c[0x48] = 0x03; c[0x49] = 0x00   // VPD, end of list
        t.config = c
        return t
    }
}

/// A noisy guest's thread stands for a vCPU of its own: on Xen it does
/// not run on dom0's CPUs, here it shares the machine's two, so it runs at
/// the lowest priority and what is measured is the backend's share.
func asGuestVCPU() { _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, 19) } // Linux: 0 is the calling thread

let pmcsrOffset = 0x44, vpdAddressOffset = 0x4A

/// One run of `attack`: C reads a 4-byte register every millisecond for
/// `seconds`; its latencies, and what A managed meanwhile.
func isolationRun(_ attack: Attack, seconds: Double) throws -> IsolationResult {
    var opts = PCIBack.Options()
    if attack == .spin { opts.spinBeforeBlock = .milliseconds(10) }
    let store = CountingStateStore()
    let rig = try Rig(backOptions: opts, stateStore: store)
    let linesAboutA = Atomic<Int>(0)
    rig.back.onEvent = { e in
        switch e {
        case .error(1?, _), .notice(1?, _), .backendState(1, _), .frontendState(1, _), .connected(1, _), .disconnected(1): linesAboutA.wrappingAdd(1, ordering: .relaxed)
        default: break
        }
    }
    let t = try Template.pmVPD()
    let devA = t.clone(0)
    devA.resetDuration = .milliseconds(200)
    devA.vpdLatency = .milliseconds(2)
    let a = try rig.addGuest([devA])
    let b = attack == .resetLoop ? try rig.addGuest([t.clone(1)]) : nil
    let c = try rig.addGuest([t.clone(2)])
    for f in [a, c] + (b.map { [$0] } ?? []) { try f.waitConnected(timeout: .seconds(30)) }
    let aAddr = a.devices.first!.address
    let writesBefore = store.count
    let stop = Atomic<Bool>(false)
    let actions = Atomic<Int>(0)
    let group = DispatchGroup()
    func loop(_ body: @escaping @Sendable () -> Void) {
        group.enter()
        Thread {
            asGuestVCPU()
            while !stop.load(ordering: .relaxed) { body(); actions.wrappingAdd(1, ordering: .relaxed) }
            group.leave()
        }.start()
    }
    let xsA = try rig.hv.domain(1).openXenStore()
    let stateNode = "/local/domain/1/device/pci/0/state"
    let closed = Atomic<Bool>(false)
    switch attack {
    case .resetLoop:
        loop {
            let c = !closed.load(ordering: .relaxed)
            closed.store(c, ordering: .relaxed)
            try? xsA.write(stateNode, c ? "6" : "3")
            usleep(20_000)
        }
        if let b, let bAddr = b.devices.first?.address { loop { _ = try? b.configRead(bAddr, offset: 0, size: 4) } }
    case .pmToggle:
        loop {
            try? a.configWrite(aAddr, offset: pmcsrOffset, size: 2, value: 3) // D3hot
            try? a.configWrite(aAddr, offset: pmcsrOffset, size: 2, value: 0) // D0
        }
    case .closeTwice:
        loop {
            try? xsA.write(stateNode, "6")
            usleep(1000)
            try? xsA.write(stateNode, "6")
            try? xsA.write(stateNode + "/again", "6")
            usleep(1000)
            try? xsA.write(stateNode + "/again", "7")
            usleep(50_000)
            try? xsA.write(stateNode, "3")
            usleep(20_000)
        }
    case .vpdPoll:
        loop {
            try? a.configWrite(aAddr, offset: vpdAddressOffset, size: 2, value: 0x0010)
            for _ in 0..<10_000 {
                guard let v = try? a.configRead(aAddr, offset: vpdAddressOffset, size: 2), v & 0x8000 == 0 else { break }
            }
        }
    case .noopFlood:
        loop { try? a.disableMSI(aAddr) }
    case .stateRewrite:
        // Paced at a real xenstored's round trip (~100 us a write through
        // the guest's ring): the mock's xenstore is a call under its one
        // lock, which an unpaced low-priority writer would hold against
        // every other guest's event channel, not a cost of the backend's.
        loop {
            try? xsA.write(stateNode, "4")
            usleep(100)
            try? xsA.write(stateNode + "/x", "4")
            usleep(100)
        }
    case .spin:
        loop {
            _ = try? a.configRead(aAddr, offset: 0, size: 4)
            usleep(9_500) // just before the backend's 10 ms spin for it ends
        }
    }
    let cAddr = c.devices.first!.address
    var lat: [UInt32] = []
    let end = nowNS() + UInt64(seconds * 1e9)
    var i = 0
    while nowNS() < end {
        let t0 = nowNS()
        _ = try? c.configRead(cAddr, offset: (i % 16) * 4, size: 4) // a timeout counts as its 2 s
        lat.append(UInt32(clamping: nowNS() - t0))
        i += 1
        usleep(1000)
    }
    stop.store(true, ordering: .relaxed)
    group.wait()
    xsA.close()
    let result = IsolationResult(latencies: lat.sorted(), actions: actions.load(ordering: .relaxed),
                                 stateWrites: store.count - writesBefore, logLines: linesAboutA.load(ordering: .relaxed))
    rig.finish()
    return result
}

/// Milliseconds from `xenpci attach` of a new guest C to its first answered
/// read, with A and B reading back to back on their own functions (`load`)
/// or not.
func hotplugRun(load: Bool) throws -> Double {
    let rig = try Rig()
    let t = try Template.pmVPD()
    let stop = Atomic<Bool>(false)
    let group = DispatchGroup()
    if load {
        for k in 0..<2 {
            let f = try rig.addGuest([t.clone(k)])
            try f.waitConnected(timeout: .seconds(30))
            let addr = f.devices.first!.address
            group.enter()
            Thread {
                asGuestVCPU()
                while !stop.load(ordering: .relaxed) { _ = try? f.configRead(addr, offset: 0, size: 4) }
                group.leave()
            }.start()
        }
    }
    usleep(100_000)
    let t0 = nowNS()
    let c = try rig.addGuest([t.clone(5)])
    try c.waitConnected(timeout: .seconds(30))
    _ = try c.configRead(c.devices.first!.address, offset: 0, size: 4)
    let ms = Double(nowNS() - t0) / 1e6
    stop.store(true, ordering: .relaxed)
    group.wait()
    rig.finish()
    return ms
}

/// Milliseconds a dom0 process takes for 2000 xenstore transactions of 3
/// writes each (what xl does), with A and B reading back to back (`load`)
/// or not.
func toolstackRun(load: Bool) throws -> Double {
    let rig = try Rig()
    let t = try Template.pmVPD()
    let stop = Atomic<Bool>(false)
    let group = DispatchGroup()
    if load {
        for k in 0..<2 {
            let f = try rig.addGuest([t.clone(k)])
            try f.waitConnected(timeout: .seconds(30))
            let addr = f.devices.first!.address
            group.enter()
            Thread {
                asGuestVCPU()
                while !stop.load(ordering: .relaxed) { _ = try? f.configRead(addr, offset: 0, size: 4) }
                group.leave()
            }.start()
        }
    }
    usleep(100_000)
    let xs = try rig.hv.domain(0).openXenStore()
    let t0 = nowNS()
    for n in 0..<2000 {
        try xs.transaction { tx in
            for k in 0..<3 { try xs.write("/local/domain/0/bench/tx\(k)", String(n), transaction: tx) }
        }
    }
    let ms = Double(nowNS() - t0) / 1e6
    xs.close()
    stop.store(true, ordering: .relaxed)
    group.wait()
    rig.finish()
    return ms
}
