import Foundation
import PCIModel
import PCIHost

/// A function that exists only in memory: for fuzzing, load tests and
/// benchmarks that need more devices than there are fixtures. Reset puts
/// back the bytes it was created with.
public final class MemoryPCIDevice: PCIDeviceAccess, @unchecked Sendable {
    public let address: PCIAddress
    public let configSize: Int
    public let resources: [PCIResource]
    public let irq: Int
    public let driver: String? = nil
    /// Set to model an SR-IOV virtual function.
    public var physicalFunction: PCIDeviceAccess?
    private let lock = NSLock()
    private var config: ConfigSpace
    private let pristine: ConfigSpace
    private(set) public var accessCount = 0
    private(set) public var resetCount = 0
    /// Virtual time: transitions are counted in `settledMicroseconds`
    /// instead of slept (fuzzing: one input must cost microseconds).
    public var virtualTime = false
    private(set) public var settledMicroseconds: UInt64 = 0

    /// `config` shorter than 256 bytes is padded with 0xFF (absent bytes);
    /// longer than 256 is taken as extended space, up to 4096.
    public init(address: PCIAddress, config bytes: [UInt8], resources: [PCIResource], irq: Int) {
        self.address = address
        let size = bytes.count > PCIReg.legacySize ? PCIReg.extendedSize : PCIReg.legacySize
        var b = Array(bytes.prefix(size))
        b += [UInt8](repeating: 0xFF, count: size - b.count)
        config = ConfigSpace(bytes: b)
        pristine = config
        configSize = size
        self.resources = resources
        self.irq = irq
    }

    /// A copy of a fixture (or any sysfs-shaped tree) under another address.
    public convenience init(copying d: SysfsPCIDevice, as address: PCIAddress) throws {
        self.init(address: address, config: try d.readConfigSpace().bytes, resources: d.resources, irq: d.irq)
    }

    /// How long a reset takes, holding the function as the kernel's
    /// pci_cfg_access_lock does: config accesses meanwhile wait for it (a
    /// real FLR takes 100 ms and more; a slow device, seconds).
    public var resetDuration: Duration = .zero
    /// How long a VPD read takes: after a write of the VPD address with F
    /// clear, F reads 1 only once this has passed (the guest polls it).
    public var vpdLatency: Duration = .zero
    private var vpdReadyAt: ContinuousClock.Instant?
    private lazy var vpdAddress: Int? = config.capability(.vpd).map { $0.offset + PCICapReg.vpdAddress }

    public func readConfig(_ offset: Int, _ size: Int) throws -> UInt32 {
        guard [1, 2, 4].contains(size), offset >= 0, offset % size == 0, offset + size <= configSize else {
            throw PCIBackError.hardware("\(address): refused config access at \(offset) size \(size)")
        }
        lock.lock(); defer { lock.unlock() }
        accessCount += 1
        var v = config.read(offset, size)
        if let va = vpdAddress, offset <= va + 1, offset + size > va + 1, let ready = vpdReadyAt, ContinuousClock.now >= ready {
            v |= UInt32(PCICapReg.vpdAddressFlag >> 8) << (8 * UInt32(va + 1 - offset)) // F: the data is there
        }
        return v
    }

    public func writeConfig(_ offset: Int, _ size: Int, _ value: UInt32) throws {
        guard [1, 2, 4].contains(size), offset >= 0, offset % size == 0, offset + size <= configSize else {
            throw PCIBackError.hardware("\(address): refused config access at \(offset) size \(size)")
        }
        lock.lock(); defer { lock.unlock() }
        accessCount += 1
        config.write(offset, size, value)
        if let va = vpdAddress, offset <= va, offset + size >= va + 2 {
            config.write(va, 2, config.read(va, 2) & ~UInt32(PCICapReg.vpdAddressFlag))
            vpdReadyAt = ContinuousClock.now + vpdLatency
        }
    }

    public func readConfigSpace() throws -> ConfigSpace {
        lock.lock(); defer { lock.unlock() }
        accessCount += configSize / 4
        return config
    }

    public func settle(microseconds: UInt32) {
        guard virtualTime else { usleep(microseconds); return }
        lock.lock(); defer { lock.unlock() }
        settledMicroseconds += UInt64(microseconds)
    }

    public func transitionTime(microseconds: UInt32) -> Duration {
        guard virtualTime else { return .microseconds(microseconds) }
        lock.lock(); defer { lock.unlock() }
        settledMicroseconds += UInt64(microseconds)
        return .zero
    }

    /// Runs as each reset begins, outside the device's lock: a benchmark or
    /// a test makes the reset slow (a real FLR takes 100 ms and more), gated
    /// or failing with it. Set before the device is claimed.
    public var beforeReset: (() throws -> Void)?

    public func reset() throws {
        try beforeReset?()
        lock.lock(); defer { lock.unlock() }
        resetCount += 1
        if resetDuration > .zero { Thread.sleep(forTimeInterval: Double(resetDuration.components.seconds) + Double(resetDuration.components.attoseconds) / 1e18) }
        config = pristine
        vpdReadyAt = nil
    }
}
