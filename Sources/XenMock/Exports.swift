@_exported import XenHypervisor
