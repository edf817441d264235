import PCIModel

extension PCIQuirk {
    /// Whether each of `quirks` would be accepted on `device`, decided as a
    /// claim would (they may not overlap an emulated register, each other, or
    /// run past the config space) from its config space alone: the device is
    /// only read, never claimed, reset or written. Returns, for each quirk
    /// refused, its index and why.
    public static func check(_ quirks: [PCIQuirk], on device: PCIDeviceAccess) throws -> [(index: Int, reason: String)] {
        let m = try ConfigMediation(device: device, golden: device.readConfigSpace())
        var refused: [(index: Int, reason: String)] = []
        for (i, q) in quirks.enumerated() {
            do { try m.addQuirk(q) } catch { refused.append((i, "\(error)")) }
        }
        return refused
    }
}
