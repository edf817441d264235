import Foundation
import PCIModel
import CXenPCI
import XenPCIABI
import PCIHost
import CXenPCISoftc

/// Entry points for the fuzz harness (`make fuzz`): arbitrary bytes through
/// the real request path, checked against what the protocol promises.
extension PCIBack {
    /// Serves one request `op` (raw bytes of a xen_pci_op, zero-padded) for
    /// a guest that has one device, guest 0000:00:00.0, whose config space
    /// is `config` and BAR sizes `barSizes`. Returns the broken invariant,
    /// or nil. The device's pirqs and state are released afterwards.
    public func fuzzRequest(config: [UInt8], barSizes: [UInt64], op opBytes: [UInt8]) -> String? {
        loop.submit { [self] () -> String? in
            let resources = (0..<7).map { i -> PCIResource in
                let s = i < barSizes.count ? barSizes[i] : 0
                return s == 0 ? PCIResource(start: 0, end: 0, flags: 0) : PCIResource(start: 0x1000_0000, end: 0x1000_0000 + s - 1, flags: 0x200)
            }
            let dev = MemoryPCIDevice(address: PCIAddress(bus: 0xFE, device: 0, function: 0), config: config, resources: resources, irq: 11)
            dev.virtualTime = true // power transitions counted, not slept
            guard let d = try? ClaimedDevice(dev, allowHostDriver: false) else { return nil } // nothing answers: refused at claim
            let i = GuestConnection(ctx, domid: 0x7FEE, backendPath: "/fuzz", frontendPath: "/fuzz")
            d.guestAddress = PCIAddress(bus: 0, device: 0, function: 0)
            registry.add(d) // found through the guest's list, like any device
            i.link(d)
            defer { i.releaseInterrupts(d); ctx.releaseMSIX(d); i.unlink(d); registry.remove(d.address) }

            let raw = UnsafeMutableRawPointer.allocate(byteCount: XenPCI.pageSize, alignment: XenPCI.pageSize)
            defer { raw.deallocate() }
            raw.initializeMemory(as: UInt8.self, repeating: 0, count: XenPCI.pageSize)
            let opOffset = MemoryLayout<xen_pci_sharedinfo>.offset(of: \.op)!
            opBytes.prefix(MemoryLayout<xen_pci_op>.size).withUnsafeBytes { raw.advanced(by: opOffset).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            let sh = SharedPage(raw)
            sh.setFlags(XenPCI.frontendActive)
            let before = UnsafeMutableRawPointer.allocate(byteCount: XenPCI.pageSize, alignment: 16)
            defer { before.deallocate() }
            before.copyMemory(from: raw, byteCount: XenPCI.pageSize)
            i.c.pointee.pbx_sh_info = raw.assumingMemoryBound(to: xen_pci_sharedinfo.self)

            // What evthandler does, minus the event channel.
            let op = withUnsafeMutablePointer(to: &i.c.pointee.op) { $0 }
            sh.snapshotRequest(into: op)
            let nvec = i.dispatch(op)
            sh.completeRequest(op, msixVectors: nvec)
            i.c.pointee.pbx_sh_info = nil

            let reply = sh.readReply()
            guard PCIOpError(rawValue: reply.err) != nil else { return "err \(reply.err) is not one of the six values" }
            if reply.err != 0 && reply.value != 0 { return "value \(reply.value) written with err \(reply.err)" }
            guard sh.flags & XenPCI.frontendActive == 0 else { return "XEN_PCIF_active left set" }
            guard nvec <= XenPCI.maxMSIXVectors else { return "\(nvec) vectors written back" }
            // Only flags, err, value and the first nvec vectors may change:
            // those bytes are copied over `before`, then one memcmp.
            func keep(_ o: Int, _ n: Int) { before.advanced(by: o).copyMemory(from: raw.advanced(by: o), byteCount: n) }
            keep(0, 4)
            keep(opOffset + 4, 4)
            keep(opOffset + 28, 4)
            for n in 0..<nvec { keep(opOffset + 36 + 4 * n, 2) }
            if memcmp(before, raw, XenPCI.pageSize) != 0 {
                let bad = (0..<XenPCI.pageSize).first { before.load(fromByteOffset: $0, as: UInt8.self) != raw.load(fromByteOffset: $0, as: UInt8.self) }!
                return "byte \(bad) of the shared page was written"
            }
            if reply.err == 0, PCIOpCommand(rawValue: reply.cmd) == .confRead, reply.size < 4, reply.value >> (8 * UInt32(reply.size)) != 0 {
                return "a \(reply.size)-byte read returned 0x\(hex(reply.value, 8))"
            }
            return nil
        }
    }
}
