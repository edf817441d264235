import Foundation

/// An error from a hypervisor call: the errno, the operation and its object.
public struct XenError: Error, Equatable, CustomStringConvertible, Sendable {
    public var code: Int32
    public var operation: String
    public var detail: String

    public init(_ code: Int32, _ operation: String, _ detail: String = "") {
        self.code = code
        self.operation = operation
        self.detail = detail
    }

    public var description: String {
        let name = XenError.names[code] ?? "errno \(code)"
        let what = detail.isEmpty ? operation : "\(operation) \(detail)"
        return "\(what): \(name) (\(String(cString: strerror(code))))"
    }

    public static func == (a: XenError, b: XenError) -> Bool { a.code == b.code }

    /// True for the error a conflicting xenstore transaction ends with.
    public var isRetry: Bool { code == EAGAIN }

    static let names: [Int32: String] = [
        EPERM: "EPERM", ENOENT: "ENOENT", EIO: "EIO", E2BIG: "E2BIG", EBADF: "EBADF",
        EAGAIN: "EAGAIN", ENOMEM: "ENOMEM", EACCES: "EACCES", EBUSY: "EBUSY", EEXIST: "EEXIST",
        EINVAL: "EINVAL", ENOSPC: "ENOSPC", ENOSYS: "ENOSYS", ETIMEDOUT: "ETIMEDOUT",
        ENODEV: "ENODEV", EISDIR: "EISDIR", ENOTEMPTY: "ENOTEMPTY", EROFS: "EROFS",
    ]
}
