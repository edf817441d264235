import Foundation
import PCIBack
import PCIModel
import XPCI
import XenMock
import XenToolstack
import XenPCIABI
import XenHypervisor

/// The load test: G guests x D devices, N config reads each, with random
/// hot-remove/re-add and guest restarts. Every reply is checked against
/// the bytes of the device it was meant for, so a lost or mixed reply
/// cannot pass; the mock's leak check and RSS bound the end.
///
/// usage: xenpci-bench --load [--guests 64] [--devices 4] [--requests 100000] [--seed S]
func runLoad(_ args: [String]) -> Int32 {
    var guests = 64, perGuest = 4, requests = 100_000
    var seed = UInt64(ContinuousClock.now.duration(to: ContinuousClock.now + .seconds(1)).components.seconds) &* 0x9E37_79B9
    var it = args.makeIterator()
    while let a = it.next() {
        let v = it.next().flatMap { Int($0) }
        switch (a, v) {
        case ("--guests", let n?): guests = max(1, min(n, 1000))
        case ("--devices", let n?): perGuest = max(1, min(n, 8))
        case ("--requests", let n?): requests = max(1, n)
        case ("--seed", let n?): seed = UInt64(n)
        default:
            FileHandle.standardError.write(Data("load: bad argument '\(a)'\n".utf8))
            return 64
        }
    }
    do { return try LoadTest(guests: guests, perGuest: perGuest, requests: requests, seed: seed).run() } catch {
        FileHandle.standardError.write(Data("load: \(error)\n".utf8))
        return 1
    }
}

// Sendable: its workers' counters and failures are under `lock`; the rest is set before they start.
final class LoadTest: @unchecked Sendable {
    let guests: Int, perGuest: Int, requests: Int, seed: UInt64
    let rig: Rig
    let lock = NSLock()
    var devices: [[MemoryPCIDevice]] = []         // per guest
    var fronts: [XPCIFrontend?]
    var done = 0, wrong = 0, lost = 0, hotplugs = 0, restarts = 0
    var failures: [String] = []
    static let offsets = [0x00, 0x08, 0x2C]        // vendor/device, class, subsystem: not mediated

    init(guests: Int, perGuest: Int, requests: Int, seed: UInt64) throws {
        self.guests = guests; self.perGuest = perGuest; self.requests = requests; self.seed = seed
        rig = try Rig(frontOptions: .init(requestTimeout: .seconds(5), connectTimeout: .seconds(30)))
        rig.toolstack.timeout = .seconds(30)
        fronts = Array(repeating: nil, count: guests)
        let template = try Template("0000:00:03.0")
        for g in 0..<guests {
            devices.append((0..<perGuest).map { k in
                // Each device has its own ids: a reply meant for another shows.
                let n = g * perGuest + k
                var c = template.config
                c[2] = UInt8(n & 0xFF); c[3] = UInt8(0x40 | n >> 8)        // device id
                c[0x2E] = UInt8(g & 0xFF); c[0x2F] = UInt8(k | (g >> 8) << 4) // subsystem id
                return MemoryPCIDevice(address: PCIAddress(bus: UInt8(0x20 + n / 32), device: UInt8(n % 32), function: 0),
                                       config: c, resources: template.resources, irq: template.irq)
            })
        }
    }

    func note(_ s: String) { lock.lock(); if failures.count < 20 { failures.append(s) }; lock.unlock() }

    func run() throws -> Int32 {
        let start = ContinuousClock.now
        progress("load: \(guests) guests x \(perGuest) devices, \(requests) requests each (seed \(seed))")
        for g in 0..<guests {
            for d in devices[g] { try rig.back.claim(d) }
            try startGuest(g)
        }
        for g in 0..<guests { try fronts[g]!.waitConnected() }
        let rssStart = residentBytes()
        progress("load: all connected in \(ContinuousClock.now - start), RSS \(rssStart / 1024) KiB")
        var rssMid = 0
        let group = DispatchGroup()
        for g in 0..<guests {
            group.enter()
            Thread { self.worker(g); group.leave() }.start()
        }
        var reported = 0
        while group.wait(timeout: .now() + 5) == .timedOut {
            lock.lock(); let d = done; lock.unlock()
            if rssMid == 0 && d > guests * requests / 2 { rssMid = residentBytes() }
            if d - reported > 0 { progress("load: \(d) of \(guests * requests) requests"); reported = d }
        }
        let rssEnd = residentBytes()
        let elapsed = ContinuousClock.now - start
        for g in 0..<guests { try? fronts[g]?.detach() }
        rig.back.stop()
        rig.ts.close()
        let leaks = rig.hv.leaks()
        let secs = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        print("""
        load: guests \(guests), devices \(guests * perGuest), requests \(done) in \(String(format: "%.1f", secs)) s (\(Int(Double(done) / secs)) per second)
        load: wrong replies \(wrong), lost replies \(lost), hot-remove/re-add cycles \(hotplugs), guest restarts \(restarts)
        load: resident memory after connect \(rssStart / 1024) KiB, at half-way \(rssMid / 1024) KiB, at the end \(rssEnd / 1024) KiB
        load: leaks after stop: \(leaks.isEmpty ? "none" : leaks.prefix(5).joined(separator: "; "))
        """)
        for f in failures { print("load: FAIL \(f)") }
        // Flat memory: the second half of the run may not grow by more than 10%.
        let grew = rssMid > 0 && rssEnd > rssMid + rssMid / 10
        if grew { print("load: FAIL resident memory grew from \(rssMid / 1024) KiB to \(rssEnd / 1024) KiB in the second half") }
        return wrong == 0 && lost == 0 && leaks.isEmpty && failures.isEmpty && !grew ? 0 : 1
    }

    func startGuest(_ g: Int) throws {
        let dom = DomID(g + 1)
        _ = rig.hv.domain(dom)
        try rig.toolstack.attach(domid: dom, devices: devices[g].map(\.address))
        let f = try XPCIFrontend(hypervisor: rig.hv.domain(dom), options: rig.frontOptions)
        try f.attach()
        fronts[g] = f
    }

    /// The guest's view: device k is at guest slot k (vpci gives slots in order).
    func expected(_ g: Int, _ k: Int, _ offset: Int) -> UInt32 { (try? devices[g][k].readConfig(offset, 4)) ?? 0 }

    func worker(_ g: Int) {
        var rng = SplitMix(seed: seed &+ UInt64(g) &* 0x1234_5677)
        let dom = DomID(g + 1)
        var present = Array(repeating: true, count: perGuest)
        for n in 0..<requests {
            // About twice per guest per run: a hot-remove/re-add or a restart.
            if n > 0 && rng.next() % UInt64(max(1, requests / 2)) == 0 {
                if rng.next() % 2 == 0 { hotplug(g, dom, &present, &rng) } else { restart(g, dom, &present) }
            }
            let live = (0..<perGuest).filter { present[$0] }
            guard let k = live.randomElement(using: &rng), let f = fronts[g] else { continue }
            let off = Self.offsets[Int(rng.next() % UInt64(Self.offsets.count))]
            let a = f.devices.first { $0.config.read16(0x2E) == devices[g][k].readConfigSafe(0x2E) }?.address
            guard let a else { note("dom\(dom) device \(k) missing from the guest's bus"); lock.lock(); lost += 1; lock.unlock(); continue }
            do {
                let v = try f.configRead(a, offset: off, size: 4)
                if v != expected(g, k, off) {
                    note("dom\(dom) device \(k) offset 0x\(hex(off, 2)): got 0x\(hex(v, 8)), want 0x\(hex(expected(g, k, off), 8))")
                    lock.lock(); wrong += 1; lock.unlock()
                }
            } catch {
                note("dom\(dom) device \(k): \(error)")
                lock.lock(); lost += 1; lock.unlock()
            }
            lock.lock(); done += 1; lock.unlock()
        }
    }

    /// Hot-removes the last present device and adds it back (xl pci-detach/attach).
    func hotplug(_ g: Int, _ dom: DomID, _ present: inout [Bool], _ rng: inout SplitMix) {
        let k = perGuest - 1
        let a = devices[g][k].address
        do {
            try rig.toolstack.detach(domid: dom, devices: [a])
            present[k] = false
            try waitUntil { fronts[g]?.devices.count == perGuest - 1 }
            try rig.toolstack.attach(domid: dom, devices: [a])
            try waitUntil { fronts[g]?.devices.count == perGuest }
            present[k] = true
            lock.lock(); hotplugs += 1; lock.unlock()
        } catch { note("dom\(dom) hotplug of \(a): \(error)") }
    }

    /// The guest goes away and comes back: frontend detached, domain
    /// destroyed and created again, devices attached again.
    func restart(_ g: Int, _ dom: DomID, _ present: inout [Bool]) {
        do {
            try fronts[g]?.detach()
            fronts[g] = nil
            rig.toolstack.destroy(domid: dom)
            rig.hv.destroyDomain(dom)
            try waitUntil { rig.back.listing().filter { $0.guest == dom }.isEmpty }
            try startGuest(g)
            try fronts[g]!.waitConnected()
            present = Array(repeating: true, count: perGuest)
            lock.lock(); restarts += 1; lock.unlock()
        } catch { note("dom\(dom) restart: \(error)") }
    }

    func waitUntil(_ cond: () -> Bool) throws {
        let end = ContinuousClock.now + .seconds(30)
        while !cond() {
            guard ContinuousClock.now < end else { throw BenchError("timed out after 30 s") }
            usleep(500)
        }
    }
}

extension MemoryPCIDevice {
    func readConfigSafe(_ o: Int) -> UInt16 { UInt16(truncatingIfNeeded: (try? readConfig(o, 2)) ?? 0) }
}

/// A small deterministic generator, so a failing run can be repeated (--seed).
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
