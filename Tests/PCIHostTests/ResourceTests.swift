import Testing
import PCIHost

@Suite("sysfs resource")
struct ResourceTests {
    @Test func parsesEveryLine() throws {
        let text = "0x00000000fe000000 0x00000000fe000fff 0x0000000000040200\n"
            + "0x000000000000c000 0x000000000000c01f 0x0000000000040101\n"
            + "0x0000000000000000 0x0000000000000000 0x0000000000000000\n"
        let r = try PCIResource.parse(text)
        #expect(r.count == 3)
        #expect(r[0] == PCIResource(start: 0xfe00_0000, end: 0xfe00_0fff, flags: 0x40200))
        #expect(r[0].size == 0x1000 && r[0].isMemory && !r[0].isIO)
        #expect(r[1].isIO && r[1].size == 0x20)
        #expect(r[2].size == 0)
    }

    @Test(arguments: ["0x1 0x2", "0x1 0x2 0x3 0x4", "0x1 0xg 0x3", "one two three"])
    func malformedLineNamed(line: String) {
        #expect {
            _ = try PCIResource.parse("0x0 0x0 0x0\n" + line + "\n")
        } throws: { e in "\(e)".contains("line 2") && "\(e)".contains(line) }
    }
}
