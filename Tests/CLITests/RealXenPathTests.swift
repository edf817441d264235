import Foundation
import Logging
import Testing
@testable import xenpci
import PCIBack
import PCIModel
import XenMock

/// What running on a real Xen 4.17 (make xen-test) showed, reproduced on the
/// mock or on plain files.
@Suite("Found on real Xen")
struct RealXenPathTests {
    /// A sysfs-shaped tree with one e1000 function and no `reset` file, as
    /// Linux shows a function without a reset method (QEMU's e1000 on the
    /// root bus).
    func treeWithoutReset() throws -> (root: String, config: String) {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("xenpci-noreset-\(getpid())-\(UUID().uuidString.prefix(8))").path
        let dir = root + "/bus/pci/devices/0000:00:06.0"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var c = [UInt8](repeating: 0, count: 256)
        c[0] = 0x86; c[1] = 0x80; c[2] = 0x0e; c[3] = 0x10 // 8086:100e
        c[4] = 0x07                                          // io, memory, bus master
        c[0x0B] = 0x02                                       // network controller
        c[0x0C] = 0x00                                       // cache line
        c[0x10] = 0x00; c[0x12] = 0xac; c[0x13] = 0xfe       // BAR0 fea c0000
        FileManager.default.createFile(atPath: dir + "/config", contents: Data(c))
        try ("0x00000000feac0000 0x00000000feadffff 0x0000000000040200\n"
             + String(repeating: "0x0000000000000000 0x0000000000000000 0x0000000000000000\n", count: 6))
            .write(toFile: dir + "/resource", atomically: false, encoding: .utf8)
        try "11\n".write(toFile: dir + "/irq", atomically: false, encoding: .utf8)
        return (root, dir + "/config")
    }

    @Test("a live function without a sysfs reset file is claimed and released (golden state restored, bus master off), as Linux pciback does")
    func noResetMethod() throws {
        let (root, config) = try treeWithoutReset()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let a = try PCIAddress(parsing: "0000:00:06.0")
        let dev = try SysfsPCIDevice(root: root, address: a, inMemory: false)
        try dev.reset() // no `reset` file: nothing to do, not an error
        let hv = MockHypervisor()
        let back = try PCIBack(hypervisor: hv.domain(0))
        defer { back.stop() }
        try back.claim(dev)
        var bytes = [UInt8](FileManager.default.contents(atPath: config)!)
        #expect(bytes[4] & 0x04 == 0, "bus master off after claim")
        try dev.writeConfig(0x0C, 1, 0x10) // a guest's cache line write reached the "hardware"
        #expect([UInt8](FileManager.default.contents(atPath: config)!)[0x0C] == 0x10)
        try back.release(a)
        bytes = [UInt8](FileManager.default.contents(atPath: config)!)
        #expect(bytes[0x0C] == 0, "golden cache line back")
        #expect(bytes[4] & 0x04 == 0)
    }

    @Test("config accesses of a live function go through /proc/bus/pci's file as Linux names it; a tree other than /sys uses its own config file")
    func configFile() throws {
        #expect(SysfsPCIDevice.procConfigPath(try PCIAddress(parsing: "0000:00:03.0")) == "/proc/bus/pci/00/03.0")
        #expect(SysfsPCIDevice.procConfigPath(try PCIAddress(parsing: "0001:3a:1f.7")) == "/proc/bus/pci/0001:3a/1f.7")
        let (root, config) = try treeWithoutReset()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let dev = try SysfsPCIDevice(root: root, address: try PCIAddress(parsing: "0000:00:06.0"), inMemory: false)
        #expect(dev.configFile == config)
        #expect(try dev.readConfig(0, 4) == 0x100e_8086)
        // This machine's own functions, where it has any: both files give the same bytes.
        let live = (try? listSysfsDevices(root: "/sys")) ?? []
        for a in live.prefix(4) where FileManager.default.fileExists(atPath: SysfsPCIDevice.procConfigPath(a)) {
            let d = try SysfsPCIDevice(root: "/sys", address: a, inMemory: false)
            #expect(d.configFile == SysfsPCIDevice.procConfigPath(a))
            let sysfs = try #require(FileManager.default.contents(atPath: "/sys/bus/pci/devices/\(a)/config"))
            #expect(try d.readConfig(0, 4) == sysfs.prefix(4).enumerated().reduce(0) { $0 | UInt32($1.1) << (8 * UInt32($1.0)) })
        }
    }

    @Test("xen backend: a function no driver holds is enabled in dom0 while claimed (INTx routed to its GSI), disabled at stop")
    func enabledWhileClaimed() throws {
        let (root, _) = try treeWithoutReset()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let dir = root + "/bus/pci/devices/0000:00:06.0"
        try "0\n".write(toFile: dir + "/enable", atomically: false, encoding: .utf8)
        let t = Transcript()
        let hv = MockHypervisor()
        let host = try XenBackendHost(hypervisor: hv.domain(0), topology: .vpci, sysfsRoot: root,
                                      log: Logger(label: "test") { _ in ConsoleLogHandler(console: t.console) })
        try host.claim(hide: "(00:06.0)")
        #expect(try String(contentsOfFile: dir + "/enable", encoding: .utf8).hasPrefix("1"))
        #expect(t.stderr.contains("enabled in dom0 for its interrupt routing (irq 11)"), "\(t.stderr)")
        try host.start()
        host.stop()
        #expect(try String(contentsOfFile: dir + "/enable", encoding: .utf8).hasPrefix("0"))
        #expect(hv.leaks().isEmpty, "\(hv.leaks())")
    }

    @Test("a guest that dies: its devices are released and its backend directory goes (no toolstack is left to remove it)")
    func deadGuestDirectory() throws {
        let t = Transcript()
        let host = try MockHost(source: try DeviceSource.open(q35, kind: .fixtures), topology: .vpci, console: t.console)
        try host.start(hide: "(00:03.0)")
        #expect(host.xenstore(under: "/local/domain/0/backend/pci").contains("/local/domain/0/backend/pci/1"))
        host.hv.destroyDomain(1)
        let end = ContinuousClock.now + .seconds(5)
        while ContinuousClock.now < end, host.xenstore(under: "/local/domain/0/backend/pci").contains("backend/pci/1") { usleep(5000) }
        #expect(!host.xenstore(under: "/local/domain/0/backend/pci").contains("backend/pci/1"), "\(host.xenstore(under: "/local/domain/0/backend/pci"))")
        #expect(host.listing().allSatisfy { $0.guest == nil })
        _ = host.shutdown()
    }

    @Test("--script FIFO: each line is answered before the next one is written")
    func scriptFromFIFO() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("xenpci-fifo-\(getpid())").path
        unlink(path)
        #expect(mkfifo(path, 0o600) == 0)
        defer { unlink(path) }
        let gotFirst = DispatchSemaphore(value: 0)
        let writer = Thread {
            let fd = open(path, O_WRONLY)
            _ = "lspci -n\n".withCString { write(fd, $0, strlen($0)) }
            gotFirst.wait() // the second line only after the first was read
            _ = "read 00:00.0 0 4\n".withCString { write(fd, $0, strlen($0)) }
            close(fd)
        }
        writer.start()
        let input = try LineInput.open(script: path)
        #expect(input.next() == "lspci -n")
        gotFirst.signal()
        #expect(input.next() == "read 00:00.0 0 4")
        #expect(input.next() == nil)
        #expect(input.next() == nil)
    }

    @Test("--help of the command and of a subcommand prints the usage and exits 0", .enabled(if: xenpciBinary != nil, noXenpciBinary))
    func help() throws {
        let exe = try #require(xenpciBinary)
        let r = try run(exe, ["--help"])
        #expect(r.status == 0 && r.stdout.contains("USAGE: xenpci"), "\(r)")
        let b = try run(exe, ["backend", "--help"])
        #expect(b.status == 0 && b.stdout.contains("USAGE: xenpci backend"), "\(b)")
    }
}
