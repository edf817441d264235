import Foundation
import PCIBack
import PCIModel
import XPCI
import XenMock
import XenToolstack
import XenHypervisor
import XenPCIABI
import PCIHost

/// One backend in dom0 and any number of frontends (dom1, dom2, ...) on the
/// mock, with the toolstack's xenstore writes done as libxl does them (the
/// set-up of Tests/PairTests).
final class Rig {
    let hv = MockHypervisor()
    let back: PCIBack
    let ts: XenStore
    let toolstack: XenToolstack
    let frontOptions: XPCIFrontend.Options
    private(set) var fronts: [XPCIFrontend] = []

    init(backOptions: PCIBack.Options = .init(), frontOptions: XPCIFrontend.Options = .init(), stateStore: BackendStateStore? = nil) throws {
        let dom0 = hv.domain(0)
        ts = try dom0.openXenStore()
        toolstack = XenToolstack(xenstore: ts, permissions: nil)
        back = try PCIBack(hypervisor: dom0, options: backOptions, stateStore: stateStore)
        self.frontOptions = frontOptions
        try back.start()
    }

    /// Publishes a guest with `devices` (claimed first) and attaches its
    /// frontend; does not wait for it to connect.
    @discardableResult
    func addGuest(_ devices: [PCIDeviceAccess]) throws -> XPCIFrontend {
        for d in devices { try back.claim(d) }
        let g = DomID(fronts.count + 1)
        _ = hv.domain(g)
        try publish(g, devices.map(\.address))
        let f = try XPCIFrontend(hypervisor: hv.domain(g), options: frontOptions)
        try f.attach()
        fronts.append(f)
        return f
    }

    func publish(_ g: DomID, _ addrs: [PCIAddress]) throws {
        try toolstack.attach(domid: g, devices: addrs)
    }

    func finish() {
        for f in fronts { try? f.detach() }
        back.stop()
        ts.close()
        let leaks = hv.leaks()
        if !leaks.isEmpty { progress("warning: mock leaks after the run: \(leaks.prefix(3))") }
    }
}

/// The fixture tree of Tests/Fixtures, found from this source file or the
/// working directory (`make bench` runs from the repository root).
func fixtureRoot() -> String {
    let here = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    for base in [here.path, FileManager.default.currentDirectoryPath] {
        let p = base + "/Tests/Fixtures/qemu-q35"
        if FileManager.default.fileExists(atPath: p + "/bus/pci/devices") { return p }
    }
    fatalError("Tests/Fixtures/qemu-q35 not found: run from the repository root")
}

/// A fixture's config space and resources, to clone under synthetic addresses.
struct Template {
    var config: [UInt8]
    let resources: [PCIResource]
    let irq: Int

    init(_ address: String) throws {
        let d = try SysfsPCIDevice(root: fixtureRoot(), address: PCIAddress(parsing: address), inMemory: true)
        config = try stride(from: 0, to: d.configSize, by: 4).flatMap { o in
            withUnsafeBytes(of: try d.readConfig(o, 4).littleEndian) { Array($0) }
        }
        resources = d.resources
        irq = d.irq
    }

    /// Clone number `k` at host address 0000:(0x20 + k / 32):(k % 32).0.
    func clone(_ k: Int) -> MemoryPCIDevice {
        let a = PCIAddress(segment: 0, bus: UInt8(0x20 + k / 32), device: UInt8(k % 32), function: 0)
        return MemoryPCIDevice(address: a, config: config, resources: resources, irq: irq)
    }
}

func progress(_ s: String) {
    FileHandle.standardError.write(Data(("bench: " + s + "\n").utf8))
}
