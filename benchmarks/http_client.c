/* HTTP/1.1 GET load generator: the C client of benchmarks/http.py when wrk is not installed.
 *
 * The same approach as echo_client.c (one process, epoll, non-blocking sockets, TCP_NODELAY,
 * the server's CPU read from /proc at the window's edges), doing keep-alive GETs instead of
 * echoes: each connection sends one request, reads one response, and sends the next. It parses
 * just enough of a response to know where it ends: the status line, Content-Length, and
 * Connection; a response without Content-Length ends when the server closes (HTTP/1.0 style).
 * Chunked responses are not supported (exit 3). When a response says the connection will close
 * (HTTP/1.0 without keep-alive, `Connection: close`), or in CLOSE mode, where every request asks
 * for `Connection: close`, the connection is closed and a new one opened; each such response
 * still counts as a request, and each connection completed inside the window as a connect.
 *
 * usage: http_client HOST PORT CONNS WARMUP_S DURATION_S MAX_REQUESTS SERVER_PID CLOSE PATH
 * Prints one JSON line: {"requests": N, "elapsed": S, "cpu_ticks": T, "run_delay_ns": D,
 * "connects": C, "errors": E, "non2xx": X, "unfinished": U}, where N and C count the measured
 * window, T is the server's CPU ticks in it (-1 without /proc), D this process's time runnable
 * but waiting for its CPU, E failed connects, resets and early closes over the whole run (each
 * is retried on a new connection), X responses whose status was not 2xx, and U requests still
 * unanswered when the drain after the window timed out.
 * Exit status: 0 ok, 2 usage or system error, 3 unparsable response or too many errors.
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
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 1024
#define RBUF 65536                 /* one response's head and body must fit */
#define DRAIN_TIMEOUT 5.0          /* seconds to wait for the responses in flight after the window */
#define MAX_POLLS 100000000L       /* hard bound on loop turns, beside the time bound */
#define MAX_ERRORS 100000L         /* give up when connects or reads keep failing */

enum state { IDLE, CONNECTING, ACTIVE };

struct conn {
    int fd;
    enum state state;
    int sending, waiting;          /* EPOLLOUT wanted; a request is out and unanswered */
    size_t sent, got;
    long body_left;                /* -1: head not parsed; -2: body runs until the server closes */
    int keep_alive, status;
    char *buf;
};

static struct sockaddr_in addr;
static const char *request;
static size_t request_len;
static int ep;
static long errors, non2xx;

#include "client_common.h"

static void set_events(struct conn *c, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die("epoll_ctl");
}

static void drop(struct conn *c)
{
    if (c->fd >= 0)
        close(c->fd);              /* also removes it from the epoll set */
    c->fd = -1;
    c->state = IDLE;
    c->waiting = 0;
}

static void count_error(void)
{
    if (++errors > MAX_ERRORS) {
        fprintf(stderr, "giving up after %ld failed connects, resets or early closes\n", errors);
        exit(3);
    }
}

/* Start a non-blocking connect; the request goes out once EPOLLOUT says it completed. */
static void start_connect(struct conn *c)
{
    int one = 1;
    for (;;) {
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c->fd < 0)
            die("socket");
        if (setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
            die("TCP_NODELAY");
        c->state = CONNECTING;
        c->sending = 1;
        c->waiting = 0;
        struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
            die("epoll_ctl");
        if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) == 0 || errno == EINPROGRESS)
            return;                     /* EPOLLOUT reports the outcome either way */
        count_error();
        drop(c);
    }
}

/* Send what remains of the request; returns -1 when the connection failed. */
static int send_rest(struct conn *c)
{
    if (send_some(c->fd, (const unsigned char *)request, request_len, &c->sent) < 0)
        return -1;
    int want = c->sent < request_len;
    if (want != c->sending) {
        set_events(c, EPOLLIN | (want ? EPOLLOUT : 0));
        c->sending = want;
    }
    return 0;
}

static int start_request(struct conn *c)
{
    c->sent = c->got = 0;
    c->body_left = -1;
    c->waiting = 1;
    return send_rest(c);
}

/* Parse the head in c->buf[0..got) if complete: 1 parsed, 0 need more, -1 unparsable. */
static int parse_head(struct conn *c)
{
    char *end = memmem(c->buf, c->got, "\r\n\r\n", 4);
    if (!end)
        return c->got >= RBUF ? -1 : 0;
    size_t head = (size_t)(end - c->buf) + 4;
    int minor, status;
    if (c->got < 12 || sscanf(c->buf, "HTTP/1.%d %3d", &minor, &status) != 2)
        return -1;
    long length = -2;
    int conn_close = 0, conn_keep = 0;
    char *line = memchr(c->buf, '\n', head) + 1;
    while (line < end) {
        char *eol = memchr(line, '\n', (size_t)(end + 2 - line));
        if (!eol)
            break;
        char *colon = memchr(line, ':', (size_t)(eol - line));
        if (colon) {
            size_t name = (size_t)(colon - line);
            char *value = colon + 1;
            while (*value == ' ' || *value == '\t')
                value++;
            if (name == 14 && strncasecmp(line, "content-length", 14) == 0)
                length = strtol(value, NULL, 10);
            else if (name == 10 && strncasecmp(line, "connection", 10) == 0) {
                conn_close = strncasecmp(value, "close", 5) == 0;
                conn_keep = strncasecmp(value, "keep-alive", 10) == 0;
            } else if (name == 17 && strncasecmp(line, "transfer-encoding", 17) == 0) {
                fprintf(stderr, "chunked (or other) transfer-encoding is not supported\n");
                return -1;
            }
        }
        line = eol + 1;
    }
    if (status == 204 || status == 304 || (status >= 100 && status < 200))
        length = 0;
    c->status = status;
    c->keep_alive = minor >= 1 ? !conn_close : conn_keep;
    if (length == -2)
        c->keep_alive = 0;
    if (length >= 0 && head + (size_t)length > RBUF) {
        fprintf(stderr, "response of %zu bytes does not fit the %d-byte buffer\n",
                head + (size_t)length, RBUF);
        return -1;
    }
    c->body_left = length;
    memmove(c->buf, c->buf + head, c->got - head);   /* keep only the body bytes */
    c->got -= head;
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 10) {
        fprintf(stderr, "usage: %s HOST PORT CONNS WARMUP_S DURATION_S MAX_REQUESTS SERVER_PID "
                        "CLOSE PATH\n", argv[0]);
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]), conns = atoi(argv[3]), pid = atoi(argv[7]), close_mode = atoi(argv[8]);
    double warmup = atof(argv[4]), duration = atof(argv[5]);
    long long max_requests = atoll(argv[6]);
    if (conns < 1 || port < 1 || duration <= 0 || argv[9][0] != '/') {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "not an IPv4 address: %s\n", host);
        return 2;
    }
    char *req = malloc(strlen(argv[9]) + strlen(host) + 96);
    if (!req)
        die("malloc");
    request_len = (size_t)sprintf(req, "GET %s HTTP/1.1\r\nHost: %s:%d\r\n%s\r\n", argv[9], host,
                                  port, close_mode ? "Connection: close\r\n" : "");
    request = req;

    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    struct conn *cs = calloc((size_t)conns, sizeof *cs);
    if (!cs)
        die("calloc");
    for (int i = 0; i < conns; i++) {
        cs[i].fd = -1;
        cs[i].buf = malloc(RBUF);
        if (!cs[i].buf)
            die("malloc");
        start_connect(&cs[i]);
    }

    enum { WARM, MEASURE, DRAIN } phase = WARM;
    double start = now(), boundary = start + warmup, t0 = start, t1 = start;
    long long count = 0, measured = 0, connects = 0, measured_connects = 0;
    long long ticks0 = -1, ticks1 = -1, unfinished = 0;
    struct epoll_event events[MAX_EVENTS];
    long polls;
    for (polls = 0; polls < MAX_POLLS; polls++) {
        double t = now();
        if (phase == MEASURE && count >= max_requests)
            boundary = t;
        if (t >= boundary) {
            if (phase == WARM) {
                phase = MEASURE;
                t0 = t;
                ticks0 = cpu_ticks(pid);
                count = connects = 0;
                boundary = t + duration;
            } else if (phase == MEASURE) {
                phase = DRAIN;
                t1 = t;
                ticks1 = cpu_ticks(pid);
                measured = count;
                measured_connects = connects;
                boundary = t + DRAIN_TIMEOUT;
                for (int i = 0; i < conns; i++)   /* nothing new: drop what has no request out */
                    if (cs[i].state != IDLE && !cs[i].waiting)
                        drop(&cs[i]);
            } else {
                for (int i = 0; i < conns; i++)
                    unfinished += cs[i].waiting;
                break;
            }
        }
        if (phase == DRAIN) {
            int busy = 0;
            for (int i = 0; i < conns && !busy; i++)
                busy = cs[i].state != IDLE;
            if (!busy)
                break;
        }
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
            if (c->state == IDLE)
                continue;               /* dropped earlier in this batch */
            if (c->state == CONNECTING) {
                int err = 0;
                socklen_t len = sizeof err;
                if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err != 0) {
                    count_error();
                    drop(c);
                    if (phase != DRAIN)
                        start_connect(c);
                    continue;
                }
                if (!(mask & EPOLLOUT))
                    continue;
                c->state = ACTIVE;
                connects++;
                if (phase == DRAIN) {
                    drop(c);
                    continue;
                }
                c->sending = 0;
                set_events(c, EPOLLIN);
                if (start_request(c) < 0) {
                    count_error();
                    drop(c);
                    start_connect(c);
                }
                continue;
            }
            if ((mask & EPOLLOUT) && send_rest(c) < 0) {
                count_error();
                drop(c);
                if (phase != DRAIN)
                    start_connect(c);
                continue;
            }
            if (!(mask & (EPOLLIN | EPOLLERR | EPOLLHUP)))
                continue;
            ssize_t k = recv(c->fd, c->buf + c->got, RBUF - c->got, 0);
            if (k < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                    continue;
                if (errno != ECONNRESET && errno != EPIPE)
                    die("recv");
            }
            int done = 0;
            if (k <= 0) {               /* the server closed (or reset) the connection */
                if (k == 0 && c->waiting && c->body_left == -2)
                    done = 1;           /* a body delimited by the close */
                else {
                    count_error();      /* closed before (or in the middle of) a response */
                    drop(c);
                    if (phase != DRAIN)
                        start_connect(c);
                    continue;
                }
            } else {
                c->got += (size_t)k;
                if (c->body_left == -1) {
                    int parsed = parse_head(c);
                    if (parsed < 0) {
                        fprintf(stderr, "unparsable response\n");
                        return 3;
                    }
                    if (parsed == 0)
                        continue;
                }
                if (c->body_left == -2) {
                    c->got = 0;         /* discard; the close ends it */
                    continue;
                }
                if ((long)c->got < c->body_left)
                    continue;
                if ((long)c->got > c->body_left) {
                    fprintf(stderr, "bytes after the response (none was pipelined)\n");
                    return 3;
                }
                done = 1;
            }
            if (!done)
                continue;
            count++;
            c->waiting = 0;
            if (c->status < 200 || c->status > 299)
                non2xx++;
            if (!c->keep_alive || close_mode || k == 0) {
                drop(c);
                if (phase != DRAIN)
                    start_connect(c);
            } else if (phase == DRAIN) {
                drop(c);
            } else if (start_request(c) < 0) {
                count_error();
                drop(c);
                start_connect(c);
            }
        }
    }
    if (polls >= MAX_POLLS) {
        fprintf(stderr, "gave up after %ld polls\n", polls);
        return 3;
    }
    for (int i = 0; i < conns; i++)
        drop(&cs[i]);
    printf("{\"requests\": %lld, \"elapsed\": %.9f, \"cpu_ticks\": %lld, \"run_delay_ns\": %lld, "
           "\"connects\": %lld, \"errors\": %ld, \"non2xx\": %ld, \"unfinished\": %lld}\n",
           measured, t1 - t0, (ticks0 < 0 || ticks1 < 0) ? -1 : ticks1 - ticks0, run_delay_ns(),
           measured_connects, errors, non2xx, unfinished);
    return 0;
}
