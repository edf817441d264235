import ArgumentParser
import Foundation

// ArgumentParser reports its own usage errors. Everything the command finds
// itself (bad BDF, hide list, offset, size, value, unknown device, missing
// permission, no Xen, a driver's error) is one line with a sysexits(3) status.
var command: ParsableCommand
do {
    command = try XenPCICommand.parseAsRoot()
} catch {
    XenPCICommand.exit(withError: error)
}
do {
    try command.run()
} catch let e as ExitCode {
    exit(e.rawValue)
} catch where String(reflecting: type(of: error)).hasPrefix("ArgumentParser.") {
    // A help or usage request that surfaces from run() (a command with
    // subcommands and no run of its own): ArgumentParser prints it.
    XenPCICommand.exit(withError: error)
} catch {
    let e = CLIError.from(error)
    // A config file's errors are one line each, every one prefixed.
    let lines = e.message.split(separator: "\n").map { "xenpci: \($0)\n" }.joined()
    Console.standard.err(lines, priority: .error)
    exit(e.status)
}
