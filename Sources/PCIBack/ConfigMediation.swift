import PCIModel
import XenPCIABI
import PCIHost

/// What the guest may see and change of one exported function's config
/// space (docs/PROTOCOL.md §6). Built at export from the device's header type
/// and capabilities: every byte maps to at most one field; a byte with no
/// field is dropped on write unless the device is permissive.
final class ConfigMediation {
    enum Kind: Equatable {
        case ignore          // hw read, writes silently ignored
        case readOnly        // hw read, writes dropped and counted
        case command
        case cacheLine       // hw read and write
        case bist
        case bar(Int)        // 0...5, or 6 for the ROM
        case interruptLine
        case pmCapabilities
        case pmControl
        case vpdAddress      // F=0 (a read request) passes, F=1 (a VPD write) refused
        case vpdData         // writes refused
        case msiControl
        case msixControl
        case quirk(UInt32)   // raw read/write of the mask bits
        case identity(UInt16) // a VF's vendor or device id, as the host knows it

        /// The guest reads our value alone; the device's is never needed.
        var isVirtual: Bool {
            switch self {
            case .bar, .interruptLine, .identity: return true
            default: return false
            }
        }
    }

    struct Field { var offset: Int; var size: Int; var kind: Kind }

    /// A write that did not reach hardware, for `stats` and the quirk hint.
    struct Refusal: Equatable { var offset: Int; var size: Int; var count: Int; var lastValue: UInt32; var denied: Bool }

    let dev: PCIDeviceAccess
    let golden: ConfigSpace         // the host's BARs, for a function that lost them
    let limit: Int                  // 0x100 or 0x1000: the guest-visible size
    private(set) var fields: [Field] = []
    private var fieldAt: [Int16]    // byte -> index into fields, -1 for none
    var permissive = false
    private(set) var quirks: [PCIQuirk] = []
    let isBridge: Bool
    let capabilities: [PCICapability]

    // Virtual state.
    private(set) var enabled = false
    private var virtualCommand: UInt16 = 0
    private var sizing = [Bool](repeating: false, count: 7)
    private var romEnable = false
    private var bars: [(raw: UInt32, size: UInt64, mask: UInt32, upperOf: Int?)] = []

    // Counters.
    private(set) var refusals: [Int: Refusal] = [:] // keyed by offset << 3 | size

    static let hwCommandBits = PCICommand.master | PCICommand.special | PCICommand.invalidate | PCICommand.vgaPalette | PCICommand.wait | PCICommand.fastBack
    static let virtualCommandBits = PCICommand.io | PCICommand.memory | PCICommand.parity | PCICommand.serr | PCICommand.intxDisable

    init(device: PCIDeviceAccess, golden: ConfigSpace) throws {
        dev = device
        self.golden = golden
        limit = device.configSize >= PCIReg.extendedSize ? PCIReg.extendedSize : PCIReg.legacySize
        fieldAt = [Int16](repeating: -1, count: limit)
        let header = UInt8(try device.readConfig(PCIReg.headerType, 1)) & 0x7F
        isBridge = header == 1
        let status = UInt16(try device.readConfig(PCIReg.status, 2))
        capabilities = PCICapability.walk(read8: { o in (try? device.readConfig(o, 1)).map { UInt8($0) } ?? 0xFF },
                                          hasList: status & PCIStatus.capList != 0)
        buildHeader(type: header)
        try buildBARs(type: header)
        buildCapabilities()
        virtualCommand = UInt16(try device.readConfig(PCIReg.command, 2)) & Self.virtualCommandBits
    }

    private func add(_ offset: Int, _ size: Int, _ kind: Kind) {
        guard offset >= 0, offset + size <= limit, (offset..<offset + size).allSatisfy({ fieldAt[$0] < 0 }) else { return }
        fields.append(Field(offset: offset, size: size, kind: kind))
        for b in offset..<offset + size { fieldAt[b] = Int16(fields.count - 1) }
    }

    private func buildHeader(type: UInt8) {
        if dev.isVirtualFunction, let ids = dev.identity {
            add(PCIReg.vendorID, 2, .identity(ids.vendor))
            add(PCIReg.deviceID, 2, .identity(ids.device))
        } else {
            add(PCIReg.vendorID, 2, .ignore)
            add(PCIReg.deviceID, 2, .ignore)
        }
        add(PCIReg.command, 2, .command)
        add(PCIReg.status, 2, .readOnly)
        add(PCIReg.revision, 4, .readOnly)
        add(PCIReg.cacheLineSize, 1, .cacheLine)
        add(PCIReg.latencyTimer, 1, .ignore)
        add(PCIReg.headerType, 1, .readOnly)
        add(PCIReg.bist, 1, .bist)
        add(PCIReg.capabilityPointer, 1, .readOnly)
        add(PCIReg.interruptLine, 1, .interruptLine)
        add(PCIReg.interruptPin, 1, .ignore)
        if type == 0 {
            for i in 0..<6 { add(PCIReg.bar0 + 4 * i, 4, .bar(i)) }
            add(PCIReg.cardbusCIS, 4, .readOnly)
            add(PCIReg.subsystemVendorID, 4, .readOnly)
            add(PCIReg.romAddress, 4, .bar(6))
            add(PCIReg.minGrant, 2, .readOnly)
        } else if type == 1 {
            add(PCIReg.bar0, 4, .bar(0))
            add(PCIReg.bar0 + 4, 4, .bar(1))
            add(PCIReg.bridgeROMAddress, 4, .bar(6))
        }
    }

    /// BAR sizes come from the host's resources (as Linux pciback does), so
    /// sizing never touches the device.
    private func buildBARs(type: UInt8) throws {
        let count = type == 0 ? 6 : type == 1 ? 2 : 0
        bars = Array(repeating: (0, 0, 0xF, nil), count: 7)
        // A VF's BAR registers read 0: its values are the resources' start
        // and type (as Linux's pciback gives them for every function).
        let vf = dev.isVirtualFunction
        func reg(_ i: Int) throws -> UInt32 {
            guard vf else { return try dev.readConfig(PCIReg.bar0 + 4 * i, 4) }
            guard i < dev.resources.count else { return 0 }
            return Self.barRegister(dev.resources[i])
        }
        var i = 0
        while i < count {
            let raw = try reg(i)
            let flags = BARFlags(raw: raw)
            let size = i < dev.resources.count ? dev.resources[i].size : 0
            bars[i] = (raw, size, flags.mask, nil)
            if flags.is64Bit && i + 1 < count {
                let upper = vf ? UInt32(truncatingIfNeeded: dev.resources[i].start >> 32) : try reg(i + 1)
                bars[i + 1] = (upper, size, 0, i)
                i += 1
            }
            i += 1
        }
        if let rom = type == 0 ? PCIReg.romAddress : type == 1 ? PCIReg.bridgeROMAddress : nil {
            let size = dev.resources.count > 6 ? dev.resources[6].size : 0
            bars[6] = (try dev.readConfig(rom, 4) & ~1, size, 0x7FF, nil)
        }
    }

    /// The low BAR register a resource stands for: its start and type bits.
    static func barRegister(_ r: PCIResource) -> UInt32 {
        guard r.size > 0 else { return 0 }
        if r.isIO { return UInt32(truncatingIfNeeded: r.start) & ~0x3 | 0x1 }
        return UInt32(truncatingIfNeeded: r.start) & ~0xF | (r.is64Bit ? 0x4 : 0) | (r.isPrefetch ? 0x8 : 0)
    }

    /// First instance of each handled capability; every capability's id/next
    /// header is read-only; MSI and MSI-X address, data and table registers
    /// stay protected even when permissive (Linux leaves them writable).
    private func buildCapabilities() {
        var seen = Set<UInt16>()
        for c in capabilities {
            let first = seen.insert(c.id).inserted
            add(c.offset, 2, .readOnly)
            guard first else { continue }
            switch PCICapID(rawValue: UInt8(truncatingIfNeeded: c.id)) {
            case .pm?:
                add(c.offset + PCICapReg.pmCapabilities, 2, .pmCapabilities)
                add(c.offset + PCICapReg.pmControl, 2, .pmControl)
            case .vpd?:
                add(c.offset + PCICapReg.vpdAddress, 2, .vpdAddress)
                add(c.offset + PCICapReg.vpdData, 4, .vpdData)
            case .msi?:
                add(c.offset + PCICapReg.msiFlags, 2, .msiControl)
                let ctrl = UInt16(truncatingIfNeeded: (try? dev.readConfig(c.offset + 2, 2)) ?? 0)
                let end = c.offset + 12 + (ctrl & PCICapReg.msiFlags64Bit != 0 ? 4 : 0) + (ctrl & PCICapReg.msiFlagsMaskBit != 0 ? 8 : 0)
                var o = c.offset + 4
                while o < end { add(o, 4, .readOnly); o += 4 }
            case .msix?:
                add(c.offset + PCICapReg.msixFlags, 2, .msixControl)
                add(c.offset + PCICapReg.msixTable, 4, .readOnly)
                add(c.offset + PCICapReg.msixPBA, 4, .readOnly)
            default:
                break
            }
        }
        if limit == PCIReg.extendedSize {
            for c in PCICapability.walkExtended(read32: { o in (try? dev.readConfig(o, 4)) ?? 0xFFFF_FFFF }) {
                add(c.offset, 4, .readOnly)
            }
        }
    }

    func capability(_ id: PCICapID) -> PCICapability? { capabilities.first { $0.id == UInt16(id.rawValue) } }

    // MARK: quirks and permissive

    /// A quirk may only open bytes no field covers: it can never reach BARs,
    /// the command register, MSI or any other emulated register.
    func addQuirk(_ q: PCIQuirk) throws {
        guard q.offset + q.size <= limit else {
            throw PCIBackError.badQuirk("\(q): register beyond the device's \(limit)-byte config space")
        }
        for b in q.offset..<q.offset + q.size where fieldAt[b] >= 0 {
            let f = fields[Int(fieldAt[b])]
            if case .quirk = f.kind { throw PCIBackError.badQuirk("\(q): overlaps an existing quirk at 0x\(hex(f.offset, 3))") }
            throw PCIBackError.badQuirk("\(q): overlaps the emulated \(describe(f)) at 0x\(hex(f.offset, 3))")
        }
        add(q.offset, q.size, .quirk(q.mask))
        quirks.append(q)
    }

    /// Drops permissive and quirk fields: when the device leaves a guest.
    func clearGuestGrants() {
        permissive = false
        fields.removeAll { if case .quirk = $0.kind { return true }; return false }
        quirks.removeAll()
        fieldAt = [Int16](repeating: -1, count: limit)
        for (n, f) in fields.enumerated() { for b in f.offset..<f.offset + f.size { fieldAt[b] = Int16(n) } }
    }

    func describe(_ f: Field) -> String {
        switch f.kind {
        case .command: return "command register"
        case .bar(6): return "expansion ROM BAR"
        case .bar(let i): return "BAR\(i)"
        case .msiControl: return "MSI message control"
        case .msixControl: return "MSI-X message control"
        case .pmControl: return "PM control"
        case .pmCapabilities: return "PM capabilities"
        case .vpdAddress: return "VPD address"
        case .vpdData: return "VPD data"
        case .interruptLine: return "interrupt line"
        case .cacheLine: return "cache line size"
        case .bist: return "BIST"
        case .quirk: return "quirk field"
        case .ignore, .readOnly, .identity: return "read-only register"
        }
    }

    // MARK: reads

    /// The guest's view of `size` bytes at `offset` (already validated).
    func read(_ offset: Int, _ size: Int) throws -> UInt32 {
        // An access made only of virtual fields is not read from the device:
        // none of it would be used, and on Xen each read is a system call.
        let virtualOnly = (offset..<offset + size).allSatisfy { fieldAt[$0] >= 0 && fields[Int(fieldAt[$0])].kind.isVirtual }
        let hw = virtualOnly ? 0 : try dev.readConfig(offset, size)
        var out = hw
        var b = offset
        while b < offset + size {
            let idx = fieldAt[b]
            guard idx >= 0 else { b += 1; continue }
            let f = fields[Int(idx)]
            let covered = f.offset >= offset && f.offset + f.size <= offset + size
            let fieldHW = f.kind.isVirtual ? 0 : covered ? (hw >> (8 * UInt32(f.offset - offset))) & Self.ones(f.size) : try dev.readConfig(f.offset, f.size)
            let v = virtualRead(f, hw: fieldHW)
            // Overlay the bytes of the field inside the access.
            let lo = max(f.offset, offset), hi = min(f.offset + f.size, offset + size)
            for x in lo..<hi {
                let byte = (v >> (8 * UInt32(x - f.offset))) & 0xFF
                let shift = 8 * UInt32(x - offset)
                out = out & ~(0xFF << shift) | byte << shift
            }
            b = hi
        }
        return out
    }

    static func ones(_ size: Int) -> UInt32 { size >= 4 ? 0xFFFF_FFFF : (1 << (8 * UInt32(size))) - 1 }

    private func virtualRead(_ f: Field, hw: UInt32) -> UInt32 {
        switch f.kind {
        case .ignore, .readOnly, .cacheLine, .bist, .vpdAddress, .vpdData, .msiControl, .msixControl, .quirk: return hw
        case .command:
            return UInt32(UInt16(truncatingIfNeeded: hw) & Self.hwCommandBits | virtualCommand & Self.virtualCommandBits)
        case .interruptLine: return UInt32(UInt8(truncatingIfNeeded: dev.irq))
        case .identity(let id): return UInt32(id)
        case .pmCapabilities: return hw & ~UInt32(PCICapReg.pmCapPMEMask)
        case .pmControl: return hw
        case .bar(let i): return barRead(i)
        }
    }

    private func barRead(_ i: Int) -> UInt32 {
        let bar = bars[i]
        guard bar.size > 0 else { return 0 }
        if i == 6 {
            return sizing[6] ? UInt32(truncatingIfNeeded: ~(bar.size - 1)) & ~0x7FF | (romEnable ? 1 : 0)
                             : bar.raw & ~0x7FF | (romEnable ? 1 : 0)
        }
        guard sizing[i] else { return bar.raw }
        if bar.upperOf != nil { return UInt32(truncatingIfNeeded: ~(bar.size - 1) >> 32) }
        return UInt32(truncatingIfNeeded: ~(bar.size - 1)) & ~bar.mask | bar.raw & bar.mask
    }

    // MARK: writes

    /// A wait the last write left the function (a power-state change),
    /// for the request path to take (`takePendingWait`).
    private var pendingWait: DeviceWait?

    func takePendingWait() -> DeviceWait? {
        defer { pendingWait = nil }
        return pendingWait
    }

    /// Applies a guest write; returns the protocol result.
    func write(_ offset: Int, _ size: Int, _ value: UInt32) throws -> PCIOpError {
        var denied = false
        var b = offset
        while b < offset + size {
            let idx = fieldAt[b]
            if idx < 0 {
                // A run of bytes no field covers.
                var e = b
                while e < offset + size && fieldAt[e] < 0 { e += 1 }
                try unhandled(b, e - b, (value >> (8 * UInt32(b - offset))) & Self.ones(e - b))
                b = e
                continue
            }
            let f = fields[Int(idx)]
            // The field's new value: its current guest view with the written bytes replaced.
            var v = try read(f.offset, f.size)
            let lo = max(f.offset, offset), hi = min(f.offset + f.size, offset + size)
            for x in lo..<hi {
                let byte = (value >> (8 * UInt32(x - offset))) & 0xFF
                let shift = 8 * UInt32(x - f.offset)
                v = v & ~(0xFF << shift) | byte << shift
            }
            // The bits of the field the guest wrote (the rest came from the read above).
            let written = Self.ones(hi - lo) << (8 * UInt32(lo - f.offset))
            if try !fieldWrite(f, v, written: written) { denied = true }
            b = hi
        }
        return denied ? .accessDenied : .success
    }

    /// Bytes with no handler: permissive writes them through, else dropped.
    private func unhandled(_ offset: Int, _ size: Int, _ value: UInt32) throws {
        if permissive {
            var o = offset, left = size, v = value
            while left > 0 { // largest aligned pieces
                let w = left >= 4 && o % 4 == 0 ? 4 : left >= 2 && o % 2 == 0 ? 2 : 1
                try dev.writeConfig(o, w, v & Self.ones(w))
                o += w; left -= w; v = w == 4 ? 0 : v >> (8 * UInt32(w))
            }
            return
        }
        refuse(offset, size, value, denied: false)
    }

    private func refuse(_ offset: Int, _ size: Int, _ value: UInt32, denied: Bool) {
        let key = offset << 3 | size
        var r = refusals[key] ?? Refusal(offset: offset, size: size, count: 0, lastValue: 0, denied: denied)
        r.count += 1
        r.lastValue = value
        r.denied = r.denied || denied
        refusals[key] = r
    }

    /// false: the write is refused with access_denied.
    private func fieldWrite(_ f: Field, _ v: UInt32, written: UInt32) throws -> Bool {
        switch f.kind {
        case .ignore, .interruptLine, .identity:
            return true
        case .readOnly:
            if v != (try read(f.offset, f.size)) { refuse(f.offset, f.size, v, denied: false) }
            return true
        case .cacheLine:
            try dev.writeConfig(f.offset, 1, v & 0xFF)
            return true
        case .bist:
            let hw = try dev.readConfig(PCIReg.bist, 1)
            if v & 0x40 != 0 && hw & 0x80 != 0 { try dev.writeConfig(PCIReg.bist, 1, hw & 0xBF | 0x40) }
            if v & ~0x40 != hw & ~0x40 { refuse(f.offset, 1, v, denied: false) }
            return true
        case .command:
            try commandWrite(UInt16(truncatingIfNeeded: v))
            return true
        case .bar(let i):
            barWrite(i, v, partial: written != Self.ones(f.size))
            return true
        case .pmCapabilities:
            refuse(f.offset, 2, v, denied: false)
            return true
        case .pmControl:
            try pmControlWrite(f.offset, UInt16(truncatingIfNeeded: v), written: UInt16(truncatingIfNeeded: written))
            return true
        case .vpdAddress:
            // A read request starts a VPD read the guest then polls for;
            // F=1 would write the device's VPD (Linux refuses it too).
            guard UInt16(truncatingIfNeeded: v) & PCICapReg.vpdAddressFlag == 0 else {
                refuse(f.offset, f.size, v, denied: true)
                return false
            }
            try dev.writeConfig(f.offset, 2, v)
            return true
        case .vpdData:
            refuse(f.offset, f.size, v, denied: true)
            return false
        case .msiControl:
            let hw = UInt16(try dev.readConfig(f.offset, 2))
            // Enabling happens through enable_msi; any other change is refused.
            guard (UInt16(truncatingIfNeeded: v) ^ hw) & ~PCICapReg.msiFlagsEnable == 0 else {
                refuse(f.offset, 2, v, denied: true)
                return false
            }
            return true
        case .msixControl:
            let hw = UInt16(try dev.readConfig(f.offset, 2))
            let new = UInt16(truncatingIfNeeded: v)
            guard (new ^ hw) & ~(PCICapReg.msixFlagsEnable | PCICapReg.msixFlagsMaskAll) == 0 else {
                refuse(f.offset, 2, v, denied: true)
                return false
            }
            if (new ^ hw) & PCICapReg.msixFlagsMaskAll != 0 {
                try dev.writeConfig(f.offset, 2, UInt32(hw & ~PCICapReg.msixFlagsMaskAll | new & PCICapReg.msixFlagsMaskAll))
            }
            return true
        case .quirk(let mask):
            let hw = try dev.readConfig(f.offset, f.size)
            let m = mask & Self.ones(f.size)
            let out = hw & ~m | v & m
            if out != hw { try dev.writeConfig(f.offset, f.size, out) }
            if (v ^ hw) & ~m != 0 { refuse(f.offset, f.size, v, denied: false) }
            return true
        }
    }

    /// XSA-120: the guest never clears decode directly. Setting IO or MEM
    /// enables the device (decode for the BAR types it has); clearing both
    /// disables it, which stops bus mastering but leaves decode on.
    private func commandWrite(_ new: UInt16) throws {
        var hw = UInt16(try dev.readConfig(PCIReg.command, 2))
        let before = hw
        let wantsDecode = new & (PCICommand.io | PCICommand.memory) != 0
        if wantsDecode && !enabled {
            enabled = true
            hw |= decodeBits
        } else if !wantsDecode && enabled {
            enabled = false
            hw &= ~PCICommand.master
        }
        if new & PCICommand.master != 0 { hw |= PCICommand.master } else if enabled || wantsDecode { hw &= ~PCICommand.master }
        hw = hw & ~PCICommand.invalidate | new & PCICommand.invalidate
        let passive = PCICommand.special | PCICommand.vgaPalette | PCICommand.wait | PCICommand.fastBack
        if (new ^ hw) & passive != 0 {
            if permissive { hw = hw & ~passive | new & passive } else { refuse(PCIReg.command, 2, UInt32(new), denied: false) }
        }
        virtualCommand = new & Self.virtualCommandBits
        if hw != before { try dev.writeConfig(PCIReg.command, 2, UInt32(hw)) }
    }

    /// PMCSR, as Linux's pciback with pci_set_power_state: PME_Status
    /// (write 1 to clear) and Data_Select reach the hardware; the power
    /// state changes only to a state PMC lists, D0 or deeper, with the
    /// spec's delay; PME_En and the read-only bits are dropped and counted.
    /// A function that leaves D3hot with its header lost gets it back from
    /// us: the guest cannot restore it (BARs and decode are ours).
    private func pmControlWrite(_ offset: Int, _ new: UInt16, written: UInt16) throws {
        let hw = UInt16(try dev.readConfig(offset, 2))
        let pmc = UInt16(try dev.readConfig(offset - PCICapReg.pmControl + PCICapReg.pmCapabilities, 2))
        let from = PowerState(pmcsr: hw), asked = PowerState(pmcsr: new)
        let to = asked == from || from.canEnter(asked, pmc: pmc) ? asked : from
        let passed = PCICapReg.pmControlDataSelect | PCICapReg.pmControlPMEStatus | PCICapReg.pmControlStateMask
        // A 1 in PME_Status clears it only where the guest wrote that byte,
        // not where it came from our read of the register.
        let clear = new & written & PCICapReg.pmControlPMEStatus
        let out = hw & ~passed | new & PCICapReg.pmControlDataSelect | clear | to.rawValue
        if out != hw & ~PCICapReg.pmControlPMEStatus {
            // What to write back, read while the function still has it:
            // the host's BARs and ROM, the small registers as they are, and
            // the command register as our mediation has it.
            var restore: (header: ConfigSpace, command: UInt16)?
            if PowerState.losesHeader(old: hw, new: out) {
                var header = golden
                for o in [PCIReg.cacheLineSize, PCIReg.latencyTimer, PCIReg.interruptLine] { header.write(o, 1, try dev.readConfig(o, 1)) }
                let command = UInt16(try dev.readConfig(PCIReg.command, 2)) & ~(PCICommand.io | PCICommand.memory)
                restore = (header, command | (enabled ? decodeBits : 0))
            }
            // The transition's wait is the caller's (a timer on the loop,
            // not a sleep here); the header goes back after it.
            try dev.writeConfig(offset, 2, UInt32(out))
            let old = PowerState(pmcsr: hw), new = PowerState(pmcsr: out)
            let delay = old == new ? Duration.zero : dev.transitionTime(microseconds: old.recovery(to: new))
            let rewrite: (() throws -> Void)? = restore.map { r in { [dev] in try dev.writeHeader(from: r.header, command: r.command) } }
            if delay > .zero {
                pendingWait = DeviceWait(delay: delay, then: rewrite)
            } else {
                try rewrite?()
            }
        }
        if (new ^ hw) & ~passed != 0 || to != asked { refuse(offset, 2, UInt32(new), denied: false) }
    }

    /// A function taken over from a previous backend: the guest enabled it
    /// if decoding is on in hardware.
    func adoptEnabledFromHardware() {
        let cmd = UInt16(truncatingIfNeeded: (try? dev.readConfig(PCIReg.command, 2)) ?? 0)
        enabled = cmd & decodeBits != 0
    }

    /// IO and/or MEM, from the BAR types the device has.
    var decodeBits: UInt16 {
        var bits: UInt16 = 0
        for (i, b) in bars.enumerated() where b.size > 0 && b.upperOf == nil {
            bits |= i < 6 && BARFlags(raw: b.raw).isIO ? PCICommand.io : PCICommand.memory
        }
        return bits
    }

    private func barWrite(_ i: Int, _ v: UInt32, partial: Bool) {
        let mask = bars[i].mask
        if i == 6 { romEnable = v & 1 != 0 }
        sizing[i] = !partial && v | mask == 0xFFFF_FFFF
        if !sizing[i] && (i == 6 ? v & ~0x7FF : v) != (i == 6 ? bars[6].raw & ~0x7FF : bars[i].raw) {
            refuse(PCIReg.bar0 + 4 * i, 4, v, denied: false) // a relocation attempt: ignored, counted
        }
    }

    /// A read-only device (a host driver owns it): a whole-BAR or ROM write
    /// is taken, since those registers are virtual (sizing); every other
    /// write is refused and counted. Nothing reaches the hardware.
    func writeVirtualOnly(_ offset: Int, _ size: Int, _ value: UInt32) -> PCIOpError {
        let idx = fieldAt[offset]
        if idx >= 0, case .bar(let i) = fields[Int(idx)].kind, fields[Int(idx)].offset == offset, size == 4 {
            barWrite(i, value, partial: false)
            return .success
        }
        refuse(offset, size, value, denied: true)
        return .accessDenied
    }

    /// Sets or clears MSI/MSI-X enable in hardware, for the op path.
    func setEnable(_ id: PCICapID, _ on: Bool) throws {
        guard let c = capability(id) else { return }
        let bit = id == .msi ? PCICapReg.msiFlagsEnable : PCICapReg.msixFlagsEnable
        let hw = UInt16(try dev.readConfig(c.offset + 2, 2))
        var new = on ? hw | bit : hw & ~bit
        if id == .msi { new &= ~(0x7 << UInt16(PCICapReg.msiFlagsQSizeShift)) } // one vector
        if new != hw { try dev.writeConfig(c.offset + 2, 2, UInt32(new)) }
    }

    func isEnabled(_ id: PCICapID) -> Bool {
        guard let c = capability(id), let v = try? dev.readConfig(c.offset + 2, 2) else { return false }
        return UInt16(v) & (id == .msi ? PCICapReg.msiFlagsEnable : PCICapReg.msixFlagsEnable) != 0
    }

    /// Refused or dropped writes with the quirk line that would allow each.
    func refusalReport(_ address: PCIAddress) -> [(offset: Int, size: Int, count: Int, denied: Bool, quirk: String?)] {
        refusals.values.sorted { ($0.offset, $0.size) < ($1.offset, $1.size) }.map { r in
            let covered = (r.offset..<r.offset + r.size).contains { fieldAt[$0] >= 0 }
            let q = covered ? nil : PCIQuirk(address: address, offset: r.offset, size: r.size, mask: Self.ones(r.size)).description
            return (r.offset, r.size, r.count, r.denied, q)
        }
    }
}

/// Time a function needs after a write before it is accessed again, and
/// what to do then.
struct DeviceWait {
    var delay: Duration
    var then: (() throws -> Void)?
}
