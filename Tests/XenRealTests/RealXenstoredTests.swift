import Foundation
import Testing
import XenToolstack
@testable import XenReal
import XenHypervisor
import XenPCIABI
import PCIModel

/// XenStoreConnection against a real xenstored (Xen 4.17's C daemon, run
/// without a hypervisor by tools/xenstored-test). Our connections come in
/// over the Unix socket, so xenstored treats them as dom0.
/// ThreadSanitizer aborts the process when libxenstore (not instrumented,
/// loaded with dlopen) ends its own watch-reader thread; `make sanitize`
/// says which sanitizer runs.
let underThreadSanitizer = ProcessInfo.processInfo.environment["XENPCI_SANITIZER"] == "thread"

@Suite("XenStoreConnection against a real xenstored", .serialized,
       .disabled(if: underThreadSanitizer, "ThreadSanitizer cannot follow libxenstore's uninstrumented watch thread"))
struct RealXenstoredTests {
    /// A fresh subtree per test.
    let base = "/test/\(UUID().uuidString.prefix(8))"

    @Test("read, write, mkdir, directory, remove, errors as errno")
    func basics() throws {
        let xs = try Xenstored.shared.connect()
        defer { xs.close() }
        try xs.write(base + "/a", "hello")
        try xs.write(base + "/b/c", "")
        try xs.mkdir(base + "/d")
        #expect(try xs.read(base + "/a") == "hello")
        #expect(try xs.read(base + "/b/c") == "")
        #expect(try xs.directory(base).sorted() == ["a", "b", "d"])
        #expect(errnoOf { _ = try xs.read(base + "/nope") } == ENOENT)
        #expect(try xs.readIfPresent(base + "/nope") == nil)
        try xs.write(base + "/utf8", "é ✓")
        #expect(try xs.read(base + "/utf8") == "é ✓")
        try xs.remove(base + "/b")
        #expect(try xs.directory(base).sorted() == ["a", "d", "utf8"])
        #expect(try xs.domainPath(0) == "/local/domain/0")
        try xs.remove(base)
        #expect(errnoOf { _ = try xs.directory(base) } == ENOENT)
    }

    @Test("permissions: owner first, guests listed; children inherit")
    func permissions() throws {
        let xs = try Xenstored.shared.connect()
        defer { xs.close() }
        try xs.mkdir(base + "/be")
        let perms = [XenstorePermission(0, .none), XenstorePermission(5, .read), XenstorePermission(7, .both)]
        try xs.setPermissions(base + "/be", perms)
        #expect(try xs.permissions(base + "/be") == perms)
        try xs.write(base + "/be/state", "1")
        #expect(try xs.permissions(base + "/be/state") == perms)
        try xs.setPermissions(base + "/be/state", [XenstorePermission(5, .write)])
        #expect(try xs.permissions(base + "/be/state") == [XenstorePermission(5, .write)])
        #expect(errnoOf { try xs.setPermissions(base + "/missing", perms) } == ENOENT)
        try xs.remove(base)
    }

    @Test("transactions: commit, abort, and EAGAIN when a read node changed meanwhile")
    func transactions() throws {
        let xs = try Xenstored.shared.connect()
        let other = try Xenstored.shared.connect()
        defer { xs.close(); other.close() }
        try xs.write(base + "/x", "0")

        let t = try xs.transactionStart()
        #expect(try xs.read(base + "/x", transaction: t) == "0")
        try xs.write(base + "/x", "1", transaction: t)
        #expect(try other.read(base + "/x") == "0")
        try xs.transactionEnd(t, abort: false)
        #expect(try other.read(base + "/x") == "1")

        let a = try xs.transactionStart()
        try xs.write(base + "/y", "aborted", transaction: a)
        try xs.transactionEnd(a, abort: true)
        #expect(try xs.readIfPresent(base + "/y") == nil)

        let c = try xs.transactionStart()
        #expect(try xs.read(base + "/x", transaction: c) == "1")
        try other.write(base + "/x", "2")
        try xs.write(base + "/x", "3", transaction: c)
        do {
            try xs.transactionEnd(c, abort: false)
            Issue.record("a conflicting commit succeeded")
        } catch let e as XenError {
            #expect(e.isRetry, "\(e)")
            #expect(e.description.contains("EAGAIN"))
        }
        #expect(try xs.read(base + "/x") == "2")

        // The retrying helper: the first attempt conflicts, the second commits.
        var attempts = 0
        try xs.transaction { t in
            attempts += 1
            let v = Int(try xs.read(base + "/x", transaction: t))!
            if attempts == 1 { try other.write(base + "/x", "10") }
            try xs.write(base + "/x", String(v + 1), transaction: t)
        }
        #expect(attempts == 2)
        #expect(try xs.read(base + "/x") == "11")
        try xs.remove(base)
    }

    @Test("watches: the initial event, subtree events through the fd, unwatch drops queued events")
    func watches() throws {
        let xs = try Xenstored.shared.connect()
        let other = try Xenstored.shared.connect()
        defer { xs.close(); other.close() }
        try xs.mkdir(base + "/w")
        try xs.watch(base + "/w", token: "tok")
        #expect(try xs.waitWatchEvent(timeout: .seconds(5)) == XenstoreWatchEvent(path: base + "/w", token: "tok"))
        #expect(xs.nextWatchEvent() == nil)
        #expect(try !pollReadable(xs.fileDescriptor, timeout: .milliseconds(50)))

        try other.write(base + "/w/state", "4")
        #expect(try pollReadable(xs.fileDescriptor, timeout: .seconds(5)))
        #expect(xs.nextWatchEvent() == XenstoreWatchEvent(path: base + "/w/state", token: "tok"))
        try other.write(base + "/sibling", "x")
        #expect(try xs.waitWatchEvent(timeout: .milliseconds(200)) == nil)

        try other.write(base + "/w/a", "1")
        try other.write(base + "/w/b", "2")
        // Both events are in libxenstore's queue once the second has arrived.
        #expect(try pollReadable(xs.fileDescriptor, timeout: .seconds(5)), "the watch events arrive")
        Thread.sleep(forTimeInterval: 0.1)
        try xs.unwatch(base + "/w", token: "tok")
        #expect(xs.nextWatchEvent() == nil)
        #expect(errnoOf { try xs.unwatch(base + "/w", token: "tok") } == ENOENT)
        try xs.remove(base)
    }

    @Test("a closed connection refuses calls with EBADF")
    func closed() throws {
        let xs = try Xenstored.shared.connect()
        xs.close()
        #expect(errnoOf { _ = try xs.read("/tool") } == EBADF)
        #expect(xs.nextWatchEvent() == nil)
        xs.close()
    }

    @Test("the toolstack creates the PCI backend and frontend directories on a real xenstored")
    func toolstackOnRealXenstored() throws {
        let xs = try Xenstored.shared.connect()
        defer { xs.close() }
        let guest: DomID = 11
        try xs.write("/local/domain/\(guest)/name", "realguest")
        try xs.write("/local/domain/\(guest)/domid", "\(guest)")
        let ts = XenToolstack(xenstore: xs, permissions: nil)
        let dev = PCIAddress(bus: 3, device: 0, function: 0)
        #expect(try ts.attach(domid: guest, devices: [dev]) == .created)
        let be = XenToolstack.backendPath(backend: 0, guest: guest)
        let fe = XenToolstack.frontendPath(guest: guest)
        #expect(try xs.read(be + "/dev-0") == "0000:03:00.0")
        #expect(try xs.read(be + "/domain") == "realguest")
        #expect(try xs.permissions(be) == [XenstorePermission(0, .none), XenstorePermission(guest, .read)])
        #expect(try xs.permissions(be + "/num_devs") == [XenstorePermission(0, .none), XenstorePermission(guest, .read)])
        #expect(try xs.permissions(fe) == [XenstorePermission(guest, .none), XenstorePermission(0, .read)])
        #expect(try xs.permissions(fe + "/state") == [XenstorePermission(guest, .none), XenstorePermission(0, .read)])
        #expect(try xs.read(fe + "/backend") == be)
        try xs.remove("/local/domain/\(guest)")
        try xs.remove("/local/domain/0/backend/pci/\(guest)")
    }
}
