import Foundation
import PCIModel

/// Power states as PMCSR bits 1:0 hold them (PCI PM 1.2), with the rules
/// Linux's pci_set_power_state applies to a change.
enum PowerState: UInt16, Comparable {
    case d0 = 0, d1, d2, d3hot

    init(pmcsr: UInt16) { self = PowerState(rawValue: pmcsr & PCICapReg.pmControlStateMask)! }

    static func < (a: PowerState, b: PowerState) -> Bool { a.rawValue < b.rawValue }

    /// D0 and D3hot always exist; D1 and D2 only when PMC says so.
    func isSupported(pmc: UInt16) -> Bool {
        switch self {
        case .d0, .d3hot: return true
        case .d1: return pmc & PCICapReg.pmCapD1 != 0
        case .d2: return pmc & PCICapReg.pmCapD2 != 0
        }
    }

    /// D0 from anywhere; otherwise only deeper: D3hot -> D1 is not a
    /// transition the spec defines (D0 first).
    func canEnter(_ target: PowerState, pmc: UInt16) -> Bool {
        target.isSupported(pmc: pmc) && (target == .d0 || target > self)
    }

    /// Microseconds the function needs after the PMCSR write before it is
    /// accessed again (PCI Bus Power Management 1.2).
    func recovery(to target: PowerState) -> UInt32 {
        if self == .d3hot || target == .d3hot { return 10_000 }
        if self == .d2 || target == .d2 { return 200 }
        return 0
    }

    /// A function leaving D3hot for D0 without No_Soft_Reset in PMCSR
    /// comes back with its header at power-on values: BARs, ROM, command
    /// register cleared.
    static func losesHeader(old: UInt16, new: UInt16) -> Bool {
        PowerState(pmcsr: old) == .d3hot && PowerState(pmcsr: new) == .d0 && old & PCICapReg.pmControlNoSoftReset == 0
    }
}

extension PCIDeviceAccess {
    /// Writes `value` to PMCSR at `pmcsr` (the caller read `old` there just
    /// before) and waits out the transition it makes.
    func writePMCSR(_ pmcsr: Int, _ value: UInt16, old: UInt16) throws {
        try writeConfig(pmcsr, 2, UInt32(value))
        let from = PowerState(pmcsr: old), to = PowerState(pmcsr: value)
        let wait = from.recovery(to: to)
        if from != to && wait > 0 { settle(microseconds: wait) }
    }

    /// Moves the function with a PM capability at `pm` to `state`, leaving
    /// PME_Status pending (a 1 written back would clear it) and PME_En off.
    func setPowerState(pm: Int, _ state: PowerState) throws {
        let pmcsr = pm + PCICapReg.pmControl
        let old = UInt16(truncatingIfNeeded: try readConfig(pmcsr, 2))
        let new = old & ~(PCICapReg.pmControlStateMask | PCICapReg.pmControlPMEStatus | PCICapReg.pmControlPMEEnable) | state.rawValue
        if new != old & ~PCICapReg.pmControlPMEStatus { try writePMCSR(pmcsr, new, old: old) }
    }

    /// Writes the BARs, ROM (disabled), cache line size, latency timer and
    /// interrupt line of `g`, then `command`: what a function loses on a
    /// reset or a D3hot -> D0 transition.
    func writeHeader(from g: ConfigSpace, command: UInt16) throws {
        for o in stride(from: PCIReg.bar0, to: PCIReg.bar0 + 4 * g.barCount, by: 4) { try writeConfig(o, 4, g.read32(o)) }
        if let rom = g.romOffset { try writeConfig(rom, 4, g.read32(rom) & ~1) }
        for o in [PCIReg.cacheLineSize, PCIReg.latencyTimer, PCIReg.interruptLine] { try writeConfig(o, 1, UInt32(g.read8(o))) }
        try writeConfig(PCIReg.command, 2, UInt32(command))
    }
}
