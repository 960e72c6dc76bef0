/* The reclaim benchmark's workload: a working set a little larger than its cgroup's memory
 * limit, touched with a skew (90 % of accesses to the first 30 %), so reclaim has to choose and
 * a wrong choice shows as refaults.
 *
 *   reclaim_load anon MiB CGROUP_PROCS          anonymous memory (swap must exist)
 *   reclaim_load file MiB CGROUP_PROCS PATH     a shared mapping of PATH, half the accesses write
 *
 * It joins the cgroup first, so all its memory is charged there, prints "ready" once every page
 * is populated, then the accesses of each second, one line per second, until killed. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: reclaim_load anon|file MiB CGROUP_PROCS [PATH]\n");
        return 2;
    }
    int file = strcmp(argv[1], "file") == 0;
    size_t len = (size_t)atol(argv[2]) << 20, pages = len / PAGE;
    FILE *procs = fopen(argv[3], "w");
    if (!procs || fprintf(procs, "%d\n", getpid()) < 0 || fclose(procs) != 0) {
        perror("joining the cgroup");
        return 1;
    }
    char *p;
    if (file) {
        int fd = open(argv[4], O_RDWR | O_CREAT, 0600);
        if (fd < 0 || ftruncate(fd, len) != 0) {
            perror("the data file");
            return 1;
        }
        p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    } else {
        p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    }
    if (p == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    madvise(p, len, MADV_NOHUGEPAGE); /* 4 KiB pages: reclaim and refaults page by page */
    if (file)
        madvise(p, len, MADV_RANDOM); /* no readahead: a refault reads the page it needs */
    for (size_t i = 0; i < pages; i++)
        p[i * PAGE] = (char)i;
    printf("ready\n");
    fflush(stdout);
    uint64_t x = 88172645463325252ull, count = 0;
    size_t hot = pages * 3 / 10;
    double next = now() + 1;
    volatile char sink;
    for (;;) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        size_t page = (x % 100 < 90) ? (x >> 8) % hot : (x >> 8) % pages;
        if (file && (x & 1))
            sink = p[page * PAGE];
        else
            p[page * PAGE]++;
        if ((++count & 1023) == 0 && now() >= next) {
            printf("%llu\n", (unsigned long long)count);
            fflush(stdout);
            count = 0;
            next += 1;
        }
    }
}
