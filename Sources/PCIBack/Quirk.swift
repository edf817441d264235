import Foundation
import PCIModel

/// A quirk line, `[DDDD:]BB:SS.F-REG:SIZE:MASK`: one extra register the guest
/// may write, and only the bits of MASK (Linux ignores the mask; we do not).
public struct PCIQuirk: Equatable, CustomStringConvertible, Sendable {
    public var address: PCIAddress
    public var offset: Int
    public var size: Int
    public var mask: UInt32

    public init(address: PCIAddress, offset: Int, size: Int, mask: UInt32) {
        self.address = address; self.offset = offset; self.size = size; self.mask = mask
    }

    public init(parsing text: String) throws {
        let t = text.trimmingCharacters(in: asciiBlanks)
        guard let dash = t.lastIndex(of: "-") else { throw PCIBackError.badQuirk("'\(text)': expected [DDDD:]BB:SS.F-REG:SIZE:MASK") }
        do { address = try PCIAddress(parsing: String(t[..<dash])) } catch { throw PCIBackError.badQuirk("'\(text)': \(error)") }
        let f = t[t.index(after: dash)...].split(separator: ":", omittingEmptySubsequences: false)
        func num(_ s: Substring, _ what: String) throws -> UInt32 {
            let h = s.hasPrefix("0x") || s.hasPrefix("0X") ? s.dropFirst(2) : s
            guard let v = parseASCIIHex(h) else { throw PCIBackError.badQuirk("'\(text)': \(what) '\(s)' is not a hex number") }
            return v
        }
        guard f.count == 3 else { throw PCIBackError.badQuirk("'\(text)': expected REG:SIZE:MASK after the address") }
        offset = Int(try num(f[0], "register"))
        size = Int(try num(f[1], "size"))
        mask = try num(f[2], "mask")
        guard [1, 2, 4].contains(size) else { throw PCIBackError.badQuirk("'\(text)': size \(size) is not 1, 2 or 4") }
        guard offset % size == 0, offset + size <= PCIReg.extendedSize else {
            throw PCIBackError.badQuirk("'\(text)': register 0x\(hex(offset, 3)) is not a size-aligned offset inside config space")
        }
        guard size == 4 || mask >> (size * 8) == 0 else { throw PCIBackError.badQuirk("'\(text)': mask 0x\(hex(mask, 1)) is wider than \(size) bytes") }
    }

    public var description: String { "\(address)-0x\(hex(offset, 3)):\(size):0x\(hex(mask, size * 2))" }
}

