import Foundation
import PCIBack
import PCIModel
import XPCI
import XenMock

/// One backend in dom0 and any number of frontends (dom1, dom2, ...) on the
/// mock, with the toolstack's xenstore writes done as libxl does them (the
/// set-up of Tests/PairTests).
final class Rig {
    let hv = MockHypervisor()
    let back: PCIBack
    let ts: XenStore
    let frontOptions: XPCIFrontend.Options
    private(set) var fronts: [XPCIFrontend] = []

    init(backOptions: PCIBack.Options = .init(), frontOptions: XPCIFrontend.Options = .init()) throws {
        let dom0 = hv.domain(0)
        ts = try dom0.openXenStore()
        back = try PCIBack(hypervisor: dom0, options: backOptions)
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
        let b = "/local/domain/0/backend/pci/\(g)/0", f = "/local/domain/\(g)/device/pci/0"
        try ts.transaction { t in
            for (k, v) in [("backend", b), ("backend-id", "0"), ("state", "1")] { try ts.write(f + "/" + k, v, transaction: t) }
            try ts.setPermissions(f, [XenstorePermission(g, .none), XenstorePermission(0, .read)], transaction: t)
            for k in ["backend", "backend-id", "state"] {
                try ts.setPermissions(f + "/" + k, [XenstorePermission(g, .none), XenstorePermission(0, .read)], transaction: t)
            }
            try ts.mkdir(b, transaction: t)
            try ts.setPermissions(b, [XenstorePermission(0, .none), XenstorePermission(g, .read)], transaction: t)
            for (k, v) in [("frontend", f), ("frontend-id", String(g)), ("online", "1"), ("num_devs", String(addrs.count))] {
                try ts.write(b + "/" + k, v, transaction: t)
            }
            for (n, a) in addrs.enumerated() {
                try ts.write(b + "/dev-\(n)", a.description, transaction: t)
                try ts.write(b + "/opts-\(n)", "msitranslate=0,power_mgmt=0,permissive=0,rdm_policy=strict", transaction: t)
                try ts.write(b + "/state-\(n)", "1", transaction: t)
            }
            try ts.write(b + "/state", "1", transaction: t)
        }
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
    let config: [UInt8]
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
