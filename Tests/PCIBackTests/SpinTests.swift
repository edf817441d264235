import Foundation
import Testing
@testable import PCIBack
import XenMock
import CXenPCI
import XenPCIABI
import PCIModel
import XenHypervisor

/// The spin before blocking (`xenpci backend --spin-us`, issue 16): after
/// serving, the service thread watches the connected guests' bit 0 before it
/// blocks, and reads the ports while a seen request's event is on its way.
@Suite("pciback: the spin before blocking")
struct SpinTests {
    @Test("spinning without yields: every request is answered, and a guest that sets bit 0 and never notifies is not served and does not stop another guest")
    func spinServesAndIsBounded() throws {
        var o = PCIBack.Options()
        o.spinBeforeBlock = .milliseconds(2)
        o.spinYields = false
        let h = try Harness(options: o, guests: [1, 2])
        try h.claim(Fixture.e1000, Fixture.virtioNet)
        let (polite, hostile) = try h.connectTwoGuests(Fixture.e1000, Fixture.virtioNet)
        // The hostile guest's bit 0 stays set: it never notifies.
        hostile.page.postRequest(xen_pci_op(command: .confRead, address: v00, offset: 0, size: 2))
        for n in 0..<200 {
            let r = try #require(try polite.send(xen_pci_op(command: .confRead, address: v00, offset: 2, size: 2)), "request \(n) unanswered")
            #expect(r.err == 0 && r.value == 0x100e)
        }
        #expect(hostile.page.flags & XenPCI.frontendActive != 0, "served without an event")
        // Once it notifies, it is served like anyone.
        try hostile.ev.notify(hostile.port!)
        let end = ContinuousClock.now + .seconds(2)
        while hostile.page.flags & XenPCI.frontendActive != 0 && ContinuousClock.now < end { usleep(1000) }
        #expect(hostile.page.readReply().err == 0 && hostile.page.readReply().value == 0x1af4)
        polite.close(); hostile.close()
        h.expectClean()
    }
}
