// The cost bench's workload: MIB of anonymous memory, each page written once per sweep.
// usage: cost_load MIB PERIOD_MS  (0: sweep continuously; -1: write once, then stay idle)
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    size_t size = (size_t)atol(argv[1]) << 20;
    long period_ms = atol(argv[2]);
    volatile char *memory =
        mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED)
        return 1;
    memset((char *)memory, 1, size);
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        if (period_ms < 0) {
            pause();
            continue;
        }
        for (size_t i = 0; i < size; i += 4096)
            memory[i]++;
        if (period_ms > 0)
            usleep(period_ms * 1000);
    }
}
