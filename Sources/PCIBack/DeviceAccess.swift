import Foundation
import Synchronization
import PCIModel
import PCIHost

/// A host PCI function as the backend reaches it. The same code serves a
/// live Linux `/sys` and a fixture tree shaped like it.
public protocol PCIDeviceAccess: AnyObject, Sendable {
    var address: PCIAddress { get }
    /// 256 or 4096.
    var configSize: Int { get }
    func readConfig(_ offset: Int, _ size: Int) throws -> UInt32
    func writeConfig(_ offset: Int, _ size: Int, _ value: UInt32) throws
    /// Function-level reset (sysfs `reset`).
    func reset() throws
    /// BAR and ROM ranges from `resource`: index 0-5 BARs, 6 the ROM.
    var resources: [PCIResource] { get }
    var irq: Int { get }
    /// The host driver bound to the function, if any.
    var driver: String? { get }
    /// Counts of hardware accesses, for tests and `stats`.
    var accessCount: Int { get }
    /// For an SR-IOV virtual function, its physical function: a VF's BAR
    /// registers read 0 and its memory-decode bit is hard-wired to 0, so
    /// BAR values come from `resources` and decode from the PF.
    var physicalFunction: PCIDeviceAccess? { get }
    /// The ids the host kernel gives the function (sysfs `vendor`, `device`):
    /// a VF's own vendor and device registers read 0xFFFF.
    var identity: (vendor: UInt16, device: UInt16)? { get }
    /// Waits out a transition the function needs time for (a power-state
    /// change), on a worker: real hardware sleeps; a simulated device may
    /// count instead.
    func settle(microseconds: UInt32)
    /// How long the loop must leave the function alone after such a
    /// transition (it sets a timer): real hardware needs all of it; a
    /// simulated device in virtual time counts it and answers zero.
    func transitionTime(microseconds: UInt32) -> Duration
    /// The whole config space at once (the golden state at claim): one
    /// read where the device allows it, instead of 1024 dword reads.
    func readConfigSpace() throws -> ConfigSpace
}

extension PCIDeviceAccess {
    public var physicalFunction: PCIDeviceAccess? { nil }
    public var identity: (vendor: UInt16, device: UInt16)? { nil }
    public var isVirtualFunction: Bool { physicalFunction != nil }
    public func settle(microseconds: UInt32) { usleep(microseconds) }
    public func transitionTime(microseconds: UInt32) -> Duration { .microseconds(microseconds) }

    public func readConfigSpace() throws -> ConfigSpace {
        var cs = ConfigSpace(size: configSize)
        for o in stride(from: 0, to: configSize, by: 4) { cs.write(o, 4, try readConfig(o, 4)) }
        return cs
    }

    /// Memory decoding as Xen sees it for MSI-X: the PF's bit for a VF.
    public func memoryDecodeEnabled() throws -> Bool {
        let owner = physicalFunction ?? self
        return UInt16(truncatingIfNeeded: try owner.readConfig(PCIReg.command, 2)) & PCICommand.memory != 0
    }
}

/// Drivers that exist to hold a device for pass-through: binding to them
/// does not mean the host is using the device.
public let stubDrivers: Set<String> = ["pciback", "xen-pciback", "pci-stub", "vfio-pci"]

/// A function under `<root>/bus/pci/devices/<BDF>`. With `inMemory` the
/// config space is loaded once and writes change only the copy (fixture
/// trees, the demo); otherwise reads and writes go to the `config` file.
public final class SysfsPCIDevice: PCIDeviceAccess {
    public let address: PCIAddress
    public let path: String
    public let configSize: Int
    public let resources: [PCIResource]
    public let irq: Int
    public let driver: String?
    public let physicalFunction: PCIDeviceAccess?
    public let identity: (vendor: UInt16, device: UInt16)?
    /// A function held in memory: its config space (the lock guards the
    /// copy, not any I/O), and what a reset puts back.
    private let memory: Locked<ConfigSpace?>
    private let inMemory: Bool
    private let pristine: ConfigSpace?
    private let fd: Int32
    /// The file config accesses of a live function go through (see init);
    /// nil for a function held in memory.
    public let configFile: String?
    private let accesses = Atomic<Int>(0), resets = Atomic<Int>(0)
    public var accessCount: Int { accesses.load(ordering: .relaxed) }
    public var resetCount: Int { resets.load(ordering: .relaxed) }

    public init(root: String, address: PCIAddress, inMemory: Bool) throws {
        self.address = address
        let path = root + "/bus/pci/devices/" + address.description
        self.path = path
        let fm = FileManager.default
        guard fm.fileExists(atPath: path + "/config") else {
            throw PCIBackError.badDevice("\(address): no such device (\(path)/config is missing)")
        }
        func text(_ f: String) -> String? { fm.contents(atPath: path + "/" + f).map { String(decoding: $0, as: UTF8.self) } }
        resources = try text("resource").map { t in
            do { return try PCIResource.parse(t) } catch { throw PCIBackError.badDevice("\(path)/resource: \(error)") }
        } ?? []
        irq = text("irq").flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? 0
        // A live sysfs has a `driver` symlink; fixture trees may record the name in a file.
        if let link = try? fm.destinationOfSymbolicLink(atPath: path + "/driver") {
            driver = (link as NSString).lastPathComponent
        } else if let d = text("driver")?.trimmingCharacters(in: .whitespacesAndNewlines), !d.isEmpty {
            driver = d
        } else {
            driver = nil
        }
        // A VF's `physfn` link names its PF (fixture trees: a file holding the BDF).
        let pf: String? = (try? fm.destinationOfSymbolicLink(atPath: path + "/physfn")).map { ($0 as NSString).lastPathComponent }
            ?? text("physfn")?.trimmingCharacters(in: .whitespacesAndNewlines)
        func id(_ f: String) -> UInt16? {
            text(f).map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }.flatMap { UInt16($0.hasPrefix("0x") ? String($0.dropFirst(2)) : $0, radix: 16) }
        }
        identity = id("vendor").flatMap { v in id("device").map { (v, $0) } }
        if let pf, !pf.isEmpty {
            guard let a = try? PCIAddress(parsing: pf), a != address else {
                throw PCIBackError.badDevice("\(address): \(path)/physfn names '\(pf)', not a PCI function")
            }
            physicalFunction = try SysfsPCIDevice(root: root, address: a, inMemory: inMemory)
        } else {
            physicalFunction = nil
        }
        if inMemory {
            guard let data = fm.contents(atPath: path + "/config"), data.count >= 64 else {
                throw PCIBackError.badDevice("\(address): \(path)/config is unreadable or shorter than the 64-byte header")
            }
            let cs = ConfigSpace(bytes: Array(data.prefix(4096)))
            memory = Locked(cs)
            self.inMemory = true
            pristine = cs
            fd = -1
            configFile = nil
            configSize = data.count >= 4096 ? 4096 : 256
        } else {
            // On the live system, procfs's file for the function: the same
            // kernel accessor and checks as sysfs `config` without kernfs
            // around it; a 4-byte read was 11-55 % cheaper in 7 of 8 timings
            // in a PV dom0 under TCG (docs/PERFORMANCE.md). Else sysfs's.
            let proc = Self.procConfigPath(address)
            let file = root == "/sys" && fm.fileExists(atPath: proc) ? proc : path + "/config"
            var f = open(file, O_RDWR | O_CLOEXEC)
            if f < 0 { f = open(file, O_RDONLY | O_CLOEXEC) }
            guard f >= 0 else { throw PCIBackError.badDevice("\(address): open \(file): \(String(cString: strerror(errno)))") }
            fd = f
            memory = Locked(nil)
            self.inMemory = false
            pristine = nil
            configFile = file
            let st = lseek(fd, 0, SEEK_END)
            configSize = st >= 4096 ? 4096 : 256
        }
    }

    /// `/proc/bus/pci/<bus>/<slot>.<fn>`, the bus prefixed by its domain
    /// outside domain 0, as Linux names them.
    public static func procConfigPath(_ a: PCIAddress) -> String {
        let bus = a.segment == 0 ? hex(a.bus, 2) : hex(a.segment, 4) + ":" + hex(a.bus, 2)
        return "/proc/bus/pci/\(bus)/\(hex(a.device, 2)).\(String(a.function, radix: 16))"
    }

    deinit { if fd >= 0 { close(fd) } }

    public func readConfig(_ offset: Int, _ size: Int) throws -> UInt32 {
        try check(offset, size)
        accesses.wrappingAdd(1, ordering: .relaxed)
        if inMemory { return memory.withLock { $0!.read(offset, size) } }
        var v: UInt32 = 0
        let n = pread(fd, &v, size, off_t(offset))
        guard n == size else { throw PCIBackError.hardware("\(address): read config 0x\(hex(offset, 3))/\(size): \(String(cString: strerror(errno)))") }
        return UInt32(littleEndian: v)
    }

    public func writeConfig(_ offset: Int, _ size: Int, _ value: UInt32) throws {
        try check(offset, size)
        accesses.wrappingAdd(1, ordering: .relaxed)
        if inMemory { memory.withLock { $0!.write(offset, size, value) }; return }
        var v = value.littleEndian
        let n = pwrite(fd, &v, size, off_t(offset))
        guard n == size else { throw PCIBackError.hardware("\(address): write config 0x\(hex(offset, 3))/\(size): \(String(cString: strerror(errno)))") }
    }

    public func readConfigSpace() throws -> ConfigSpace {
        accesses.wrappingAdd(configSize / 4, ordering: .relaxed)
        if inMemory { return memory.withLock { $0! } }
        var bytes = [UInt8](repeating: 0, count: configSize)
        let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, configSize, 0) }
        guard n == configSize else {
            throw PCIBackError.hardware("\(address): read config space (\(configSize) bytes): \(n < 0 ? String(cString: strerror(errno)) : "\(n) bytes read")")
        }
        return ConfigSpace(bytes: bytes)
    }

    /// An aligned access inside the config space: anything else is a bug in
    /// the caller, refused before it reaches the device (NetBSD's assertion
    /// here was a guest-triggered dom0 panic).
    private func check(_ offset: Int, _ size: Int) throws {
        guard [1, 2, 4].contains(size), offset >= 0, offset % size == 0, offset + size <= configSize else {
            throw PCIBackError.hardware("\(address): refused config access at 0x\(hex(max(offset, 0), 3)) size \(size)")
        }
    }

    public func reset() throws {
        resets.wrappingAdd(1, ordering: .relaxed)
        if inMemory { memory.withLock { $0 = pristine }; return }
        // Linux has no `reset` file for a function without a reset method
        // (no FLR, no PM reset, alone on a root bus: most devices of a
        // virtual machine), and answers ENOTTY when every method declines.
        // Linux's pciback then only restores the saved state; so do we
        // (the caller writes the golden header back after this).
        let r = open(path + "/reset", O_WRONLY | O_CLOEXEC)
        if r < 0 && errno == ENOENT { return }
        guard r >= 0 else { throw PCIBackError.hardware("\(address): no function reset (\(path)/reset: \(String(cString: strerror(errno))))") }
        defer { close(r) }
        if write(r, "1", 1) != 1 {
            if errno == ENOTTY { return }
            throw PCIBackError.hardware("\(address): reset failed: \(String(cString: strerror(errno)))")
        }
    }
}

/// The devices present under `<root>/bus/pci/devices`.
public func listSysfsDevices(root: String) throws -> [PCIAddress] {
    let dir = root + "/bus/pci/devices"
    guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else {
        throw PCIBackError.badDevice("no PCI devices directory at \(dir)")
    }
    return names.compactMap { try? PCIAddress(parsing: $0) }.sorted()
}
