import Foundation
import PCIBack
import PCIModel

/// The functions a config file is checked against, as the backend that
/// reads it would find them. Nothing here claims, resets or writes a
/// function: each is opened as an in-memory snapshot.
struct ConfigTarget {
    /// ROOT of ROOT/bus/pci/devices, for the errors.
    var root: String
    var available: [PCIAddress]
    /// The mock's rules: functions are snapshots, so a host driver's is
    /// exported read-only and every function can be reset. On Xen a host
    /// driver's function is refused and strict reset applies.
    var snapshots: Bool
    var open: (PCIAddress) throws -> PCIDeviceAccess

    /// The mock backend's devices (this machine's, or the fixtures).
    static func mock(_ source: DeviceSource) -> ConfigTarget {
        ConfigTarget(root: source.root, available: source.addresses, snapshots: true) { try source.open($0) }
    }

    /// The backend on Xen: this host's sysfs.
    static func xen(sysfsRoot root: String) throws -> ConfigTarget {
        let available: [PCIAddress]
        do { available = try listSysfsDevices(root: root) } catch {
            throw CLIError(message: "\(root)/bus/pci/devices: no such directory (not a sysfs-shaped tree)", status: CLIError.noInput)
        }
        return ConfigTarget(root: root, available: available, snapshots: false) { a in
            let d = try SysfsPCIDevice(root: root, address: a, inMemory: true)
            // Unprivileged readers get 64 bytes: quirks could not be judged.
            let n = FileManager.default.contents(atPath: d.path + "/config")?.count ?? 0
            guard n >= 256 else { throw CLIError.permission("only \(n) bytes of its config space are readable: check as root") }
            return d
        }
    }
}

/// Linux has a `reset` file only for a function with a reset method.
func sysfsHasResetMethod(_ d: PCIDeviceAccess) -> Bool {
    guard let s = d as? SysfsPCIDevice else { return true }
    return FileManager.default.fileExists(atPath: s.path + "/reset")
}

extension DaemonConfig {
    /// Every section the target would refuse to claim, found without claiming:
    /// the function must exist, be free of host drivers (on Xen), have a reset
    /// method unless no-strict-reset is on (on Xen), and take every quirk.
    func deviceProblems(_ t: ConfigTarget) -> [ConfigProblem] {
        var out: [ConfigProblem] = []
        for e in entries {
            func fail(_ line: Int, _ why: String) { out.append(ConfigProblem(line: line, message: "[\(e.address)]: \(why)")) }
            guard t.available.contains(e.address) else {
                fail(e.line, "no such function in \(t.root)/bus/pci/devices")
                continue
            }
            let d: PCIDeviceAccess
            do { d = try t.open(e.address) } catch { fail(e.line, userMessage(error)); continue }
            if !t.snapshots, let driver = d.driver, !stubDrivers.contains(driver) {
                fail(e.line, "in use by the host driver '\(driver)'; unbind it, or bind it to pciback, first")
            }
            if !t.snapshots && !e.options.noStrictReset && !sysfsHasResetMethod(d) {
                fail(e.line, "has no reset method (strict reset); set no-strict-reset = on to claim it with only its saved state restored")
            }
            do {
                for r in try PCIQuirk.check(e.options.quirks, on: d) {
                    fail(e.quirkLines[safe: r.index] ?? e.line, r.reason)
                }
            } catch {
                fail(e.line, userMessage(error))
            }
        }
        return out
    }

    /// The whole check `check-config`, the backend's start and a reload run:
    /// every problem of the file, its syntax and its functions, by line. A
    /// file that cannot be read is thrown.
    static func check(_ path: String, against target: ConfigTarget) throws -> (DaemonConfig, [ConfigProblem]) {
        let (c, syntax) = parseCollecting(try read(path), path: path)
        let all = (syntax + c.deviceProblems(target)).enumerated().sorted { ($0.element.line, $0.offset) < ($1.element.line, $1.offset) }.map(\.element)
        return (c, all)
    }

    /// `check`, throwing every problem at once.
    static func loadChecked(_ path: String, against target: ConfigTarget) throws -> DaemonConfig {
        let (c, problems) = try check(path, against: target)
        if !problems.isEmpty { throw ConfigErrors(path: path, problems: problems) }
        return c
    }
}
