import PCIModel

/// Decoded capabilities: what a driver needs to find its registers, and
/// what an `lspci -v`-like view prints.
public struct MSIInfo: Equatable, Sendable {
    public var offset: Int
    public var enabled: Bool
    public var is64Bit: Bool
    public var maskable: Bool
    /// Vectors the function can request / has enabled (powers of two).
    public var capableVectors: Int
    public var enabledVectors: Int
}

public struct MSIXInfo: Equatable, Sendable {
    public var offset: Int
    public var enabled: Bool
    public var maskAll: Bool
    public var tableSize: Int
    public var tableBIR: Int
    public var tableOffset: UInt32
    public var pbaBIR: Int
    public var pbaOffset: UInt32
}

public struct PCIeInfo: Equatable, Sendable {
    public var offset: Int
    public var version: Int
    /// Device/port type (PCIe flags bits 7:4).
    public var portType: Int
    public var interruptMessage: Int

    public var portTypeName: String {
        switch portType {
        case 0: return "Endpoint"
        case 1: return "Legacy Endpoint"
        case 4: return "Root Port"
        case 5: return "Upstream Port"
        case 6: return "Downstream Port"
        case 7: return "PCI-Express to PCI/PCI-X Bridge"
        case 8: return "PCI/PCI-X to PCI-Express Bridge"
        case 9: return "Root Complex Integrated Endpoint"
        case 10: return "Root Complex Event Collector"
        default: return "Unknown type \(portType)"
        }
    }
}

public struct SRIOVInfo: Equatable, Sendable {
    public var offset: Int
    public var initialVFs: Int
    public var totalVFs: Int
    public var numVFs: Int
    public var firstVFOffset: Int
    public var vfStride: Int
    public var vfDeviceID: UInt16
}

extension PCIFunction {
    public var powerManagementVersion: Int? {
        capability(.pm).map { Int(config.read16($0.offset + PCICapReg.pmCapabilities) & 7) }
    }

    public var msi: MSIInfo? {
        guard let c = capability(.msi) else { return nil }
        let f = config.read16(c.offset + PCICapReg.msiFlags)
        return MSIInfo(offset: c.offset, enabled: f & PCICapReg.msiFlagsEnable != 0,
                       is64Bit: f & PCICapReg.msiFlags64Bit != 0, maskable: f & PCICapReg.msiFlagsMaskBit != 0,
                       capableVectors: 1 << Int((f >> PCICapReg.msiFlagsQMaskShift) & 7),
                       enabledVectors: 1 << Int((f >> PCICapReg.msiFlagsQSizeShift) & 7))
    }

    public var msix: MSIXInfo? {
        guard let c = capability(.msix) else { return nil }
        let f = config.read16(c.offset + PCICapReg.msixFlags)
        let t = config.read32(c.offset + PCICapReg.msixTable), p = config.read32(c.offset + PCICapReg.msixPBA)
        return MSIXInfo(offset: c.offset, enabled: f & PCICapReg.msixFlagsEnable != 0,
                        maskAll: f & PCICapReg.msixFlagsMaskAll != 0,
                        tableSize: Int(f & PCICapReg.msixFlagsTableSize) + 1,
                        tableBIR: Int(t & 7), tableOffset: t & ~7, pbaBIR: Int(p & 7), pbaOffset: p & ~7)
    }

    public var pcie: PCIeInfo? {
        guard let c = capability(.pcie) else { return nil }
        let f = config.read16(c.offset + PCICapReg.pcieFlags)
        return PCIeInfo(offset: c.offset, version: Int(f & 0xF), portType: Int((f >> 4) & 0xF),
                        interruptMessage: Int((f >> 9) & 0x1F))
    }

    public var sriov: SRIOVInfo? {
        guard let c = extendedCapability(.sriov) else { return nil }
        let o = c.offset
        return SRIOVInfo(offset: o, initialVFs: Int(config.read16(o + 0x0C)), totalVFs: Int(config.read16(o + 0x0E)),
                         numVFs: Int(config.read16(o + 0x10)), firstVFOffset: Int(config.read16(o + 0x14)),
                         vfStride: Int(config.read16(o + 0x16)), vfDeviceID: config.read16(o + 0x1A))
    }

    /// Whether an AER extended capability is present, and where.
    public var aerOffset: Int? { extendedCapability(.aer)?.offset }

    static func flag(_ b: Bool) -> String { b ? "+" : "-" }

    /// One line per capability, in list order, lspci -v style.
    public func describe(_ c: PCICapability) -> String {
        let f = Self.flag
        if c.extended {
            switch PCIExtCapID(rawValue: c.id) {
            case .sriov?:
                guard let s = sriov else { break }
                return "\(c.name): TotalVFs=\(s.totalVFs) InitialVFs=\(s.initialVFs) NumVFs=\(s.numVFs) VF offset=\(s.firstVFOffset) stride=\(s.vfStride) VF Device ID \(hex(s.vfDeviceID, 4))"
            case .vendor?:
                let h = config.read32(c.offset + 4)
                return "\(c.name): ID=\(hex(h & 0xFFFF, 4)) Rev=\((h >> 16) & 0xF) Len=\(hex(h >> 20, 3))"
            default: break
            }
            return c.name
        }
        switch PCICapID(rawValue: UInt8(truncatingIfNeeded: c.id)) {
        case .pm?: return "Power Management version \(powerManagementVersion ?? 0)"
        case .msi?:
            guard let m = msi else { break }
            return "MSI: Enable\(f(m.enabled)) Count=\(m.enabledVectors)/\(m.capableVectors) Maskable\(f(m.maskable)) 64bit\(f(m.is64Bit))"
        case .msix?:
            guard let m = msix else { break }
            return "MSI-X: Enable\(f(m.enabled)) Count=\(m.tableSize) Masked\(f(m.maskAll))"
        case .pcie?:
            guard let e = pcie else { break }
            return "Express \(e.version > 1 ? "(v\(e.version)) " : "")\(e.portTypeName), MSI \(hex(e.interruptMessage, 2))"
        case .vendor?: return "Vendor Specific Information: Len=\(hex(config.read8(c.offset + 2), 2))"
        case .subsystemVendor?: return "Subsystem: \(hex(subsystemVendorID, 4)):\(hex(subsystemID, 4))"
        default: break
        }
        return c.name
    }

    /// An `lspci -v`-like view of the function.
    public var lspciDescription: String {
        var lines = ["\(address) Class \(hex(classCode >> 8, 4)): \(hex(vendorID, 4)):\(hex(deviceID, 4)) (rev \(hex(revision, 2)))"]
        lines.append("\tSubsystem: \(hex(subsystemVendorID, 4)):\(hex(subsystemID, 4))")
        var flags: [String] = []
        if command & PCICommand.master != 0 { flags.append("bus master") }
        if interruptPin != 0 { flags.append("IRQ \(interruptLine) (pin \(Character(UnicodeScalar(64 + min(interruptPin, 4)))))") }
        if !flags.isEmpty { lines.append("\tFlags: " + flags.joined(separator: ", ")) }
        for b in bars { lines.append("\t\(b)") }
        if let r = rom {
            lines.append("\tExpansion ROM at \(hex(r.base, 8)) [\(r.enabled ? "enabled" : "disabled")] [size=\(sizeText(UInt64(r.size)))]")
        }
        for c in capabilities + extendedCapabilities {
            lines.append("\tCapabilities: [\(hex(c.offset, c.extended ? 3 : 2))] \(describe(c))")
        }
        return lines.joined(separator: "\n")
    }
}
