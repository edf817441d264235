@_exported import XenPCIABI
@_exported import XenHypervisor
