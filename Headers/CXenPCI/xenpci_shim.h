/*
 * xenpci_shim.h - the few operations Swift cannot express safely over memory
 * another domain writes concurrently: 32-bit atomics on the flag word with
 * acquire/release ordering, a one-shot snapshot of the request (XSA-155),
 * and the offsetof/golden-byte tables the layout tests compare against.
 */
#ifndef XENPCI_SHIM_H
#define XENPCI_SHIM_H

#include "xenpci_abi.h"

/* Flag word: always 32-bit atomics (never a 64-bit RMW that touches op.cmd). */
uint32_t xenpci_flags_load(const struct xen_pci_sharedinfo *sh);          /* acquire */
void xenpci_flags_set(struct xen_pci_sharedinfo *sh, uint32_t mask);       /* release */
void xenpci_flags_clear(struct xen_pci_sharedinfo *sh, uint32_t mask);     /* release */
/* Returns the bits of mask that were set before; acquire+release. */
uint32_t xenpci_flags_test_and_clear(struct xen_pci_sharedinfo *sh, uint32_t mask);
uint32_t xenpci_flags_test_and_set(struct xen_pci_sharedinfo *sh, uint32_t mask);

/* Frontend: publish a request: copy op, write barrier, set XEN_PCIF_active. */
void xenpci_post_request(struct xen_pci_sharedinfo *sh, const struct xen_pci_op *op);
/* Frontend: after XEN_PCIF_active cleared: read barrier, copy the reply out. */
void xenpci_read_reply(const struct xen_pci_sharedinfo *sh, struct xen_pci_op *out);

/* Backend: copy the whole request exactly once, then a compiler barrier so
 * no later read can go back to the shared page (XSA-155). */
void xenpci_snapshot_request(const struct xen_pci_sharedinfo *sh, struct xen_pci_op *copy);
/* Backend: write back only err and value (and, when nvec > 0, the first nvec
 * msix vectors), write barrier, then clear XEN_PCIF_active. */
void xenpci_complete_request(struct xen_pci_sharedinfo *sh, const struct xen_pci_op *reply,
                             uint32_t nvec);

/* AER: snapshot and completion of aer_op, the same way. */
void xenpci_snapshot_aer(const struct xen_pci_sharedinfo *sh, struct xen_pcie_aer_op *copy);
void xenpci_post_aer(struct xen_pci_sharedinfo *sh, const struct xen_pcie_aer_op *op);
/* Frontend: answer an AER request: store err, then clear XEN_PCIB_active (release). */
void xenpci_complete_aer(struct xen_pci_sharedinfo *sh, int32_t err);

void xenpci_barrier_full(void);

/* eventfd(2), which Swift's Glibc module does not export: a non-blocking,
 * close-on-exec counter; signal adds 1, drain resets it. */
int xenpci_eventfd_open(void);
int xenpci_eventfd_signal(int fd);
void xenpci_eventfd_drain(int fd);

/* Sets the calling thread's nice value (Linux: per thread). 0 or -1 with errno. */
int xenpci_thread_set_nice(int nice);

/* Layout table of the wire structs: what the C compiler says, for Swift's
 * MemoryLayout checks (xenpci_softc_layout_table has the softcs' rows). */
struct xenpci_layout_row {
    const char *type;   /* struct name */
    const char *field;  /* NULL for the row giving the struct size */
    size_t offset;
    size_t size;
};
const struct xenpci_layout_row *xenpci_layout_table(size_t *count);

/* Golden bytes: one fully populated op pattern, filled and checked in C so
 * that Swift can check the reverse direction. */
void xenpci_golden_fill_op(struct xen_pci_op *op);
/* 0 when op holds exactly the golden pattern; else 1 + the first bad byte offset. */
size_t xenpci_golden_check_op(const struct xen_pci_op *op);

#endif /* XENPCI_SHIM_H */
