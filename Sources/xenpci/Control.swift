import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// struct ucred (SO_PEERCRED), declared here: Glibc exports it only under _GNU_SOURCE.
private struct PeerCredentials { var pid: pid_t = 0; var uid: uid_t = 0; var gid: gid_t = 0 }

/// A `sockaddr_un` for `path`; a leading '@' names an abstract socket (as
/// systemd's NOTIFY_SOCKET may).
private func unixAddress(_ path: String) throws -> (sockaddr_un, socklen_t) {
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    var bytes = Array(path.utf8)
    let abstract = bytes.first == UInt8(ascii: "@")
    if abstract { bytes[0] = 0 }
    let cap = MemoryLayout.size(ofValue: addr.sun_path)
    guard !bytes.isEmpty, bytes.count < cap else { throw CLIError.usage("socket path '\(path)' is empty or longer than \(cap - 1) bytes") }
    withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: bytes) }
    let len = MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path)! + bytes.count + (abstract ? 0 : 1)
    return (addr, socklen_t(len))
}

private func withSockaddr<T>(_ a: inout sockaddr_un, _ body: (UnsafePointer<sockaddr>) -> T) -> T {
    withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1, body) }
}

private func setTimeout(_ fd: Int32, _ option: Int32, _ d: Duration) {
    var tv = timeval(tv_sec: Int(d.components.seconds), tv_usec: Int(d.components.attoseconds / 1_000_000_000_000))
    setsockopt(fd, SOL_SOCKET, option, &tv, socklen_t(MemoryLayout<timeval>.size))
}

/// Writes all of `data`; false when the peer is gone or too slow (SO_SNDTIMEO).
private func sendAll(_ fd: Int32, _ data: [UInt8]) -> Bool {
    var off = 0
    while off < data.count {
        let n = data[off...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { return false }
        off += n
    }
    return true
}

private func encodeReply(_ r: ControlReply) -> [UInt8] {
    let e = JSONEncoder()
    e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    return Array(((try? e.encode(r)) ?? Data(#"{"ok":false,"error":"reply not encodable","status":70}"#.utf8))) + [0x0A]
}

/// The daemon's control socket (xenpci(8), CONTROL SOCKET): a UNIX stream
/// socket, one request line in, one JSON line out, then the connection
/// closes. Each client is read and answered on a thread of its own, so a
/// silent or slow one delays no other; it has `clientTimeout` to send its
/// line and take its reply and `maxRequest` bytes for it, and at most
/// `maxClients` are served at once (the rest are told the daemon is busy).
/// The commands themselves still run one at a time (the daemon's lock), and
/// none of this reaches the backend's service thread.
final class ControlServer: @unchecked Sendable {
    static let defaultPath = "/run/xenpci/control"
    static let maxRequest = 4096
    static let clientTimeout: Duration = .seconds(2)
    static let maxClients = 32

    let path: String
    /// Peers allowed in (SO_PEERCRED): root, and the daemon's own user
    /// (which is root on a dom0).
    let allowedUIDs: Set<uid_t>
    private let fd: Int32
    private var wake: [Int32] = [-1, -1]
    private var thread: Thread?
    private let finished = DispatchSemaphore(value: 0)
    /// Client threads still running; `stop` waits for them.
    private let clients = DispatchGroup()
    private let countLock = NSLock()
    private var active = 0
    private let handler: (String) -> ControlReply
    private let tick: () -> Void

    /// Binds the socket (directory 0700 when created or the default one,
    /// socket 0600). Refused when another backend answers on `path`.
    init(path: String, allowedUIDs: Set<uid_t> = [0, geteuid()], handler: @escaping (String) -> ControlReply, tick: @escaping () -> Void = {}) throws {
        self.path = path
        self.allowedUIDs = allowedUIDs
        self.handler = handler
        self.tick = tick
        let dir = (path as NSString).deletingLastPathComponent
        let fm = FileManager.default
        if !dir.isEmpty && !fm.fileExists(atPath: dir) {
            do { try fm.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700]) } catch {
                throw CLIError.permission("control socket: cannot create \(dir): \(error.localizedDescription)")
            }
            chmod(dir, 0o700)
        } else if path == Self.defaultPath {
            chmod(dir, 0o700)
        }
        var (addr, len) = try unixAddress(path)
        var st = stat()
        if lstat(path, &st) == 0 {
            guard st.st_mode & S_IFMT == S_IFSOCK else { throw CLIError.failure("control socket: \(path) exists and is not a socket") }
            if (try? ControlClient.connect(path)).map({ close($0); return true }) == true {
                throw CLIError.failure("control socket: another xenpci backend serves \(path)")
            }
            unlink(path) // left by a backend that died
        }
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw CLIError.failure("control socket: socket: \(String(cString: strerror(errno)))") }
        // Bound in a 0700 directory (the default), so the moment before chmod is private.
        guard withSockaddr(&addr, { bind(fd, $0, len) }) == 0, chmod(path, 0o600) == 0, listen(fd, 16) == 0 else {
            let why = String(cString: strerror(errno))
            close(fd)
            throw CLIError.permission("control socket: cannot serve \(path): \(why)")
        }
        guard pipe(&wake) == 0 else { close(fd); unlink(path); throw CLIError.failure("control socket: pipe: \(String(cString: strerror(errno)))") }
    }

    func start() {
        let t = Thread { [self] in run() }
        t.name = "xenpci-control"
        thread = t
        t.start()
    }

    /// Stops serving and removes the socket.
    func stop() {
        if thread != nil {
            var b: UInt8 = 1
            _ = write(wake[1], &b, 1)
            finished.wait()
            thread = nil
        }
        close(fd)
        close(wake[0]); close(wake[1])
        unlink(path)
    }

    private func run() {
        var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: wake[0], events: Int16(POLLIN), revents: 0)]
        var lastTick = ContinuousClock.now
        while true {
            let r = poll(&fds, 2, 1000)
            if fds[1].revents != 0 { break }
            if ContinuousClock.now - lastTick >= .seconds(1) {
                tick()
                lastTick = .now
            }
            guard r > 0, fds[0].revents & Int16(POLLIN) != 0 else { continue }
            let c = accept(fd, nil, nil) // accept4 is not in Glibc's Swift module
            guard c >= 0 else { continue }
            _ = fcntl(c, F_SETFD, FD_CLOEXEC)
            countLock.lock()
            let admitted = active < Self.maxClients
            if admitted { active += 1 }
            countLock.unlock()
            guard admitted else {
                setTimeout(c, SO_SNDTIMEO, .milliseconds(100))
                _ = sendAll(c, encodeReply(ControlReply(ok: false, error: "the backend is busy: \(Self.maxClients) clients are connected; try again", status: CLIError.unavailable)))
                close(c)
                continue
            }
            clients.enter()
            let t = Thread { [self] in
                serve(c)
                close(c)
                countLock.lock(); active -= 1; countLock.unlock()
                clients.leave()
            }
            t.name = "xenpci-client"
            t.start()
        }
        // A command in progress finishes (and answers) before the daemon goes.
        clients.wait()
        finished.signal()
    }

    private func serve(_ c: Int32) {
        setTimeout(c, SO_SNDTIMEO, Self.clientTimeout)
        var cred = PeerCredentials()
        var len = socklen_t(MemoryLayout<PeerCredentials>.size)
        guard getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 else { return }
        guard allowedUIDs.contains(cred.uid) else {
            _ = sendAll(c, encodeReply(ControlReply(ok: false, error: "permission denied: uid \(cred.uid) may not use \(path) (root only)", status: CLIError.noPerm)))
            return
        }
        guard let line = readRequest(c) else { return }
        _ = sendAll(c, encodeReply(line.map(handler) ?? ControlReply(ok: false, error: "request longer than \(Self.maxRequest) bytes or not printable ASCII", status: CLIError.usageStatus)))
    }

    /// The request line; nil when the client sent none in time (it gets no
    /// reply); .some(nil) when it is too long or not ASCII text.
    private func readRequest(_ c: Int32) -> String?? {
        let deadline = ContinuousClock.now + Self.clientTimeout
        var buf: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1024)
        while !buf.contains(0x0A) {
            let left = ContinuousClock.now.duration(to: deadline)
            guard left > .zero else { return nil }
            var p = pollfd(fd: c, events: Int16(POLLIN), revents: 0)
            let ms = Int32(left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000 + 1)
            guard poll(&p, 1, ms) > 0 else { return nil }
            let n = read(c, &chunk, chunk.count)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { break } // EOF: what came is the line
            buf += chunk[..<n]
            if buf.count > Self.maxRequest { return .some(nil) }
        }
        guard !buf.isEmpty else { return nil }
        var line = Array(buf.prefix { $0 != 0x0A })
        if line.last == 0x0D { line.removeLast() }
        guard line.count <= Self.maxRequest, line.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) else { return .some(nil) }
        return .some(String(decoding: line, as: UTF8.self))
    }
}

/// The client side: `xenpci assignable-add` and the other control commands.
enum ControlClient {
    /// A connected socket; the errors say whether a daemon is running.
    static func connect(_ path: String) throws -> Int32 {
        var (addr, len) = try unixAddress(path)
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { throw CLIError.failure("socket: \(String(cString: strerror(errno)))") }
        if withSockaddr(&addr, { Glibc.connect(s, $0, len) }) != 0 {
            let e = errno
            close(s)
            switch e {
            case ENOENT: throw CLIError(message: "xenpci backend is not running (no \(path))", status: CLIError.unavailable)
            case ECONNREFUSED: throw CLIError(message: "xenpci backend is not running (nothing listens on \(path))", status: CLIError.unavailable)
            case EACCES, EPERM: throw CLIError.permission("\(path): permission denied (the control socket is root's)")
            default: throw CLIError.failure("\(path): \(String(cString: strerror(e)))")
            }
        }
        return s
    }

    /// How long a client waits for the reply to `line`: commands that claim
    /// or release reset hardware, which can take seconds each; the rest
    /// answer at once unless the daemon is stopped or stuck.
    static func timeout(for line: String) -> Duration {
        let verb = line.split(separator: " ").first.map(String.init) ?? ""
        return ["assignable-add", "assignable-remove", "reload"].contains(verb) ? .seconds(120) : .seconds(10)
    }

    /// Sends one request, returns the reply; a refusal is thrown as the
    /// daemon worded it, with its exit status.
    static func request(_ path: String, _ line: String, timeout: Duration? = nil) throws -> ControlReply {
        let timeout = timeout ?? Self.timeout(for: line)
        let verb = line.split(separator: " ").first.map(String.init) ?? line
        let s = try connect(path)
        defer { close(s) }
        setTimeout(s, SO_RCVTIMEO, timeout)
        setTimeout(s, SO_SNDTIMEO, timeout)
        // A refusal (a peer not allowed) may come, and the connection close,
        // before the request is written: the reply is read either way.
        let sent = sendAll(s, Array((line + "\n").utf8))
        var buf: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while !buf.contains(0x0A) {
            let n = read(s, &chunk, chunk.count)
            if n < 0 && errno == EINTR { continue }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                throw CLIError(message: "\(path): the xenpci backend did not answer '\(verb)' within \(humanDuration(timeout)) (stopped, or stuck in a command; see its log)",
                               status: CLIError.unavailable)
            }
            guard n > 0 else { break }
            buf += chunk[..<n]
        }
        guard let r = try? JSONDecoder().decode(ControlReply.self, from: Data(buf.prefix { $0 != 0x0A })) else {
            throw CLIError.failure(sent ? "\(path): the backend's reply is not one JSON line" : "\(path): the backend closed the connection")
        }
        guard r.ok else { throw CLIError(message: r.error ?? "refused", status: r.status ?? CLIError.failed) }
        return r
    }
}

/// sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET
/// ("READY=1", "RELOADING=1", "STOPPING=1", "STATUS=..."). Nothing without it.
func sdNotify(_ state: String) {
    guard let p = ProcessInfo.processInfo.environment["NOTIFY_SOCKET"], !p.isEmpty,
          let (a0, len) = try? unixAddress(p) else { return }
    var addr = a0
    let s = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard s >= 0 else { return }
    defer { close(s) }
    _ = withSockaddr(&addr) { a in state.withCString { sendto(s, $0, strlen($0), Int32(MSG_NOSIGNAL), a, len) } }
}
