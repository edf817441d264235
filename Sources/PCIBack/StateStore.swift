import Foundation
import PCIModel
import Synchronization

/// What a restarted backend needs and xenstore cannot tell it:
/// per claimed function, the golden state saved at claim (the hardware now
/// holds the guest's changes), whether Xen has its MSI-X table, which guest
/// holds it under which address, and the pirqs mapped for that guest.
public struct PersistedState: Codable, Equatable, Sendable {
    public struct Device: Codable, Equatable, Sendable {
        public var address: String
        /// The configuration space saved at claim, as hex.
        public var golden: String
        public var msixPrepared: Bool
        public var guest: UInt16?
        public var guestAddress: String?
        public var msiPirqs: [UInt32]
        public var msixPirqs: [UInt32]
        public var permissive: Bool
        public var quirks: [String]
    }
    public var version = 1
    /// The boot it was written in (`/proc/sys/kernel/random/boot_id`): a
    /// file from another boot describes no guest running now.
    public var bootID: String?
    public var devices: [Device] = []

    public init(devices: [Device] = [], bootID: String? = PersistedState.currentBootID) {
        self.devices = devices
        self.bootID = bootID
    }

    /// This boot's id, or nil where the kernel has none.
    public static let currentBootID: String? = (try? String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8))
        .map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }

    /// The largest state file read: 256 functions of 4 KiB golden state in
    /// hex is 2 MiB; anything much bigger was not written by us.
    public static let maxFileSize = 8 << 20
}

/// Where the backend keeps its persisted state.
public protocol BackendStateStore: AnyObject, Sendable {
    /// For messages: the file (or "memory").
    var location: String { get }
    /// nil when nothing was saved; throws, naming the file, when it cannot
    /// be read or parsed.
    func load() throws -> PersistedState?
    func save(_ s: PersistedState) throws
}

/// A JSON file written atomically (a temporary file renamed over it), mode
/// 0600 in a directory of mode 0700: the golden state of a device is not a
/// guest's business, nor any other user's.
public final class FileStateStore: BackendStateStore, @unchecked Sendable {
    public let location: String

    public init(path: String) { location = path }

    /// The file's directory must be ours and writable by nobody else:
    /// whoever can write there can replace what a restart trusts.
    private func checkDirectory(_ dir: String) throws {
        var st = stat()
        guard lstat(dir, &st) == 0 else { throw PCIBackError.badState("\(dir): \(String(cString: strerror(errno)))") }
        guard st.st_mode & S_IFMT == S_IFDIR else { throw PCIBackError.badState("\(dir): not a directory (a symbolic link?)") }
        guard st.st_uid == geteuid() else { throw PCIBackError.badState("\(dir): owned by uid \(st.st_uid), not by this process's uid \(geteuid())") }
        guard st.st_mode & 0o022 == 0 else {
            throw PCIBackError.badState("\(dir): writable by others (mode \(String(st.st_mode & 0o7777, radix: 8))); make it 0700")
        }
    }

    public func load() throws -> PersistedState? {
        let dir = (location as NSString).deletingLastPathComponent
        var st = stat()
        guard lstat(location, &st) == 0 else {
            if errno == ENOENT { return nil }
            throw PCIBackError.badState("\(location): \(String(cString: strerror(errno)))")
        }
        try checkDirectory(dir)
        guard st.st_mode & S_IFMT == S_IFREG else { throw PCIBackError.badState("\(location): not a regular file (a symbolic link?)") }
        guard st.st_size <= PersistedState.maxFileSize else {
            throw PCIBackError.badState("\(location): \(st.st_size) bytes, more than a state file's \(PersistedState.maxFileSize)")
        }
        let fd = open(location, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw PCIBackError.badState("\(location): \(String(cString: strerror(errno)))") }
        let handle = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
        guard let data = try? handle.read(upToCount: PersistedState.maxFileSize + 1), data.count <= PersistedState.maxFileSize else {
            throw PCIBackError.badState("\(location): unreadable or larger than \(PersistedState.maxFileSize) bytes")
        }
        do {
            let s = try JSONDecoder().decode(PersistedState.self, from: data)
            guard s.version == 1 else { throw PCIBackError.badState("\(location): version \(s.version), expected 1") }
            return s
        } catch let e as PCIBackError {
            throw e
        } catch {
            throw PCIBackError.badState("\(location): not a xenpci state file (\(error))")
        }
    }

    public func save(_ s: PersistedState) throws {
        let dir = (location as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        try checkDirectory(dir)
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        let data = try enc.encode(s)
        let tmp = location + ".tmp"
        // A new file, never one that is there (a link planted to make us
        // write elsewhere): a leftover is removed (the link, not its target).
        var fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        if fd < 0 && errno == EEXIST, unlink(tmp) == 0 { fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600) }
        guard fd >= 0 else { throw PCIBackError.badState("\(tmp): \(String(cString: strerror(errno)))") }
        let ok = data.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) == $0.count } && fsync(fd) == 0
        close(fd)
        guard ok, rename(tmp, location) == 0 else {
            unlink(tmp)
            throw PCIBackError.badState("\(location): write failed: \(String(cString: strerror(errno)))")
        }
    }
}

/// In memory: tests, and a restart within one process.
public final class MemoryStateStore: BackendStateStore, @unchecked Sendable {
    private let lock = NSLock()
    private var saved: PersistedState?
    public var location: String { "memory" }
    public init() {}
    public func load() throws -> PersistedState? { lock.withLock { saved } }
    public func save(_ s: PersistedState) throws { lock.withLock { saved = s } }
}

extension PersistedState.Device {
    var goldenSpace: ConfigSpace? {
        let hex = Array(golden.utf8)
        guard hex.count % 2 == 0, hex.count == 512 || hex.count == 8192 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(hex.count / 2)
        var i = 0
        while i < hex.count {
            guard let hi = Self.nibble(hex[i]), let lo = Self.nibble(hex[i + 1]) else { return nil }
            bytes.append(hi << 4 | lo)
            i += 2
        }
        return ConfigSpace(bytes: bytes)
    }

    static func hexString(_ c: ConfigSpace) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(c.bytes.count * 2)
        for b in c.bytes { out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 0xF)]) }
        return String(decoding: out, as: UTF8.self)
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        default: return nil
        }
    }
}

/// Writes the state file off the loop. The loop hands over a snapshot
/// after each change; one equal to the last handed over is dropped (a
/// no-op request changes nothing), and while a write runs only the newest
/// snapshot waits, so a burst of changes costs one more write. Without a
/// background writer (the deterministic mode) `flush` writes.
final class StateWriter: Sendable {
    private struct Pending {
        var last: PersistedState?
        var next: PersistedState?
        var writing = false
    }
    private let store: BackendStateStore?
    private let pending = Locked(Pending())
    private let queue: DispatchQueue?
    /// Called on the writer's thread when a write fails.
    nonisolated(unsafe) var failed: (@Sendable (String) -> Void)? // set once, before any save

    init(store: BackendStateStore?, background: Bool) {
        self.store = store
        queue = store != nil && background ? DispatchQueue(label: "pciback.state") : nil
    }

    /// Hands over `s` (from the loop). `force`: written even if unchanged.
    func save(_ s: PersistedState, force: Bool = false) {
        guard store != nil else { return }
        let start = pending.withLock { p -> Bool in
            guard force || s != (p.next ?? p.last) else { return false }
            p.next = s
            if force { p.last = nil }
            guard !p.writing else { return false }
            p.writing = true
            return true
        }
        if start, let queue { queue.async { self.writeAll() } } else if start { pending.withLock { $0.writing = false } }
    }

    /// Writes what waits, on this thread; with a background writer, waits
    /// for it to finish instead.
    func flush() {
        guard store != nil else { return }
        if let queue { queue.sync {}; return }
        writeAll()
    }

    private func writeAll() {
        while let s = pending.withLock({ p -> PersistedState? in
            guard let s = p.next else { p.writing = false; return nil }
            p.next = nil
            p.writing = true
            return s
        }) {
            do {
                try store?.save(s)
                pending.withLock { $0.last = s }
            } catch {
                failed?("\(error)")
            }
        }
    }
}
