/*
 * xenpci_abi.h - the Xen PV PCI shared page and xenbus states, byte for byte.
 *
 * Written for this project from the documented wire contract
 * (docs/PROTOCOL.md §1); `make abi-check` compares every size, offset
 * and constant here with the system's <xen/io/pciif.h> and <xen/io/xenbus.h>.
 * The layout is identical on i386 and x86_64: only 32- and 16-bit fields,
 * no padding anywhere.
 */
#ifndef XENPCI_ABI_H
#define XENPCI_ABI_H

#include <stddef.h>
#include <stdint.h>

/* Xen scalar types (xen.h, grant_table.h, event_channel.h). */
typedef uint16_t domid_t;
typedef uint32_t grant_ref_t;
typedef uint32_t grant_handle_t;
typedef uint32_t evtchn_port_t;

#define XENPCI_PAGE_SIZE 4096

/* Written by the frontend to `magic`; the backend refuses anything else. */
#define XEN_PCI_MAGIC "7"

/* Bits of xen_pci_sharedinfo.flags (bit numbers, then masks). */
#define _XEN_PCIF_active     0 /* frontend posted a request; backend clears */
#define XEN_PCIF_active      (1u << _XEN_PCIF_active)
#define _XEN_PCIB_AERHANDLER 1 /* frontend can handle AER requests */
#define XEN_PCIB_AERHANDLER  (1u << _XEN_PCIB_AERHANDLER)
#define _XEN_PCIB_active     2 /* backend posted an AER request; frontend clears */
#define XEN_PCIB_active      (1u << _XEN_PCIB_active)

/* xen_pci_op.cmd and xen_pcie_aer_op.cmd */
#define XEN_PCI_OP_conf_read        0
#define XEN_PCI_OP_conf_write       1
#define XEN_PCI_OP_enable_msi       2
#define XEN_PCI_OP_disable_msi      3
#define XEN_PCI_OP_enable_msix      4
#define XEN_PCI_OP_disable_msix     5
#define XEN_PCI_OP_aer_detected     6
#define XEN_PCI_OP_aer_resume       7
#define XEN_PCI_OP_aer_mmio         8
#define XEN_PCI_OP_aer_slotreset    9
#define XEN_PCI_OP_enable_multi_msi 10

/* xen_pci_op.err: the only six values this project ever writes. */
#define XEN_PCI_ERR_success          0
#define XEN_PCI_ERR_dev_not_found   (-1)
#define XEN_PCI_ERR_invalid_offset  (-2)
#define XEN_PCI_ERR_access_denied   (-3)
#define XEN_PCI_ERR_not_implemented (-4)
#define XEN_PCI_ERR_op_failed       (-5)

/* MSI-X entries that fit in the op. */
#define SH_INFO_MAX_VEC 128

struct xen_msix_entry {
    uint16_t vector; /* out: pirq given by the backend */
    uint16_t entry;  /* in: MSI-X table index */
};

struct xen_pci_op {
    uint32_t cmd;
    int32_t  err;
    uint32_t domain; /* PCI segment */
    uint32_t bus;
    uint32_t devfn;
    int32_t  offset;
    int32_t  size;
    uint32_t value;  /* in: data to write; out: data read, pirq, nvec */
    uint32_t info;   /* enable_multi_msi: vector count */
    struct xen_msix_entry msix_entries[SH_INFO_MAX_VEC];
};

struct xen_pcie_aer_op {
    uint32_t cmd;
    int32_t  err;    /* channel state on request, result on reply */
    uint32_t domain; /* guest-visible address */
    uint32_t bus;
    uint32_t devfn;
};

struct xen_pci_sharedinfo {
    uint32_t flags;
    struct xen_pci_op op;
    struct xen_pcie_aer_op aer_op;
};

/* xen/io/xenbus.h */
enum xenbus_state {
    XenbusStateUnknown       = 0,
    XenbusStateInitialising  = 1,
    XenbusStateInitWait      = 2,
    XenbusStateInitialised   = 3,
    XenbusStateConnected     = 4,
    XenbusStateClosing       = 5,
    XenbusStateClosed        = 6,
    XenbusStateReconfiguring = 7,
    XenbusStateReconfigured  = 8
};
typedef enum xenbus_state XenbusState;

/* Pinned: a change here is a wire break with every real peer. */
_Static_assert(sizeof(domid_t) == 2, "domid_t");
_Static_assert(sizeof(grant_ref_t) == 4, "grant_ref_t");
_Static_assert(sizeof(grant_handle_t) == 4, "grant_handle_t");
_Static_assert(sizeof(evtchn_port_t) == 4, "evtchn_port_t");
_Static_assert(sizeof(XenbusState) == 4, "XenbusState");

_Static_assert(sizeof(struct xen_msix_entry) == 4, "xen_msix_entry size");
_Static_assert(offsetof(struct xen_msix_entry, vector) == 0, "vector");
_Static_assert(offsetof(struct xen_msix_entry, entry) == 2, "entry");

_Static_assert(sizeof(struct xen_pci_op) == 548, "xen_pci_op size");
_Static_assert(_Alignof(struct xen_pci_op) == 4, "xen_pci_op align");
_Static_assert(offsetof(struct xen_pci_op, cmd) == 0, "cmd");
_Static_assert(offsetof(struct xen_pci_op, err) == 4, "err");
_Static_assert(offsetof(struct xen_pci_op, domain) == 8, "domain");
_Static_assert(offsetof(struct xen_pci_op, bus) == 12, "bus");
_Static_assert(offsetof(struct xen_pci_op, devfn) == 16, "devfn");
_Static_assert(offsetof(struct xen_pci_op, offset) == 20, "offset");
_Static_assert(offsetof(struct xen_pci_op, size) == 24, "size");
_Static_assert(offsetof(struct xen_pci_op, value) == 28, "value");
_Static_assert(offsetof(struct xen_pci_op, info) == 32, "info");
_Static_assert(offsetof(struct xen_pci_op, msix_entries) == 36, "msix_entries");

_Static_assert(sizeof(struct xen_pcie_aer_op) == 20, "xen_pcie_aer_op size");
_Static_assert(offsetof(struct xen_pcie_aer_op, cmd) == 0, "aer cmd");
_Static_assert(offsetof(struct xen_pcie_aer_op, err) == 4, "aer err");
_Static_assert(offsetof(struct xen_pcie_aer_op, domain) == 8, "aer domain");
_Static_assert(offsetof(struct xen_pcie_aer_op, bus) == 12, "aer bus");
_Static_assert(offsetof(struct xen_pcie_aer_op, devfn) == 16, "aer devfn");

_Static_assert(sizeof(struct xen_pci_sharedinfo) == 572, "sharedinfo size");
_Static_assert(offsetof(struct xen_pci_sharedinfo, flags) == 0, "flags");
_Static_assert(offsetof(struct xen_pci_sharedinfo, op) == 4, "op");
_Static_assert(offsetof(struct xen_pci_sharedinfo, aer_op) == 552, "aer_op");
_Static_assert(sizeof(struct xen_pci_sharedinfo) <= XENPCI_PAGE_SIZE, "fits a page");

#endif /* XENPCI_ABI_H */
