import Foundation
import Testing
import XenMock
import PCIModel
@testable import XPCI
import XenPCIABI
import CXenPCI

private let addr = Rig.addr

/// Captured config spaces (Tests/Fixtures/<machine>/bus/pci/devices/<BDF>/),
/// present once the capture lands in the tree; XPCI_FIXTURES overrides.
private let fixtureRoot = ProcessInfo.processInfo.environment["XPCI_FIXTURES"].map { URL(fileURLWithPath: $0) }
    ?? URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures")

private func fixtureDevices() -> [(String, URL)] {
    let fm = FileManager.default
    var out: [(String, URL)] = []
    for m in (try? fm.contentsOfDirectory(atPath: fixtureRoot.path)) ?? [] {
        let dir = fixtureRoot.appendingPathComponent(m).appendingPathComponent("bus/pci/devices")
        for d in ((try? fm.contentsOfDirectory(atPath: dir.path)) ?? []).sorted() { out.append(("\(m)/\(d)", dir.appendingPathComponent(d))) }
    }
    return out
}

/// This machine's segment 0 bus 0 functions whose config space reads in full.
private let hostBus0Configs: [PCIAddress: ConfigSpace] = {
    let dir = "/sys/bus/pci/devices"
    var devices: [PCIAddress: ConfigSpace] = [:]
    for d in ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted() {
        guard let a = try? PCIAddress(parsing: d), a.segment == 0, a.bus == 0,
              let bytes = FileManager.default.contents(atPath: "\(dir)/\(d)/config"), bytes.count >= 256 else { continue }
        devices[a] = ConfigSpace(bytes: Array(bytes.prefix(bytes.count >= 4096 ? 4096 : 256)))
    }
    return devices
}()

@Suite("xpci bus model", .serialized)
struct BusTests {
    @Test("BARs and the ROM are sized through the protocol; decode is enabled from BAR types")
    func barSizing() throws {
        let rig = Rig()
        defer { rig.finish() }
        let (f, b) = try rig.connected()
        let d = try #require(f.device(addr("00:01.0")))
        #expect(d.bars == [
            PCIBAR(index: 0, base: 0xFEB0_0000, size: 0x4000, isIO: false, is64Bit: false, prefetchable: false),
            PCIBAR(index: 1, base: 0xC000, size: 0x20, isIO: true, is64Bit: false, prefetchable: false),
            PCIBAR(index: 2, base: 0x1_0000_0000, size: 0x10_0000, isIO: false, is64Bit: true, prefetchable: true),
        ])
        #expect(d.rom == PCIROM(base: 0, size: 0x1_0000, enabled: false))
        #expect(d.command & (PCICommand.io | PCICommand.memory) == PCICommand.io | PCICommand.memory)
        #expect(b.pool[addr("00:01.0")]!.config.read32(0x10) == 0xFEB0_0000, "BARs restored after sizing")
        #expect(b.pool[addr("00:01.0")]!.sizing.isEmpty)
        #expect(f.device(addr("00:02.1"))!.bars.isEmpty && f.device(addr("00:02.1"))!.command == 0, "no BARs: decode left alone")
        #expect(d.lspciDescription.contains("Memory at 100000000 (64-bit, prefetchable) [size=1M]"))
        #expect(d.lspciDescription.contains("I/O ports at c000 [size=32]"))
    }

    @Test("a backend refusing the decode enable (read-only export) does not take the function off the bus")
    func decodeRefused() throws {
        let rig = Rig()
        defer { rig.finish() }
        var behaviour = Behaviour()
        behaviour.corrupt = { req, reply in
            if req.cmd == PCIOpCommand.confWrite.rawValue && req.offset == Int32(PCIReg.command) { reply.err = PCIOpError.accessDenied.rawValue }
        }
        let (f, _) = try rig.connected(behaviour)
        let d = try #require(f.device(addr("00:01.0")), "the function is listed although its decode enable was refused")
        #expect(d.command & (PCICommand.io | PCICommand.memory) == 0)
        #expect(d.bars.count == 3)
    }

    @Test("enableDecodeOnScan off leaves the command register alone")
    func noDecode() throws {
        let rig = Rig()
        defer { rig.finish() }
        try rig.backend()
        let f = try rig.frontend(decode: false)
        try f.waitConnected()
        #expect(f.device(addr("00:01.0"))!.command == 0)
    }

    @Test("capabilities decoded: PM, MSI, MSI-X, PCIe, vendor, AER, SR-IOV")
    func capabilities() throws {
        let rig = Rig()
        defer { rig.finish() }
        let (f, _) = try rig.connected(devices: [addr("00:01.0"): Rig.rich(), addr("00:02.0"): Rig.express()])
        let r = try #require(f.device(addr("00:01.0")))
        #expect(r.capabilities.map(\.offset) == [0x40, 0x50, 0x70])
        #expect(r.powerManagementVersion == 3)
        #expect(r.msi == MSIInfo(offset: 0x50, enabled: false, is64Bit: true, maskable: false, capableVectors: 8, enabledVectors: 1))
        #expect(r.msix == MSIXInfo(offset: 0x70, enabled: false, maskAll: false, tableSize: 128, tableBIR: 0,
                                    tableOffset: 0x2000, pbaBIR: 0, pbaOffset: 0x3000))
        #expect(r.config.size == 256 && r.extendedCapabilities.isEmpty)
        #expect(r.subsystemVendorID == 0x1AF4 && r.subsystemID == 0x1100 && r.interruptPin == 1 && r.interruptLine == 11)
        let e = try #require(f.device(addr("00:02.0")))
        #expect(e.config.size == 4096, "extended space read through the protocol")
        #expect(e.pcie == PCIeInfo(offset: 0x40, version: 2, portType: 0, interruptMessage: 0))
        #expect(e.capability(.vendor)?.offset == 0x60)
        #expect(e.aerOffset == 0x100)
        #expect(e.sriov == SRIOVInfo(offset: 0x140, initialVFs: 8, totalVFs: 64, numVFs: 4, firstVFOffset: 0x80, vfStride: 2, vfDeviceID: 0x10ED))
        let text = e.lspciDescription
        for line in ["Capabilities: [40] Express (v2) Endpoint", "Capabilities: [100] Advanced Error Reporting",
                     "Capabilities: [140] Single Root I/O Virtualization (SR-IOV): TotalVFs=64", "Capabilities: [60] Vendor Specific"] {
            #expect(text.contains(line), "\(line) missing from\n\(text)")
        }
    }

    @Test("captured config spaces: BAR sizes and capability lists as the captured lspci saw them",
          .enabled(if: !fixtureDevices().isEmpty, "no fixtures under Tests/Fixtures yet"))
    func fixtures() throws {
        var checked = 0
        defer { #expect(checked > 0, "no fixture device had config and resource files") }
        for (name, dir) in fixtureDevices() {
            guard let bytes = try? Data(contentsOf: dir.appendingPathComponent("config")), bytes.count >= 64,
                  let res = try? String(contentsOf: dir.appendingPathComponent("resource"), encoding: .utf8) else { continue }
            let ranges = res.split(separator: "\n").map { line -> UInt64 in
                let f = line.split(separator: " ").compactMap { UInt64($0.dropFirst(2), radix: 16) }
                return f.count >= 2 && f[1] > f[0] ? f[1] - f[0] + 1 : 0
            }
            var config = ConfigSpace(bytes: Array(bytes))
            if config.size < 256 { config.bytes += Array(repeating: 0, count: 256 - config.size) }
            var sizes: [Int: UInt64] = [:]
            for i in 0..<min(config.barCount, ranges.count) where ranges[i] > 0 { sizes[i] = ranges[i] }
            let romSize = ranges.count > 6 ? UInt32(truncatingIfNeeded: ranges[6]) : 0
            let a = try PCIAddress(parsing: dir.lastPathComponent)
            let rig = Rig()
            let (f, _) = try rig.connected(devices: [a: FakeDevice(config: config, barSizes: sizes, romSize: romSize)])
            if FileManager.default.fileExists(atPath: dir.appendingPathComponent("physfn").path) {
                // An SR-IOV VF as captured: its own vendor/device ID read 0xFFFF
                // (its BARs 0, its BARs live in the PF's SR-IOV capability), so
                // a raw scan passes it over.
                #expect(config.read16(PCIReg.vendorID) == 0xFFFF && f.device(a) == nil, "\(name)")
                rig.finish()
                checked += 1
                continue
            }
            let d = try #require(f.device(a), "\(name)")
            #expect(d.config.bytes.prefix(0x10) == config.bytes.prefix(0x10), "\(name)")
            #expect(Dictionary(uniqueKeysWithValues: d.bars.map { ($0.index, $0.size) }) == sizes, "\(name) BAR sizes")
            #expect((d.rom?.size ?? 0) == romSize, "\(name) ROM")
            #expect(d.capabilities == config.capabilities && d.extendedCapabilities == config.extendedCapabilities, "\(name)")
            // The capability offsets lspci printed, in order.
            let lspci = dir.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
                .deletingLastPathComponent().appendingPathComponent("lspci/\(dir.lastPathComponent).v.txt")
            if let text = try? String(contentsOf: lspci, encoding: .utf8) {
                let want = text.split(separator: "\n").compactMap { l -> Int? in
                    guard let r = l.range(of: "Capabilities: ["), let e = l[r.upperBound...].firstIndex(of: "]") else { return nil }
                    return Int(l[r.upperBound..<e], radix: 16)
                }
                #expect((d.capabilities + d.extendedCapabilities).map(\.offset) == want, "\(name) vs lspci")
            }
            rig.finish()
            checked += 1
        }
    }

    @Test("this machine's sysfs config spaces decode the same through the protocol",
          .enabled(if: !hostBus0Configs.isEmpty, "no readable config space of a bus 0 function in /sys/bus/pci/devices"))
    func sysfs() throws {
        let devices = hostBus0Configs.mapValues { FakeDevice(config: $0) }
        let rig = Rig()
        defer { rig.finish() }
        let (f, _) = try rig.connected(devices: devices)
        #expect(f.devices.map(\.address) == devices.keys.sorted())
        for d in f.devices {
            #expect(d.capabilities == devices[d.address]!.config.capabilities, "\(d.address)")
            if let m = d.msix { #expect(m.tableSize >= 1 && m.tableSize <= 2048) }
        }
    }
}
