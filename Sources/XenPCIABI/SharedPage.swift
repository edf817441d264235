import CXenPCI
import PCIModel

/// The shared page seen through the C shim: every access to memory the other
/// domain can write goes through an atomic or a one-shot copy.
// @unchecked Sendable: memory another Xen domain writes, whatever Swift checks; hence the
// atomics and one-shot copies of the C shim for every access.
public struct SharedPage: @unchecked Sendable {
    public let pointer: UnsafeMutablePointer<xen_pci_sharedinfo>

    public init(_ raw: UnsafeMutableRawPointer) {
        pointer = raw.bindMemory(to: xen_pci_sharedinfo.self, capacity: 1)
    }

    public var flags: UInt32 { xenpci_flags_load(pointer) }
    public func setFlags(_ mask: UInt32) { xenpci_flags_set(pointer, mask) }
    public func clearFlags(_ mask: UInt32) { xenpci_flags_clear(pointer, mask) }
    @discardableResult public func testAndClear(_ mask: UInt32) -> Bool { xenpci_flags_test_and_clear(pointer, mask) != 0 }
    @discardableResult public func testAndSet(_ mask: UInt32) -> Bool { xenpci_flags_test_and_set(pointer, mask) != 0 }

    /// Frontend: copy the op in, then publish it with XEN_PCIF_active.
    public func postRequest(_ op: xen_pci_op) { withUnsafePointer(to: op) { xenpci_post_request(pointer, $0) } }

    /// Frontend: the reply, read once after the flag was seen clear.
    public func readReply() -> xen_pci_op {
        var out = xen_pci_op()
        xenpci_read_reply(pointer, &out)
        return out
    }

    /// Backend: the one and only read of the request.
    public func snapshotRequest(into copy: UnsafeMutablePointer<xen_pci_op>) { xenpci_snapshot_request(pointer, copy) }

    /// Backend: write back err, value and `nvec` MSI-X vectors, then clear XEN_PCIF_active.
    public func completeRequest(_ reply: UnsafePointer<xen_pci_op>, msixVectors nvec: Int = 0) {
        xenpci_complete_request(pointer, reply, UInt32(clamping: nvec))
    }

    public func snapshotAER() -> xen_pcie_aer_op {
        var out = xen_pcie_aer_op()
        xenpci_snapshot_aer(pointer, &out)
        return out
    }

    public func postAER(_ op: xen_pcie_aer_op) { withUnsafePointer(to: op) { xenpci_post_aer(pointer, $0) } }

    /// Frontend answering an AER request: only `err` is written, then bit 2 cleared.
    public func completeAER(err: Int32) { xenpci_complete_aer(pointer, err) }
}

extension xen_pci_op {
    public init(command: PCIOpCommand, address: PCIAddress, offset: Int32 = 0, size: Int32 = 0, value: UInt32 = 0) {
        self.init()
        cmd = command.rawValue
        domain = UInt32(address.segment)
        bus = UInt32(address.bus)
        devfn = UInt32(address.devfn)
        self.offset = offset
        self.size = size
        self.value = value
    }

    /// MSI-X entry `i` (0..<128); the C array imports as a tuple.
    public func msixEntry(_ i: Int) -> xen_msix_entry {
        precondition(i >= 0 && i < XenPCI.maxMSIXVectors)
        return withUnsafeBytes(of: msix_entries) { $0.load(fromByteOffset: i * 4, as: xen_msix_entry.self) }
    }

    public mutating func setMSIXEntry(_ i: Int, _ e: xen_msix_entry) {
        precondition(i >= 0 && i < XenPCI.maxMSIXVectors)
        withUnsafeMutableBytes(of: &msix_entries) { $0.storeBytes(of: e, toByteOffset: i * 4, as: xen_msix_entry.self) }
    }

    public var command: PCIOpCommand? { PCIOpCommand(rawValue: cmd) }
    public var address: PCIAddress? { PCIAddress(domain: domain, bus: bus, devfn: devfn) }
}
