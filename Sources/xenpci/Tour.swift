import PCIBack
import PCIModel
import XPCI

/// `xenpci demo --tour`: a short script made for the devices at hand. Its
/// comments are printed as it runs; a step that the backend refuses on this
/// machine (a function a host driver owns is exported read-only) is
/// announced as such, with why, before the refusal is printed.
enum Tour {
    static func lines(front: XPCIFrontend, host: MockHost) -> [String] {
        let devs = front.devices
        guard let first = devs.first else { return ["lspci"] }
        let listing = host.listing()
        let writable = devs.first { d in !(listing.first { $0.guestAddress == d.address }?.readOnly ?? true) } ?? first
        let s = { (f: PCIFunction) in f.address.shortDescription }
        /// The host driver that makes `f` read-only, if one does.
        let owner = { (f: PCIFunction) -> String? in
            listing.first { $0.guestAddress == f.address && $0.readOnly }.map { "\($0.driver ?? "a host driver") owns \($0.address)" }
        }
        // A dword past every capability (lists of at most 0x18 bytes each): no field covers it.
        let end = writable.capabilities.map { $0.offset + 0x18 }.max() ?? 0x40
        let spare = "0x" + hex((end + 3) & ~3, 3)
        var out = [
            "# numbers only, as pciutils prints them",
            "lspci -n",
            "# one device in full: BARs sized through the backend, capabilities",
            "lspci -v -s \(s(first))",
            "lspci -x -s \(s(first))",
            "# setpci-style access: the command register, then a write the backend drops",
            "read \(s(writable)) COMMAND",
        ]
        if let o = owner(writable) {
            out.append("# refused on purpose (access denied): \(o), so the backend exports it read-only and never writes it")
        }
        out.append("write \(s(writable)) \(spare) 4 12345678")
        if let h = listing.first(where: { $0.guestAddress == writable.address }), !h.readOnly {
            out += ["# the quirk line 'stats' suggests lets exactly that register through",
                    "stats",
                    "quirk \(h.address)-\(spare):4:0xffffffff",
                    "write \(s(writable)) \(spare) 4 12345678",
                    "read \(s(writable)) \(spare) 4"]
        }
        let msi = devs.first(where: { $0.msix != nil }).map { ($0, "msix", " 2") } ?? devs.first(where: { $0.msi != nil }).map { ($0, "msi", "") }
        if let (m, kind, n) = msi {
            out.append("# interrupts: the guest enables \(kind == "msix" ? "MSI-X" : "MSI") through the backend, which maps pirqs for it")
            if let o = owner(m) {
                out.append("# refused on purpose (operation failed): \(o), and enabling \(kind == "msix" ? "MSI-X" : "MSI") writes the device")
                out.append("\(kind) enable \(s(m))\(n)")
            } else {
                out += ["\(kind) enable \(s(m))\(n)", "\(kind) disable \(s(m))"]
            }
        }
        if let last = listing.last(where: { $0.guest != nil }) {
            out += ["# dom0 takes a device back and gives it again (xl pci-detach / pci-attach)",
                    "hotremove \(last.address)", "lspci -n", "hotadd \(last.address)",
                    "# a PCIe error reported to the guest's AER handler",
                    "aer \(last.address) detected frozen"]
        }
        out += ["# what the backend did for each device", "stats", "list"]
        return out
    }
}
