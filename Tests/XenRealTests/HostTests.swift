import Foundation
import Testing
@testable import XenReal

@Suite("Choosing Xen: host probe and the one-line reason")
struct HostTests {
    static let onXen = FileManager.default.fileExists(atPath: "/proc/xen/capabilities")

    @Test("on this machine (not a Xen domain) the probe says exactly what is missing",
          .enabled(if: !onXen, "this machine is a Xen domain (/proc/xen/capabilities exists)"))
    func notXenHere() {
        let h = XenHost.probe(xenstoredPath: "/nonexistent/xenstored/socket")
        #expect(!h.isXenDomain)
        #expect(h.reason.contains("/proc/xen/capabilities is absent"), "\(h.reason)")
        #expect(h.reason.contains("/dev/xen/evtchn is absent"), "\(h.reason)")
        #expect(h.reason.contains("neither /dev/xen/xenbus nor the xenstored socket /nonexistent/xenstored/socket exists"), "\(h.reason)")
        #expect(!h.reason.contains("\n"))
    }

    @Test("a fixture dom0: capabilities with control_d, evtchn and xenbus")
    func fixtureDom0() {
        let root = TempDir("xenhost")
        root.write("proc/xen/capabilities", "control_d\n")
        root.write("dev/xen/evtchn", "")
        root.write("dev/xen/xenbus", "")
        let h = XenHost.probe(root: root.path, xenstoredPath: "/nonexistent")
        #expect(h.isXenDomain && h.isControlDomain, "\(h.reason)")
    }

    @Test("a fixture guest without xenfs but with /sys/hypervisor/type and the xenstored socket")
    func fixtureGuest() {
        let root = TempDir("xenhost")
        root.write("sys/hypervisor/type", "xen\n")
        root.write("dev/xen/evtchn", "")
        root.write("var/run/xenstored/socket", "")
        let h = XenHost.probe(root: root.path)
        #expect(h.isXenDomain && !h.isControlDomain, "\(h.reason)")
        root.write("sys/hypervisor/type", "kvm\n")
        let k = XenHost.probe(root: root.path)
        #expect(!k.isXenDomain)
        #expect(k.reason.contains("says 'kvm'"), "\(k.reason)")
    }

    @Test("opening Xen where it is not usable: one line, host reason first",
          .enabled(if: !onXen, "this machine is a Xen domain"))
    func openFailsWithOneLine() {
        do {
            _ = try XenDomain.open()
            Issue.record("XenDomain.open succeeded on a machine without Xen")
        } catch {
            let text = "\(error)"
            #expect(text.hasPrefix("Xen hypervisor not usable: not a usable Xen domain: "), "\(text)")
            #expect(!text.contains("\n"))
        }
    }

    @Test("the device handles fail with the call's name when /dev/xen is absent",
          .enabled(if: !FileManager.default.fileExists(atPath: "/dev/xen/evtchn") && LoaderTests.installed("libxenevtchn.so.1"),
                   "/dev/xen/evtchn exists or libxenevtchn is not installed"))
    func devicesAbsent() {
        do { _ = try XenEventChannels(); Issue.record("evtchn opened") } catch {
            #expect("\(error)".hasPrefix("xenevtchn_open"), "\(error)")
        }
        do { _ = try XenGrantTable(); Issue.record("gnttab opened") } catch {
            #expect("\(error)".hasPrefix("xengnttab_open"), "\(error)")
        }
        do { _ = try XenGrantSharing(); Issue.record("gntshr opened") } catch {
            #expect("\(error)".hasPrefix("xengntshr_open"), "\(error)")
        }
    }
}
