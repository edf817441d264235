import Foundation
import Testing
@testable import XenReal
import CXenLibs

@Suite("Xen libraries: prototypes and run-time loading")
struct LoaderTests {
    static let xenHeaders = FileManager.default.fileExists(atPath: "/usr/include/xenstore.h")

    @Test("xenlib-check: every prototype of xenpci_xenlibs.h is the installed headers' type",
          .enabled(if: xenHeaders, "libxen-dev is not installed: /usr/include/xenstore.h is absent (run `make deps`)"))
    func prototypesMatchInstalledHeaders() throws {
        let exe = FileManager.default.temporaryDirectory.appendingPathComponent("xenpci-xenlib-check-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: exe) }
        let cc = try run("/usr/bin/env", ["cc", "-std=gnu11", "-Wall", "-Wextra", "-Werror",
                                          "-I", repoRoot.appendingPathComponent("Headers/CXenLibs").path,
                                          repoRoot.appendingPathComponent("tools/xenlib-check/xenlib_check.c").path, "-o", exe])
        #expect(cc.status == 0, "compiling xenlib-check failed:\n\(cc.output)")
        let r = try run(exe, [])
        #expect(r.status == 0, "xenlib-check reported differences:\n\(r.output)")
        let protos = r.output.split(separator: "\n").filter { $0.hasPrefix("prototype ") && $0.hasSuffix(" ok") }
        #expect(protos.count == 48, "\(protos.count) prototypes checked:\n\(r.output)")
        #expect(r.output.contains("all equal"))
    }

    /// The sonames are installed on this machine by libxen-dev's runtime
    /// packages; elsewhere the test says which is missing.
    static func installed(_ soname: String) -> Bool {
        ["/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/lib/aarch64-linux-gnu"]
            .contains { FileManager.default.fileExists(atPath: "\($0)/\(soname)") }
    }

    @Test("libxenstore, libxengnttab, libxenevtchn, libxenctrl and libxencall load by soname with every symbol",
          .enabled(if: installed("libxenstore.so.4") && installed("libxenctrl.so.4.17"),
                   "the Xen libraries are not installed (libxenstore.so.4 / libxenctrl.so.4.17 absent)"))
    func loadsInstalledLibraries() throws {
        for lib in XenLibrary.allCases {
            try lib.load()
            #expect(lib.loadedSoname != nil)
        }
        #expect(XenLibrary.xenstore.loadedSoname == "libxenstore.so.4")
        #expect(XenLibrary.gnttab.loadedSoname == "libxengnttab.so.1")
        #expect(XenLibrary.evtchn.loadedSoname == "libxenevtchn.so.1")
        #expect(XenLibrary.xenctrl.loadedSoname?.hasPrefix("libxenctrl.so.4.") == true)
        #expect(xenpci_xenstore_table()?.pointee.xs_check_watch != nil
                && xenpci_xenctrl_table()?.pointee.xc_physdev_map_pirq_msi != nil)
        #expect(xenpci_gnttab_table()?.pointee.xengntshr_share_pages != nil
                && xenpci_evtchn_table()?.pointee.xenevtchn_unmask != nil)
        // Loading again is a no-op.
        try XenLibrary.xenstore.load()
    }

    @Test("libxenctrl is tried as 4.17 first, then the other released sonames")
    func xenctrlSonames() {
        let names = XenLibrary.xenctrl.sonames
        #expect(names.first == "libxenctrl.so.4.17")
        #expect(Set(names) == ["libxenctrl.so.4.16", "libxenctrl.so.4.17", "libxenctrl.so.4.18", "libxenctrl.so.4.19", "libxenctrl.so.4.20"])
        #expect(XenLibrary.xenstore.sonames == ["libxenstore.so.4"])
    }

    @Test("a missing soname: the error carries dlerror()'s exact text for each soname tried")
    func missingSoname() throws {
        dlerror()
        #expect(dlopen("libxenstore.so.99", RTLD_NOW) == nil)
        let expected = String(cString: dlerror())
        #expect(expected.contains("libxenstore.so.99"))
        do {
            try XenLibrary.xenstore.probe(sonames: ["libxenstore.so.99", "libxenstore.so.98"])
            Issue.record("loading a missing soname succeeded")
        } catch let e as XenUnavailable {
            #expect(e.description.hasPrefix("cannot load libxenstore: "))
            #expect(e.description.contains(expected), "\(e)")
            #expect(e.description.contains("libxenstore.so.98"), "\(e)")
            #expect(!e.description.contains("\n"))
        }
    }

    @Test("a library without our functions: the error names the symbol and dlerror()'s text")
    func missingSymbol() throws {
        do {
            try XenLibrary.evtchn.probe(sonames: ["libc.so.6"])
            Issue.record("libc passed for libxenevtchn")
        } catch let e as XenUnavailable {
            #expect(e.description.contains("libxenevtchn loaded from libc.so.6 but lacks xenevtchn_open"), "\(e)")
            #expect(e.description.contains("undefined symbol: xenevtchn_open"), "\(e)")
        }
    }
}
