/*
 * xenpci_xenlibs.c: dlopen() the Xen libraries by soname and fill the
 * function tables of xenpci_xenlibs.h. Every failure is reported with the
 * exact dlerror() text, so the user learns which file or symbol is missing.
 */
#define _GNU_SOURCE
#include "xenpci_xenlibs.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

/* The tables' storage: written only by xenpci_xenlib_load, once per library,
 * before `published` points at it. */
static struct xenpci_xenstore_fns xenpci_xenstore;
static struct xenpci_gnttab_fns xenpci_gnttab;
static struct xenpci_evtchn_fns xenpci_evtchn;
static struct xenpci_xenctrl_fns xenpci_xenctrl;
static struct xenpci_xencall_fns xenpci_xencall;

/* A library's complete table once loaded, NULL before: stored with release
 * after the table is filled, read with acquire by the accessors, so a reader
 * that sees the pointer sees every function in it. */
static _Atomic(const void *) published[XENPCI_XENLIB_COUNT];

/* One symbol: its name and where its address goes (as a generic pointer
 * slot; all members of the tables are function pointers). */
struct sym { const char *name; size_t offset; };

#define SYM(table, member) { #member, offsetof(struct table, member) }

static const struct sym xenstore_syms[] = {
    SYM(xenpci_xenstore_fns, xs_open), SYM(xenpci_xenstore_fns, xs_close),
    SYM(xenpci_xenstore_fns, xs_read), SYM(xenpci_xenstore_fns, xs_write),
    SYM(xenpci_xenstore_fns, xs_mkdir), SYM(xenpci_xenstore_fns, xs_rm),
    SYM(xenpci_xenstore_fns, xs_directory), SYM(xenpci_xenstore_fns, xs_get_permissions),
    SYM(xenpci_xenstore_fns, xs_set_permissions), SYM(xenpci_xenstore_fns, xs_transaction_start),
    SYM(xenpci_xenstore_fns, xs_transaction_end), SYM(xenpci_xenstore_fns, xs_watch),
    SYM(xenpci_xenstore_fns, xs_unwatch), SYM(xenpci_xenstore_fns, xs_fileno),
    SYM(xenpci_xenstore_fns, xs_check_watch), SYM(xenpci_xenstore_fns, xs_get_domain_path),
};

static const struct sym gnttab_syms[] = {
    SYM(xenpci_gnttab_fns, xengnttab_open), SYM(xenpci_gnttab_fns, xengnttab_close),
    SYM(xenpci_gnttab_fns, xengnttab_map_grant_ref), SYM(xenpci_gnttab_fns, xengnttab_unmap),
    SYM(xenpci_gnttab_fns, xengntshr_open), SYM(xenpci_gnttab_fns, xengntshr_close),
    SYM(xenpci_gnttab_fns, xengntshr_share_pages), SYM(xenpci_gnttab_fns, xengntshr_unshare),
};

static const struct sym evtchn_syms[] = {
    SYM(xenpci_evtchn_fns, xenevtchn_open), SYM(xenpci_evtchn_fns, xenevtchn_close),
    SYM(xenpci_evtchn_fns, xenevtchn_fd), SYM(xenpci_evtchn_fns, xenevtchn_notify),
    SYM(xenpci_evtchn_fns, xenevtchn_bind_unbound_port), SYM(xenpci_evtchn_fns, xenevtchn_bind_interdomain),
    SYM(xenpci_evtchn_fns, xenevtchn_unbind), SYM(xenpci_evtchn_fns, xenevtchn_pending),
    SYM(xenpci_evtchn_fns, xenevtchn_unmask),
};

static const struct sym xenctrl_syms[] = {
    SYM(xenpci_xenctrl_fns, xc_interface_open), SYM(xenpci_xenctrl_fns, xc_interface_close),
    SYM(xenpci_xenctrl_fns, xc_physdev_map_pirq), SYM(xenpci_xenctrl_fns, xc_physdev_map_pirq_msi),
    SYM(xenpci_xenctrl_fns, xc_physdev_unmap_pirq), SYM(xenpci_xenctrl_fns, xc_domain_irq_permission),
    SYM(xenpci_xenctrl_fns, xc_domain_iomem_permission), SYM(xenpci_xenctrl_fns, xc_domain_ioport_permission),
    SYM(xenpci_xenctrl_fns, xc_assign_device), SYM(xenpci_xenctrl_fns, xc_deassign_device),
};

static const struct sym xencall_syms[] = {
    SYM(xenpci_xencall_fns, xencall_open), SYM(xenpci_xencall_fns, xencall_close),
    SYM(xenpci_xencall_fns, xencall2), SYM(xenpci_xencall_fns, xencall_alloc_buffer),
    SYM(xenpci_xencall_fns, xencall_free_buffer),
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static const char *const xenstore_sonames[] = { "libxenstore.so.4" };
static const char *const gnttab_sonames[] = { "libxengnttab.so.1" };
static const char *const evtchn_sonames[] = { "libxenevtchn.so.1" };
static const char *const xencall_sonames[] = { "libxencall.so.1" };
/* libxenctrl's soname carries the Xen release: 4.17 first (what we are
 * written against), then the other releases with the same calls. */
static const char *const xenctrl_sonames[] = {
    "libxenctrl.so.4.17", "libxenctrl.so.4.18", "libxenctrl.so.4.19",
    "libxenctrl.so.4.20", "libxenctrl.so.4.16",
};

static const struct lib {
    const char *name;
    const char *const *sonames;
    size_t nsonames;
    const struct sym *syms;
    size_t nsyms;
    void *table;
    size_t table_size;
} libs[XENPCI_XENLIB_COUNT] = {
    [XENPCI_XENLIB_XENSTORE] = { "libxenstore", xenstore_sonames, COUNT(xenstore_sonames),
                                 xenstore_syms, COUNT(xenstore_syms), &xenpci_xenstore, sizeof(xenpci_xenstore) },
    [XENPCI_XENLIB_GNTTAB] = { "libxengnttab", gnttab_sonames, COUNT(gnttab_sonames),
                               gnttab_syms, COUNT(gnttab_syms), &xenpci_gnttab, sizeof(xenpci_gnttab) },
    [XENPCI_XENLIB_EVTCHN] = { "libxenevtchn", evtchn_sonames, COUNT(evtchn_sonames),
                               evtchn_syms, COUNT(evtchn_syms), &xenpci_evtchn, sizeof(xenpci_evtchn) },
    [XENPCI_XENLIB_XENCTRL] = { "libxenctrl", xenctrl_sonames, COUNT(xenctrl_sonames),
                                xenctrl_syms, COUNT(xenctrl_syms), &xenpci_xenctrl, sizeof(xenpci_xenctrl) },
    [XENPCI_XENLIB_XENCALL] = { "libxencall", xencall_sonames, COUNT(xencall_sonames),
                                xencall_syms, COUNT(xencall_syms), &xenpci_xencall, sizeof(xenpci_xencall) },
};

static pthread_mutex_t load_lock = PTHREAD_MUTEX_INITIALIZER;
static const char *loaded_soname[XENPCI_XENLIB_COUNT];

/* Opens the first soname that loads and resolves every symbol into `table`
 * (when non-NULL). On failure err says which sonames were tried and what
 * dlerror() said about each. */
static int load_one(const struct lib *l, const char *const *sonames, size_t count, void *table,
                    const char **which, char *err, size_t errlen)
{
    char tried[1024] = "";
    size_t used = 0;
    for (size_t i = 0; i < count; i++) {
        dlerror();
        void *h = dlopen(sonames[i], RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            const char *e = dlerror();
            int n = snprintf(tried + used, sizeof tried - used, "%s%s", used ? "; " : "",
                             e ? e : sonames[i]);
            if (n > 0)
                used += (size_t)n < sizeof tried - used ? (size_t)n : sizeof tried - used - 1;
            continue;
        }
        void *ptrs[16];
        for (size_t s = 0; s < l->nsyms; s++) {
            dlerror();
            ptrs[s] = dlsym(h, l->syms[s].name);
            const char *e = dlerror();
            if (!ptrs[s] || e) {
                snprintf(err, errlen, "%s loaded from %s but lacks %s: %s", l->name, sonames[i],
                         l->syms[s].name, e ? e : "symbol is NULL");
                dlclose(h);
                return -1;
            }
        }
        if (table)
            for (size_t s = 0; s < l->nsyms; s++)
                memcpy((char *)table + l->syms[s].offset, &ptrs[s], sizeof(void *));
        if (which)
            *which = sonames[i];
        if (!table)
            dlclose(h);
        return 0;
    }
    snprintf(err, errlen, "cannot load %s: %s", l->name, count ? tried : "no soname to try");
    return -1;
}

int xenpci_xenlib_load(enum xenpci_xenlib lib, char *err, size_t errlen)
{
    if ((unsigned)lib >= XENPCI_XENLIB_COUNT) {
        snprintf(err, errlen, "no such Xen library: %d", (int)lib);
        return -1;
    }
    const struct lib *l = &libs[lib];
    pthread_mutex_lock(&load_lock);
    int rc = 0;
    if (!loaded_soname[lib]) {
        /* Fill a scratch copy first: a half-resolved table is never visible. */
        char scratch[16 * sizeof(void *)] = { 0 };
        const char *which = NULL;
        rc = load_one(l, l->sonames, l->nsonames, scratch, &which, err, errlen);
        if (rc == 0) {
            memcpy(l->table, scratch, l->table_size);
            loaded_soname[lib] = which;
            atomic_store_explicit(&published[lib], l->table, memory_order_release);
        }
    }
    pthread_mutex_unlock(&load_lock);
    return rc;
}

int xenpci_xenlib_probe(enum xenpci_xenlib lib, const char *const *sonames, size_t count,
                        char *err, size_t errlen)
{
    if ((unsigned)lib >= XENPCI_XENLIB_COUNT) {
        snprintf(err, errlen, "no such Xen library: %d", (int)lib);
        return -1;
    }
    return load_one(&libs[lib], sonames, count, NULL, NULL, err, errlen);
}

int xenpci_xenlibs_load(char *err, size_t errlen)
{
    static const enum xenpci_xenlib needed[] = {
        XENPCI_XENLIB_XENSTORE, XENPCI_XENLIB_GNTTAB, XENPCI_XENLIB_EVTCHN,
    };
    for (size_t i = 0; i < COUNT(needed); i++)
        if (xenpci_xenlib_load(needed[i], err, errlen) != 0)
            return -1;
    return 0;
}

const char *xenpci_xenlib_soname(enum xenpci_xenlib lib)
{
    if ((unsigned)lib >= XENPCI_XENLIB_COUNT)
        return NULL;
    pthread_mutex_lock(&load_lock);
    const char *s = loaded_soname[lib];
    pthread_mutex_unlock(&load_lock);
    return s;
}

const char *const *xenpci_xenlib_sonames(enum xenpci_xenlib lib, size_t *count)
{
    if ((unsigned)lib >= XENPCI_XENLIB_COUNT) {
        *count = 0;
        return NULL;
    }
    *count = libs[lib].nsonames;
    return libs[lib].sonames;
}

static const void *table_of(enum xenpci_xenlib lib)
{
    return atomic_load_explicit(&published[lib], memory_order_acquire);
}

const struct xenpci_xenstore_fns *xenpci_xenstore_table(void) { return table_of(XENPCI_XENLIB_XENSTORE); }
const struct xenpci_gnttab_fns *xenpci_gnttab_table(void) { return table_of(XENPCI_XENLIB_GNTTAB); }
const struct xenpci_evtchn_fns *xenpci_evtchn_table(void) { return table_of(XENPCI_XENLIB_EVTCHN); }
const struct xenpci_xenctrl_fns *xenpci_xenctrl_table(void) { return table_of(XENPCI_XENLIB_XENCTRL); }
const struct xenpci_xencall_fns *xenpci_xencall_table(void) { return table_of(XENPCI_XENLIB_XENCALL); }

/* Every table fits the scratch space load_one uses. */
_Static_assert(sizeof(struct xenpci_xenstore_fns) <= 16 * sizeof(void *), "xenstore table too big");
_Static_assert(sizeof(struct xenpci_gnttab_fns) <= 16 * sizeof(void *), "gnttab table too big");
_Static_assert(sizeof(struct xenpci_evtchn_fns) <= 16 * sizeof(void *), "evtchn table too big");
_Static_assert(sizeof(struct xenpci_xenctrl_fns) <= 16 * sizeof(void *), "xenctrl table too big");
_Static_assert(sizeof(struct xenpci_xencall_fns) <= 16 * sizeof(void *), "xencall table too big");
