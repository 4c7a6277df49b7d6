/* Ping-pong echo load generator, the C twin of the Python client in benchmarks/_load.py.
 *
 * On a 2-core machine the client shares the box with the server, and a Python client saturates
 * its own core well below what the server can do; this one does the same work (same protocol,
 * same byte-for-byte verification) for a fraction of the CPU, so the server is what is measured.
 * It is compiled at run time by _load.py when a C compiler is on PATH; nothing depends on it.
 *
 * usage: echo_client HOST PORT CONNS SIZE WARMUP_S DURATION_S MAX_ROUND_TRIPS SERVER_PID
 * Each connection sends SIZE bytes, waits for all of them to come back, compares them, repeats.
 * After WARMUP_S it counts round trips for DURATION_S (or until MAX_ROUND_TRIPS), then stops
 * sending and waits for the echoes in flight. SERVER_PID > 0: the server's utime+stime from
 * /proc/PID/stat is read at the start and end of the measured window.
 * Prints one JSON line: {"round_trips": N, "elapsed": S, "cpu_ticks": T, "run_delay_ns": D}
 * where T is the server's CPU ticks in the window and D the time this process spent runnable but
 * waiting for its CPU over its whole life (both -1 without /proc).
 * Exit status: 0 ok, 2 usage or system error, 3 wrong echo or server closed, 4 timeout.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 1024
#define DRAIN_TIMEOUT 5.0          /* seconds to wait for the echoes in flight after the window */
#define MAX_POLLS 100000000L       /* hard bound on loop turns, beside the time bound */

struct conn {
    int fd, parity, sending;
    size_t got, sent;
    unsigned char *buf;
    const unsigned char *msg[2];
};

#include "client_common.h"

/* Send what remains of the current message; ask for EPOLLOUT only while some is left. */
static int send_rest(int ep, struct conn *c, size_t size)
{
    if (send_some(c->fd, c->msg[c->parity], size, &c->sent) < 0)
        return -1;
    int want = c->sent < size;
    if (want != c->sending) {
        struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0)
            return -1;
        c->sending = want;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 9) {
        fprintf(stderr, "usage: %s HOST PORT CONNS SIZE WARMUP_S DURATION_S MAX_ROUND_TRIPS SERVER_PID\n",
                argv[0]);
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]), conns = atoi(argv[3]), pid = atoi(argv[8]);
    size_t size = (size_t)atol(argv[4]);
    double warmup = atof(argv[5]), duration = atof(argv[6]);
    long long max_rt = atoll(argv[7]);
    if (conns < 1 || size < 1 || port < 1 || duration <= 0) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }

    /* Distinct random bytes per connection and per turn: a stale or crossed echo fails memcmp. */
    unsigned char *pool = malloc(size + 2 * (size_t)conns);
    struct conn *cs = calloc((size_t)conns, sizeof *cs);
    if (!pool || !cs)
        die("malloc");
    uint64_t x = 0x9E3779B97F4A7C15ULL ^ (uint64_t)now() ^ ((uint64_t)getpid() << 32);
    for (size_t i = 0; i < size + 2 * (size_t)conns; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        pool[i] = (unsigned char)(x >> 24);
    }

    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "not an IPv4 address: %s\n", host);
        return 2;
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    int one = 1;
    for (int i = 0; i < conns; i++) {
        struct conn *c = &cs[i];
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (c->fd < 0)
            die("socket");
        if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0)
            die("connect");
        if (setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
            die("TCP_NODELAY");
        if (fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK) < 0)
            die("O_NONBLOCK");
        c->buf = malloc(size);
        if (!c->buf)
            die("malloc");
        c->msg[0] = pool + i;
        c->msg[1] = pool + conns + i;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
            die("epoll_ctl");
    }
    for (int i = 0; i < conns; i++)
        if (send_rest(ep, &cs[i], size) < 0)
            die("send");

    enum { WARM, MEASURE, DRAIN } phase = WARM;
    double start = now(), boundary = start + warmup, t0 = start, t1 = start;
    long long count = 0, measured = 0, ticks0 = -1, ticks1 = -1;
    int inflight = conns;
    struct epoll_event events[MAX_EVENTS];
    long polls;
    for (polls = 0; polls < MAX_POLLS; polls++) {
        double t = now();
        if (phase == MEASURE && count >= max_rt)
            boundary = t;
        if (t >= boundary) {
            if (phase == WARM) {
                phase = MEASURE;
                t0 = t;
                ticks0 = cpu_ticks(pid);
                count = 0;
                boundary = t + duration;
            } else if (phase == MEASURE) {
                phase = DRAIN;
                t1 = t;
                ticks1 = cpu_ticks(pid);
                measured = count;
                boundary = t + DRAIN_TIMEOUT;
            } else {
                fprintf(stderr, "echoes still in flight after %.0f s: %d\n", DRAIN_TIMEOUT, inflight);
                return 4;
            }
        }
        if (phase == DRAIN && inflight == 0)
            break;
        int timeout_ms = (int)((boundary - t) * 1000.0) + 1;
        int n = epoll_wait(ep, events, MAX_EVENTS, timeout_ms);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int e = 0; e < n; e++) {
            struct conn *c = events[e].data.ptr;
            uint32_t mask = events[e].events;
            if ((mask & EPOLLOUT) && send_rest(ep, c, size) < 0)
                die("send");
            if (!(mask & (EPOLLIN | EPOLLERR | EPOLLHUP)))
                continue;
            ssize_t k = recv(c->fd, c->buf + c->got, size - c->got, 0);
            if (k == 0) {
                fprintf(stderr, "server closed a connection\n");
                return 3;
            }
            if (k < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                    continue;
                die("recv");
            }
            c->got += (size_t)k;
            if (c->got < size)
                continue;
            if (memcmp(c->buf, c->msg[c->parity], size) != 0) {
                fprintf(stderr, "echo differs from what was sent\n");
                return 3;
            }
            c->got = 0;
            count++;
            if (phase == DRAIN) {
                inflight--;
                continue;
            }
            c->parity ^= 1;
            c->sent = 0;
            if (send_rest(ep, c, size) < 0)
                die("send");
        }
    }
    if (polls >= MAX_POLLS) {
        fprintf(stderr, "gave up after %ld polls\n", polls);
        return 4;
    }
    for (int i = 0; i < conns; i++)
        close(cs[i].fd);
    printf("{\"round_trips\": %lld, \"elapsed\": %.9f, \"cpu_ticks\": %lld, \"run_delay_ns\": %lld}\n",
           measured, t1 - t0, (ticks0 < 0 || ticks1 < 0) ? -1 : ticks1 - ticks0, run_delay_ns());
    return 0;
}
