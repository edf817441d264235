import Foundation
import Testing
import XenMock
@testable import XenToolstack
import XenReal
import XenHypervisor

@Suite("Toolstack: the loopback case (frontend in the backend's own domain)")
struct LoopbackToolstackTests {
    @Test("attach and detach for domain 0: the xenstore directories, and no grant (dom0 owns the devices)")
    func domain0() throws {
        let w = try ToolstackWorld()
        defer { w.close() }
        let be = XenToolstack.backendPath(backend: 0, guest: 0), fe = XenToolstack.frontendPath(guest: 0)
        #expect(try w.ts.attach(domid: 0, devices: [ToolstackWorld.a]) == .created)
        #expect(try w.xs.read(be + "/frontend") == fe)
        #expect(try w.xs.read(be + "/frontend-id") == "0")
        #expect(try w.xs.read(be + "/dev-0") == "0000:03:00.0")
        #expect(try w.xs.read(fe + "/backend") == be)
        #expect(w.perms.calls.isEmpty, "\(w.perms.calls)")
        // The last device goes: a backend answering 7 with 4 lets detach finish.
        try w.xs.write(be + "/state", "4")
        let fake = FakeBackend(w.xs, be)
        try w.ts.detach(domid: 0, devices: [ToolstackWorld.a])
        fake.stop()
        #expect(try w.xs.readIfPresent(be + "/num_devs") == nil)
        #expect(w.perms.calls.isEmpty, "\(w.perms.calls)")
    }
}
