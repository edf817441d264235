import Foundation
import Testing
import XenMock
import XenHypervisor

/// A small deterministic generator (SplitMix64), so a failing sequence replays.
struct SplitMix {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    mutating func chance(_ percent: Int) -> Bool { below(100) < percent }
    mutating func pick<T>(_ xs: [T]) -> T { xs[below(xs.count)] }
}

/// What one call answered, errors included (their text too, except for a
/// conflict, whose message names whichever changed node it found first).
enum Outcome: Equatable, CustomStringConvertible {
    case value(String), list([String]), perms([XenstorePermission]), done, transaction(UInt32), event(XenstoreWatchEvent?)
    case error(Int32, String)

    init(_ body: () throws -> Outcome) {
        do { self = try body() } catch let e as XenError {
            self = .error(e.code, e.code == EAGAIN ? "" : "\(e.operation) | \(e.detail)")
        } catch { self = .error(-1, "\(error)") }
    }

    var description: String {
        switch self {
        case .value(let v): return "value \(v.prefix(40).debugDescription)"
        case .list(let l): return "list \(l)"
        case .perms(let p): return "perms \(p)"
        case .done: return "done"
        case .transaction(let t): return "transaction \(t)"
        case .event(let e): return "event \(e.map { "\($0.path) \($0.token)" } ?? "none")"
        case .error(let c, let m): return "error \(c) \(m)"
        }
    }
}

/// Random operations from several domains' connections, on the mock and on
/// the reference model; every answer and the final store must agree.
struct XenstoreModelRun {
    var rng: SplitMix
    let hv = MockHypervisor()
    let ref = ReferenceXenstore()
    var conns: [(xs: XenStore, id: Int, dom: Dom)] = []
    /// Connections closed (by close or by their domain's destruction): used now and then, for EBADF.
    var closed: Set<Int> = []
    var open: [(conn: Int, t: XenstoreTransaction)] = []
    var nextConn = 0
    var log: [String] = []

    init(seed: UInt64) {
        rng = SplitMix(state: seed)
        for d: Dom in [0, 1, 2] { _ = hv.domain(d); ref.addDomain(d) }
        for d: Dom in [0, 0, 1, 2] { openConnection(d) }
    }

    mutating func openConnection(_ dom: Dom) {
        let xs = try! hv.domain(dom).openXenStore() // domain(_:) makes the domain again if it was destroyed
        ref.addDomain(dom)
        ref.open(nextConn, dom: dom)
        conns.append((xs, nextConn, dom))
        nextConn += 1
    }

    static let names = ["a", "b", "c", "state", "0", "1", "2", "device", "backend", "domain", "local", "x-y_z@"]

    /// Mostly a few short names, so that operations meet on the same nodes.
    mutating func component() -> String { rng.chance(60) ? rng.pick(["a", "b", "c"]) : rng.pick(Self.names) }

    mutating func path() -> String {
        switch rng.below(100) {
        case 0..<40: return "/" + (0...rng.below(4)).map { _ in component() }.joined(separator: "/")
        case 40..<75:
            let more = (0..<rng.below(4)).map { _ in component() }
            return (["/local/domain/\(rng.below(3))"] + more).joined(separator: "/")
        case 75..<88: return (0...rng.below(3)).map { _ in component() }.joined(separator: "/") // relative
        case 88..<91: return "/"
        default:
            return rng.pick(["/a//b", "/a/", "//", "", "/a b", "/a/\u{fc}", "/\u{301}a", "/a\u{301}", "@x", "a//", "/a/.",
                             "/" + String(repeating: "x", count: 3072), "/" + String(repeating: "y", count: 3071)])
        }
    }

    mutating func value() -> String {
        rng.chance(3) ? String(repeating: "v", count: 4096 + rng.below(2)) : rng.pick(["", "1", "4", "x", "hello world", "\u{e9}"])
    }

    mutating func perms() -> [XenstorePermission] {
        let access: [XenstorePermission.Access] = [.none, .read, .write, .both]
        return (0..<rng.below(4)).map { _ in XenstorePermission(Dom(rng.below(4)), rng.pick(access)) }
    }

    /// A transaction for an operation on `conn`: mostly none or its own, sometimes another's or a bogus one.
    mutating func transaction(for conn: Int) -> XenstoreTransaction {
        let mine = open.filter { $0.conn == conn }
        switch rng.below(100) {
        case 0..<45 where !mine.isEmpty: return rng.pick(mine).t
        case 45..<50 where !open.isEmpty: return rng.pick(open).t
        case 50..<53: return XenstoreTransaction(UInt32(900 + rng.below(5)))
        default: return .none
        }
    }

    /// One random call on both; false (with the issue recorded) when they differ.
    @discardableResult
    mutating func step() -> Bool {
        let live = conns.filter { !closed.contains($0.id) }
        let (xs, c, dom) = !live.isEmpty && rng.chance(92) ? rng.pick(live) : rng.pick(conns)
        let r = ref
        let what: String
        let mine: Outcome, theirs: Outcome
        switch rng.below(112) {
        case 0..<20:
            let p = path(), t = transaction(for: c)
            what = "read \(p.prefix(60)) t\(t.id)"
            mine = Outcome { .value(try xs.read(p, transaction: t)) }
            theirs = Outcome { .value(try r.read(c, p, t)) }
        case 20..<40:
            let p = path(), v = value(), t = transaction(for: c)
            what = "write \(p.prefix(60)) = \(v.prefix(20).debugDescription) t\(t.id)"
            mine = Outcome { try xs.write(p, v, transaction: t); return .done }
            theirs = Outcome { try r.write(c, p, v, t); return .done }
        case 40..<45:
            let p = path(), t = transaction(for: c)
            what = "mkdir \(p.prefix(60)) t\(t.id)"
            mine = Outcome { try xs.mkdir(p, transaction: t); return .done }
            theirs = Outcome { try r.mkdir(c, p, t); return .done }
        case 45..<53:
            let p = path(), t = transaction(for: c)
            what = "rm \(p.prefix(60)) t\(t.id)"
            mine = Outcome { try xs.remove(p, transaction: t); return .done }
            theirs = Outcome { try r.remove(c, p, t); return .done }
        case 53..<59:
            let p = path(), t = transaction(for: c)
            what = "directory \(p.prefix(60)) t\(t.id)"
            mine = Outcome { .list(try xs.directory(p, transaction: t)) }
            theirs = Outcome { .list(try r.directory(c, p, t)) }
        case 59..<63:
            let p = path(), t = transaction(for: c)
            what = "get-perms \(p.prefix(60)) t\(t.id)"
            mine = Outcome { .perms(try xs.permissions(p, transaction: t)) }
            theirs = Outcome { .perms(try r.permissions(c, p, t)) }
        case 63..<71:
            let p = path(), ps = perms(), t = transaction(for: c)
            what = "set-perms \(p.prefix(60)) \(ps) t\(t.id)"
            mine = Outcome { try xs.setPermissions(p, ps, transaction: t); return .done }
            theirs = Outcome { try r.setPermissions(c, p, ps, t); return .done }
        case 71..<76:
            what = "transaction start"
            mine = Outcome { .transaction(try xs.transactionStart().id) }
            theirs = Outcome { .transaction(try r.transactionStart(c).id) }
            if case .transaction(let id) = mine { open.append((c, XenstoreTransaction(id))) }
        case 76..<83:
            let mineOpen = open.filter { $0.conn == c }
            let t = !mineOpen.isEmpty && rng.chance(90) ? rng.pick(mineOpen).t
                : (!open.isEmpty && rng.chance(70) ? rng.pick(open).t : XenstoreTransaction(UInt32(900 + rng.below(5))))
            let abort = rng.chance(25)
            what = "transaction end t\(t.id) abort \(abort)"
            mine = Outcome { try xs.transactionEnd(t, abort: abort); return .done }
            theirs = Outcome { try r.transactionEnd(c, t, abort: abort); return .done }
            if mine == theirs, case .error(ENOENT, _) = mine {} else { open.removeAll { $0.t == t && $0.conn == c } }
        case 83..<89:
            let p = rng.chance(15) ? rng.pick(["@releaseDomain", "@introduceDomain"]) : path()
            let token = rng.pick(["t1", "t2"])
            what = "watch \(p.prefix(60)) \(token)"
            mine = Outcome { try xs.watch(p, token: token); return .done }
            theirs = Outcome { try r.watch(c, p, token: token); return .done }
        case 89..<92:
            let p = rng.chance(15) ? rng.pick(["@releaseDomain", "@introduceDomain"]) : path()
            let token = rng.pick(["t1", "t2"])
            what = "unwatch \(p.prefix(60)) \(token)"
            mine = Outcome { try xs.unwatch(p, token: token); return .done }
            theirs = Outcome { try r.unwatch(c, p, token: token); return .done }
        case 92..<108:
            what = "next event"
            mine = .event(xs.nextWatchEvent())
            theirs = .event(r.nextWatchEvent(c))
        case 108:
            what = "close connection \(c) and open another for dom\(dom)"
            xs.close(); r.close(c)
            closed.insert(c)
            open.removeAll { $0.conn == c }
            openConnection(dom)
            mine = .done; theirs = .done
        case 109:
            let d = Dom(1 + rng.below(2))
            what = "destroy dom\(d)"
            hv.destroyDomain(d); r.destroyDomain(d)
            let gone = Set(conns.filter { $0.dom == d }.map(\.id))
            closed.formUnion(gone)
            open.removeAll { gone.contains($0.conn) }
            mine = .done; theirs = .done
        default:
            let d = Dom(1 + rng.below(2))
            what = "(re)create dom\(d)"
            _ = hv.domain(d); r.addDomain(d)
            if rng.chance(50) { openConnection(d) }
            mine = .done; theirs = .done
        }
        log.append("conn \(c) dom\(dom): \(what) -> \(mine)")
        if mine != theirs {
            let recent = log.suffix(25).joined(separator: "\n")
            Issue.record("step \(log.count): \(what) on conn \(c) (dom\(dom)): mock \(mine), model \(theirs)\n\(recent)")
            return false
        }
        return true
    }

    mutating func finish() {
        for (xs, c, _) in conns {
            var a: [XenstoreWatchEvent] = [], b: [XenstoreWatchEvent] = []
            while let e = xs.nextWatchEvent() { a.append(e) }
            while let e = ref.nextWatchEvent(c) { b.append(e) }
            if a != b { Issue.record("conn \(c): queued events differ: mock \(a), model \(b)") }
        }
        let dump = hv.dumpXenstore()
        if dump != ref.dump() { Issue.record("stores differ:\n\(dump)\n--- model:\n\(ref.dump())") }
    }
}

@Suite("Mock xenstore: the reference model")
struct XenstoreModelTests {
    @Test("random operations from three domains answer as the reference model does", arguments: 0..<48)
    func random(seed: Int) {
        var run = XenstoreModelRun(seed: UInt64(seed) &* 7919 &+ 1)
        for _ in 0..<400 where run.step() {}
        run.finish()
    }
}
