/*
 * xenlib-check: prove that the prototypes of Headers/CXenLibs/xenpci_xenlibs.h (which
 * xenpci uses through dlsym) are the same C types as the installed Xen
 * headers' declarations, and that the few layouts and constants we mirror
 * are equal. Built and run by `make xenlib-check` and by XenRealTests.
 */
#include <stdio.h>
#include <stddef.h>
/* xenctrl.h first: it sets up the tools-only parts of <xen/...> the others use. */
#include <xenctrl.h>
#include <xenstore.h>
#include <xengnttab.h>
#include <xenevtchn.h>
#include <xencall.h>
#include <xen/physdev.h>
#include "xenpci_xenlibs.h"

struct row { const char *what; int same; long long xen, ours; };

/* A prototype row: the library's function type against ours. */
#define PROTO(fn) { "prototype " #fn, __builtin_types_compatible_p(__typeof__(fn), xenpci_##fn##_fn), 0, 0 }
/* A value row: a size, offset or constant. */
#define VALUE(what, xen, ours) { what, (long long)(xen) == (long long)(ours), (long long)(xen), (long long)(ours) }

static const struct row rows[] = {
    PROTO(xs_open), PROTO(xs_close), PROTO(xs_read), PROTO(xs_write), PROTO(xs_mkdir), PROTO(xs_rm),
    PROTO(xs_directory), PROTO(xs_get_permissions), PROTO(xs_set_permissions),
    PROTO(xs_transaction_start), PROTO(xs_transaction_end), PROTO(xs_watch), PROTO(xs_unwatch),
    PROTO(xs_fileno), PROTO(xs_check_watch), PROTO(xs_get_domain_path),

    PROTO(xengnttab_open), PROTO(xengnttab_close), PROTO(xengnttab_map_grant_ref), PROTO(xengnttab_unmap),
    PROTO(xengntshr_open), PROTO(xengntshr_close), PROTO(xengntshr_share_pages), PROTO(xengntshr_unshare),

    PROTO(xenevtchn_open), PROTO(xenevtchn_close), PROTO(xenevtchn_fd), PROTO(xenevtchn_notify),
    PROTO(xenevtchn_bind_unbound_port), PROTO(xenevtchn_bind_interdomain), PROTO(xenevtchn_unbind),
    PROTO(xenevtchn_pending), PROTO(xenevtchn_unmask),

    PROTO(xc_interface_open), PROTO(xc_interface_close), PROTO(xc_physdev_map_pirq),
    PROTO(xc_physdev_map_pirq_msi), PROTO(xc_physdev_unmap_pirq), PROTO(xc_domain_irq_permission),
    PROTO(xc_domain_iomem_permission), PROTO(xc_domain_ioport_permission), PROTO(xc_assign_device),
    PROTO(xc_deassign_device),

    PROTO(xencall_open), PROTO(xencall_close), PROTO(xencall2), PROTO(xencall_alloc_buffer),
    PROTO(xencall_free_buffer),

    VALUE("sizeof(struct xs_permissions)", sizeof(struct xs_permissions), sizeof(struct xenpci_xs_perm)),
    VALUE("offsetof(xs_permissions.id)", offsetof(struct xs_permissions, id), offsetof(struct xenpci_xs_perm, id)),
    VALUE("offsetof(xs_permissions.perms)", offsetof(struct xs_permissions, perms), offsetof(struct xenpci_xs_perm, perms)),
    VALUE("sizeof(xs_permissions.perms)", sizeof(((struct xs_permissions *)0)->perms), sizeof(((struct xenpci_xs_perm *)0)->perms)),
    VALUE("XS_PERM_NONE", XS_PERM_NONE, XENPCI_XS_PERM_NONE),
    VALUE("XS_PERM_READ", XS_PERM_READ, XENPCI_XS_PERM_READ),
    VALUE("XS_PERM_WRITE", XS_PERM_WRITE, XENPCI_XS_PERM_WRITE),
    VALUE("XS_OPEN_SOCKETONLY", XS_OPEN_SOCKETONLY, XENPCI_XS_OPEN_SOCKETONLY),
    VALUE("XS_WATCH_PATH", XS_WATCH_PATH, XENPCI_XS_WATCH_PATH),
    VALUE("XS_WATCH_TOKEN", XS_WATCH_TOKEN, XENPCI_XS_WATCH_TOKEN),
    VALUE("XEN_DOMCTL_DEV_RDM_RELAXED", XEN_DOMCTL_DEV_RDM_RELAXED, XENPCI_DOMCTL_DEV_RDM_RELAXED),
    VALUE("sizeof(xs_transaction_t)", sizeof(xs_transaction_t), sizeof(uint32_t)),
    VALUE("__HYPERVISOR_physdev_op", __HYPERVISOR_physdev_op, XENPCI_HYPERVISOR_physdev_op),
    VALUE("PHYSDEVOP_map_pirq", PHYSDEVOP_map_pirq, XENPCI_PHYSDEVOP_map_pirq),
    VALUE("PHYSDEVOP_prepare_msix", PHYSDEVOP_prepare_msix, XENPCI_PHYSDEVOP_prepare_msix),
    VALUE("PHYSDEVOP_release_msix", PHYSDEVOP_release_msix, XENPCI_PHYSDEVOP_release_msix),
    VALUE("MAP_PIRQ_TYPE_MSI_SEG", MAP_PIRQ_TYPE_MSI_SEG, XENPCI_MAP_PIRQ_TYPE_MSI_SEG),
#define MAPF(f) \
    VALUE("offsetof(physdev_map_pirq." #f ")", offsetof(struct physdev_map_pirq, f), offsetof(struct xenpci_physdev_map_pirq, f)), \
    VALUE("sizeof(physdev_map_pirq." #f ")", sizeof(((struct physdev_map_pirq *)0)->f), sizeof(((struct xenpci_physdev_map_pirq *)0)->f))
    VALUE("sizeof(struct physdev_map_pirq)", sizeof(struct physdev_map_pirq), sizeof(struct xenpci_physdev_map_pirq)),
    MAPF(domid), MAPF(type), MAPF(index), MAPF(pirq), MAPF(bus), MAPF(devfn), MAPF(entry_nr), MAPF(table_base),
#define PCIF(f) \
    VALUE("offsetof(physdev_pci_device." #f ")", offsetof(struct physdev_pci_device, f), offsetof(struct xenpci_physdev_pci_device, f)), \
    VALUE("sizeof(physdev_pci_device." #f ")", sizeof(((struct physdev_pci_device *)0)->f), sizeof(((struct xenpci_physdev_pci_device *)0)->f))
    VALUE("sizeof(struct physdev_pci_device)", sizeof(struct physdev_pci_device), sizeof(struct xenpci_physdev_pci_device)),
    PCIF(seg), PCIF(bus), PCIF(devfn),
    VALUE("sizeof(evtchn_port_t)", sizeof(evtchn_port_t), sizeof(uint32_t)),
    VALUE("sizeof(xenevtchn_port_or_error_t)", sizeof(xenevtchn_port_or_error_t), sizeof(int)),
};

int main(void)
{
    size_t n = sizeof rows / sizeof rows[0], bad = 0;
    for (size_t i = 0; i < n; i++) {
        const struct row *r = &rows[i];
        if (r->what[0] == 'p')
            printf("%-44s %s\n", r->what, r->same ? "ok" : "MISMATCH");
        else
            printf("%-44s %8lld %8lld  %s\n", r->what, r->xen, r->ours, r->same ? "ok" : "MISMATCH");
        bad += !r->same;
    }
    if (bad) {
        fprintf(stderr, "xenlib-check: FAIL: %zu of %zu rows differ from the installed Xen headers\n", bad, n);
        return 1;
    }
    printf("xenlib-check: %zu rows checked against the installed Xen headers: all equal\n", n);
    return 0;
}
