import Foundation
import PCIBack
import XenMock
import CXenPCI
import XenHypervisor
import XenPCIABI
import PCIModel

// MARK: guests: a hostile guest's actions against the deterministic backend

/// One guest as the fuzzer drives it: its handles, page and port.
final class FuzzGuest {
    let dom: DomID
    let fe: String
    let device: PCIAddress
    let xs: XenStore, gs: GrantSharing, ev: EventChannels
    var grant: SharedGrant?
    var port: EvtchnPort?
    var gone = false

    init(_ hv: MockHypervisor, dom: DomID, device: PCIAddress) {
        self.dom = dom
        self.device = device
        fe = "/local/domain/\(dom)/device/pci/0"
        let d = hv.domain(dom)
        xs = try! d.openXenStore(); gs = try! d.openGrantSharing(); ev = try! d.openEventChannels()
    }

    var page: SharedPage? { grant.map { SharedPage($0.address) } }

    /// Shares a page, allocates a port, writes the keys, goes Initialised.
    func connect() {
        if grant == nil { grant = try? gs.share(with: 0, writable: true) }
        if port == nil { port = try? ev.allocateUnbound(remote: 0) }
        guard let g = grant, let p = port else { return }
        try? xs.transaction { t in
            try xs.write(fe + "/pci-op-ref", String(g.ref), transaction: t)
            try xs.write(fe + "/event-channel", String(p), transaction: t)
            try xs.write(fe + "/magic", "7", transaction: t)
            try xs.write(fe + "/state", "3", transaction: t)
        }
    }

    func post(_ op: xen_pci_op) {
        guard let page, let port else { return }
        page.postRequest(op)
        try? ev.notify(port)
    }

    /// Takes events off the guest's handle (a guest that never does gets
    /// no more than one queued per port: masked until unmasked).
    func takeEvents() { while let p = try? ev.pending() { try? ev.unmask(p) } }

    func close() {
        if let g = grant { try? gs.endAccess(g) }
        if let p = port { try? ev.unbind(p) }
        gs.close(); ev.close(); xs.close()
    }
}

/// Reads the input a byte at a time; zeros once it runs out.
struct Bytes {
    let data: [UInt8]
    var at = 0
    var left: Bool { at < data.count }
    mutating func next() -> UInt8 { defer { at += 1 }; return at < data.count ? data[at] : 0 }
    mutating func take(_ n: Int) -> [UInt8] { (0..<n).map { _ in next() } }
    mutating func text() -> String {
        let n = Int(next() % 24)
        return String(decoding: take(n), as: UTF8.self)
    }
}

/// dom1 is hostile: every action comes from the input (state writes,
/// requests valid and raw, floods, key rewrites, hot-unplug, vanishing).
/// dom2 is polite. After every action the backend is stepped and then:
/// dom2's request is answered at once and right (isolation), and dom2's
/// device was never reset under it. After stop nothing leaks.
func fuzzGuests(_ data: [UInt8]) {
    let hv = MockHypervisor()
    let dom0 = hv.domain(0)
    let ts = try! dom0.openXenStore()
    let back = deterministicBackend(dom0)
    let hostileHost = PCIAddress(bus: 0, device: 4, function: 0), politeHost = PCIAddress(bus: 0, device: 3, function: 0)
    let politeDevice = e1000Image.device(at: politeHost)
    try! back.claim(virtioNetImage.device(at: hostileHost))
    try! back.claim(politeDevice)
    try! back.start()
    let hostile = FuzzGuest(hv, dom: 1, device: hostileHost), polite = FuzzGuest(hv, dom: 2, device: politeHost)
    for g in [hostile, polite] {
        _ = writeDirectories(ts, dom: g.dom, backend: [("num_devs", "1"), ("dev-0", g.device.description), ("state-0", "1"),
                                                       ("opts-0", "permissive=0"), ("state", "1")])
    }
    _ = try! back.drain() // deterministic: never serving
    hostile.connect(); polite.connect()
    _ = try! back.drain() // deterministic: never serving
    let politeBackend = "/local/domain/0/backend/pci/2/0"
    guard (try? ts.readIfPresent(politeBackend + "/state")) == "4" else { fatalError("guests: the polite guest did not connect") }
    let resetsBefore = politeDevice.resetCount
    let vaddr = PCIAddress(bus: 0, device: 0, function: 0)

    var input = Bytes(data: data)
    var steps = 0
    while input.left && steps < 48 {
        steps += 1
        let action = input.next()
        if !hostile.gone {
            switch action % 9 {
            case 0: // a state, valid or not
                let s = input.next()
                try? hostile.xs.write(hostile.fe + "/state", s < 200 ? String(s % 9) : input.text())
            case 1: // a well-formed request
                let commands: [PCIOpCommand] = [.confRead, .confWrite, .enableMSI, .disableMSI, .enableMSIX, .disableMSIX]
                var op = xen_pci_op(command: commands[Int(input.next()) % commands.count], address: vaddr,
                                    offset: Int32(input.next()) * 4, size: [1, 2, 4][Int(input.next()) % 3])
                op.value = UInt32(input.next()) | UInt32(input.next()) << 8
                hostile.post(op)
            case 2: // raw bytes for the op
                if let page = hostile.page {
                    let raw = input.take(64)
                    let opOffset = MemoryLayout<xen_pci_sharedinfo>.offset(of: \.op)!
                    raw.withUnsafeBytes { UnsafeMutableRawPointer(page.pointer).advanced(by: opOffset).copyMemory(from: $0.baseAddress!, byteCount: raw.count) }
                    page.setFlags(XenPCI.frontendActive)
                    if let p = hostile.port { try? hostile.ev.notify(p) }
                }
            case 3: // a flood of events without requests
                if let p = hostile.port { for _ in 0..<(Int(input.next()) * 4) { try? hostile.ev.notify(p) } }
            case 4: // keys rewritten
                let keys = ["pci-op-ref", "event-channel", "magic", "state"]
                try? hostile.xs.write(hostile.fe + "/" + keys[Int(input.next()) % keys.count], input.text())
            case 5: // connects (again)
                hostile.connect()
            case 6: // the toolstack unplugs its device
                try? ts.transaction { t in
                    try ts.write("/local/domain/0/backend/pci/1/0/state-0", "5", transaction: t)
                    try ts.write("/local/domain/0/backend/pci/1/0/state", "7", transaction: t)
                }
                try? hostile.xs.write(hostile.fe + "/state", "7")
            case 7: // bit 0 without a notify, or the events never taken
                if input.next() & 1 == 0 { hostile.page?.setFlags(XenPCI.frontendActive) } else { hostile.takeEvents() }
            default: // the domain dies
                hv.destroyDomain(1)
                hostile.gone = true
            }
        }
        _ = try! back.drain() // deterministic: never serving
        // Isolation: the polite guest is served now, and served right.
        guard let page = polite.page else { fatalError("guests: the polite guest lost its page") }
        polite.post(xen_pci_op(command: .confRead, address: vaddr, offset: 0, size: 2))
        _ = try! back.drain() // deterministic: never serving
        polite.takeEvents()
        if page.flags & XenPCI.frontendActive != 0 { fatalError("guests: step \(steps) (action \(action % 9)): the polite guest's request was not answered") }
        let r = page.readReply()
        if r.err != 0 || r.value != 0x8086 { fatalError("guests: step \(steps): the polite guest read err \(r.err) value 0x\(String(r.value, radix: 16))") }
        if politeDevice.resetCount != resetsBefore { fatalError("guests: step \(steps): the polite guest's device was reset under it") }
    }
    back.stop()
    hostile.close(); polite.close(); ts.close()
    let leaks = hv.leaks()
    if !leaks.isEmpty { fatalError("guests: leaks after stop: \(leaks)") }
}
