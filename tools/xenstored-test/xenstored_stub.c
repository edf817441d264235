/*
 * xenstored_stub.c: an LD_PRELOAD library that lets the stock C xenstored run
 * on a host without a hypervisor, for tests of xenstore clients.
 *
 * xenstored talks to Xen through a handful of libxenctrl, libxenevtchn and
 * libxengnttab calls and two /proc/xen files. Here every handle is a dummy,
 * event channels never fire (their fd is an eventfd nobody signals), dom0's
 * ring page is plain memory, and open() of /proc/xen/xsd_port and
 * /proc/xen/xsd_kva is redirected to files under $XENPCI_STUB_DIR.
 * Clients then talk to xenstored over its Unix socket only.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xenctrl.h>
#include <xenevtchn.h>
#include <xengnttab.h>

static int dummy_handle;

/* ---- libxenctrl ---- */
xc_interface *xc_interface_open(xentoollog_logger *l, xentoollog_logger *dl, unsigned f)
{
    (void)l; (void)dl; (void)f;
    return (xc_interface *)&dummy_handle;
}

int xc_interface_close(xc_interface *xch) { (void)xch; return 0; }

/* Every domain asked about exists and is running (xenstored only asks about
 * domains it was told of). */
int xc_domain_getinfo(xc_interface *xch, uint32_t first, unsigned int max, xc_dominfo_t *info)
{
    (void)xch;
    if (max == 0)
        return 0;
    memset(info, 0, sizeof(*info));
    info->domid = first;
    info->running = 1;
    return 1;
}

/* ---- libxenevtchn ---- */
static int evtchn_fd = -1;
static evtchn_port_t next_port = 1;

xenevtchn_handle *xenevtchn_open(xentoollog_logger *l, unsigned f)
{
    (void)l; (void)f;
    if (evtchn_fd < 0)
        evtchn_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return evtchn_fd < 0 ? NULL : (xenevtchn_handle *)&dummy_handle;
}

xenevtchn_handle *xenevtchn_fdopen(xentoollog_logger *l, int fd, unsigned f)
{
    (void)l; (void)f;
    evtchn_fd = fd;
    return (xenevtchn_handle *)&dummy_handle;
}

int xenevtchn_close(xenevtchn_handle *x) { (void)x; return 0; }
int xenevtchn_fd(xenevtchn_handle *x) { (void)x; return evtchn_fd; }
int xenevtchn_notify(xenevtchn_handle *x, evtchn_port_t p) { (void)x; (void)p; return 0; }
xenevtchn_port_or_error_t xenevtchn_bind_virq(xenevtchn_handle *x, unsigned int v) { (void)x; (void)v; return next_port++; }
xenevtchn_port_or_error_t xenevtchn_bind_interdomain(xenevtchn_handle *x, uint32_t d, evtchn_port_t p)
{
    (void)x; (void)d; (void)p;
    return next_port++;
}
int xenevtchn_unbind(xenevtchn_handle *x, evtchn_port_t p) { (void)x; (void)p; return 0; }
xenevtchn_port_or_error_t xenevtchn_pending(xenevtchn_handle *x) { (void)x; errno = EAGAIN; return -1; }
int xenevtchn_unmask(xenevtchn_handle *x, evtchn_port_t p) { (void)x; (void)p; return 0; }

/* ---- libxengnttab ---- */
xengnttab_handle *xengnttab_open(xentoollog_logger *l, unsigned f) { (void)l; (void)f; return (xengnttab_handle *)&dummy_handle; }
int xengnttab_close(xengnttab_handle *x) { (void)x; return 0; }
int xengnttab_set_max_grants(xengnttab_handle *x, uint32_t n) { (void)x; (void)n; return 0; }
void *xengnttab_map_grant_ref(xengnttab_handle *x, uint32_t d, uint32_t r, int prot)
{
    (void)x; (void)d; (void)r; (void)prot;
    void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}
int xengnttab_unmap(xengnttab_handle *x, void *a, uint32_t n) { (void)x; return munmap(a, 4096 * (size_t)n); }

/* ---- /proc/xen redirection ---- */
static const char *redirect(const char *path, char *buf, size_t len)
{
    const char *dir = getenv("XENPCI_STUB_DIR");
    if (!dir || strncmp(path, "/proc/xen/", 10) != 0)
        return path;
    snprintf(buf, len, "%s/%s", dir, path + 10);
    return buf;
}

int open(const char *path, int flags, ...)
{
    static int (*real_open)(const char *, int, ...);
    if (!real_open)
        real_open = (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, "open");
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    char buf[4096];
    return real_open(redirect(path, buf, sizeof buf), flags, mode);
}

FILE *fopen(const char *path, const char *mode)
{
    static FILE *(*real_fopen)(const char *, const char *);
    if (!real_fopen)
        real_fopen = (FILE * (*)(const char *, const char *))dlsym(RTLD_NEXT, "fopen");
    char buf[4096];
    return real_fopen(redirect(path, buf, sizeof buf), mode);
}
