import Foundation
import PCIModel
import XenPCIABI
import CXenPCISoftc
import PCIHost

/// A device hidden from dom0 and held by pciback: NetBSD's
/// `pciback_pci_dev` + `pciback_pci_softc` (the C structs hold the identity,
/// BARs, irq and owner), plus what Swift needs to serve it.
final class ClaimedDevice {
    let pb: UnsafeMutablePointer<pciback_pci_dev>
    let sc: UnsafeMutablePointer<pciback_pci_softc>
    let access: PCIDeviceAccess
    let golden: ConfigSpace       // saved at claim, restored at release
    let readOnly: Bool            // a host driver owns it: never written
    var mediation: ConfigMediation
    /// The owner: read from pb->pbx_instance, set by GuestConnection.link/unlink.
    var guest: DomID? { pb.pointee.pbx_instance.map { $0.pointee.pbx_domid } }
    /// The address the guest sees (no NetBSD field: its pciback exports
    /// functions at their host addresses).
    var guestAddress: PCIAddress?
    var msiPirqs: [UInt32] = []
    var msixPirqs: [UInt32] = []
    var msixPrepared = false      // Xen knows its MSI-X table (prepare_msix)
    /// A reset is asked for or running: requests to it answer dev_not_found.
    var resetting = false
    /// A worker (or a releasing caller's thread) has the hardware: the loop
    /// does not touch it until it is handed back.
    var heldByWorker = false
    /// A power-state change is settling until then: the next access waits
    /// (the guest that made it waits for its reply; see `whenIdle`).
    var settlingUntil: ContinuousClock.Instant?
    /// The loop's own accesses that came while it was busy, in order.
    private var idleJobs: [() -> Void] = []
    /// The golden state as the state file has it, made once.
    private(set) lazy var goldenHex = PersistedState.Device.hexString(golden)
    /// Being released to dom0 (reset on the releasing thread): not exported.
    var releasing = false
    /// Held by a running guest when a previous backend stopped: exported
    /// again to it at this address, with these pirqs, when it is taken over.
    var adoption: (guest: DomID, address: PCIAddress, msi: [UInt32], msix: [UInt32])?
    var ops: [PCIOpCommand: Int] = [:]
    var errors: [PCIOpError: Int] = [:]

    var address: PCIAddress { access.address }

    /// The host address a device list entry names (pb_tag: segment << 16 | bus << 8 | devfn).
    static func address(of pb: UnsafeMutablePointer<pciback_pci_dev>) -> PCIAddress {
        PCIAddress(segment: UInt16(pb.pointee.pb_tag.tag >> 16), bus: UInt8(pb.pointee.pb_bus),
                   device: UInt8(pb.pointee.pb_device), function: UInt8(pb.pointee.pb_function))
    }

    /// pciback_pci_attach: identify the function, record its BARs and irq,
    /// save the golden state and reset it (unless a host driver owns it).
    /// `adopting`: the golden state a previous backend saved, for a function
    /// a running guest holds: it is neither read again nor reset.
    init(_ access: PCIDeviceAccess, allowHostDriver: Bool, adopting saved: ConfigSpace? = nil) throws {
        self.access = access
        let driver = access.driver
        let inUse = driver.map { !stubDrivers.contains($0) } ?? false
        if inUse && !allowHostDriver {
            throw PCIBackError.refused("\(access.address): in use by the host driver '\(driver!)'; unbind it first (or allow read-only export)")
        }
        readOnly = inUse
        let cs = try saved.flatMap { $0.size == access.configSize ? $0 : nil } ?? access.readConfigSpace()
        // A VF's vendor and device registers read 0xFFFF: its ids are the host's.
        let ids = access.isVirtualFunction ? access.identity : nil
        let vendorID = ids?.vendor ?? cs.vendorID
        let deviceID = ids?.device ?? cs.deviceID
        guard vendorID != 0xFFFF && vendorID != 0 else {
            throw PCIBackError.badDevice("\(access.address): no device answers (vendor id 0x\(hex(vendorID, 4)))")
        }
        golden = cs
        if !readOnly && saved == nil { try Self.resetAndRestore(access, cs) }
        mediation = try ConfigMediation(device: access, golden: cs)
        if saved != nil { mediation.adoptEnabledFromHardware() }
        pb = .allocate(capacity: 1)
        pb.initialize(to: pciback_pci_dev())
        sc = .allocate(capacity: 1)
        sc.initialize(to: pciback_pci_softc())
        let a = access.address
        pb.pointee.pb_bus = UInt32(a.bus)
        pb.pointee.pb_device = UInt32(a.device)
        pb.pointee.pb_function = UInt32(a.function)
        pb.pointee.pb_tag.tag = UInt32(a.segment) << 16 | UInt32(a.bus) << 8 | UInt32(a.devfn)
        pb.pointee.pb_pci_softc = sc
        sc.pointee.sc_pb = pb
        sc.pointee.sc_irq = Int32(access.irq)
        sc.pointee.sc_id = UInt32(deviceID) << 16 | UInt32(vendorID)
        sc.pointee.sc_subid = cs.read32(PCIReg.subsystemVendorID)
        withUnsafeMutableBytes(of: &sc.pointee.sc_kernfsname) { buf in
            let name = Array(a.shortDescription.utf8.prefix(15))
            buf.copyBytes(from: name + [0])
        }
        withUnsafeMutableBytes(of: &sc.pointee.sc_bars) { raw in
            let bars = raw.bindMemory(to: pci_bar.self)
            for i in 0..<min(6, access.resources.count) where access.resources[i].size > 0 {
                let r = access.resources[i]
                bars[i].b_addr = r.start
                bars[i].b_size = r.size
                bars[i].b_type = r.isIO ? 1 : 0
                bars[i].b_valid = 1
            }
        }
    }

    deinit {
        // Off its guest's list first, so that whichever of a device and its
        // connection goes first (a backend dropped without stop), the other
        // never walks into freed memory.
        if let owner = pb.pointee.pbx_instance { GuestConnection.unlink(pb, from: owner) }
        pb.deallocate()
        sc.deallocate()
    }

    // What the softc holds is read from it (NetBSD's kernfs read does the same).
    /// The host's ids, from sc_id (a VF's registers read 0xFFFF; the host knows its ids).
    var vendorID: UInt16 { UInt16(truncatingIfNeeded: sc.pointee.sc_id) }
    var deviceID: UInt16 { UInt16(truncatingIfNeeded: sc.pointee.sc_id >> 16) }
    /// sc_subid: the subsystem ids saved at claim.
    var subsystemVendorID: UInt16 { UInt16(truncatingIfNeeded: sc.pointee.sc_subid) }
    var subsystemID: UInt16 { UInt16(truncatingIfNeeded: sc.pointee.sc_subid >> 16) }
    /// sc_irq: the INTx line the host assigned.
    var irq: Int { Int(sc.pointee.sc_irq) }
    /// sc_bars: the assigned BARs 0-5 (address, size, I/O or memory).
    var softcBARs: [(index: Int, start: UInt64, size: UInt64, isIO: Bool)] {
        withUnsafeBytes(of: sc.pointee.sc_bars) { raw in
            raw.bindMemory(to: pci_bar.self).enumerated().compactMap { i, b in
                b.b_valid != 0 ? (i, UInt64(b.b_addr), UInt64(b.b_size), b.b_type == 1) : nil
            }
        }
    }

    var isBridge: Bool { golden.isBridge }

    /// A reset or a settle holds the function: the loop must not touch it.
    var busy: Bool { heldByWorker || settlingUntil != nil }

    /// Starts a settle (a power-state change the guest made): for `delay`
    /// nothing touches the function; then `then` runs (the header a D3hot
    /// exit lost), then `done` with its outcome (the guest's reply), then
    /// the accesses that waited. A timer on the loop, not a sleep.
    func settle(on loop: ServiceLoop, for delay: Duration, then: (() throws -> Void)?, done: @escaping (Error?) -> Void) {
        let until = ContinuousClock.now + delay
        settlingUntil = until
        loop.schedule(at: until) { [self] in
            settlingUntil = nil
            var failure: Error?
            do { try then?() } catch { failure = error }
            done(failure)
            becameIdle()
        }
    }

    /// Runs `job` (loop-side device access) now, or once the function is
    /// no longer busy, after the accesses queued before it.
    func whenIdle(_ job: @escaping () -> Void) {
        if busy || !idleJobs.isEmpty { idleJobs.append(job) } else { job() }
    }

    /// A reset or a settle ended: the accesses that waited run, until one
    /// makes the function busy again.
    func becameIdle() {
        while !busy, !idleJobs.isEmpty { idleJobs.removeFirst()() }
    }

    /// Reset, then the saved header written back: BARs, ROM, cache line,
    /// latency, interrupt line, then the command register with bus
    /// mastering off (a released device cannot DMA: XSA-306), then the
    /// power state saved at claim with PME_En off. Reset and header happen
    /// in D0 (as Linux's reset path does): a function a guest left in D3hot
    /// would lose the header on its way back to D0.
    static func resetAndRestore(_ d: PCIDeviceAccess, _ g: ConfigSpace) throws {
        // DMA and message interrupts off first: a function without a reset
        // method keeps them across the "reset".
        let cmd = UInt16(truncatingIfNeeded: try d.readConfig(PCIReg.command, 2))
        if cmd & PCICommand.master != 0 { try d.writeConfig(PCIReg.command, 2, UInt32(cmd & ~PCICommand.master)) }
        for (id, bit) in [(PCICapID.msi, PCICapReg.msiFlagsEnable), (.msix, PCICapReg.msixFlagsEnable)] {
            guard let c = g.capability(id) else { continue }
            let flags = UInt16(truncatingIfNeeded: try d.readConfig(c.offset + 2, 2))
            if flags & bit != 0 { try d.writeConfig(c.offset + 2, 2, UInt32(flags & ~bit)) }
        }
        let pm = g.capability(.pm)?.offset
        if let pm { try d.setPowerState(pm: pm, .d0) }
        try d.reset()
        if let pm { try d.setPowerState(pm: pm, .d0) } // a reset may leave the state alone
        try d.writeHeader(from: g, command: g.read16(PCIReg.command) & ~PCICommand.master)
        if let pm {
            let saved = PowerState(pmcsr: g.read16(pm + PCICapReg.pmControl))
            let pmc = g.read16(pm + PCICapReg.pmCapabilities)
            try d.setPowerState(pm: pm, PowerState.d0.canEnter(saved, pmc: pmc) ? saved : .d0)
        }
    }

    /// Back to the state of claim, touching only the device: reset, golden
    /// state, and the mediation a fresh export starts from (no guest
    /// grants), which the owner of the backend's state installs.
    func resetHardware() throws -> ConfigMediation {
        try resetJob()()
        return try ConfigMediation(device: access, golden: golden)
    }

    /// The reset and golden restore as a job for a worker: it takes only
    /// what it needs (the device and the golden state), never the loop's.
    func resetJob() -> @Sendable () throws -> Void {
        let (access, golden, readOnly) = (access, golden, readOnly)
        return { if !readOnly { try Self.resetAndRestore(access, golden) } }
    }

    var bars: [(index: Int, resource: PCIResource)] {
        access.resources.prefix(7).enumerated().filter { $0.element.size > 0 }.map { ($0.offset, $0.element) }
    }

    /// What `list` shows of it.
    var info: ClaimedDeviceInfo {
        var bars: [Int: PCIResource] = [:]
        for (i, r) in self.bars { bars[i] = r }
        return ClaimedDeviceInfo(address: address, vendorID: vendorID, deviceID: deviceID,
                                 subsystemVendorID: subsystemVendorID, subsystemID: subsystemID,
                                 classCode: golden.classCode, bars: bars, irq: irq, guest: guest,
                                 guestAddress: guestAddress, readOnly: readOnly, driver: access.driver, text: kernfsText())
    }

    /// NetBSD's /kern/xen/pci/<BDF> text, from the softc; the expansion
    /// ROM, which has no sc_bars entry, from the host's resources.
    func kernfsText() -> String {
        var s = "\(address): vendor 0x\(hex(vendorID, 4)) product 0x\(hex(deviceID, 4))"
        s += " subsys vendor 0x\(hex(subsystemVendorID, 4)) subsys product 0x\(hex(subsystemID, 4))\n"
        var ranges = softcBARs.map { (name: "bar \($0.index)", start: $0.start, size: $0.size, isIO: $0.isIO) }
        if let rom = bars.first(where: { $0.index == 6 })?.resource { ranges.append(("rom", rom.start, rom.size, false)) }
        for r in ranges {
            s += "  \(r.name): \(r.isIO ? "i/o" : "mem") 0x\(hex(r.start, 1))-0x\(hex(r.start + r.size - 1, 1)) (size 0x\(hex(r.size, 1)))\n"
        }
        s += "  irq \(irq)\n"
        if let g = guest { s += "  guest: dom\(g) as \(guestAddress.map(\.description) ?? "?")\n" } else { s += "  guest: none\n" }
        if readOnly { s += "  read-only: host driver '\(access.driver ?? "")' owns it\n" }
        return s
    }
}

/// What `list` shows of a claimed device (NetBSD's /kern/xen/pci/<BDF>).
public struct ClaimedDeviceInfo: Equatable, Sendable {
    public var address: PCIAddress
    public var vendorID: UInt16
    public var deviceID: UInt16
    public var subsystemVendorID: UInt16
    public var subsystemID: UInt16
    public var classCode: UInt32
    public var bars: [Int: PCIResource]
    public var irq: Int
    public var guest: DomID?
    public var guestAddress: PCIAddress?
    public var readOnly: Bool
    public var driver: String?
    public var text: String
}

/// Per-device counters for `stats`.
public struct DeviceStatistics: Sendable {
    public var address: PCIAddress
    public var guest: DomID?
    public var ops: [PCIOpCommand: Int]
    public var errors: [PCIOpError: Int]
    /// Writes that did not reach hardware: offset, size, times, refused
    /// (access_denied) or dropped, and the quirk line that would allow it.
    public var refusedWrites: [(offset: Int, size: Int, count: Int, denied: Bool, quirk: String?)]
    public var permissive: Bool
    public var quirks: [PCIQuirk]
}
