import Foundation
import PCIBack
import PCIModel
import Synchronization
import XPCI
import XenHypervisor
import XenMock
import PCIHost

/// Issue 13's isolation figure: guest A loops its frontend Closed /
/// Initialised on a device whose reset takes 200 ms, guest B floods
/// requests, guest C's request latency is measured. Returns C's sorted
/// latencies (ns) and how many resets A caused.
func isolationRun(seconds: Double) throws -> (latencies: [UInt32], resets: Int, flood: Int) {
    let rig = try Rig()
    let e1000 = try Template("0000:00:03.0")
    let slow = e1000.clone(0)
    slow.beforeReset = { usleep(200_000) } // a real FLR takes 100 ms and more
    let a = try rig.addGuest([slow])
    let b = try rig.addGuest([e1000.clone(1)])
    let c = try rig.addGuest([e1000.clone(2)])
    for f in [a, b, c] { try f.waitConnected(timeout: .seconds(30)) }
    let resetsBefore = slow.resetCount
    let stop = Atomic<Bool>(false)
    let group = DispatchGroup()
    // A: its frontend state 6, 3, 6, 3 ... written straight into xenstore.
    let xsA = try rig.hv.domain(1).openXenStore()
    group.enter()
    Thread {
        var closed = false
        while !stop.load(ordering: .relaxed) {
            closed.toggle()
            try? xsA.write("/local/domain/1/device/pci/0/state", closed ? "6" : "3")
            usleep(20_000)
        }
        group.leave()
    }.start()
    // B: requests back to back.
    let flood = Atomic<Int>(0)
    let bAddr = b.devices.first!.address
    group.enter()
    Thread {
        while !stop.load(ordering: .relaxed) {
            if (try? b.configRead(bAddr, offset: 0, size: 4)) != nil { flood.wrappingAdd(1, ordering: .relaxed) }
        }
        group.leave()
    }.start()
    // C: measured, one request at a time.
    let cAddr = c.devices.first!.address
    var lat: [UInt32] = []
    let end = nowNS() + UInt64(seconds * 1e9)
    var i = 0
    while nowNS() < end {
        let t0 = nowNS()
        _ = try? c.configRead(cAddr, offset: (i % 64) * 4, size: 4) // a timeout counts as its 2 s
        lat.append(UInt32(clamping: nowNS() - t0))
        i += 1
        usleep(200)
    }
    stop.store(true, ordering: .relaxed)
    group.wait()
    xsA.close()
    let resets = slow.resetCount - resetsBefore
    rig.finish()
    return (lat.sorted(), resets, flood.load(ordering: .relaxed))
}
