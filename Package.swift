// swift-tools-version:6.0
// The architecture, bottom to top (no @_exported: each file imports what it uses):
//   PCIModel (PCI only, nothing Xen: addresses, config space, capabilities)  +  PCIHost (Linux sysfs `resource`)
//   CXenPCI (C wire ABI: shared page, flag atomics)  +  CXenPCISoftc (NetBSD softcs)  +  CXenLibs (Xen libraries)
//   -> XenPCIABI (Swift views: states, commands, errors, PCI roots, shared page)
//   -> XenHypervisor (interfaces: xenstore, grants, event channels, interrupt routing)
//   -> XenMock (in-process hypervisor; a library product, not a test helper)
//   -> PCIBack (pciback(4)) and XPCI (xpci(4)): interfaces only, each handed just its
//      services (BackendServices, FrontendServices); XenReal (real Xen) and XenToolstack beside them
//   -> xenpci (the command: picks a hypervisor and runs the drivers)
import PackageDescription

let package = Package(
    name: "xenpci",
    products: [
        .executable(name: "xenpci", targets: ["xenpci"]),
        .library(name: "XenHypervisor", targets: ["XenHypervisor"]),
        .library(name: "XenMock", targets: ["XenMock"]),
        .library(name: "PCIBack", targets: ["PCIBack"]),
        .library(name: "XPCI", targets: ["XPCI"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        // Three C modules, so each Swift module sees only the C it needs: the wire
        // ABI and shim (everyone), the NetBSD softcs (the drivers, their state of
        // record), the Xen libraries' dlopen() tables (XenReal).
        .target(name: "CXenPCI", path: ".", sources: ["CShims/CXenPCI"], publicHeadersPath: "Headers/CXenPCI"),
        .target(name: "CXenPCISoftc", dependencies: ["CXenPCI"], path: ".", sources: ["CShims/CXenPCISoftc"],
                publicHeadersPath: "Headers/CXenPCISoftc"),
        .target(name: "CXenLibs", path: ".", sources: ["CShims/CXenLibs"], publicHeadersPath: "Headers/CXenLibs",
                linkerSettings: [.linkedLibrary("dl")]),
        .target(name: "XenPCIABI", dependencies: ["CXenPCI", "PCIModel"]),
        .target(name: "XenHypervisor", dependencies: ["XenPCIABI", "PCIModel"]),
        .target(name: "PCIModel"),
        // Linux host PCI (sysfs): what the backend and the toolstack both read.
        .target(name: "PCIHost"),
        .target(name: "XenMock", dependencies: ["CXenPCI", "XenPCIABI", "XenHypervisor", "PCIModel"]),
        .target(name: "PCIBack", dependencies: ["CXenPCI", "CXenPCISoftc", "XenPCIABI", "XenHypervisor", "PCIModel", "PCIHost"]),
        .target(name: "XPCI", dependencies: ["CXenPCI", "CXenPCISoftc", "XenPCIABI", "XenHypervisor", "PCIModel"]),
        // The real Xen libraries, dlopen()ed by soname at run time (never linked).
        // What libxl does for PCI pass-through, over any XenStore: the demo and `xenpci attach`.
        .target(name: "XenToolstack", dependencies: ["XenPCIABI", "XenHypervisor", "PCIModel", "PCIHost"]),
        .target(name: "XenReal", dependencies: ["CXenLibs", "XenPCIABI", "XenHypervisor", "PCIModel", "XenToolstack"]),
        .executableTarget(
            name: "xenpci",
            dependencies: ["XenPCIABI", "XenHypervisor", "PCIModel", "PCIHost", "XenMock", "XenReal", "XenToolstack", "PCIBack", "XPCI",
                           .product(name: "ArgumentParser", package: "swift-argument-parser"),
                           .product(name: "Logging", package: "swift-log")]),
        // libFuzzer harness (`make fuzz`); built normally it replays corpora.
        .executableTarget(name: "xenpci-fuzz", dependencies: ["CXenPCI", "XenPCIABI", "XenHypervisor", "PCIModel", "PCIHost", "PCIBack", "XPCI", "XenMock"]),
        // issue 9: `make bench` (docs/PERFORMANCE.md); the C reference is bench/xenpci_ref.c.
        .executableTarget(name: "xenpci-bench", dependencies: ["XenPCIABI", "XenHypervisor", "PCIModel", "PCIHost", "XenMock", "XenToolstack", "PCIBack", "XPCI"]),
        .testTarget(name: "XenPCIABITests", dependencies: ["CXenPCI", "CXenPCISoftc", "XenPCIABI", "PCIModel"]),
        .testTarget(name: "XenMockTests", dependencies: ["XenHypervisor", "XenMock"]),
        .testTarget(name: "PCIModelTests", dependencies: ["PCIModel"]),
        .testTarget(name: "PCIHostTests", dependencies: ["PCIHost"]),
        .testTarget(name: "PCIBackTests", dependencies: ["CXenPCI", "CXenPCISoftc", "XenPCIABI", "XenHypervisor", "PCIModel", "PCIHost", "PCIBack", "XenMock"]),
        .testTarget(name: "XPCITests", dependencies: ["CXenPCI", "CXenPCISoftc", "XenPCIABI", "XenHypervisor", "PCIModel", "XPCI", "XenMock"]),
        .testTarget(name: "PairTests", dependencies: ["XenPCIABI", "XenHypervisor", "PCIModel", "PCIHost", "PCIBack", "XPCI", "XenMock", "XenToolstack"]),
        .testTarget(name: "CLITests", dependencies: ["xenpci", "XenPCIABI", "XenHypervisor", "PCIBack", "PCIModel", "XPCI", "XenMock",
                                                     .product(name: "Logging", package: "swift-log")]),
        .testTarget(name: "XenRealTests", dependencies: ["CXenLibs", "XenPCIABI", "XenHypervisor", "PCIModel", "XenReal", "XenToolstack", "XenMock"]),
    ],
    // Swift 6 language mode: complete concurrency checking everywhere.
    // Memory another domain writes (SharedPage) is beyond the Sendable
    // checker: the C shim supplies the atomics and barriers for it.
    swiftLanguageModes: [.v6]
)

for t in package.targets where !["CXenPCI", "CXenPCISoftc", "CXenLibs"].contains(t.name) {
    t.swiftSettings = (t.swiftSettings ?? []) + [.enableUpcomingFeature("MemberImportVisibility")]
}
