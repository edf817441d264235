import ArgumentParser
import XenMock

struct XenPCICommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "xenpci", abstract: "Xen PCI pass-through: pciback and xpci in Swift")
}
XenPCICommand.main()
