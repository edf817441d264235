import Foundation
import XenHypervisor

/// Is this process running in a Xen domain with the devices the binding
/// needs? `probe` answers with the evidence either way.
public struct XenHost: Sendable, CustomStringConvertible {
    /// True when running on Xen with event channels and a way to xenstore.
    public var isXenDomain: Bool
    /// `/proc/xen/capabilities` says `control_d` (dom0 or a driver domain with privileges).
    public var isControlDomain: Bool
    /// What was found, or exactly what is missing.
    public var reason: String
    public var description: String { reason }

    /// Looks under `root` (tests pass a fixture tree). `xenstoredPath`
    /// defaults to `XENSTORED_PATH` or xenstored's standard socket.
    public static func probe(root: String = "/", xenstoredPath: String? = nil) -> XenHost {
        func p(_ path: String) -> String { root == "/" ? path : (root.hasSuffix("/") ? String(root.dropLast()) : root) + path }
        let fm = FileManager.default
        let caps = p("/proc/xen/capabilities")
        let hypType = p("/sys/hypervisor/type")
        let evtchn = p("/dev/xen/evtchn")
        let xenbus = p("/dev/xen/xenbus")
        let socket = xenstoredPath ?? ProcessInfo.processInfo.environment["XENSTORED_PATH"] ?? p("/var/run/xenstored/socket")

        let capsText = try? String(contentsOfFile: caps, encoding: .utf8)
        let typeText = (try? String(contentsOfFile: hypType, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        let onXen = capsText != nil || typeText == "xen"
        let control = capsText?.contains("control_d") ?? false
        var missing: [String] = []
        if !onXen {
            var why = "\(caps) is absent (not running on Xen, or xenfs is not mounted on /proc/xen)"
            if let t = typeText { why += " and \(hypType) says '\(t)'" } else { why += " and \(hypType) is absent" }
            missing.append(why)
        }
        if !fm.fileExists(atPath: evtchn) { missing.append("\(evtchn) is absent (xen-evtchn not loaded)") }
        let store = fm.fileExists(atPath: xenbus) ? xenbus : fm.fileExists(atPath: socket) ? socket : nil
        if store == nil { missing.append("neither \(xenbus) nor the xenstored socket \(socket) exists") }
        if missing.isEmpty {
            return XenHost(isXenDomain: true, isControlDomain: control,
                           reason: "Xen \(control ? "control domain" : "domain"): \(onXen && capsText != nil ? caps : hypType), \(evtchn), \(store!)")
        }
        return XenHost(isXenDomain: false, isControlDomain: control,
                       reason: "not a usable Xen domain: " + missing.joined(separator: "; "))
    }
}
