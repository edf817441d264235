import XenHypervisor

// The real-Xen binding plugs in here: this file is replaced by the one that
// opens libxenstore, libxenevtchn, libxengnttab and privcmd.

/// The hypervisor of the domain this process runs in, through Xen's own
/// libraries. Throws one line saying why when it cannot be opened.
func openXenHypervisor() throws -> Hypervisor {
    throw CLIError(message: "no Xen: the real Xen binding is not built in yet (use 'xenpci demo' for the mock hypervisor)",
                   status: CLIError.unavailable)
}
