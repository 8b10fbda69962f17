/* Reading a file with read(2) against mapping it: CPU (user + system) to
 * bring every byte of FILE in and sum it, as `scubactl ingest < FILE` would
 * read stdin (128 KiB reads) or map it.
 *
 * Usage: cc -O2 -o /tmp/mmap-read benches/mmap-read.c
 *        /tmp/mmap-read r FILE     read(2), 128 KiB at a time
 *        /tmp/mmap-read m FILE     mmap, pages faulted in as read
 *        /tmp/mmap-read mp FILE    mmap with MAP_POPULATE
 * Warm the file first (cat FILE > /dev/null) and alternate the modes. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

static double cpu_seconds(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return r.ru_utime.tv_sec + r.ru_utime.tv_usec / 1e6 + r.ru_stime.tv_sec +
           r.ru_stime.tv_usec / 1e6;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s r|m|mp FILE\n", argv[0]);
        return 2;
    }
    int fd = open(argv[2], O_RDONLY);
    if (fd < 0) {
        perror(argv[2]);
        return 1;
    }
    struct stat st;
    fstat(fd, &st);
    size_t n = st.st_size;
    unsigned long sum = 0;
    double start = cpu_seconds();
    if (argv[1][0] == 'r') {
        char *buf = malloc(1 << 17);
        ssize_t k;
        while ((k = read(fd, buf, 1 << 17)) > 0)
            for (ssize_t i = 0; i < k; i++) sum += buf[i];
    } else {
        int flags = MAP_PRIVATE | (argv[1][1] == 'p' ? MAP_POPULATE : 0);
        unsigned char *p = mmap(0, n, PROT_READ, flags, fd, 0);
        if (p == MAP_FAILED) {
            perror("mmap");
            return 1;
        }
        for (size_t i = 0; i < n; i++) sum += p[i];
    }
    printf("%s %.1f ms (sum %lu)\n", argv[1], (cpu_seconds() - start) * 1000, sum);
    return 0;
}
