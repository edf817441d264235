import Foundation
import Testing
import XenMock
import XenHypervisor

/// Dom0, a guest, and a second guest on a fresh mock.
struct World {
    let hv = MockHypervisor()
    let dom0: MockDomain
    let guest: MockDomain
    let other: MockDomain
    init() {
        dom0 = hv.domain(0)
        guest = hv.domain(1)
        other = hv.domain(2)
    }
}

func errno(of body: () throws -> Void) -> Int32? {
    do { try body(); return nil } catch let e as XenError { return e.code } catch { return -1 }
}

@Suite("Mock xenstore: watches")
struct WatchTests {
    @Test("a watch fires at once, then on its node and on its subtree, not on siblings")
    func subtree() throws {
        let w = World()
        let xs = try w.dom0.openXenStore()
        defer { xs.close() }
        try xs.watch("/local/domain/0/backend/pci", token: "be")
        #expect(xs.nextWatchEvent() == XenstoreWatchEvent(path: "/local/domain/0/backend/pci", token: "be"))
        #expect(xs.nextWatchEvent() == nil)
        try xs.write("/local/domain/0/backend/pci/1/0/state", "1")
        try xs.write("/local/domain/0/backend/pcix", "sibling, not a child")
        #expect(xs.nextWatchEvent()?.path == "/local/domain/0/backend/pci/1/0/state")
        #expect(xs.nextWatchEvent() == nil, "a sibling prefix must not fire")
        try xs.unwatch("/local/domain/0/backend/pci", token: "be")
        try xs.write("/local/domain/0/backend/pci/1/0/state", "2")
        #expect(xs.nextWatchEvent() == nil)
    }

    @Test("the watch fd is readable exactly while events are queued")
    func fileDescriptor() throws {
        let w = World()
        let xs = try w.dom0.openXenStore()
        defer { xs.close() }
        try xs.watch("/a", token: "t")
        #expect(try pollReadable(xs.fileDescriptor, timeout: .zero))
        _ = xs.nextWatchEvent()
        #expect(try !pollReadable(xs.fileDescriptor, timeout: .milliseconds(10)))
        let t = Thread { usleep(20_000); try? w.dom0.openXenStore().write("/a/b", "x") }
        t.start()
        #expect(try xs.waitWatchEvent(timeout: .seconds(5))?.path == "/a/b")
        #expect(try xs.waitWatchEvent(timeout: .milliseconds(20)) == nil)
    }

    @Test("removing a parent fires watches on the removed children with their own path")
    func removal() throws {
        let w = World()
        let xs = try w.dom0.openXenStore()
        defer { xs.close() }
        try xs.write("/x/y/z", "1")
        try xs.watch("/x/y/z", token: "deep")
        try xs.watch("/x", token: "top")
        while xs.nextWatchEvent() != nil {}
        try xs.remove("/x/y")
        var got: [XenstoreWatchEvent] = []
        while let e = xs.nextWatchEvent() { got.append(e) }
        #expect(got.contains(XenstoreWatchEvent(path: "/x/y/z", token: "deep")))
        #expect(got.contains(XenstoreWatchEvent(path: "/x/y", token: "top")))
        #expect(throws: XenError(ENOENT, "")) { try xs.read("/x/y/z") }
    }

    @Test("a guest is not told about nodes it cannot read")
    func permissionFiltered() throws {
        let w = World()
        let be = try w.dom0.openXenStore(), fe = try w.guest.openXenStore()
        defer { be.close(); fe.close() }
        try be.mkdir("/secret")
        try be.setPermissions("/secret", [XenstorePermission(0, .none)])
        try fe.watch("/secret", token: "t")
        while fe.nextWatchEvent() != nil {}
        try be.write("/secret/key", "v")
        #expect(fe.nextWatchEvent() == nil)
        try be.setPermissions("/secret", [XenstorePermission(0, .none), XenstorePermission(1, .read)])
        #expect(fe.nextWatchEvent()?.path == "/secret")
    }

    @Test("@releaseDomain fires when a domain is destroyed, and its home is gone")
    func releaseDomain() throws {
        let w = World()
        let xs = try w.dom0.openXenStore()
        defer { xs.close() }
        try xs.watch("@releaseDomain", token: "rel")
        _ = xs.nextWatchEvent()
        w.hv.destroyDomain(2)
        var paths: [String] = []
        while let e = xs.nextWatchEvent() { paths.append(e.path) }
        #expect(paths.contains("@releaseDomain"))
        #expect(try xs.readIfPresent("/local/domain/2/name") == nil)
    }
}

@Suite("Mock xenstore: transactions")
struct TransactionTests {
    @Test("writes in a transaction are invisible until commit, then fire watches")
    func isolation() throws {
        let w = World()
        let a = try w.dom0.openXenStore(), b = try w.dom0.openXenStore()
        defer { a.close(); b.close() }
        try b.watch("/t", token: "w")
        #expect(b.nextWatchEvent()?.path == "/t", "a new watch fires once at once, as xenstored's do")
        let t = try a.transactionStart()
        try a.write("/t/k", "1", transaction: t)
        #expect(try a.read("/t/k", transaction: t) == "1")
        #expect(try b.readIfPresent("/t/k") == nil)
        #expect(b.nextWatchEvent() == nil)
        try a.transactionEnd(t, abort: false)
        #expect(try b.read("/t/k") == "1")
        #expect(b.nextWatchEvent()?.path == "/t/k")
    }

    @Test("a conflicting commit fails with EAGAIN and changes nothing")
    func conflict() throws {
        let w = World()
        let a = try w.dom0.openXenStore(), b = try w.dom0.openXenStore()
        defer { a.close(); b.close() }
        try a.write("/c/n", "0")
        let t = try a.transactionStart()
        #expect(try a.read("/c/n", transaction: t) == "0")
        try a.write("/c/m", "mine", transaction: t)
        try b.write("/c/n", "theirs")
        #expect(errno { try a.transactionEnd(t, abort: false) } == EAGAIN)
        #expect(try a.readIfPresent("/c/m") == nil)
        #expect(!w.hv.leaks().contains { $0.contains("transaction") }, "a failed transaction is closed: \(w.hv.leaks())")
    }

    @Test("the retry helper re-runs the body after EAGAIN and commits once")
    func retry() throws {
        let w = World()
        let a = try w.dom0.openXenStore(), b = try w.dom0.openXenStore()
        defer { a.close(); b.close() }
        try a.write("/r/n", "0")
        var runs = 0
        try a.transaction { t in
            runs += 1
            let n = Int(try a.read("/r/n", transaction: t))!
            if runs == 1 { try b.write("/r/n", "10") } // someone else gets in between
            try a.write("/r/n", String(n + 1), transaction: t)
        }
        #expect(runs == 2)
        #expect(try a.read("/r/n") == "11")
    }

    @Test("abort discards, and an injected EAGAIN is retried by the helper")
    func abortAndInjected() throws {
        let w = World()
        let a = try w.dom0.openXenStore()
        defer { a.close() }
        let t = try a.transactionStart()
        try a.write("/ab", "x", transaction: t)
        try a.transactionEnd(t, abort: true)
        #expect(try a.readIfPresent("/ab") == nil)
        w.hv.faults.fail(.xsTransactionEnd, errno: EAGAIN)
        var runs = 0
        try a.transaction { t in runs += 1; try a.write("/ab", "y", transaction: t) }
        #expect(runs == 2)
        #expect(try a.read("/ab") == "y")
    }
}

@Suite("Mock xenstore: permissions")
struct PermissionTests {
    /// The backend directory as libxl makes it: owned by dom0, readable by the guest.
    static func backendDir(_ xs: XenStore) throws -> String {
        let dir = "/local/domain/0/backend/pci/1/0"
        try xs.write(dir + "/state", "1")
        try xs.setPermissions(dir, [XenstorePermission(0, .none), XenstorePermission(1, .read)])
        try xs.setPermissions(dir + "/state", [XenstorePermission(0, .none), XenstorePermission(1, .read)])
        return dir
    }

    @Test("a guest cannot write the backend's directory but can read it")
    func guestCannotWriteBackend() throws {
        let w = World()
        let be = try w.dom0.openXenStore(), fe = try w.guest.openXenStore(), other = try w.other.openXenStore()
        defer { be.close(); fe.close(); other.close() }
        let dir = try Self.backendDir(be)
        #expect(try fe.read(dir + "/state") == "1")
        #expect(errno { try fe.write(dir + "/state", "4") } == EACCES)
        #expect(errno { try fe.write(dir + "/new", "x") } == EACCES)
        #expect(errno { try fe.remove(dir + "/state") } == EACCES)
        #expect(errno { try fe.setPermissions(dir, [XenstorePermission(1, .both)]) } == EACCES)
        #expect(errno { _ = try other.read(dir + "/state") } == EACCES, "another guest cannot even read it")
        #expect(try be.read(dir + "/state") == "1")
    }

    @Test("a guest owns what it creates in its device directory; dom0 reads everything")
    func guestOwnsItsNodes() throws {
        let w = World()
        let be = try w.dom0.openXenStore(), fe = try w.guest.openXenStore(), other = try w.other.openXenStore()
        defer { be.close(); fe.close(); other.close() }
        try fe.write("device/pci/0/magic", "7")
        #expect(try fe.permissions("/local/domain/1/device/pci/0/magic").first == XenstorePermission(1, .none))
        #expect(try be.read("/local/domain/1/device/pci/0/magic") == "7")
        #expect(errno { _ = try other.read("/local/domain/1/device/pci/0/magic") } == EACCES)
        #expect(errno { try fe.write("/local/domain/1/name", "evil") } == EACCES, "the guest cannot rename itself")
        #expect(errno { try fe.write("/local/domain/2/device/x", "y") } == EACCES)
    }

    @Test("bad paths and values are refused with EINVAL / E2BIG naming the path")
    func badPaths() throws {
        let w = World()
        let xs = try w.dom0.openXenStore()
        defer { xs.close() }
        for p in ["/a//b", "/a/", "/a b", "/a/ü"] {
            #expect(throws: XenError.self) { try xs.write(p, "v") }
            do { try xs.write(p, "v") } catch let e as XenError { #expect(e.code == EINVAL && "\(e)".contains(p)) }
        }
        #expect(errno { try xs.write("/big", String(repeating: "x", count: 4097)) } == E2BIG)
        #expect(errno { try xs.remove("/") } == EINVAL)
    }
}

@Suite("Mock grants")
struct GrantTests {
    @Test("mapping a grant gives the very memory the guest shared")
    func sameMemory() throws {
        let w = World()
        let gs = try w.guest.openGrantSharing(), gt = try w.dom0.openGrantTable()
        let g = try gs.share(with: 0, writable: true)
        #expect((0..<4096).allSatisfy { g.address.load(fromByteOffset: $0, as: UInt8.self) == 0 }, "shared pages start zeroed")
        g.address.storeBytes(of: 0xCAFE_F00D as UInt32, as: UInt32.self)
        let m = try gt.map(domain: 1, ref: g.ref, writable: true)
        #expect(m.address.load(as: UInt32.self) == 0xCAFE_F00D)
        m.address.storeBytes(of: 7 as UInt32, toByteOffset: 8, as: UInt32.self)
        #expect(g.address.load(fromByteOffset: 8, as: UInt32.self) == 7)
        try gt.unmap(m)
        try gs.endAccess(g)
        gs.close(); gt.close()
        #expect(w.hv.leaks().isEmpty)
    }

    @Test("only the grantee may map, read-only grants refuse writable maps, unknown refs fail")
    func refusals() throws {
        let w = World()
        let gs = try w.guest.openGrantSharing(), gt0 = try w.dom0.openGrantTable(), gt2 = try w.other.openGrantTable()
        defer { gs.close(); gt0.close(); gt2.close() }
        let g = try gs.share(with: 0, writable: false)
        #expect(errno { _ = try gt2.map(domain: 1, ref: g.ref, writable: false) } == EPERM)
        #expect(errno { _ = try gt0.map(domain: 1, ref: g.ref, writable: true) } == EPERM)
        #expect(errno { _ = try gt0.map(domain: 1, ref: g.ref + 100, writable: false) } == EINVAL)
        let m = try gt0.map(domain: 1, ref: g.ref, writable: false)
        try gt0.unmap(m)
        #expect(errno { try gt0.unmap(m) } == EINVAL, "double unmap is an error, never a second release")
        try gs.endAccess(g)
        #expect(errno { _ = try gt0.map(domain: 1, ref: g.ref, writable: false) } == EINVAL, "an ended grant cannot be mapped")
    }

    @Test("ending access while mapped defers the free; the leak check shows the mapping")
    func deferredEnd() throws {
        let w = World()
        let gs = try w.guest.openGrantSharing(), gt = try w.dom0.openGrantTable()
        let g = try gs.share(with: 0, writable: true)
        let m = try gt.map(domain: 1, ref: g.ref, writable: true)
        try gs.endAccess(g)
        m.address.storeBytes(of: 1 as UInt32, as: UInt32.self) // still valid memory
        gs.close()
        let leaks = w.hv.leaks()
        #expect(leaks.contains { $0.contains("ended but still mapped") })
        #expect(leaks.contains { $0.contains("grant mapping") })
        gt.close()
        #expect(w.hv.leaks().isEmpty, "closing the gnttab handle unmaps: \(w.hv.leaks())")
    }
}

@Suite("Mock event channels")
struct EventTests {
    /// Guest allocates unbound for dom0; dom0 binds.
    static func pair(_ w: World) throws -> (EventChannels, EvtchnPort, EventChannels, EvtchnPort) {
        let fe = try w.guest.openEventChannels()
        let be: EventChannels
        do { be = try w.dom0.openEventChannels() } catch { fe.close(); throw error }
        do {
            let fp = try fe.allocateUnbound(remote: 0)
            let bp = try be.bindInterdomain(remote: 1, remotePort: fp)
            return (fe, fp, be, bp)
        } catch {
            fe.close(); be.close()
            throw error
        }
    }

    @Test("notify delivers to the peer port; the port stays masked until unmask")
    func deliverAndMask() throws {
        let w = World()
        let (fe, fp, be, bp) = try Self.pair(w)
        try fe.notify(fp)
        #expect(try be.wait(timeout: .seconds(1)) == bp)
        try fe.notify(fp)
        try fe.notify(fp)
        #expect(try be.pending() == nil, "masked: nothing delivered before unmask")
        try be.unmask(bp)
        #expect(try be.pending() == bp, "pending while masked is delivered on unmask, coalesced to one")
        #expect(try be.pending() == nil)
        try be.unmask(bp)
        try be.notify(bp)
        #expect(try fe.wait(timeout: .seconds(1)) == fp)
        fe.close(); be.close()
        #expect(w.hv.leaks().isEmpty)
    }

    @Test("the port fd is readable exactly while ports are queued, also when a notify's write lands after its port was taken")
    func descriptorFollowsQueue() throws {
        let w = World()
        let (fe, fp, be, bp) = try Self.pair(w)
        defer { fe.close(); be.close() }
        try fe.notify(fp)
        #expect(try pollReadable(be.fileDescriptor, timeout: .zero), "readable once notify returns")
        #expect(try be.pending() == bp)
        #expect(try !pollReadable(be.fileDescriptor, timeout: .zero), "not readable once the queue is empty")
        try be.unmask(bp)
        // The eventfd is written after the mock's lock is released, so a
        // taker spinning on pending() can have the port before the write
        // lands, and the descriptor turns readable with nothing queued. Once
        // the notify has returned, a pending() that finds the queue empty
        // must leave the descriptor unreadable. Round by round:
        let rounds = 10_000
        let go = DispatchSemaphore(value: 0), returned = DispatchSemaphore(value: 0)
        let t = Thread {
            for _ in 0..<rounds { go.wait(); try? fe.notify(fp); returned.signal() }
        }
        t.start()
        var stuckReadable = 0
        for _ in 0..<rounds {
            go.signal()
            while try be.pending() == nil {}
            returned.wait()
            #expect(try be.pending() == nil)
            if try pollReadable(be.fileDescriptor, timeout: .zero) { stuckReadable += 1 }
            try be.unmask(bp)
        }
        #expect(stuckReadable == 0, "rounds left readable with nothing queued")
        try fe.notify(fp)
        #expect(try be.wait(timeout: .seconds(5)) == bp, "and the next notify still wakes a waiter")
    }

    @Test("pendingBatch takes up to max ports in order, each masked until unmask; the fd stays readable while any is left")
    func batch() throws {
        let w = World()
        let (fe, fp, be, bp) = try Self.pair(w)
        defer { fe.close(); be.close() }
        let fp2 = try fe.allocateUnbound(remote: 0)
        let bp2 = try be.bindInterdomain(remote: 1, remotePort: fp2)
        #expect(try be.pendingBatch(max: 4) == [], "nothing pending")
        try fe.notify(fp)
        try fe.notify(fp2)
        #expect(try be.pendingBatch(max: 0) == [])
        #expect(try be.pendingBatch(max: 1) == [bp])
        #expect(try pollReadable(be.fileDescriptor, timeout: .zero), "one port left")
        try fe.notify(fp) // masked: recorded, not queued
        #expect(try be.pendingBatch(max: 8) == [bp2])
        #expect(try !pollReadable(be.fileDescriptor, timeout: .zero))
        try be.unmask(bp)
        #expect(try be.pendingBatch(max: 8) == [bp], "the notify made while masked, delivered on unmask")
        try be.unmask(bp); try be.unmask(bp2)
        be.close()
        #expect(errno { _ = try be.pendingBatch(max: 1) } == EBADF)
    }

    @Test("wait times out; binding the wrong domain or port fails; unbind leaves the peer unbound")
    func errorsAndUnbind() throws {
        let w = World()
        let (fe, fp, be, bp) = try Self.pair(w)
        defer { fe.close(); be.close() }
        #expect(try be.wait(timeout: .milliseconds(20)) == nil)
        let other = try w.other.openEventChannels()
        defer { other.close() }
        let p = try fe.allocateUnbound(remote: 0)
        #expect(errno { _ = try other.bindInterdomain(remote: 1, remotePort: p) } == EINVAL, "offered to dom0, not dom2")
        #expect(errno { _ = try other.bindInterdomain(remote: 1, remotePort: fp) } == EINVAL, "already bound")
        #expect(errno { try other.notify(bp) } == ENOTCONN, "not this handle's port")
        #expect(errno { _ = try fe.allocateUnbound(remote: 99) } == ESRCH)
        try be.unbind(bp)
        try fe.notify(fp) // goes nowhere, no error (Xen drops it)
        #expect(w.hv.leaks().contains { $0.contains("port \(fp) still allocated (unbound") })
        try fe.unbind(fp)
        try fe.unbind(p)
        #expect(errno { try fe.unbind(fp) } == ENOTCONN)
    }

    @Test("deliverInPlace: the peer's notify runs the handler on its own thread before returning; unbind removes it")
    func inPlace() throws {
        let w = World()
        let (fe, fp, be, bp) = try Self.pair(w)
        defer { fe.close(); be.close() }
        var calls: [(EvtchnPort, Thread)] = []
        try w.dom0.deliverInPlace(port: bp) { p in
            calls.append((p, Thread.current))
            try? be.notify(bp) // the handler may call back into the mock: no lock is held
        }
        try fe.notify(fp)
        #expect(calls.count == 1 && calls.first?.0 == bp && calls.first?.1 == Thread.current)
        #expect(try be.pending() == nil, "handled in place: nothing queued for dom0")
        #expect(try fe.wait(timeout: .seconds(1)) == fp, "the handler's own notify is delivered as usual")
        w.hv.faults.dropEvents(1)
        try fe.notify(fp)
        #expect(calls.count == 1, "a dropped notify is dropped in place too")
        #expect(errno { try w.dom0.deliverInPlace(port: bp + 7) { _ in } } == EINVAL, "only a bound port")
        try be.unbind(bp)
        let bp2 = try be.bindInterdomain(remote: 1, remotePort: fp)
        try fe.notify(fp)
        #expect(calls.count == 1, "unbinding removed the handler")
        #expect(try be.wait(timeout: .seconds(1)) == bp2)
    }
}

@Suite("Mock fault injection")
struct FaultTests {
    @Test("the Nth call fails with the chosen errno, once, and only for the chosen domain")
    func nth() throws {
        let w = World()
        let xs0 = try w.dom0.openXenStore(), xs1 = try w.guest.openXenStore()
        defer { xs0.close(); xs1.close() }
        w.hv.faults.fail(.xsWrite, nth: 2, errno: ENOSPC, domain: 1)
        try xs1.write("data/a", "1")
        try xs0.write("/x", "dom0 is not counted")
        do {
            try xs1.write("data/b", "2")
            Issue.record("the second guest write should fail")
        } catch let e as XenError {
            #expect(e.code == ENOSPC)
            #expect("\(e)".contains("injected") && "\(e)".contains("data/b"))
        }
        try xs1.write("data/c", "3")
        #expect(w.hv.faults.injected == 1)
        #expect(w.hv.faults.count(.xsWrite) == 4)
    }

    @Test("every operation can be failed", arguments: [MockOperation.grantShare, .grantMap, .evtchnAllocUnbound,
                                                       .evtchnBindInterdomain, .evtchnNotify, .xsWatch, .xsTransactionStart, .openGrantTable])
    func eachOperation(op: MockOperation) throws {
        let w = World()
        w.hv.faults.failAlways(op, errno: EIO)
        let result = errno {
            let gs = try w.guest.openGrantSharing(); defer { gs.close() }
            let gt = try w.dom0.openGrantTable(); defer { gt.close() }
            let g = try gs.share(with: 0, writable: true)
            try gt.unmap(try gt.map(domain: 1, ref: g.ref, writable: true))
            let (fe, fp, be, _) = try EventTests.pair(w); defer { fe.close(); be.close() }
            try fe.notify(fp)
            let xs = try w.dom0.openXenStore(); defer { xs.close() }
            try xs.watch("/w", token: "t")
            _ = try xs.transactionStart()
        }
        #expect(result == EIO)
        #expect(w.hv.leaks().isEmpty, "closing handles after a fault releases everything: \(w.hv.leaks())")
    }

    @Test("dropped notifications never arrive; delayed ones arrive late")
    func dropAndDelay() throws {
        let w = World()
        let (fe, fp, be, bp) = try EventTests.pair(w)
        defer { fe.close(); be.close() }
        w.hv.faults.dropEvents(1)
        try fe.notify(fp)
        #expect(try be.wait(timeout: .milliseconds(30)) == nil)
        w.hv.faults.delayEvents(by: .milliseconds(150))
        let start = ContinuousClock.now
        try fe.notify(fp)
        #expect(try be.wait(timeout: .milliseconds(50)) == nil)
        #expect(try be.wait(timeout: .seconds(2)) == bp)
        #expect(ContinuousClock.now - start >= .milliseconds(140))
    }
}

@Suite("Mock leak check")
struct LeakTests {
    @Test("reports every open grant, mapping, port, watch, transaction and handle by name")
    func reportsEverything() throws {
        let w = World()
        let gs = try w.guest.openGrantSharing(), gt = try w.dom0.openGrantTable()
        let g = try gs.share(with: 0, writable: true)
        _ = try gt.map(domain: 1, ref: g.ref, writable: true)
        let (fe, _, be, _) = try EventTests.pair(w)
        let xs = try w.dom0.openXenStore()
        try xs.watch("/backend", token: "tok")
        _ = try xs.transactionStart()
        let leaks = w.hv.leaks()
        for needle in ["grant ref \(g.ref) to dom0 still shared", "grant mapping", "event channel port 1 still bound",
                       "xenstore watch '/backend' token 'tok'", "xenstore transaction", "xenstore connection",
                       "event channel handle", "grant table handle", "grant sharing handle"] {
            #expect(leaks.contains { $0.contains(needle) }, "missing '\(needle)' in \(leaks)")
        }
        gs.close(); gt.close(); fe.close(); be.close(); xs.close()
        #expect(w.hv.leaks().isEmpty, "\(w.hv.leaks())")
    }

    @Test("destroying a domain releases everything it held, as the hypervisor does")
    func destroy() throws {
        let w = World()
        let gs = try w.guest.openGrantSharing()
        _ = try gs.share(with: 0, writable: true)
        let fe = try w.guest.openEventChannels()
        _ = try fe.allocateUnbound(remote: 0)
        let xs = try w.guest.openXenStore()
        try xs.watch("device", token: "t")
        w.hv.destroyDomain(1)
        #expect(w.hv.leaks().isEmpty, "\(w.hv.leaks())")
    }
}
