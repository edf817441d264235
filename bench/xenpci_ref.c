/*
 * xenpci_ref.c - the limit for `make bench`: the request/reply of
 * docs/PROTOCOL.md §4 at its barest, between two threads of one process
 * over a 4 KiB page laid out as struct xen_pci_sharedinfo.
 *
 * Client: copy the op into the page, set XEN_PCIF_active with release,
 * notify, wait for the flag to clear, read the reply.
 * Server: on notification, if the flag is set snapshot the op (acquire),
 * answer a 4-byte conf_read from a 4 KiB byte array, write err and value,
 * clear the flag with release, notify back.
 *
 *   eventfd  both directions notified by an eventfd each (write/read)
 *   spin     no notification: both sides spin on the flag word (pause)
 *
 * Usage: xenpci_ref eventfd|spin REQUESTS [WARMUP]
 * Prints one line: "<mode> <ns per round trip> <requests> <checksum>
 * <user CPU ns per round trip> <system CPU ns per round trip>" (the CPU of
 * both threads over the timed requests, getrusage outside the timing).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "xenpci_abi.h"

_Static_assert(sizeof(struct xen_pci_sharedinfo) <= 4096, "shared info fits the page");

static struct xen_pci_sharedinfo *page;
static uint8_t config[4096];
static int to_server = -1, to_client = -1;
static int spin_mode;
static volatile int stopping;

static inline void cpu_pause(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static uint32_t flags_load(void) { return __atomic_load_n(&page->flags, __ATOMIC_ACQUIRE); }

static void wait_event(int fd)
{
    uint64_t v;
    while (read(fd, &v, sizeof v) != sizeof v) {
        if (errno != EINTR) { perror("eventfd read"); exit(1); }
    }
}

static void notify(int fd)
{
    uint64_t one = 1;
    while (write(fd, &one, sizeof one) != sizeof one) {
        if (errno != EINTR) { perror("eventfd write"); exit(1); }
    }
}

/* The backend: snapshot, answer from config[], write back err/value, clear. */
static void serve_one(void)
{
    struct xen_pci_op op;
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    memcpy(&op, (const void *)&page->op, sizeof op);
    __asm__ __volatile__("" ::: "memory");
    int32_t err = XEN_PCI_ERR_success;
    uint32_t value = 0;
    if (op.cmd != XEN_PCI_OP_conf_read || op.size != 4 || op.offset < 0 || op.offset > 4092 || op.offset % 4)
        err = XEN_PCI_ERR_invalid_offset;
    else
        memcpy(&value, &config[op.offset], 4);
    volatile struct xen_pci_op *w = &page->op;
    w->err = err;
    w->value = value;
    __atomic_fetch_and(&page->flags, ~XEN_PCIF_active, __ATOMIC_RELEASE);
}

static void *server(void *arg)
{
    (void)arg;
    for (;;) {
        if (spin_mode) {
            while (!(flags_load() & XEN_PCIF_active)) {
                if (__atomic_load_n(&stopping, __ATOMIC_RELAXED)) return NULL;
                cpu_pause();
            }
        } else {
            wait_event(to_server);
            if (stopping) return NULL;
            if (!(flags_load() & XEN_PCIF_active)) continue; /* spurious */
        }
        serve_one();
        if (!spin_mode) notify(to_client);
    }
}

/* The frontend's request: returns the value read. */
static uint32_t request(int32_t offset)
{
    struct xen_pci_op op;
    memset(&op, 0, sizeof op);
    op.cmd = XEN_PCI_OP_conf_read;
    op.devfn = 0x18;
    op.offset = offset;
    op.size = 4;
    /* The whole op, as Linux pcifront and our shim copy it. */
    memcpy(&page->op, &op, sizeof op);
    __atomic_fetch_or(&page->flags, XEN_PCIF_active, __ATOMIC_RELEASE);
    if (spin_mode) {
        while (flags_load() & XEN_PCIF_active) cpu_pause();
    } else {
        notify(to_server);
        while (flags_load() & XEN_PCIF_active) wait_event(to_client);
    }
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    memcpy(&op, (const void *)&page->op, sizeof op); /* the reply, copied out once */
    if (op.err != XEN_PCI_ERR_success) { fprintf(stderr, "request failed: %d\n", op.err); exit(1); }
    return op.value;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* b - a in nanoseconds. */
static int64_t timeval_ns(const struct timeval *b, const struct timeval *a)
{
    return ((int64_t)b->tv_sec - a->tv_sec) * 1000000000 + ((int64_t)b->tv_usec - a->tv_usec) * 1000;
}

int main(int argc, char **argv)
{
    if (argc < 3 || (strcmp(argv[1], "eventfd") && strcmp(argv[1], "spin"))) {
        fprintf(stderr, "usage: %s eventfd|spin REQUESTS [WARMUP]\n", argv[0]);
        return 2;
    }
    spin_mode = strcmp(argv[1], "spin") == 0;
    long n = strtol(argv[2], NULL, 10), warm = argc > 3 ? strtol(argv[3], NULL, 10) : n / 10;
    if (n <= 0 || warm < 0) { fprintf(stderr, "bad request count\n"); return 2; }

    page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) { perror("mmap"); return 1; }
    for (int i = 0; i < 4096; i++) config[i] = (uint8_t)(i * 7 + 1);
    if (!spin_mode) {
        to_server = eventfd(0, EFD_CLOEXEC);
        to_client = eventfd(0, EFD_CLOEXEC);
        if (to_server < 0 || to_client < 0) { perror("eventfd"); return 1; }
    }
    pthread_t t;
    if (pthread_create(&t, NULL, server, NULL)) { perror("pthread_create"); return 1; }

    uint64_t sum = 0;
    for (long i = 0; i < warm; i++) sum += request((int32_t)(i % 1024) * 4);
    struct rusage r0, r1;
    getrusage(RUSAGE_SELF, &r0);
    uint64_t t0 = now_ns();
    for (long i = 0; i < n; i++) sum += request((int32_t)(i % 1024) * 4);
    uint64_t t1 = now_ns();
    getrusage(RUSAGE_SELF, &r1);

    __atomic_store_n(&stopping, 1, __ATOMIC_RELAXED);
    if (!spin_mode) notify(to_server);
    pthread_join(t, NULL);
    printf("%s %.1f %ld %llu %.1f %.1f\n", argv[1], (double)(t1 - t0) / (double)n, n, (unsigned long long)sum,
           (double)timeval_ns(&r1.ru_utime, &r0.ru_utime) / (double)n, (double)timeval_ns(&r1.ru_stime, &r0.ru_stime) / (double)n);
    return 0;
}
