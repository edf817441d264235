import Foundation
import PCIModel

/// Entry points for the fuzz harness (`make fuzz`): arbitrary bytes through
/// the real request path, checked against what the protocol promises.
extension PCIBack {
    /// Serves one request `op` (raw bytes of a xen_pci_op, zero-padded) for
    /// a guest that has one device, guest 0000:00:00.0, whose config space
    /// is `config` and BAR sizes `barSizes`. Returns the broken invariant,
    /// or nil. The device's pirqs and state are released afterwards.
    public func fuzzRequest(config: [UInt8], barSizes: [UInt64], op opBytes: [UInt8]) -> String? {
        lock.withLock {
            let resources = (0..<7).map { i -> PCIResource in
                let s = i < barSizes.count ? barSizes[i] : 0
                return s == 0 ? PCIResource(start: 0, end: 0, flags: 0) : PCIResource(start: 0x1000_0000, end: 0x1000_0000 + s - 1, flags: 0x200)
            }
            let dev = MemoryPCIDevice(address: PCIAddress(bus: 0xFE, device: 0, function: 0), config: config, resources: resources, irq: 11)
            guard let d = try? ClaimedDevice(dev, allowHostDriver: false) else { return nil } // nothing answers: refused at claim
            let i = Instance(domid: 0x7FEE, backendPath: "/fuzz", frontendPath: "/fuzz")
            d.guest = i.domid
            d.guestAddress = PCIAddress(bus: 0, device: 0, function: 0)
            i.exported[d.address] = d
            i.link(d)
            defer { releaseInterrupts(i, d); releaseMSIX(d); i.unlink(d) }

            let raw = UnsafeMutableRawPointer.allocate(byteCount: XenPCI.pageSize, alignment: XenPCI.pageSize)
            defer { raw.deallocate() }
            raw.initializeMemory(as: UInt8.self, repeating: 0, count: XenPCI.pageSize)
            let opOffset = MemoryLayout<xen_pci_sharedinfo>.offset(of: \.op)!
            opBytes.prefix(MemoryLayout<xen_pci_op>.size).withUnsafeBytes { raw.advanced(by: opOffset).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            let sh = SharedPage(raw)
            sh.setFlags(XenPCI.frontendActive)
            let before = Array(UnsafeRawBufferPointer(start: raw, count: XenPCI.pageSize))
            i.c.pointee.pbx_sh_info = raw.assumingMemoryBound(to: xen_pci_sharedinfo.self)

            // What handleEvent does, minus the event channel.
            let op = withUnsafeMutablePointer(to: &i.c.pointee.op) { $0 }
            sh.snapshotRequest(into: op)
            let nvec = dispatch(i, op)
            sh.completeRequest(op, msixVectors: nvec)
            i.c.pointee.pbx_sh_info = nil

            let after = Array(UnsafeRawBufferPointer(start: raw, count: XenPCI.pageSize))
            let reply = sh.readReply()
            guard PCIOpError(rawValue: reply.err) != nil else { return "err \(reply.err) is not one of the six values" }
            if reply.err != 0 && reply.value != 0 { return "value \(reply.value) written with err \(reply.err)" }
            guard sh.flags & XenPCI.frontendActive == 0 else { return "XEN_PCIF_active left set" }
            guard nvec <= XenPCI.maxMSIXVectors else { return "\(nvec) vectors written back" }
            // Only flags, err, value and the first nvec vectors may change.
            var allowed = Set(0..<4)
            allowed.formUnion(opOffset + 4..<opOffset + 8)
            allowed.formUnion(opOffset + 28..<opOffset + 32)
            for n in 0..<nvec { allowed.formUnion(opOffset + 36 + 4 * n..<opOffset + 38 + 4 * n) }
            if let bad = (0..<XenPCI.pageSize).first(where: { before[$0] != after[$0] && !allowed.contains($0) }) {
                return "byte \(bad) of the shared page was written"
            }
            if reply.err == 0, PCIOpCommand(rawValue: reply.cmd) == .confRead, reply.size < 4, reply.value >> (8 * UInt32(reply.size)) != 0 {
                return "a \(reply.size)-byte read returned 0x\(hex(reply.value, 8))"
            }
            return nil
        }
    }
}
