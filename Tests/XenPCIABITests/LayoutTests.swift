import Foundation
import Testing
@testable import XenPCIABI
import CXenPCI
import PCIModel
import CXenPCISoftc

/// Swift's view of every mirrored struct must equal the C compiler's.
@Suite("Layout: Swift MemoryLayout vs C offsetof")
struct LayoutTests {
    /// (struct, field) -> Swift offset, for every field the C table lists.
    static let swiftOffsets: [String: [String: Int?]] = [
        "xen_msix_entry": ["vector": MemoryLayout<xen_msix_entry>.offset(of: \.vector), "entry": MemoryLayout<xen_msix_entry>.offset(of: \.entry)],
        "xen_pci_op": [
            "cmd": MemoryLayout<xen_pci_op>.offset(of: \.cmd), "err": MemoryLayout<xen_pci_op>.offset(of: \.err),
            "domain": MemoryLayout<xen_pci_op>.offset(of: \.domain), "bus": MemoryLayout<xen_pci_op>.offset(of: \.bus),
            "devfn": MemoryLayout<xen_pci_op>.offset(of: \.devfn), "offset": MemoryLayout<xen_pci_op>.offset(of: \.offset),
            "size": MemoryLayout<xen_pci_op>.offset(of: \.size), "value": MemoryLayout<xen_pci_op>.offset(of: \.value),
            "info": MemoryLayout<xen_pci_op>.offset(of: \.info), "msix_entries": MemoryLayout<xen_pci_op>.offset(of: \.msix_entries),
        ],
        "xen_pcie_aer_op": [
            "cmd": MemoryLayout<xen_pcie_aer_op>.offset(of: \.cmd), "err": MemoryLayout<xen_pcie_aer_op>.offset(of: \.err),
            "domain": MemoryLayout<xen_pcie_aer_op>.offset(of: \.domain), "bus": MemoryLayout<xen_pcie_aer_op>.offset(of: \.bus),
            "devfn": MemoryLayout<xen_pcie_aer_op>.offset(of: \.devfn),
        ],
        "xen_pci_sharedinfo": [
            "flags": MemoryLayout<xen_pci_sharedinfo>.offset(of: \.flags), "op": MemoryLayout<xen_pci_sharedinfo>.offset(of: \.op),
            "aer_op": MemoryLayout<xen_pci_sharedinfo>.offset(of: \.aer_op),
        ],
        "xpci_xenbus_softc": [
            "sc_dev": MemoryLayout<xpci_xenbus_softc>.offset(of: \.sc_dev), "sc_xbusd": MemoryLayout<xpci_xenbus_softc>.offset(of: \.sc_xbusd),
            "sc_evtchn": MemoryLayout<xpci_xenbus_softc>.offset(of: \.sc_evtchn),
            "sc_backend_status": MemoryLayout<xpci_xenbus_softc>.offset(of: \.sc_backend_status),
            "sc_shutdown": MemoryLayout<xpci_xenbus_softc>.offset(of: \.sc_shutdown),
            "sc_shared": MemoryLayout<xpci_xenbus_softc>.offset(of: \.sc_shared),
            "sc_shared_gntref": MemoryLayout<xpci_xenbus_softc>.offset(of: \.sc_shared_gntref),
        ],
        "pciback_pci_dev": [
            "pb_devlist_next": MemoryLayout<pciback_pci_dev>.offset(of: \.pb_devlist_next),
            "pb_guest_next": MemoryLayout<pciback_pci_dev>.offset(of: \.pb_guest_next),
            "pb_bus": MemoryLayout<pciback_pci_dev>.offset(of: \.pb_bus), "pb_device": MemoryLayout<pciback_pci_dev>.offset(of: \.pb_device),
            "pb_function": MemoryLayout<pciback_pci_dev>.offset(of: \.pb_function), "pb_pc": MemoryLayout<pciback_pci_dev>.offset(of: \.pb_pc),
            "pb_tag": MemoryLayout<pciback_pci_dev>.offset(of: \.pb_tag), "pb_pci_softc": MemoryLayout<pciback_pci_dev>.offset(of: \.pb_pci_softc),
            "pbx_instance": MemoryLayout<pciback_pci_dev>.offset(of: \.pbx_instance),
        ],
        "pci_bar": [
            "b_t": MemoryLayout<pci_bar>.offset(of: \.b_t), "b_h": MemoryLayout<pci_bar>.offset(of: \.b_h),
            "b_addr": MemoryLayout<pci_bar>.offset(of: \.b_addr), "b_size": MemoryLayout<pci_bar>.offset(of: \.b_size),
            "b_type": MemoryLayout<pci_bar>.offset(of: \.b_type), "b_valid": MemoryLayout<pci_bar>.offset(of: \.b_valid),
        ],
        "pciback_pci_softc": [
            "sc_dev": MemoryLayout<pciback_pci_softc>.offset(of: \.sc_dev), "sc_ih": MemoryLayout<pciback_pci_softc>.offset(of: \.sc_ih),
            "sc_pb": MemoryLayout<pciback_pci_softc>.offset(of: \.sc_pb), "sc_bars": MemoryLayout<pciback_pci_softc>.offset(of: \.sc_bars),
            "sc_intrhandle": MemoryLayout<pciback_pci_softc>.offset(of: \.sc_intrhandle), "sc_irq": MemoryLayout<pciback_pci_softc>.offset(of: \.sc_irq),
            "sc_id": MemoryLayout<pciback_pci_softc>.offset(of: \.sc_id), "sc_subid": MemoryLayout<pciback_pci_softc>.offset(of: \.sc_subid),
            "sc_kernfsname": MemoryLayout<pciback_pci_softc>.offset(of: \.sc_kernfsname),
        ],
        "pb_xenbus_instance": [
            "pbx_next": MemoryLayout<pb_xenbus_instance>.offset(of: \.pbx_next), "pbx_xbusd": MemoryLayout<pb_xenbus_instance>.offset(of: \.pbx_xbusd),
            "pbx_domid": MemoryLayout<pb_xenbus_instance>.offset(of: \.pbx_domid),
            "pbx_pb_pci_dev": MemoryLayout<pb_xenbus_instance>.offset(of: \.pbx_pb_pci_dev),
            "pbx_evtchn": MemoryLayout<pb_xenbus_instance>.offset(of: \.pbx_evtchn), "pbx_ih": MemoryLayout<pb_xenbus_instance>.offset(of: \.pbx_ih),
            "pbx_sh_info": MemoryLayout<pb_xenbus_instance>.offset(of: \.pbx_sh_info), "op": MemoryLayout<pb_xenbus_instance>.offset(of: \.op),
            "pbx_shinfo_handle": MemoryLayout<pb_xenbus_instance>.offset(of: \.pbx_shinfo_handle),
        ],
    ]

    static let swiftSizes: [String: Int] = [
        "xen_msix_entry": MemoryLayout<xen_msix_entry>.size, "xen_pci_op": MemoryLayout<xen_pci_op>.size,
        "xen_pcie_aer_op": MemoryLayout<xen_pcie_aer_op>.size, "xen_pci_sharedinfo": MemoryLayout<xen_pci_sharedinfo>.size,
        "xpci_xenbus_softc": MemoryLayout<xpci_xenbus_softc>.size, "pciback_pci_dev": MemoryLayout<pciback_pci_dev>.size,
        "pci_bar": MemoryLayout<pci_bar>.size, "pciback_pci_softc": MemoryLayout<pciback_pci_softc>.size,
        "pb_xenbus_instance": MemoryLayout<pb_xenbus_instance>.size,
    ]

    /// The wire structs' rows, then the softcs'.
    static func cTable() -> [xenpci_layout_row] {
        var n = 0, m = 0
        let p = xenpci_layout_table(&n)!, q = xenpci_softc_layout_table(&m)!
        return (0..<n).map { p[$0] } + (0..<m).map { q[$0] }
    }

    @Test("every struct and field in the C table has the same size/offset in Swift")
    func swiftMatchesC() {
        let rows = Self.cTable()
        #expect(rows.count == 69)
        var checked = 0
        for r in rows {
            let type = String(cString: r.type)
            if let f = r.field {
                let field = String(cString: f)
                let swift = Self.swiftOffsets[type]?[field] ?? nil
                #expect(swift == r.offset, "\(type).\(field): Swift offset \(String(describing: swift)), C \(r.offset)")
            } else {
                // Swift's size ignores tail padding; stride is the C sizeof.
                let stride = Self.strides[type]
                #expect(stride == r.size, "\(type): Swift stride \(String(describing: stride)), C sizeof \(r.size)")
            }
            checked += 1
        }
        #expect(checked == rows.count)
        // And the expected absolute figures of docs/NETBSD-PORT.md and docs/PROTOCOL.md §1.
        #expect(Self.strides["xen_pci_sharedinfo"] == 572)
        #expect(Self.strides["xen_pci_op"] == 548)
        #expect(Self.strides["xpci_xenbus_softc"] == 48)
        #expect(Self.strides["pciback_pci_dev"] == 64)
        #expect(Self.strides["pciback_pci_softc"] == 304)
        #expect(Self.strides["pci_bar"] == 40)
        #expect(Self.strides["pb_xenbus_instance"] == 608)
    }

    static let strides: [String: Int] = [
        "xen_msix_entry": MemoryLayout<xen_msix_entry>.stride, "xen_pci_op": MemoryLayout<xen_pci_op>.stride,
        "xen_pcie_aer_op": MemoryLayout<xen_pcie_aer_op>.stride, "xen_pci_sharedinfo": MemoryLayout<xen_pci_sharedinfo>.stride,
        "xpci_xenbus_softc": MemoryLayout<xpci_xenbus_softc>.stride, "pciback_pci_dev": MemoryLayout<pciback_pci_dev>.stride,
        "pci_bar": MemoryLayout<pci_bar>.stride, "pciback_pci_softc": MemoryLayout<pciback_pci_softc>.stride,
        "pb_xenbus_instance": MemoryLayout<pb_xenbus_instance>.stride,
    ]

    @Test("the Swift table covers every C row (no field silently unchecked)")
    func coverage() {
        for r in Self.cTable() where r.field != nil {
            let type = String(cString: r.type), field = String(cString: r.field!)
            #expect(Self.swiftOffsets[type]?.keys.contains(field) == true, "\(type).\(field) has no Swift check")
        }
    }
}

@Suite("Golden bytes of a filled-in op")
struct GoldenTests {
    static func expectGolden(_ op: xen_pci_op) {
        #expect(op.cmd == 0x0102_0304)
        #expect(op.err == -0x1112_1314)
        #expect(op.domain == 0x2122_2324)
        #expect(op.bus == 0x3132_3334)
        #expect(op.devfn == 0x4142_4344)
        #expect(op.offset == -0x5152_5354)
        #expect(op.size == 0x6162_6364)
        #expect(op.value == 0x7172_7374)
        #expect(op.info == 0x8182_8384)
        for i in 0..<XenPCI.maxMSIXVectors {
            #expect(op.msixEntry(i).vector == UInt16(0xA000 + i * 3))
            #expect(op.msixEntry(i).entry == UInt16(0x5000 + i * 7))
        }
    }

    @Test("C writes, Swift reads")
    func cToSwift() {
        var op = xen_pci_op()
        xenpci_golden_fill_op(&op)
        Self.expectGolden(op)
    }

    @Test("Swift writes, C reads")
    func swiftToC() {
        var op = xen_pci_op()
        op.cmd = 0x0102_0304; op.err = -0x1112_1314; op.domain = 0x2122_2324; op.bus = 0x3132_3334
        op.devfn = 0x4142_4344; op.offset = -0x5152_5354; op.size = 0x6162_6364; op.value = 0x7172_7374; op.info = 0x8182_8384
        for i in 0..<XenPCI.maxMSIXVectors {
            op.setMSIXEntry(i, xen_msix_entry(vector: UInt16(0xA000 + i * 3), entry: UInt16(0x5000 + i * 7)))
        }
        #expect(xenpci_golden_check_op(&op) == 0)
        op.setMSIXEntry(127, xen_msix_entry(vector: 1, entry: 2))
        #expect(xenpci_golden_check_op(&op) == 36 + 127 * 4 + 1, "a wrong last entry must be found at its byte")
    }

    @Test("the wire bytes of a conf_read are little-endian at the documented offsets")
    func wireBytes() {
        let op = xen_pci_op(command: .confRead, address: PCIAddress(segment: 1, bus: 2, device: 3, function: 4), offset: 0x40, size: 4)
        let bytes = withUnsafeBytes(of: op) { Array($0.prefix(36)) }
        #expect(bytes == [0,0,0,0, 0,0,0,0, 1,0,0,0, 2,0,0,0, 0x1c,0,0,0, 0x40,0,0,0, 4,0,0,0, 0,0,0,0, 0,0,0,0])
    }
}

@Suite("Shared page: atomics and the one-shot copy")
struct SharedPageTests {
    final class Page {
        let raw = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        init() { raw.initializeMemory(as: UInt8.self, repeating: 0, count: 4096) }
        deinit { raw.deallocate() }
        var page: SharedPage { SharedPage(raw) }
    }

    @Test("flag bits set and clear independently, 32 bits only")
    func flags() {
        let p = Page()
        let sh = p.page
        sh.pointer.pointee.op.cmd = 0xDEAD_BEEF
        sh.setFlags(XenPCI.aerHandler)
        sh.postRequest(xen_pci_op(command: .confRead, address: PCIAddress(bus: 0, device: 1, function: 0), offset: 0, size: 4))
        #expect(sh.flags == XenPCI.aerHandler | XenPCI.frontendActive)
        #expect(sh.testAndClear(XenPCI.frontendActive))
        #expect(!sh.testAndClear(XenPCI.frontendActive))
        #expect(sh.flags == XenPCI.aerHandler)
        #expect(sh.pointer.pointee.op.cmd == 0, "the op, not the flag op, wrote cmd")
    }

    @Test("completion writes back only err, value and the first nvec vectors")
    func completeWritesOnlyOutputs() {
        let p = Page()
        let sh = p.page
        var req = xen_pci_op(command: .enableMSIX, address: PCIAddress(bus: 0, device: 2, function: 0), offset: 7, size: 9, value: 3)
        for i in 0..<4 { req.setMSIXEntry(i, xen_msix_entry(vector: 0, entry: UInt16(i))) }
        sh.postRequest(req)
        var copy = xen_pci_op()
        sh.snapshotRequest(into: &copy)
        // The guest rewrites the request after the snapshot; the reply must not echo it.
        sh.pointer.pointee.op.offset = 99
        var reply = copy
        reply.err = PCIOpError.success.rawValue
        reply.value = 0
        reply.offset = 1234 // not an output: must not be written
        for i in 0..<4 { reply.setMSIXEntry(i, xen_msix_entry(vector: UInt16(40 + i), entry: 77)) }
        reply.setMSIXEntry(5, xen_msix_entry(vector: 555, entry: 0))
        sh.completeRequest(&reply, msixVectors: 3)
        let out = sh.readReply()
        #expect(sh.flags & XenPCI.frontendActive == 0)
        #expect(out.offset == 99)
        #expect(out.value == 0)
        #expect((0..<3).map { out.msixEntry($0).vector } == [40, 41, 42])
        #expect(out.msixEntry(3).vector == 0, "only nvec vectors are written")
        #expect(out.msixEntry(0).entry == 0, "entries are inputs, never written back")
        #expect(out.msixEntry(5).vector == 0)
    }

    @Test("a request posted on one thread is seen whole on another")
    func crossThread() async {
        let p = Page()
        let sh = p.page
        let n = 20_000
        let t = Thread {
            var seen = 0
            var copy = xen_pci_op()
            while seen < n {
                guard sh.flags & XenPCI.frontendActive != 0 else { continue }
                sh.snapshotRequest(into: &copy)
                copy.value = copy.value &* 2 &+ UInt32(bitPattern: copy.offset)
                copy.err = 0
                sh.completeRequest(&copy)
                seen += 1
            }
        }
        t.start()
        var bad = 0
        for i in 0..<n {
            sh.postRequest(xen_pci_op(command: .confWrite, address: PCIAddress(bus: 0, device: 0, function: 0), offset: Int32(i), size: 4, value: UInt32(i)))
            while sh.flags & XenPCI.frontendActive != 0 {}
            if sh.readReply().value != UInt32(i) * 3 { bad += 1 }
        }
        #expect(bad == 0)
    }
}

@Suite("Xen values")
struct XenValueTests {
    @Test func roots() {
        #expect(PCIRoot(xenstore: "0000:00") == PCIRoot(segment: 0, bus: 0))
        #expect(PCIRoot(xenstore: "0001:ff")?.description == "0001:ff")
        for bad in ["", "0000", "0000:", "0000:100", "g000:00", "0000:00:00", "00000:00", " 0000:00"] {
            #expect(PCIRoot(xenstore: bad) == nil, "'\(bad)' must be refused")
        }
    }

    @Test func states() {
        #expect(XenState(xenstore: "4") == .connected)
        #expect(XenState(xenstore: "9") == nil)
        #expect(XenState(xenstore: "x") == nil)
        for bad in ["04", " 4", "4 ", "+4", "\u{0664}", ""] { #expect(XenState(xenstore: bad) == nil, "'\(bad)' must be refused") }
        #expect(XenState.allCases.map(\.rawValue) == Array(0...8))
        #expect(XenState.reconfigured.rawValue == XenbusStateReconfigured.rawValue)
    }
}
