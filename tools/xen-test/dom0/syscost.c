/*
 * xt-syscost: what one system call costs in this domain (scenario 4 of the
 * Xen harness, issue 16). Built on the host by mkimages.sh (static), run in
 * dom0.
 *
 *   xt-syscost getppid             the trivial call: getppid(2), through syscall(2)
 *   xt-syscost read FILE           read(2) of 1 byte of FILE (/dev/zero)
 *   xt-syscost pread FILE OFF LEN  pread(2) of LEN bytes at OFF (a sysfs config file)
 *
 * Each of ROUNDS rounds (XT_ROUNDS, 5) makes the call in batches of 100
 * until MS milliseconds (XT_MS, 400) have passed on CLOCK_MONOTONIC; the
 * time per call of a round is its elapsed time over its calls. One line:
 *
 *   syscost what=getppid rounds=5 calls=NNN ns_per_call_median=X ns_per_call_min=Y per_round=A,B,...
 *
 * The clock is read once per batch: where the clock has no vDSO (a PV dom0
 * on clocksource xen) each reading is a system call too, 1 in 101.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define BATCH 100
#define MAXROUNDS 64

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int env_int(const char *name, int dflt, int lo, int hi)
{
    const char *v = getenv(name);
    int n = v ? atoi(v) : dflt;
    return n < lo ? lo : n > hi ? hi : n;
}

int main(int argc, char **argv)
{
    enum { GETPPID, READ, PREAD } what;
    int fd = -1, rounds = env_int("XT_ROUNDS", 5, 1, MAXROUNDS), ms = env_int("XT_MS", 400, 10, 60000);
    off_t off = 0;
    size_t len = 1;
    unsigned char buf[4096];
    double per[MAXROUNDS], sorted[MAXROUNDS];
    long total = 0;

    if (argc == 2 && strcmp(argv[1], "getppid") == 0) {
        what = GETPPID;
    } else if (argc == 3 && strcmp(argv[1], "read") == 0) {
        what = READ;
    } else if (argc == 5 && strcmp(argv[1], "pread") == 0) {
        what = PREAD;
        off = strtol(argv[3], NULL, 0);
        len = strtoul(argv[4], NULL, 0);
        if (len < 1 || len > sizeof buf) {
            fprintf(stderr, "xt-syscost: LEN must be 1..%zu\n", sizeof buf);
            return 2;
        }
    } else {
        fprintf(stderr, "usage: xt-syscost getppid | read FILE | pread FILE OFF LEN\n");
        return 2;
    }
    if (what != GETPPID && (fd = open(argv[2], O_RDONLY)) < 0) {
        perror(argv[2]);
        return 1;
    }
    for (int r = 0; r < rounds; r++) {
        long calls = 0;
        double t0 = now_ns(), t1 = t0, end = t0 + ms * 1e6;
        while (t1 < end) {
            for (int i = 0; i < BATCH; i++) {
                long rc;
                switch (what) {
                case GETPPID: rc = syscall(SYS_getppid); break;
                case READ: rc = read(fd, buf, 1); break;
                default: rc = pread(fd, buf, len, off); break;
                }
                if (rc < 0) {
                    perror("xt-syscost");
                    return 1;
                }
            }
            calls += BATCH;
            t1 = now_ns();
        }
        per[r] = (t1 - t0) / calls;
        total += calls;
    }
    memcpy(sorted, per, sizeof(double) * rounds);
    qsort(sorted, rounds, sizeof(double), cmp_double);
    printf("syscost what=%s rounds=%d calls=%ld ns_per_call_median=%.0f ns_per_call_min=%.0f per_round=",
           argv[1], rounds, total,
           rounds % 2 ? sorted[rounds / 2] : (sorted[rounds / 2 - 1] + sorted[rounds / 2]) / 2, sorted[0]);
    for (int r = 0; r < rounds; r++)
        printf("%s%.0f", r ? "," : "", per[r]);
    printf("\n");
    return 0;
}
