@_exported import XenPCIABI
