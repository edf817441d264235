import XenHypervisor
import XenReal

/// The real Xen binding (Sources/XenReal): the libraries are loaded by
/// soname and the host is probed. When Xen is not usable the error is one
/// line naming exactly what is missing, with dlerror()'s text for a library.
func openXenHypervisor() throws -> Hypervisor {
    do { return try XenDomain.open() } catch {
        throw CLIError(message: "no Xen: \(error)", status: CLIError.unavailable)
    }
}

/// For `--hypervisor auto`: nil when Xen is usable, else why not.
func xenUnavailableReason() -> String? {
    do { _ = try XenDomain.open(); return nil } catch { return "\(error)" }
}
