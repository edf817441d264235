import Foundation
import XenHypervisor
import CXenLibs

/// The Xen user-space libraries, loaded by soname at run time
/// (CShims/CXenLibs/xenpci_xenlibs.c). Nothing links against them, so a
/// host without Xen still runs the mock; when one is wanted and missing,
/// the error carries dlerror()'s own words.
public enum XenLibrary: CaseIterable, Sendable, CustomStringConvertible {
    case xenstore, gnttab, evtchn, xenctrl, xencall

    var c: xenpci_xenlib {
        switch self {
        case .xenstore: return XENPCI_XENLIB_XENSTORE
        case .gnttab: return XENPCI_XENLIB_GNTTAB
        case .evtchn: return XENPCI_XENLIB_EVTCHN
        case .xenctrl: return XENPCI_XENLIB_XENCTRL
        case .xencall: return XENPCI_XENLIB_XENCALL
        }
    }

    public var description: String {
        switch self {
        case .xenstore: return "libxenstore"
        case .gnttab: return "libxengnttab"
        case .evtchn: return "libxenevtchn"
        case .xenctrl: return "libxenctrl"
        case .xencall: return "libxencall"
        }
    }

    /// The sonames tried, in order.
    public var sonames: [String] {
        var n = 0
        guard let list = xenpci_xenlib_sonames(c, &n) else { return [] }
        return (0..<n).map { String(cString: list[$0]!) }
    }

    /// The soname that was loaded, nil before a successful `load()`.
    public var loadedSoname: String? { xenpci_xenlib_soname(c).map { String(cString: $0) } }

    /// Loads the library and resolves every function we use (idempotent).
    public func load() throws {
        var err = [CChar](repeating: 0, count: 2048)
        if xenpci_xenlib_load(c, &err, err.count) != 0 {
            throw XenUnavailable(String(cString: err))
        }
    }

    /// Tries `sonames` instead of the built-in list, without recording
    /// anything: for tests and diagnostics.
    public func probe(sonames: [String]) throws {
        var err = [CChar](repeating: 0, count: 2048)
        let cstrings = sonames.map { strdup($0) }
        defer { cstrings.forEach { free($0) } }
        let rc = cstrings.map { UnsafePointer($0) }.withUnsafeBufferPointer {
            xenpci_xenlib_probe(c, $0.baseAddress, $0.count, &err, err.count)
        }
        if rc != 0 { throw XenUnavailable(String(cString: err)) }
    }
}

// The libraries' function tables (xenpci_xenlibs.h): published by the C
// loader once, complete, and never written after, so reading them from any
// thread is safe. Each is used only after its library's `load()` succeeded
// (every binding's init loads it first); before, this traps, as a NULL
// function pointer did.
var libxenstore: xenpci_xenstore_fns { xenpci_xenstore_table()!.pointee }
var libxengnttab: xenpci_gnttab_fns { xenpci_gnttab_table()!.pointee }
var libxenevtchn: xenpci_evtchn_fns { xenpci_evtchn_table()!.pointee }
var libxenctrl: xenpci_xenctrl_fns { xenpci_xenctrl_table()!.pointee }
var libxencall: xenpci_xencall_fns { xenpci_xencall_table()!.pointee }

/// An open handle of one of the Xen libraries, which any thread may use.
// @unchecked Sendable: libxenstore serialises a handle's requests with its own
// pthread mutexes; libxenctrl and libxencall are reentrant unless opened with
// their NON_REENTRANT flag (never passed here); a libxenevtchn or libxengnttab
// handle is an fd whose ioctls and reads the kernel serialises.
struct LibHandle: @unchecked Sendable {
    let pointer: OpaquePointer
    init(_ pointer: OpaquePointer) { self.pointer = pointer }
}

/// Why the real Xen binding cannot be used: one line for the user.
public struct XenUnavailable: Error, CustomStringConvertible, Sendable {
    public var reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}

/// Runs a library call that returns -1 (or another negative value) with errno
/// on failure; EINTR is retried.
@discardableResult
func xenCall(_ op: @autoclosure () -> String, _ detail: @autoclosure () -> String = "",
             _ body: () -> Int32) throws -> Int32 {
    while true {
        errno = 0
        let r = body()
        if r >= 0 { return r }
        let e = errno
        if e == EINTR { continue }
        // libxenctrl sets errno; a few calls return -errno instead.
        throw XenError(e != 0 ? e : (r < -1 ? -r : EIO), op(), detail())
    }
}

/// The errno after a failed call, EIO when the library left none.
func lastErrno() -> Int32 { errno == 0 ? EIO : errno }
