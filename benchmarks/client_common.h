/* What both C load clients share: a monotonic clock, dying with a message, and reading
 * CPU time and run-queue delay from /proc (for the benchmarks' CPU and disturbance columns).
 * Included, not linked: each client is still compiled from one command line. */
#ifndef CLIENT_COMMON_H
#define CLIENT_COMMON_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *what)
{
    perror(what);
    exit(2);
}

static long long cpu_ticks(int pid)
{
    char path[64], data[4096];
    if (pid <= 0)
        return -1;
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(data, 1, sizeof data - 1, f);
    fclose(f);
    data[n] = 0;
    char *p = strrchr(data, ')');      /* comm may hold spaces and parentheses */
    if (!p)
        return -1;
    p += 2;                            /* now at field 3 (state) */
    for (int i = 0; i < 11; i++) {     /* skip fields 3..13 to reach 14 (utime) */
        p = strchr(p, ' ');
        if (!p)
            return -1;
        p++;
    }
    unsigned long long ut, st;
    if (sscanf(p, "%llu %llu", &ut, &st) != 2)
        return -1;
    return (long long)(ut + st);
}

static long long run_delay_ns(void)
{
    unsigned long long run, delay;
    FILE *f = fopen("/proc/self/schedstat", "r");
    if (!f)
        return -1;
    int n = fscanf(f, "%llu %llu", &run, &delay);
    fclose(f);
    return n == 2 ? (long long)delay : -1;
}

/* Send buf[*sent:len] until done or the kernel would block; -1 if the connection failed. */
static int send_some(int fd, const unsigned char *buf, size_t len, size_t *sent)
{
    while (*sent < len) {
        ssize_t k = send(fd, buf + *sent, len - *sent, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            if (errno == EINTR)
                continue;
            return -1;
        }
        *sent += (size_t)k;
    }
    return 0;
}

#endif
