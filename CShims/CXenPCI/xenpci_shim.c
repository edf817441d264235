/* xenpci_shim.c - see xenpci_shim.h. */
#include "xenpci_shim.h"

#include <string.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/syscall.h>

#define COMPILER_BARRIER() __asm__ __volatile__("" ::: "memory")

uint32_t xenpci_flags_load(const struct xen_pci_sharedinfo *sh)
{
    return __atomic_load_n(&sh->flags, __ATOMIC_ACQUIRE);
}

void xenpci_flags_set(struct xen_pci_sharedinfo *sh, uint32_t mask)
{
    __atomic_fetch_or(&sh->flags, mask, __ATOMIC_RELEASE);
}

void xenpci_flags_clear(struct xen_pci_sharedinfo *sh, uint32_t mask)
{
    __atomic_fetch_and(&sh->flags, ~mask, __ATOMIC_RELEASE);
}

uint32_t xenpci_flags_test_and_clear(struct xen_pci_sharedinfo *sh, uint32_t mask)
{
    return __atomic_fetch_and(&sh->flags, ~mask, __ATOMIC_ACQ_REL) & mask;
}

uint32_t xenpci_flags_test_and_set(struct xen_pci_sharedinfo *sh, uint32_t mask)
{
    return __atomic_fetch_or(&sh->flags, mask, __ATOMIC_ACQ_REL) & mask;
}

void xenpci_barrier_full(void)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

void xenpci_post_request(struct xen_pci_sharedinfo *sh, const struct xen_pci_op *op)
{
    memcpy(&sh->op, op, sizeof(*op));
    /* the release in flags_set orders the copy before the flag (wmb) */
    xenpci_flags_set(sh, XEN_PCIF_active);
}

void xenpci_read_reply(const struct xen_pci_sharedinfo *sh, struct xen_pci_op *out)
{
    __atomic_thread_fence(__ATOMIC_ACQUIRE); /* rmb: flag seen clear before reading */
    memcpy(out, (const void *)&sh->op, sizeof(*out));
    COMPILER_BARRIER();
}

void xenpci_snapshot_request(const struct xen_pci_sharedinfo *sh, struct xen_pci_op *copy)
{
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    memcpy(copy, (const void *)&sh->op, sizeof(*copy));
    COMPILER_BARRIER(); /* from here on only the private copy is read */
}

void xenpci_complete_request(struct xen_pci_sharedinfo *sh, const struct xen_pci_op *reply,
                             uint32_t nvec)
{
    volatile struct xen_pci_op *op = &sh->op;
    op->err = reply->err;
    op->value = reply->value;
    if (nvec > SH_INFO_MAX_VEC)
        nvec = SH_INFO_MAX_VEC;
    for (uint32_t i = 0; i < nvec; i++)
        op->msix_entries[i].vector = reply->msix_entries[i].vector;
    xenpci_flags_clear(sh, XEN_PCIF_active); /* release = wmb before the clear */
}

void xenpci_snapshot_aer(const struct xen_pci_sharedinfo *sh, struct xen_pcie_aer_op *copy)
{
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    memcpy(copy, (const void *)&sh->aer_op, sizeof(*copy));
    COMPILER_BARRIER();
}

void xenpci_post_aer(struct xen_pci_sharedinfo *sh, const struct xen_pcie_aer_op *op)
{
    memcpy(&sh->aer_op, op, sizeof(*op));
    xenpci_flags_set(sh, XEN_PCIB_active);
}

void xenpci_complete_aer(struct xen_pci_sharedinfo *sh, int32_t err)
{
    ((volatile struct xen_pcie_aer_op *)&sh->aer_op)->err = err;
    xenpci_flags_clear(sh, XEN_PCIB_active);
}

#define ROW_T(t) { #t, NULL, 0, sizeof(struct t) }
#define ROW_F(t, f) { #t, #f, offsetof(struct t, f), sizeof(((struct t *)0)->f) }

static const struct xenpci_layout_row layout[] = {
    ROW_T(xen_msix_entry), ROW_F(xen_msix_entry, vector), ROW_F(xen_msix_entry, entry),
    ROW_T(xen_pci_op),
    ROW_F(xen_pci_op, cmd), ROW_F(xen_pci_op, err), ROW_F(xen_pci_op, domain),
    ROW_F(xen_pci_op, bus), ROW_F(xen_pci_op, devfn), ROW_F(xen_pci_op, offset),
    ROW_F(xen_pci_op, size), ROW_F(xen_pci_op, value), ROW_F(xen_pci_op, info),
    ROW_F(xen_pci_op, msix_entries),
    ROW_T(xen_pcie_aer_op),
    ROW_F(xen_pcie_aer_op, cmd), ROW_F(xen_pcie_aer_op, err), ROW_F(xen_pcie_aer_op, domain),
    ROW_F(xen_pcie_aer_op, bus), ROW_F(xen_pcie_aer_op, devfn),
    ROW_T(xen_pci_sharedinfo),
    ROW_F(xen_pci_sharedinfo, flags), ROW_F(xen_pci_sharedinfo, op),
    ROW_F(xen_pci_sharedinfo, aer_op),
};

const struct xenpci_layout_row *xenpci_layout_table(size_t *count)
{
    *count = sizeof(layout) / sizeof(layout[0]);
    return layout;
}

/* Every field gets a distinct value with all four bytes different, so a
 * swapped, shifted or truncated field shows up as a wrong byte. */
void xenpci_golden_fill_op(struct xen_pci_op *op)
{
    memset(op, 0, sizeof(*op));
    op->cmd = 0x01020304u;
    op->err = -0x11121314;
    op->domain = 0x21222324u;
    op->bus = 0x31323334u;
    op->devfn = 0x41424344u;
    op->offset = -0x51525354;
    op->size = 0x61626364;
    op->value = 0x71727374u;
    op->info = 0x81828384u;
    for (unsigned i = 0; i < SH_INFO_MAX_VEC; i++) {
        op->msix_entries[i].vector = (uint16_t)(0xA000u + i * 3u);
        op->msix_entries[i].entry = (uint16_t)(0x5000u + i * 7u);
    }
}

size_t xenpci_golden_check_op(const struct xen_pci_op *op)
{
    struct xen_pci_op want;
    xenpci_golden_fill_op(&want);
    const unsigned char *a = (const unsigned char *)op, *b = (const unsigned char *)&want;
    for (size_t i = 0; i < sizeof(want); i++)
        if (a[i] != b[i])
            return i + 1;
    return 0;
}

int xenpci_eventfd_open(void)
{
    return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
}

int xenpci_eventfd_signal(int fd)
{
    uint64_t one = 1;
    return write(fd, &one, sizeof(one)) == (ssize_t)sizeof(one) ? 0 : -1;
}

void xenpci_eventfd_drain(int fd)
{
    uint64_t v;
    (void)!read(fd, &v, sizeof(v));
}

int xenpci_thread_set_nice(int nice)
{
    /* PRIO_PROCESS with a thread id names that thread only on Linux. */
    return setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), nice);
}
