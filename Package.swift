// swift-tools-version:6.0
// The architecture, bottom to top:
//   CXenPCI (C ABI: shared page, NetBSD softcs, atomics)  ->  XenPCIABI (Swift views)
//   -> XenHypervisor (interfaces)  ->  XenMock (in-process hypervisor)
//   -> PCIBack (backend) / XPCI (frontend), which see only the interfaces
//   -> xenpci (the command, which picks a hypervisor)
import PackageDescription

// Swift 5 language mode: the drivers share raw pointers into memory another
// domain writes, which the Swift 6 Sendable checker cannot reason about; the
// C shim supplies the atomics and barriers instead.

let package = Package(
    name: "xenpci",
    products: [
        .executable(name: "xenpci", targets: ["xenpci"]),
        .library(name: "XenHypervisor", targets: ["XenHypervisor"]),
        .library(name: "XenMock", targets: ["XenMock"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ],
    targets: [
        .target(name: "CXenPCI", path: ".", sources: ["CShims/CXenPCI"], publicHeadersPath: "Headers"),
        .target(name: "XenPCIABI", dependencies: ["CXenPCI"]),
        .target(name: "XenHypervisor", dependencies: ["XenPCIABI"]),
        .target(name: "XenMock", dependencies: ["XenHypervisor"]),
        .executableTarget(
            name: "xenpci",
            dependencies: ["XenMock", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .testTarget(name: "XenPCIABITests", dependencies: ["XenPCIABI"]),
        .testTarget(name: "XenMockTests", dependencies: ["XenMock"]),
    ],
    swiftLanguageModes: [.v5]
)
