import Testing
import PCIModel

@Suite("PCI addresses")
struct PCIAddressTests {
    @Test func parseAndPrint() throws {
        #expect(try PCIAddress(parsing: "0000:00:1f.3").description == "0000:00:1f.3")
        #expect(try PCIAddress(parsing: "03:00.1") == PCIAddress(segment: 0, bus: 3, device: 0, function: 1))
        #expect(try PCIAddress(parsing: "0001:02:03.04").vdevString == "0001:02:03.04")
        #expect(PCIAddress(segment: 0, bus: 0, device: 1, function: 0).vdevString == "0000:00:01.00")
        #expect(PCIAddress(domain: 0, bus: 0, devfn: 0x0b)?.description == "0000:00:01.3")
        #expect(PCIAddress(domain: 0x1_0000, bus: 0, devfn: 0) == nil)
        #expect(PCIAddress(domain: 0, bus: 256, devfn: 0) == nil)
        #expect(PCIAddress(domain: 0, bus: 0, devfn: 256) == nil)
    }

    @Test(arguments: [("00:20.0", "device 20 is above 1f"), ("00:01.8", "function 8 is above 7"), ("0000:00:01", "missing '.'"),
                      ("x0:01.0", "bus 'x0'"), ("1:2:3:4.0", "expected"), ("00000:00:01.0", "segment '00000'")])
    func errorsNameTheProblem(text: String, reason: String) {
        #expect {
            _ = try PCIAddress(parsing: text)
        } throws: { e in
            "\(e)".contains(reason) && "\(e)".contains(text)
        }
    }
}
