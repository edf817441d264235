import XenHypervisor
import XenReal

/// The real Xen binding (Sources/XenReal): the libraries are loaded by
/// soname and the host is probed. The error, when Xen is not usable, is one
/// line naming exactly what is missing, with dlerror()'s text for a library,
/// e.g. "Xen hypervisor not usable: not a usable Xen domain: /proc/xen/capabilities
/// is absent (...); cannot load libxenstore: libxenstore.so.4: cannot open shared
/// object file: No such file or directory".
func openXenHypervisor() throws -> Hypervisor {
    try XenDomain.open()
}

/// For `--hypervisor auto`: nil when Xen is usable, else why not (the same
/// line `openXenHypervisor` would throw).
func xenUnavailableReason() -> String? {
    do { _ = try XenDomain.open(); return nil } catch { return "\(error)" }
}
