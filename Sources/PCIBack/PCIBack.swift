import XenHypervisor
import PCIModel
