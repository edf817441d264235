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

/// The hypervisor a command runs on: `auto` (the default) is Xen when its
/// libraries load and this is a Xen domain (/proc/xen/capabilities or
/// /sys/hypervisor/type), else the mock; the choice is one line on stderr.
/// `xenOnly`: a command with nothing to do on the mock (frontend, attach,
/// detach): `auto` on a machine without Xen is then the "no Xen" error.
func resolveHypervisor(_ kind: HypervisorKind, console: Console, xenOnly: Bool = false) throws -> HypervisorKind {
    guard kind == .auto else { return kind }
    if let why = xenUnavailableReason() {
        if xenOnly { throw CLIError(message: "no Xen: \(why)", status: CLIError.unavailable) }
        console.err("[auto] hypervisor: mock (no Xen: \(why))")
        return .mock
    }
    console.err("[auto] hypervisor: xen")
    return .xen
}
