import Foundation
import PCIModel

/// A function that exists only in memory, at any address: the config space
/// given (256 or 4096 bytes; anything else is padded or cut to the nearer
/// size), writes change only the copy, reset restores it. Benchmarks and
/// tests use it to claim many devices built from one fixture.
public final class MemoryPCIDevice: PCIDeviceAccess, @unchecked Sendable {
    public let address: PCIAddress
    public let configSize: Int
    public let resources: [PCIResource]
    public let irq: Int
    public let driver: String? = nil
    private let lock = NSLock()
    private var memory: ConfigSpace
    private let pristine: ConfigSpace
    private(set) public var accessCount = 0
    private(set) public var resetCount = 0

    public init(address: PCIAddress, config: [UInt8], resources: [PCIResource], irq: Int) {
        self.address = address
        configSize = config.count > 256 ? 4096 : 256
        var bytes = Array(config.prefix(configSize))
        bytes += Array(repeating: 0, count: configSize - bytes.count)
        memory = ConfigSpace(bytes: bytes)
        pristine = memory
        self.resources = resources
        self.irq = irq
    }

    public func readConfig(_ offset: Int, _ size: Int) throws -> UInt32 {
        try check(offset, size)
        lock.lock(); defer { lock.unlock() }
        accessCount += 1
        return memory.read(offset, size)
    }

    public func writeConfig(_ offset: Int, _ size: Int, _ value: UInt32) throws {
        try check(offset, size)
        lock.lock(); defer { lock.unlock() }
        accessCount += 1
        memory.write(offset, size, value)
    }

    public func reset() throws {
        lock.lock(); defer { lock.unlock() }
        resetCount += 1
        memory = pristine
    }

    /// The same refusal as SysfsPCIDevice: an unaligned or outside access is a caller bug.
    private func check(_ offset: Int, _ size: Int) throws {
        guard size == 1 || size == 2 || size == 4, offset >= 0, offset % size == 0, offset + size <= configSize else {
            throw PCIBackError.hardware("\(address): refused config access at 0x\(hex(max(offset, 0), 3)) size \(size)")
        }
    }
}
