import Foundation

/// libFuzzer's entry: the target comes from XENPCI_FUZZ_TARGET.
let selected: FuzzTarget = {
    let name = ProcessInfo.processInfo.environment["XENPCI_FUZZ_TARGET"] ?? ""
    guard let t = FuzzTarget(rawValue: name) else {
        fatalError("set XENPCI_FUZZ_TARGET to one of: \(FuzzTarget.allCases.map(\.rawValue).joined(separator: ", "))")
    }
    return t
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    selected.run(size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}

#if !XENPCI_LIBFUZZER
/// Without libFuzzer: replay corpus files, `xenpci-fuzz TARGET FILE|DIR...`.
@main
struct Replay {
    static func main() {
        let args = Array(CommandLine.arguments.dropFirst())
        guard let name = args.first, let t = FuzzTarget(rawValue: name) else {
            FileHandle.standardError.write("usage: xenpci-fuzz \(FuzzTarget.allCases.map(\.rawValue).joined(separator: "|")) FILE|DIR...\n".data(using: .utf8)!)
            exit(2)
        }
        var n = 0
        for path in args.dropFirst() {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { print("xenpci-fuzz: no such file: \(path)"); exit(2) }
            let files = isDir.boolValue ? ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted().map { path + "/" + $0 } : [path]
            for f in files {
                t.run(Array(FileManager.default.contents(atPath: f) ?? Data()))
                n += 1
            }
        }
        print("xenpci-fuzz: \(t.rawValue): \(n) inputs replayed, no invariant broken")
    }
}
#endif

#if XENPCI_LIBFUZZER
/// SwiftPM links an executable's `main` to `<module>_main`; under libFuzzer
/// that entry hands over to libFuzzer's driver.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<Int32>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt

@_cdecl("xenpci_fuzz_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var c = argc
    var v = argv
    return LLVMFuzzerRunDriver(&c, &v) { data, size in fuzzOneInput(data, size) }
}
#endif
