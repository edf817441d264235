/// PCI configuration-space registers and bits (PCI Local Bus 3.0, PCIe 4.0).
public enum PCIReg {
    public static let vendorID = 0x00, deviceID = 0x02, command = 0x04, status = 0x06
    public static let revision = 0x08, progIF = 0x09, subclass = 0x0A, classCode = 0x0B
    public static let cacheLineSize = 0x0C, latencyTimer = 0x0D, headerType = 0x0E, bist = 0x0F
    public static let bar0 = 0x10, cardbusCIS = 0x28, subsystemVendorID = 0x2C, subsystemID = 0x2E
    public static let romAddress = 0x30, capabilityPointer = 0x34, interruptLine = 0x3C, interruptPin = 0x3D
    public static let minGrant = 0x3E, maxLatency = 0x3F
    // type 1 (bridge)
    public static let primaryBus = 0x18, secondaryBus = 0x19, subordinateBus = 0x1A
    public static let bridgeROMAddress = 0x38, bridgeControl = 0x3E

    public static let headerSize = 0x40
    public static let legacySize = 0x100
    public static let extendedSize = 0x1000
}

public enum PCICommand {
    public static let io: UInt16 = 0x001, memory: UInt16 = 0x002, master: UInt16 = 0x004, special: UInt16 = 0x008
    public static let invalidate: UInt16 = 0x010, vgaPalette: UInt16 = 0x020, parity: UInt16 = 0x040, wait: UInt16 = 0x080
    public static let serr: UInt16 = 0x100, fastBack: UInt16 = 0x200, intxDisable: UInt16 = 0x400
}

public enum PCIStatus {
    public static let interrupt: UInt16 = 0x0008, capList: UInt16 = 0x0010
}

/// Standard capability ids (offset 0x34 list).
public enum PCICapID: UInt8, CaseIterable, Sendable {
    case pm = 0x01, agp = 0x02, vpd = 0x03, slotID = 0x04, msi = 0x05, hotSwap = 0x06, pcix = 0x07
    case hyperTransport = 0x08, vendor = 0x09, debugPort = 0x0A, compactPCI = 0x0B, hotPlug = 0x0C
    case subsystemVendor = 0x0D, agp3 = 0x0E, secureDevice = 0x0F, pcie = 0x10, msix = 0x11, sata = 0x12
    case advancedFeatures = 0x13, enhancedAllocation = 0x14

    public var name: String {
        switch self {
        case .pm: return "Power Management"
        case .agp: return "AGP"
        case .vpd: return "Vital Product Data"
        case .slotID: return "Slot ID"
        case .msi: return "MSI"
        case .hotSwap: return "CompactPCI hot-swap"
        case .pcix: return "PCI-X"
        case .hyperTransport: return "HyperTransport"
        case .vendor: return "Vendor Specific Information"
        case .debugPort: return "Debug port"
        case .compactPCI: return "CompactPCI central resource control"
        case .hotPlug: return "PCI Standard Hot-Plug Controller"
        case .subsystemVendor: return "Subsystem"
        case .agp3: return "AGP3"
        case .secureDevice: return "Secure device"
        case .pcie: return "Express"
        case .msix: return "MSI-X"
        case .sata: return "SATA HBA"
        case .advancedFeatures: return "PCI Advanced Features"
        case .enhancedAllocation: return "Enhanced Allocation"
        }
    }
}

/// Extended capability ids (from 0x100 in PCIe config space).
public enum PCIExtCapID: UInt16, CaseIterable, Sendable {
    case aer = 0x0001, virtualChannel = 0x0002, serialNumber = 0x0003, powerBudget = 0x0004
    case rootComplexLink = 0x0005, rootComplexInternal = 0x0006, rootComplexEventCollector = 0x0007
    case mfvc = 0x0008, vc9 = 0x0009, rcrb = 0x000A, vendor = 0x000B, cac = 0x000C, acs = 0x000D
    case ari = 0x000E, ats = 0x000F, sriov = 0x0010, mriov = 0x0011, multicast = 0x0012, pri = 0x0013
    case resizableBAR = 0x0015, dpa = 0x0016, tph = 0x0017, ltr = 0x0018, secondaryPCIe = 0x0019
    case pmux = 0x001A, pasid = 0x001B, lnr = 0x001C, dpc = 0x001D, l1pmSubstates = 0x001E
    case ptm = 0x001F, designatedVendor = 0x0023, dataLink = 0x0025, physicalLayer16 = 0x0026

    public var name: String {
        switch self {
        case .aer: return "Advanced Error Reporting"
        case .virtualChannel, .vc9: return "Virtual Channel"
        case .serialNumber: return "Device Serial Number"
        case .powerBudget: return "Power Budgeting"
        case .rootComplexLink: return "Root Complex Link"
        case .rootComplexInternal: return "Root Complex Internal Link"
        case .rootComplexEventCollector: return "Root Complex Event Collector"
        case .mfvc: return "Multi-Function Virtual Channel"
        case .rcrb: return "Root Complex Register Block"
        case .vendor: return "Vendor Specific Information"
        case .cac: return "Config Access Correlation"
        case .acs: return "Access Control Services"
        case .ari: return "Alternative Routing-ID Interpretation (ARI)"
        case .ats: return "Address Translation Service (ATS)"
        case .sriov: return "Single Root I/O Virtualization (SR-IOV)"
        case .mriov: return "Multi-Root I/O Virtualization (MR-IOV)"
        case .multicast: return "Multicast"
        case .pri: return "Page Request Interface (PRI)"
        case .resizableBAR: return "Physical Resizable BAR"
        case .dpa: return "Dynamic Power Allocation"
        case .tph: return "Transaction Processing Hints"
        case .ltr: return "Latency Tolerance Reporting"
        case .secondaryPCIe: return "Secondary PCI Express"
        case .pmux: return "Protocol Multiplexing"
        case .pasid: return "Process Address Space ID (PASID)"
        case .lnr: return "LN Requester"
        case .dpc: return "Downstream Port Containment"
        case .l1pmSubstates: return "L1 PM Substates"
        case .ptm: return "Precision Time Measurement"
        case .designatedVendor: return "Designated Vendor-Specific"
        case .dataLink: return "Data Link Feature"
        case .physicalLayer16: return "Physical Layer 16.0 GT/s"
        }
    }
}

/// MSI / MSI-X / PM / VPD register layout inside their capabilities.
public enum PCICapReg {
    public static let msiFlags = 2          // message control, 16 bit
    public static let msiFlagsEnable: UInt16 = 0x0001
    public static let msiFlagsQMaskShift = 1    // multiple message capable (log2)
    public static let msiFlagsQSizeShift = 4    // multiple message enable (log2)
    public static let msiFlags64Bit: UInt16 = 0x0080
    public static let msiFlagsMaskBit: UInt16 = 0x0100

    public static let msixFlags = 2
    public static let msixFlagsEnable: UInt16 = 0x8000
    public static let msixFlagsMaskAll: UInt16 = 0x4000
    public static let msixFlagsTableSize: UInt16 = 0x07FF
    public static let msixTable = 4         // BIR (bits 0-2) | offset
    public static let msixPBA = 8

    public static let pmCapabilities = 2
    public static let pmControl = 4
    public static let pmCapD1: UInt16 = 0x0200
    public static let pmCapD2: UInt16 = 0x0400
    public static let pmControlStateMask: UInt16 = 0x0003
    public static let pmControlNoSoftReset: UInt16 = 0x0008
    public static let pmControlPMEEnable: UInt16 = 0x0100
    public static let pmControlDataSelect: UInt16 = 0x1E00
    public static let pmControlDataScale: UInt16 = 0x6000
    public static let pmControlPMEStatus: UInt16 = 0x8000
    public static let pmCapPMEMask: UInt16 = 0xF800

    public static let vpdAddress = 2        // 16 bit: address | F (bit 15)
    public static let vpdAddressFlag: UInt16 = 0x8000
    public static let vpdData = 4

    public static let pcieFlags = 2
    public static let pcieDevCap = 4
    public static let pcieDevCtl = 8
    public static let pcieLinkCap = 0x0C
    public static let pcieLinkStatus = 0x12
}
