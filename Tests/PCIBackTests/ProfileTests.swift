import Foundation
import Testing
@testable import PCIBack
import XenMock
import XenPCIABI
import CXenPCI
import PCIModel

/// `xenpci backend --profile` (issue 16): the per-request timing.
@Suite("pciback request profile", .serialized)
struct ProfileTests {
    @Test("off by default: nothing recorded")
    func off() throws {
        let (h, f) = try connected([Fixture.e1000])
        for _ in 0..<10 { _ = try f.read(v00, 0, 4) }
        f.close()
        h.shutdown()
        #expect(h.back.profile.requests == 0)
        #expect(h.back.profile.report() == "profile: off")
    }

    @Test("every request is timed; each phase has a sample per request, idle one per wake after the first")
    func on() throws {
        let h = try Harness(start: false)
        h.back.profile.enable() // before the service thread starts
        try h.back.start()
        _ = try h.claim(Fixture.e1000)
        try h.create(1, Fixture.e1000)
        #expect(h.waitBackend(1, .initialised))
        let f = try RawFrontend(h)
        try f.connect()
        #expect(h.waitBackend(1, .connected))
        for _ in 0..<100 { #expect(try f.read(v00, 0, 4).0 == .success) }
        f.close()
        h.shutdown()
        let p = h.back.profile
        #expect(p.requests == 100)
        #expect(p.wakesWithRequest >= 1 && p.wakesWithRequest <= p.wakes)
        for phase in [RequestProfile.Phase.wake, .handling, .reply, .inBackend] {
            #expect(p.percentiles(phase)?.n == 100, "\(phase)")
        }
        let idle = try #require(p.percentiles(.idle))
        #expect(idle.n == p.wakesWithRequest - 1)
        let total = try #require(p.percentiles(.inBackend))
        #expect(total.p50 <= total.p90 && total.p90 <= total.p99)
        #expect(p.report().hasPrefix("profile: 100 requests"))
    }
}
