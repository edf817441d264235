import Foundation
import Synchronization
import XenHypervisor
import XenPCIABI

/// The domain this process runs in, on a real Xen: the `Hypervisor` the
/// drivers are given when Xen is usable.
public final class XenDomain: Hypervisor {
    public var name: String { "xen" }
    public let host: XenHost
    private let cachedDomid = Mutex<DomID?>(nil)

    init(host: XenHost) { self.host = host }

    /// Probes the host and loads the three libraries every domain needs
    /// (libxenctrl is loaded on first use: a guest need not have it). The
    /// error is one line naming everything that is missing, with
    /// dlerror()'s own text for a library.
    public static func open(root: String = "/") throws -> XenDomain {
        let host = XenHost.probe(root: root)
        var problems: [String] = []
        if !host.isXenDomain { problems.append(host.reason) }
        for lib in [XenLibrary.xenstore, .gnttab, .evtchn] {
            do { try lib.load() } catch { problems.append("\(error)") }
        }
        guard problems.isEmpty else { throw XenUnavailable("Xen hypervisor not usable: " + problems.joined(separator: "; ")) }
        return XenDomain(host: host)
    }

    /// The `domid` key of our own xenstore home; 0 in a control domain
    /// whose home has none yet (xen-init-dom0 writes it).
    public func domid() throws -> DomID {
        if let d = cachedDomid.withLock({ $0 }) { return d }
        let xs = try XenStoreConnection()
        defer { xs.close() }
        let d: DomID
        if let text = try xs.readIfPresent("domid") {
            guard let v = DomID(text) else { throw XenError(EINVAL, "xs_read", "domid: '\(text)'") }
            d = v
        } else if host.isControlDomain {
            d = 0
        } else {
            throw XenError(ENOENT, "xs_read", "domid (the toolstack has not written our xenstore home)")
        }
        cachedDomid.withLock { $0 = d }
        return d
    }

    public func openXenStore() throws -> XenStore { try XenStoreConnection() }
    public func openEventChannels() throws -> EventChannels { try XenEventChannels() }
    public func openGrantTable() throws -> GrantTable { try XenGrantTable() }
    public func openGrantSharing() throws -> GrantSharing { try XenGrantSharing() }
    public func openInterruptRouting() throws -> InterruptRouting {
        do { try XenLibrary.xenctrl.load(); try XenLibrary.xencall.load() } catch {
            throw XenUnavailable("interrupt routing needs libxenctrl and libxencall: \(error)")
        }
        return XenInterruptRouting(ctrl: try XenCtrl(), physdev: try XenPhysdev())
    }
}
