import Foundation
import PCIBack
import PCIModel

/// Where the backend's devices come from: this machine's sysfs or a fixture
/// tree shaped like it. Devices are opened as in-memory snapshots, so the
/// demo never writes to this machine's hardware.
struct DeviceSource {
    enum Kind: String { case host, fixtures }
    var root: String
    var kind: Kind
    var addresses: [PCIAddress]

    /// The committed fixtures: found from the working directory, from the
    /// executable's location, or from this source file's location.
    static var defaultFixtures: String? {
        let rel = "Tests/Fixtures/qemu-q35"
        let exe = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        let candidates = [FileManager.default.currentDirectoryPath + "/" + rel,
                          exe.appendingPathComponent("../../../" + rel).standardized.path,
                          URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../" + rel).standardized.path]
        return candidates.first { FileManager.default.fileExists(atPath: $0 + "/bus/pci/devices") }
    }

    /// `--fixtures DIR` wins; else `sysfs` (default /sys) when it has PCI
    /// devices whose whole config space can be read; else the fixtures.
    /// `explicitSysfs`: the user named the sysfs root, so a missing or
    /// unreadable one is an error rather than a reason to fall back.
    static func choose(fixtures: String?, sysfs: String?, console: Console) throws -> DeviceSource {
        if let f = fixtures { return try open(f, kind: .fixtures) }
        let root = sysfs ?? "/sys"
        do {
            let s = try open(root, kind: .host)
            guard !s.addresses.isEmpty else { throw CLIError(message: "\(root)/bus/pci/devices: no PCI devices", status: CLIError.noInput) }
            try s.checkReadable()
            return s
        } catch let e as CLIError where sysfs == nil {
            guard let f = defaultFixtures else {
                throw CLIError(message: "\(e.message); and the committed fixtures (Tests/Fixtures/qemu-q35) were not found: use --fixtures DIR", status: CLIError.noInput)
            }
            console.err("xenpci: this machine: \(e.message); using the fixtures in \(f)")
            return try open(f, kind: .fixtures)
        }
    }

    static func open(_ root: String, kind: Kind) throws -> DeviceSource {
        let dir = root + "/bus/pci/devices"
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
            throw CLIError(message: "\(dir): no such directory (not a sysfs-shaped tree)", status: CLIError.noInput)
        }
        guard FileManager.default.isReadableFile(atPath: dir) else { throw CLIError.permission("\(dir): permission denied") }
        return DeviceSource(root: root, kind: kind, addresses: try listSysfsDevices(root: root))
    }

    /// Linux gives unprivileged readers only the first 64 bytes of `config`.
    func checkReadable() throws {
        for a in addresses {
            let path = "\(root)/bus/pci/devices/\(a)/config"
            guard let fh = FileHandle(forReadingAtPath: path) else { throw CLIError.permission("\(path): permission denied") }
            let n = (try? fh.readToEnd())?.count ?? 0
            try? fh.close()
            guard n >= 256 else {
                throw CLIError.permission("\(path): only \(n) of 256 bytes readable: the full config space needs root")
            }
        }
    }

    /// A snapshot of one function (config, resources, irq, driver).
    func open(_ a: PCIAddress) throws -> SysfsPCIDevice {
        guard addresses.contains(a) else { throw CLIError.failure("\(a): no such device in \(root)/bus/pci/devices") }
        return try SysfsPCIDevice(root: root, address: a, inMemory: true)
    }

    /// Opens every function, with progress on stderr when it takes long.
    func scan(console: Console) throws -> [PCIAddress: SysfsPCIDevice] {
        let p = Progress("scanning \(root)/bus/pci/devices", total: addresses.count, console: console)
        var out: [PCIAddress: SysfsPCIDevice] = [:]
        for a in addresses {
            out[a] = try open(a)
            p.step(a.description)
        }
        p.finish()
        return out
    }

    /// The default selection: every function but bridges (class 06), which
    /// stay with the host.
    func defaultSelection(_ devs: [PCIAddress: SysfsPCIDevice]) throws -> [PCIAddress] {
        try devs.keys.sorted().filter { a in try devs[a]!.readConfig(PCIReg.classCode, 1) != 0x06 }
    }
}
