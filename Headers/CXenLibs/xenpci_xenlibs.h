/*
 * xenpci_xenlibs.h: the Xen user-space libraries we call, loaded at run time.
 *
 * xenpci never links against libxenstore, libxengnttab, libxenevtchn or
 * libxenctrl: they are optional (a host without Xen runs the mock), so they
 * are dlopen()ed by soname and every function we use is looked up by name.
 * The prototypes below are ours, written from the libraries' documented
 * interfaces; tools/xenlib-check proves them equal to the installed headers.
 *
 * Handles are the libraries' own struct tags, left incomplete here, so a
 * prototype in this file and the library's one are the same C type.
 */
#ifndef XENPCI_XENLIBS_H
#define XENPCI_XENLIBS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Opaque handles (incomplete struct types, as the libraries declare them). */
struct xs_handle;               /* libxenstore */
struct xs_permissions;          /* libxenstore: see xenpci_xs_perm */
struct xengntdev_handle;        /* libxengnttab: both gnttab and gntshr */
struct xenevtchn_handle;        /* libxenevtchn */
struct xc_interface_core;       /* libxenctrl */
struct xencall_handle;          /* libxencall */
struct xentoollog_logger;       /* libxentoollog: we always pass NULL */

/* One xenstore permission entry, laid out as libxenstore's. */
struct xenpci_xs_perm {
    unsigned int id;            /* domain id */
    unsigned int perms;         /* XENPCI_XS_PERM_* bits */
};
#define XENPCI_XS_PERM_NONE  0x00u
#define XENPCI_XS_PERM_READ  0x01u
#define XENPCI_XS_PERM_WRITE 0x02u

/* Flags and indices with the libraries' values (checked by xenlib-check). */
#define XENPCI_XS_OPEN_SOCKETONLY (1ul << 1)
#define XENPCI_XS_WATCH_PATH      0
#define XENPCI_XS_WATCH_TOKEN     1
#define XENPCI_DOMCTL_DEV_RDM_RELAXED 1u

/* ---- libxenstore.so.4 ---- */
typedef struct xs_handle *xenpci_xs_open_fn(unsigned long flags);
typedef void xenpci_xs_close_fn(struct xs_handle *xsh);
typedef void *xenpci_xs_read_fn(struct xs_handle *h, uint32_t t, const char *path, unsigned int *len);
typedef bool xenpci_xs_write_fn(struct xs_handle *h, uint32_t t, const char *path,
                                const void *data, unsigned int len);
typedef bool xenpci_xs_mkdir_fn(struct xs_handle *h, uint32_t t, const char *path);
typedef bool xenpci_xs_rm_fn(struct xs_handle *h, uint32_t t, const char *path);
typedef char **xenpci_xs_directory_fn(struct xs_handle *h, uint32_t t, const char *path, unsigned int *num);
typedef struct xs_permissions *xenpci_xs_get_permissions_fn(struct xs_handle *h, uint32_t t,
                                                            const char *path, unsigned int *num);
typedef bool xenpci_xs_set_permissions_fn(struct xs_handle *h, uint32_t t, const char *path,
                                          struct xs_permissions *perms, unsigned int num);
typedef uint32_t xenpci_xs_transaction_start_fn(struct xs_handle *h);
typedef bool xenpci_xs_transaction_end_fn(struct xs_handle *h, uint32_t t, bool abort);
typedef bool xenpci_xs_watch_fn(struct xs_handle *h, const char *path, const char *token);
typedef bool xenpci_xs_unwatch_fn(struct xs_handle *h, const char *path, const char *token);
typedef int xenpci_xs_fileno_fn(struct xs_handle *h);
typedef char **xenpci_xs_check_watch_fn(struct xs_handle *h);
typedef char *xenpci_xs_get_domain_path_fn(struct xs_handle *h, unsigned int domid);

struct xenpci_xenstore_fns {
    xenpci_xs_open_fn *xs_open;
    xenpci_xs_close_fn *xs_close;
    xenpci_xs_read_fn *xs_read;
    xenpci_xs_write_fn *xs_write;
    xenpci_xs_mkdir_fn *xs_mkdir;
    xenpci_xs_rm_fn *xs_rm;
    xenpci_xs_directory_fn *xs_directory;
    xenpci_xs_get_permissions_fn *xs_get_permissions;
    xenpci_xs_set_permissions_fn *xs_set_permissions;
    xenpci_xs_transaction_start_fn *xs_transaction_start;
    xenpci_xs_transaction_end_fn *xs_transaction_end;
    xenpci_xs_watch_fn *xs_watch;
    xenpci_xs_unwatch_fn *xs_unwatch;
    xenpci_xs_fileno_fn *xs_fileno;
    xenpci_xs_check_watch_fn *xs_check_watch;
    xenpci_xs_get_domain_path_fn *xs_get_domain_path;
};

/* ---- libxengnttab.so.1 (gnttab: map foreign grants; gntshr: share ours) ---- */
typedef struct xengntdev_handle *xenpci_xengnttab_open_fn(struct xentoollog_logger *logger, unsigned flags);
typedef int xenpci_xengnttab_close_fn(struct xengntdev_handle *xgt);
typedef void *xenpci_xengnttab_map_grant_ref_fn(struct xengntdev_handle *xgt, uint32_t domid,
                                                uint32_t ref, int prot);
typedef int xenpci_xengnttab_unmap_fn(struct xengntdev_handle *xgt, void *start, uint32_t count);
typedef struct xengntdev_handle *xenpci_xengntshr_open_fn(struct xentoollog_logger *logger, unsigned flags);
typedef int xenpci_xengntshr_close_fn(struct xengntdev_handle *xgs);
typedef void *xenpci_xengntshr_share_pages_fn(struct xengntdev_handle *xgs, uint32_t domid, int count,
                                              uint32_t *refs, int writable);
typedef int xenpci_xengntshr_unshare_fn(struct xengntdev_handle *xgs, void *start, uint32_t count);

struct xenpci_gnttab_fns {
    xenpci_xengnttab_open_fn *xengnttab_open;
    xenpci_xengnttab_close_fn *xengnttab_close;
    xenpci_xengnttab_map_grant_ref_fn *xengnttab_map_grant_ref;
    xenpci_xengnttab_unmap_fn *xengnttab_unmap;
    xenpci_xengntshr_open_fn *xengntshr_open;
    xenpci_xengntshr_close_fn *xengntshr_close;
    xenpci_xengntshr_share_pages_fn *xengntshr_share_pages;
    xenpci_xengntshr_unshare_fn *xengntshr_unshare;
};

/* ---- libxenevtchn.so.1 (ports are evtchn_port_t, a uint32_t; results are
 * a port or -1 with errno) ---- */
typedef struct xenevtchn_handle *xenpci_xenevtchn_open_fn(struct xentoollog_logger *logger, unsigned int flags);
typedef int xenpci_xenevtchn_close_fn(struct xenevtchn_handle *xce);
typedef int xenpci_xenevtchn_fd_fn(struct xenevtchn_handle *xce);
typedef int xenpci_xenevtchn_notify_fn(struct xenevtchn_handle *xce, uint32_t port);
typedef int xenpci_xenevtchn_bind_unbound_port_fn(struct xenevtchn_handle *xce, uint32_t domid);
typedef int xenpci_xenevtchn_bind_interdomain_fn(struct xenevtchn_handle *xce, uint32_t domid,
                                                 uint32_t remote_port);
typedef int xenpci_xenevtchn_unbind_fn(struct xenevtchn_handle *xce, uint32_t port);
typedef int xenpci_xenevtchn_pending_fn(struct xenevtchn_handle *xce);
typedef int xenpci_xenevtchn_unmask_fn(struct xenevtchn_handle *xce, uint32_t port);

struct xenpci_evtchn_fns {
    xenpci_xenevtchn_open_fn *xenevtchn_open;
    xenpci_xenevtchn_close_fn *xenevtchn_close;
    xenpci_xenevtchn_fd_fn *xenevtchn_fd;
    xenpci_xenevtchn_notify_fn *xenevtchn_notify;
    xenpci_xenevtchn_bind_unbound_port_fn *xenevtchn_bind_unbound_port;
    xenpci_xenevtchn_bind_interdomain_fn *xenevtchn_bind_interdomain;
    xenpci_xenevtchn_unbind_fn *xenevtchn_unbind;
    xenpci_xenevtchn_pending_fn *xenevtchn_pending;
    xenpci_xenevtchn_unmask_fn *xenevtchn_unmask;
};

/* ---- libxenctrl.so.4.NN (dom0 only: pass-through permissions and pirqs) ---- */
typedef struct xc_interface_core *xenpci_xc_interface_open_fn(struct xentoollog_logger *logger,
                                                              struct xentoollog_logger *dombuild_logger,
                                                              unsigned flags);
typedef int xenpci_xc_interface_close_fn(struct xc_interface_core *xch);
typedef int xenpci_xc_physdev_map_pirq_fn(struct xc_interface_core *xch, uint32_t domid, int index, int *pirq);
typedef int xenpci_xc_physdev_map_pirq_msi_fn(struct xc_interface_core *xch, uint32_t domid, int index,
                                              int *pirq, int devfn, int bus, int entry_nr,
                                              uint64_t table_base);
typedef int xenpci_xc_physdev_unmap_pirq_fn(struct xc_interface_core *xch, uint32_t domid, int pirq);
typedef int xenpci_xc_domain_irq_permission_fn(struct xc_interface_core *xch, uint32_t domid,
                                               uint32_t pirq, bool allow);
typedef int xenpci_xc_domain_iomem_permission_fn(struct xc_interface_core *xch, uint32_t domid,
                                                 unsigned long first_mfn, unsigned long nr_mfns,
                                                 uint8_t allow);
typedef int xenpci_xc_domain_ioport_permission_fn(struct xc_interface_core *xch, uint32_t domid,
                                                  uint32_t first_port, uint32_t nr_ports,
                                                  uint32_t allow);
typedef int xenpci_xc_assign_device_fn(struct xc_interface_core *xch, uint32_t domid,
                                       uint32_t machine_sbdf, uint32_t flag);
typedef int xenpci_xc_deassign_device_fn(struct xc_interface_core *xch, uint32_t domid, uint32_t machine_sbdf);

struct xenpci_xenctrl_fns {
    xenpci_xc_interface_open_fn *xc_interface_open;
    xenpci_xc_interface_close_fn *xc_interface_close;
    xenpci_xc_physdev_map_pirq_fn *xc_physdev_map_pirq;
    xenpci_xc_physdev_map_pirq_msi_fn *xc_physdev_map_pirq_msi;
    xenpci_xc_physdev_unmap_pirq_fn *xc_physdev_unmap_pirq;
    xenpci_xc_domain_irq_permission_fn *xc_domain_irq_permission;
    xenpci_xc_domain_iomem_permission_fn *xc_domain_iomem_permission;
    xenpci_xc_domain_ioport_permission_fn *xc_domain_ioport_permission;
    xenpci_xc_assign_device_fn *xc_assign_device;
    xenpci_xc_deassign_device_fn *xc_deassign_device;
};

/* ---- libxencall.so.1 (dom0 only: the physdev ops libxenctrl has no call
 * for: prepare/release MSI-X, and map_pirq with a PCI segment) ---- */
typedef struct xencall_handle *xenpci_xencall_open_fn(struct xentoollog_logger *logger, unsigned open_flags);
typedef int xenpci_xencall_close_fn(struct xencall_handle *xcall);
typedef int xenpci_xencall2_fn(struct xencall_handle *xcall, unsigned int op, uint64_t arg1, uint64_t arg2);
typedef void *xenpci_xencall_alloc_buffer_fn(struct xencall_handle *xcall, size_t size);
typedef void xenpci_xencall_free_buffer_fn(struct xencall_handle *xcall, void *p);

struct xenpci_xencall_fns {
    xenpci_xencall_open_fn *xencall_open;
    xenpci_xencall_close_fn *xencall_close;
    xenpci_xencall2_fn *xencall2;
    xenpci_xencall_alloc_buffer_fn *xencall_alloc_buffer;
    xenpci_xencall_free_buffer_fn *xencall_free_buffer;
};

/* The physdev hypercall and the arguments we pass it, laid out as Xen's
 * public/physdev.h (checked by xenlib-check). */
#define XENPCI_HYPERVISOR_physdev_op 33
#define XENPCI_PHYSDEVOP_map_pirq 13
#define XENPCI_PHYSDEVOP_prepare_msix 30
#define XENPCI_PHYSDEVOP_release_msix 31
#define XENPCI_MAP_PIRQ_TYPE_MSI_SEG 3

struct xenpci_physdev_map_pirq {
    uint16_t domid;
    int32_t type;
    int32_t index;
    int32_t pirq;
    int32_t bus;                /* MSI_SEG: segment << 16 | bus */
    int32_t devfn;
    int32_t entry_nr;
    uint64_t table_base;
};

struct xenpci_physdev_pci_device {
    uint16_t seg;
    uint8_t bus;
    uint8_t devfn;
};

/* ---- the loader ---- */
enum xenpci_xenlib {
    XENPCI_XENLIB_XENSTORE = 0,
    XENPCI_XENLIB_GNTTAB = 1,
    XENPCI_XENLIB_EVTCHN = 2,
    XENPCI_XENLIB_XENCTRL = 3,
    XENPCI_XENLIB_XENCALL = 4,
    XENPCI_XENLIB_COUNT = 5
};

/* The tables: NULL until the first successful load of their library, then
 * its complete table, filled once (under the loader's lock, before being
 * published) and never written again, so any thread may read it. */
const struct xenpci_xenstore_fns *xenpci_xenstore_table(void);
const struct xenpci_gnttab_fns *xenpci_gnttab_table(void);
const struct xenpci_evtchn_fns *xenpci_evtchn_table(void);
const struct xenpci_xenctrl_fns *xenpci_xenctrl_table(void);
const struct xenpci_xencall_fns *xenpci_xencall_table(void);

/* Loads one library (first soname of its list that dlopen()s) and looks up
 * all of its functions. Idempotent and thread-safe. Returns 0, or -1 with a
 * one-line reason in err, containing dlerror()'s text. */
int xenpci_xenlib_load(enum xenpci_xenlib lib, char *err, size_t errlen);

/* As xenpci_xenlib_load, trying the given sonames in order instead of the
 * built-in list; for tests and unusual installs. Nothing is recorded. */
int xenpci_xenlib_probe(enum xenpci_xenlib lib, const char *const *sonames, size_t count,
                        char *err, size_t errlen);

/* Loads the three libraries every domain needs (xenstore, gnttab, evtchn). */
int xenpci_xenlibs_load(char *err, size_t errlen);

/* The soname that was loaded, or NULL. */
const char *xenpci_xenlib_soname(enum xenpci_xenlib lib);

/* The built-in soname list of a library: count in *count. */
const char *const *xenpci_xenlib_sonames(enum xenpci_xenlib lib, size_t *count);

#ifdef __cplusplus
}
#endif
#endif /* XENPCI_XENLIBS_H */
