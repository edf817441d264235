/*
 * xenpci_softc.h - NetBSD's xpci(4) and pciback(4) softc structures, mirrored
 * field for field at their amd64 offsets (docs/NETBSD-PORT.md).
 *
 * Kernel-only handle types (device_t, bus-space tags, interrupt cookies,
 * chipset tags) become opaque pointer-sized fields so that order, size and
 * alignment do not change. The Swift drivers keep their state in these
 * structures; the Swift side owns the memory and gives the opaque fields
 * meaning only inside the driver that owns them.
 */
#ifndef XENPCI_SOFTC_H
#define XENPCI_SOFTC_H

#include "xenpci_abi.h"

typedef void *xenpci_kptr_t;          /* device_t, void *, cookies */
typedef uint64_t xenpci_vaddr_t;      /* bus_space_handle_t, bus_addr_t, bus_size_t */
typedef uint32_t xenpci_pcireg_t;     /* pcireg_t */
typedef union { uint32_t tag; } xenpci_pcitag_t; /* pcitag_t on amd64 */

/* sc_backend_status */
#define XPCI_BACKEND_DISCONNECTED 0
#define XPCI_BACKEND_CONNECTED    1
#define XPCI_BACKEND_SUSPENDED    2
#define XPCI_GRANT_INVALID        ((grant_ref_t)-1)

struct xpci_xenbus_softc {
    xenpci_kptr_t sc_dev;                  /* device_t */
    xenpci_kptr_t sc_xbusd;                /* struct xenbus_device * */
    unsigned int sc_evtchn;
    int sc_backend_status;
    int sc_shutdown;
    struct xen_pci_sharedinfo *sc_shared;
    grant_ref_t sc_shared_gntref;
};

struct pciback_pci_softc;
struct pb_xenbus_instance;

struct pciback_pci_dev {
    struct { struct pciback_pci_dev *sle_next; } pb_devlist_next; /* SLIST_ENTRY */
    struct { struct pciback_pci_dev *sle_next; } pb_guest_next;   /* SLIST_ENTRY */
    unsigned int pb_bus;
    unsigned int pb_device;
    unsigned int pb_function;
    xenpci_kptr_t pb_pc;                   /* pci_chipset_tag_t */
    xenpci_pcitag_t pb_tag;
    struct pciback_pci_softc *pb_pci_softc;
    struct pb_xenbus_instance *pbx_instance; /* owning guest, NULL when free */
};

struct pci_bar {
    xenpci_kptr_t b_t;                     /* bus_space_tag_t */
    xenpci_vaddr_t b_h;                    /* bus_space_handle_t */
    xenpci_vaddr_t b_addr;                 /* bus_addr_t */
    xenpci_vaddr_t b_size;                 /* bus_size_t */
    int b_type;                            /* PCI_MAPREG_TYPE_* */
    int b_valid;
};

#define PCIBACK_NBARS 6
#define PCIBACK_KERNFSNAME 16

struct pciback_pci_softc {
    xenpci_kptr_t sc_dev;
    xenpci_kptr_t sc_ih;                   /* interrupt cookie */
    struct pciback_pci_dev *sc_pb;
    struct pci_bar sc_bars[PCIBACK_NBARS];
    uint64_t sc_intrhandle;                /* pci_intr_handle_t */
    int sc_irq;
    xenpci_pcireg_t sc_id;                 /* vendor | device << 16 */
    xenpci_pcireg_t sc_subid;              /* subsystem vendor | id << 16 */
    char sc_kernfsname[PCIBACK_KERNFSNAME]; /* "BB:DD.F" under /kern/xen/pci */
};

struct pb_xenbus_instance {
    struct { struct pb_xenbus_instance *sle_next; } pbx_next;     /* SLIST_ENTRY */
    xenpci_kptr_t pbx_xbusd;               /* struct xenbus_device * */
    domid_t pbx_domid;
    struct { struct pciback_pci_dev *slh_first; } pbx_pb_pci_dev; /* SLIST_HEAD */
    unsigned int pbx_evtchn;
    xenpci_kptr_t pbx_ih;
    struct xen_pci_sharedinfo *pbx_sh_info; /* the guest's mapped page */
    struct xen_pci_op op;                  /* private snapshot of the request */
    grant_handle_t pbx_shinfo_handle;
};

_Static_assert(sizeof(struct xpci_xenbus_softc) == 48, "xpci_xenbus_softc size");
_Static_assert(offsetof(struct xpci_xenbus_softc, sc_dev) == 0, "sc_dev");
_Static_assert(offsetof(struct xpci_xenbus_softc, sc_xbusd) == 8, "sc_xbusd");
_Static_assert(offsetof(struct xpci_xenbus_softc, sc_evtchn) == 16, "sc_evtchn");
_Static_assert(offsetof(struct xpci_xenbus_softc, sc_backend_status) == 20, "sc_backend_status");
_Static_assert(offsetof(struct xpci_xenbus_softc, sc_shutdown) == 24, "sc_shutdown");
_Static_assert(offsetof(struct xpci_xenbus_softc, sc_shared) == 32, "sc_shared");
_Static_assert(offsetof(struct xpci_xenbus_softc, sc_shared_gntref) == 40, "sc_shared_gntref");

_Static_assert(sizeof(struct pciback_pci_dev) == 64, "pciback_pci_dev size");
_Static_assert(offsetof(struct pciback_pci_dev, pb_devlist_next) == 0, "pb_devlist_next");
_Static_assert(offsetof(struct pciback_pci_dev, pb_guest_next) == 8, "pb_guest_next");
_Static_assert(offsetof(struct pciback_pci_dev, pb_bus) == 16, "pb_bus");
_Static_assert(offsetof(struct pciback_pci_dev, pb_device) == 20, "pb_device");
_Static_assert(offsetof(struct pciback_pci_dev, pb_function) == 24, "pb_function");
_Static_assert(offsetof(struct pciback_pci_dev, pb_pc) == 32, "pb_pc");
_Static_assert(offsetof(struct pciback_pci_dev, pb_tag) == 40, "pb_tag");
_Static_assert(sizeof(xenpci_pcitag_t) == 4, "pcitag_t");
_Static_assert(offsetof(struct pciback_pci_dev, pb_pci_softc) == 48, "pb_pci_softc");
_Static_assert(offsetof(struct pciback_pci_dev, pbx_instance) == 56, "pbx_instance");

_Static_assert(sizeof(struct pci_bar) == 40, "pci_bar size");
_Static_assert(offsetof(struct pci_bar, b_t) == 0, "b_t");
_Static_assert(offsetof(struct pci_bar, b_h) == 8, "b_h");
_Static_assert(offsetof(struct pci_bar, b_addr) == 16, "b_addr");
_Static_assert(offsetof(struct pci_bar, b_size) == 24, "b_size");
_Static_assert(offsetof(struct pci_bar, b_type) == 32, "b_type");
_Static_assert(offsetof(struct pci_bar, b_valid) == 36, "b_valid");

_Static_assert(sizeof(struct pciback_pci_softc) == 304, "pciback_pci_softc size");
_Static_assert(offsetof(struct pciback_pci_softc, sc_dev) == 0, "pb sc_dev");
_Static_assert(offsetof(struct pciback_pci_softc, sc_ih) == 8, "sc_ih");
_Static_assert(offsetof(struct pciback_pci_softc, sc_pb) == 16, "sc_pb");
_Static_assert(offsetof(struct pciback_pci_softc, sc_bars) == 24, "sc_bars");
_Static_assert(offsetof(struct pciback_pci_softc, sc_intrhandle) == 264, "sc_intrhandle");
_Static_assert(offsetof(struct pciback_pci_softc, sc_irq) == 272, "sc_irq");
_Static_assert(offsetof(struct pciback_pci_softc, sc_id) == 276, "sc_id");
_Static_assert(offsetof(struct pciback_pci_softc, sc_subid) == 280, "sc_subid");
_Static_assert(offsetof(struct pciback_pci_softc, sc_kernfsname) == 284, "sc_kernfsname");

_Static_assert(sizeof(struct pb_xenbus_instance) == 608, "pb_xenbus_instance size");
_Static_assert(offsetof(struct pb_xenbus_instance, pbx_next) == 0, "pbx_next");
_Static_assert(offsetof(struct pb_xenbus_instance, pbx_xbusd) == 8, "pbx_xbusd");
_Static_assert(offsetof(struct pb_xenbus_instance, pbx_domid) == 16, "pbx_domid");
_Static_assert(offsetof(struct pb_xenbus_instance, pbx_pb_pci_dev) == 24, "pbx_pb_pci_dev");
_Static_assert(offsetof(struct pb_xenbus_instance, pbx_evtchn) == 32, "pbx_evtchn");
_Static_assert(offsetof(struct pb_xenbus_instance, pbx_ih) == 40, "pbx_ih");
_Static_assert(offsetof(struct pb_xenbus_instance, pbx_sh_info) == 48, "pbx_sh_info");
_Static_assert(offsetof(struct pb_xenbus_instance, op) == 56, "op");
_Static_assert(offsetof(struct pb_xenbus_instance, pbx_shinfo_handle) == 604, "pbx_shinfo_handle");

/* The rows of these structs for the layout tests. */
#include "xenpci_shim.h"
const struct xenpci_layout_row *xenpci_softc_layout_table(size_t *count);

#endif /* XENPCI_SOFTC_H */
