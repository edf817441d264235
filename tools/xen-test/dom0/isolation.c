/*
 * xt-iso: the timing tools of scenario 8 of the Xen harness (isolation).
 * Built on the host by mkimages.sh (static), installed in dom0 and in the
 * guests' initramfs. Every loop ends at a deadline (MAXSEC); the loops of
 * read, toggle and heartbeat end earlier on SIGUSR1.
 *
 *   xt-iso read CFG MAXSEC WIN     victim: 4-byte preads of CFG (a sysfs
 *                                  config file) at offset 0, back to back,
 *                                  each timed; one line of per-window stats
 *   xt-iso toggle CFG MAXSEC       noisy neighbour: the function's PMCSR to
 *                                  D3hot and back to D0, back to back; then
 *                                  its frontend closes twice 1 ms apart and
 *                                  writes child nodes under its state node
 *   xt-iso firstread MAXSEC [SKIP] hot-plug: waits for a PCI function (not
 *                                  SKIP) in sysfs; says when its config
 *                                  first answered
 *   xt-iso wait PATH LAST MAXSEC   waits (a xenstore watch, no polling) until
 *                                  PATH holds something other than LAST;
 *                                  prints it
 *   xt-iso heartbeat PERIOD_US MAXSEC WIN
 *                                  dom0: wakes every PERIOD_US; the gaps
 *                                  between wake-ups (how long this process
 *                                  went without running)
 *
 * Output lines start with "@@XT " (the guests' consoles reach dom0 through
 * xenconsoled's log). Times are CLOCK_MONOTONIC.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop_flag;
static void on_usr1(int s) { (void)s; stop_flag = 1; }

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void catch_usr1(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;   /* no SA_RESTART: a blocked call returns EINTR */
    sigaction(SIGUSR1, &sa, NULL);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Latency samples in microseconds, at most CAP of them (the rest counted
 * in the max only). */
#define CAP (4u << 20)
struct samples { uint32_t *v; size_t n, all; uint32_t max; };

static void sample(struct samples *s, int64_t us)
{
    uint32_t u = us < 0 ? 0 : us > 0xffffffffLL ? 0xffffffffu : (uint32_t)us;
    if (u > s->max) s->max = u;
    s->all++;
    if (!s->v) s->v = malloc(CAP * sizeof *s->v);
    if (s->v && s->n < CAP) s->v[s->n++] = u;
}

/* "p50_us=.. p90_us=.. p99_us=.. max_us=.." */
static void percentiles(struct samples *s, char *out, size_t len)
{
    if (s->n == 0) { snprintf(out, len, "p50_us=none p90_us=none p99_us=none max_us=none"); return; }
    qsort(s->v, s->n, sizeof *s->v, cmp_u32);
    snprintf(out, len, "p50_us=%u p90_us=%u p99_us=%u max_us=%u",
             s->v[s->n / 2], s->v[(s->n * 90) / 100], s->v[(s->n * 99) / 100], s->max);
}

/* ------------------------------------------------------------------ xenstore
 * The wire protocol over /dev/xen/xenbus (xs_wire.h): a header, then LEN
 * bytes. Paths without a leading '/' are relative to this domain's home. */
enum { XS_READ = 2, XS_WATCH = 4, XS_WRITE = 11, XS_WATCH_EVENT = 15, XS_ERROR = 16 };
struct xsd_sockmsg { uint32_t type, req_id, tx_id, len; };
static int xs_fd = -1;
static uint32_t xs_req_id;

static int xs_open(void)
{
    if (xs_fd < 0) xs_fd = open("/dev/xen/xenbus", O_RDWR);
    return xs_fd;
}

static int read_full(int fd, void *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t r = read(fd, (char *)buf + got, len - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        got += r;
    }
    return 0;
}

/* One message from the device: its type; the payload (NUL-terminated,
 * truncated to cap - 1) in buf. */
static int xs_recv(char *buf, size_t cap, uint32_t *type)
{
    struct xsd_sockmsg h;
    char skip[256];
    if (read_full(xs_fd, &h, sizeof h) < 0) return -1;
    size_t keep = h.len < cap - 1 ? h.len : cap - 1;
    if (read_full(xs_fd, buf, keep) < 0) return -1;
    buf[keep] = 0;
    for (size_t left = h.len - keep; left > 0;) {
        size_t n = left < sizeof skip ? left : sizeof skip;
        if (read_full(xs_fd, skip, n) < 0) return -1;
        left -= n;
    }
    *type = h.type;
    return 0;
}

/* A request and its reply (watch events in between are skipped: callers
 * read the node again after every wake-up). 0, or -1 with the error name in
 * reply (XS_ERROR) or errno. */
static int xs_call(uint32_t type, const char *payload, size_t len, char *reply, size_t cap)
{
    struct { struct xsd_sockmsg h; char p[1024]; } m;
    uint32_t t;
    if (len > sizeof m.p || xs_open() < 0) { snprintf(reply, cap, "E%d", errno); return -1; }
    m.h.type = type; m.h.req_id = ++xs_req_id; m.h.tx_id = 0; m.h.len = len;
    memcpy(m.p, payload, len);
    if (write(xs_fd, &m, sizeof m.h + len) != (ssize_t)(sizeof m.h + len)) { snprintf(reply, cap, "E%d", errno); return -1; }
    for (;;) {
        if (xs_recv(reply, cap, &t) < 0) { snprintf(reply, cap, "E%d", errno); return -1; }
        if (t == XS_WATCH_EVENT) continue;
        return t == XS_ERROR ? -1 : 0;
    }
}

static int xs_write(const char *path, const char *value, char *reply, size_t cap)
{
    char p[512];
    size_t a = strlen(path) + 1, b = strlen(value);
    if (a + b > sizeof p) return -1;
    memcpy(p, path, a); memcpy(p + a, value, b);
    return xs_call(XS_WRITE, p, a + b, reply, cap);
}

/* ------------------------------------------------------------------ read */
static int cmd_read(const char *cfg, int maxsec, const char *win)
{
    int fd = open(cfg, O_RDONLY);
    if (fd < 0) { printf("@@XT iso-read none win=%s open=%s\n", win, strerror(errno)); return 1; }
    uint32_t first = 0, v;
    if (pread(fd, &first, 4, 0) != 4) first = 0xffffffff;
    struct samples s = {0};
    unsigned long errors = 0, ff = 0, mismatch = 0, over10ms = 0;
    /* the three slowest reads and when (ms into the window) */
    uint32_t top[3] = {0}; int64_t top_at[3] = {0};
    catch_usr1();
    printf("@@XT iso-read start win=%s id=%08x\n", win, first);
    fflush(stdout);
    int64_t t_start = now_us(), end = t_start + (int64_t)maxsec * 1000000, t0, t1;
    while (!stop_flag) {
        t0 = now_us();
        if (t0 >= end) break;
        ssize_t r = pread(fd, &v, 4, 0);
        t1 = now_us();
        if (r != 4) { if (!(r < 0 && errno == EINTR)) errors++; continue; }
        if (v == 0xffffffff) ff++;
        else if (v != first) mismatch++;
        int64_t d = t1 - t0;
        sample(&s, d);
        if (d > 10000) over10ms++;
        for (int i = 0; i < 3; i++) {
            if ((uint32_t)d > top[i]) {
                for (int j = 2; j > i; j--) { top[j] = top[j - 1]; top_at[j] = top_at[j - 1]; }
                top[i] = (uint32_t)d; top_at[i] = (t0 - t_start) / 1000;
                break;
            }
        }
    }
    int64_t secs_ms = (now_us() - t_start) / 1000;
    char pc[160];
    percentiles(&s, pc, sizeof pc);
    printf("@@XT iso-read win=%s n=%zu ms=%lld %s over10ms=%lu errors=%lu ff=%lu mismatch=%lu slowest=%u@%lld,%u@%lld,%u@%lld\n",
           win, s.all, (long long)secs_ms, pc, over10ms, errors, ff, mismatch,
           top[0], (long long)top_at[0], top[1], (long long)top_at[1], top[2], (long long)top_at[2]);
    fflush(stdout);
    return 0;
}

/* ------------------------------------------------------------------ toggle */
static int cfg_read(int fd, int off, int len, uint32_t *v)
{
    *v = 0;
    return pread(fd, v, len, off) == len ? 0 : -1;
}

static int cmd_toggle(const char *cfg, int maxsec)
{
    int fd = open(cfg, O_RDWR);
    uint32_t st, ptr, id, pmc, pmcsr;
    int pm = 0;
    if (fd < 0) { printf("@@XT iso-toggle none open=%s\n", strerror(errno)); return 1; }
    /* the PM capability: status bit 4, then the list from 0x34 */
    if (cfg_read(fd, 6, 2, &st) == 0 && (st & 0x10) && cfg_read(fd, 0x34, 1, &ptr) == 0) {
        for (int i = 0; i < 48 && ptr >= 0x40 && ptr < 0x100; i++) {
            if (cfg_read(fd, ptr & ~3u, 2, &id) < 0) break;
            if ((id & 0xff) == 0x01) { pm = ptr & ~3u; break; }
            ptr = (id >> 8) & 0xff;
        }
    }
    if (!pm) { printf("@@XT iso-toggle none no-pm-capability\n"); return 1; }
    cfg_read(fd, pm + 2, 2, &pmc);
    cfg_read(fd, pm + 4, 2, &pmcsr);
    struct samples s = {0};
    unsigned long transitions = 0, errors = 0, checked = 0, in_d3 = 0;
    catch_usr1();
    printf("@@XT iso-toggle start pm=0x%x pmc=0x%04x pmcsr=0x%04x\n", pm, pmc, pmcsr);
    fflush(stdout);
    int64_t t_start = now_us(), end = t_start + (int64_t)maxsec * 1000000;
    /* PME_Status (bit 15, write 1 to clear) and the state bits cleared */
    uint16_t base = (uint16_t)(pmcsr & ~0x8003u);
    while (!stop_flag && now_us() < end) {
        for (int k = 0; k < 2; k++) {   /* D3hot, then D0: always ends in D0 */
            uint16_t w = base | (k == 0 ? 3 : 0);
            int64_t t0 = now_us();
            ssize_t r = pwrite(fd, &w, 2, pm + 4);
            int64_t t1 = now_us();
            if (r != 2) { errors++; if (errors > 100) goto done; continue; }
            transitions++;
            sample(&s, t1 - t0);
            /* sysfs drops the error of a config write: every 16th D3hot,
             * read PMCSR back to see the transitions are made */
            if (k == 0 && transitions % 32 == 1) {
                uint32_t now = 0;
                checked++;
                if (cfg_read(fd, pm + 4, 2, &now) == 0 && (now & 3) == 3) in_d3++;
            }
        }
    }
done:;
    int64_t toggle_ms = (now_us() - t_start) / 1000;
    uint32_t after = 0xffff;
    cfg_read(fd, pm + 4, 2, &after);
    close(fd);
    /* The hostile part: Closed twice, 1 ms apart, then child nodes under
     * the state node, while the backend handles the first close (the reset
     * it makes on a close). */
    char r1[64] = "", r2[64] = "", rc[64] = "";
    int64_t c0 = now_us();
    int e1 = xs_write("device/pci/0/state", "6", r1, sizeof r1);
    int64_t c1 = now_us();
    usleep(1000);
    int64_t c2 = now_us();
    int e2 = xs_write("device/pci/0/state", "6", r2, sizeof r2);
    int64_t c3 = now_us();
    int children = 0;
    for (int i = 0; i < 4; i++) {
        char path[64];
        snprintf(path, sizeof path, "device/pci/0/state/xt-%d", i);
        if (xs_write(path, "hostile", rc, sizeof rc) == 0) children++;
        usleep(1000);
    }
    int64_t c4 = now_us();
    char pc[160];
    percentiles(&s, pc, sizeof pc);
    printf("@@XT iso-toggle done transitions=%lu ms=%lld per-write %s errors=%lu d3hot_read_back=%lu/%lu pmcsr_after=0x%04x "
           "close1=%s close2=%s close_gap_us=%lld children=%d/4 close_ms=%lld\n",
           transitions, (long long)toggle_ms, pc, errors, in_d3, checked, after,
           e1 == 0 ? "ok" : r1, e2 == 0 ? "ok" : r2, (long long)(c2 - c1), children,
           (long long)((c4 - c0) / 1000));
    (void)c3;
    fflush(stdout);
    return 0;
}

/* ------------------------------------------------------------------ firstread */
static int cmd_firstread(int maxsec, const char *skip)
{
    int64_t t_start = now_us(), end = t_start + (int64_t)maxsec * 1000000, t_xb = -1;
    struct stat sb;
    while (now_us() < end) {
        if (t_xb < 0 && !skip && stat("/sys/bus/xen/devices/pci-0", &sb) == 0) t_xb = now_us();
        DIR *d = opendir("/sys/bus/pci/devices");
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (e->d_name[0] == '.' || (skip && strcmp(e->d_name, skip) == 0)) continue;
            char p[300];
            uint32_t v = 0xffffffff;
            snprintf(p, sizeof p, "/sys/bus/pci/devices/%s/config", e->d_name);
            int fd = open(p, O_RDONLY);
            if (fd < 0) continue;
            ssize_t r = pread(fd, &v, 4, 0);
            close(fd);
            if (r == 4 && v != 0xffffffff) {
                int64_t t = now_us();
                printf("@@XT iso-hp seen dev=%s id=%08x waited_ms=%lld xenbus_to_read_ms=%lld\n", e->d_name, v,
                       (long long)((t - t_start) / 1000), t_xb < 0 ? -1LL : (long long)((t - t_xb) / 1000));
                fflush(stdout);
                closedir(d);
                return 0;
            }
        }
        if (d) closedir(d);
        usleep(10000);
    }
    printf("@@XT iso-hp none waited_ms=%lld\n", (long long)((now_us() - t_start) / 1000));
    fflush(stdout);
    return 1;
}

/* ------------------------------------------------------------------ wait */
static int cmd_wait(const char *path, const char *last, int maxsec)
{
    char reply[512], w[300];
    size_t a = strlen(path) + 1;
    if (a + 3 > sizeof w) return 2;
    memcpy(w, path, a); memcpy(w + a, "xt", 3);
    if (xs_call(XS_WATCH, w, a + 3, reply, sizeof reply) < 0) { fprintf(stderr, "xt-iso wait: watch %s: %s\n", path, reply); return 2; }
    int64_t end = now_us() + (int64_t)maxsec * 1000000;
    for (;;) {
        if (xs_call(XS_READ, path, a, reply, sizeof reply) < 0) {
            /* not there yet, or not ours yet (dom0 writes it, then gives
             * it to us): as if empty */
            if (strcmp(reply, "ENOENT") != 0) fprintf(stderr, "xt-iso wait: read %s: %s\n", path, reply);
            reply[0] = 0;
        }
        if (strcmp(reply, last) != 0) { printf("%s\n", reply); return 0; }
        int64_t left = end - now_us();
        if (left <= 0) return 1;
        struct pollfd p = { .fd = xs_fd, .events = POLLIN };
        int n = poll(&p, 1, (int)(left / 1000) + 1);
        if (n < 0 && errno != EINTR) return 2;
        if (n > 0) {   /* the event (anything else is read again anyway) */
            uint32_t t;
            if (xs_recv(reply, sizeof reply, &t) < 0) return 2;
        }
    }
}

/* ------------------------------------------------------------------ heartbeat */
static int cmd_heartbeat(long period_us, int maxsec, const char *win)
{
    struct samples s = {0};
    unsigned long over50 = 0;
    catch_usr1();
    int64_t t_start = now_us(), end = t_start + (int64_t)maxsec * 1000000, last = t_start;
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    while (!stop_flag) {
        next.tv_nsec += period_us * 1000;
        while (next.tv_nsec >= 1000000000) { next.tv_nsec -= 1000000000; next.tv_sec++; }
        int r = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
        if (r == EINTR) continue;
        int64_t t = now_us();
        sample(&s, t - last);
        if (t - last > 50000) over50++;
        last = t;
        if (t >= end) break;
        /* after a stall, the next wake-up one period from now (no burst) */
        int64_t nx = (int64_t)next.tv_sec * 1000000 + next.tv_nsec / 1000;
        if (nx < t) { next.tv_sec = t / 1000000; next.tv_nsec = (t % 1000000) * 1000; }
    }
    char pc[160];
    percentiles(&s, pc, sizeof pc);
    printf("@@XT iso-heartbeat win=%s period_us=%ld n=%zu ms=%lld gap %s over50ms=%lu\n",
           win, period_us, s.all, (long long)((now_us() - t_start) / 1000), pc, over50);
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 5 && strcmp(argv[1], "read") == 0) return cmd_read(argv[2], atoi(argv[3]), argv[4]);
    if (argc >= 4 && strcmp(argv[1], "toggle") == 0) return cmd_toggle(argv[2], atoi(argv[3]));
    if (argc >= 3 && strcmp(argv[1], "firstread") == 0) return cmd_firstread(atoi(argv[2]), argc >= 4 ? argv[3] : NULL);
    if (argc >= 5 && strcmp(argv[1], "wait") == 0) return cmd_wait(argv[2], argv[3], atoi(argv[4]));
    if (argc >= 5 && strcmp(argv[1], "heartbeat") == 0) return cmd_heartbeat(atol(argv[2]), atoi(argv[3]), argv[4]);
    fprintf(stderr, "usage: xt-iso read CFG MAXSEC WIN | toggle CFG MAXSEC | firstread MAXSEC [SKIP] | wait PATH LAST MAXSEC | heartbeat PERIOD_US MAXSEC WIN\n");
    return 2;
}
