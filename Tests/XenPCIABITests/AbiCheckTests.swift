import Foundation
import Testing
import CXenPCI

/// Runs tools/abi-check (the same program as `make abi-check`) against the
/// installed libxen-dev headers.
@Suite("ABI conformance against the system's Xen headers")
struct AbiCheckTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let xenHeaders = FileManager.default.fileExists(atPath: "/usr/include/xen/io/pciif.h")

    @Test("abi-check: every size, offset, signedness and constant equals <xen/io/pciif.h>",
          .enabled(if: xenHeaders, "libxen-dev is not installed: /usr/include/xen/io/pciif.h is absent (run `make deps`)"))
    func compareWithXenHeaders() throws {
        let dir = Self.root.appendingPathComponent("tools/abi-check").path
        let exe = FileManager.default.temporaryDirectory.appendingPathComponent("xenpci-abi-check-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: exe) }
        let cc = try run("/usr/bin/env", ["cc", "-std=gnu11", "-Wall", "-Wextra", "-Wno-type-limits", "-Werror",
                                          "-I", Self.root.appendingPathComponent("Headers/CXenPCI").path, "-I", dir,
                                          "\(dir)/abi_xen.c", "\(dir)/abi_ours.c", "\(dir)/abi_main.c", "-o", exe])
        #expect(cc.status == 0, "compiling abi-check failed:\n\(cc.output)")
        let r = try run(exe, [])
        print(r.output)
        #expect(r.status == 0, "abi-check reported differences:\n\(r.output)")
        #expect(r.output.contains("offsetof(xen_pci_op.msix_entries)"))
        #expect(r.output.contains("sizeof(struct xen_pci_sharedinfo)                 572          572  ok"))
        let rows = r.output.split(separator: "\n").filter { $0.hasSuffix(" ok") }.count
        #expect(rows >= 110, "only \(rows) rows compared")
    }

    func run(_ path: String, _ args: [String]) throws -> (status: Int32, output: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = args
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        try p.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }
}
