/*
 * cyclegen: the load side of the bench's connection-cycle and ping-pong measurements.
 *
 * Why C: the load must cost less than the fastest proxy under test, or the numbers measure
 * the load generator. The Python client (uvloop) and the Python echo sink together saturated
 * the load core at ~10,800 direct cycles/s and ~6,300 cycles/s through microsocks, so the
 * fast proxies could not be told apart. No packaged tool speaks SOCKS5 connection cycles
 * (greeting, RFC 1929 auth, CONNECT, echo, close, many at once): wrk/ab/iperf speak HTTP or
 * raw TCP, and SOCKS-capable clients (curl, proxychains) fork or set up far more per
 * connection than a proxy spends on it. So this is one small single-threaded epoll process
 * that is both the SOCKS5 client and the echo server the proxy CONNECTs to: the whole load
 * side is one cheap process on one core.
 *
 * Modes (one JSON line on stdout at the end):
 *   cycles    N slots (default 64) each loop: non-blocking connect to the proxy, send
 *             05 01 02 (or 05 01 00 without --user), read 05 02, send RFC 1929 user/pass,
 *             read 01 00, send CONNECT ATYP=1 to the echo address, read the reply (its
 *             length from its ATYP: 1, 4 or 3), send a payload (64 B), read it back, close.
 *             Direct mode (no --proxy): connect to the echo server, payload, read, close.
 *             Every reply byte is checked; errors are counted by kind.
 *   pingpong  one connection (through the proxy or direct), --warmup + --rounds round trips
 *             of --size bytes; p50/p99/max in microseconds (CLOCK_MONOTONIC).
 *   echo-only just the echo server; prints "READY echo=PORT" and runs until SIGTERM/SIGINT
 *             or --max-seconds.
 *
 * Every wait is bounded: each cycle has a deadline (--timeout, 10 s) checked from the loop,
 * and the whole run stops at --max-seconds (unfinished cycles are then counted as such).
 *
 * Build: gcc -O2 -Wall -Wextra -Werror -o bench/.build/cyclegen bench/cyclegen.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 256
#define REPLY_MAX (4 + 1 + 255 + 2) /* longest CONNECT reply: ATYP=3 with a 255-byte name */
#define MAX_PAYLOAD 65536
#define ECHO_BUF 65536
#define TIMER_CHECK_NS 50000000LL /* scan for expired cycles at most every 50 ms */

enum kind { K_LISTENER, K_ECHO, K_CLIENT };

/* The errors a cycle can end with; names are the JSON keys. */
enum err {
    E_CONNECT,  /* connect() failed or SO_ERROR set */
    E_TIMEOUT,  /* the cycle's deadline passed */
    E_METHOD,   /* method reply not 05 <wanted> */
    E_AUTH,     /* auth reply not 01 00 */
    E_REPLY,    /* CONNECT reply: bad version, nonzero REP, bad RSV or ATYP */
    E_ECHO,     /* echoed payload differs */
    E_EOF,      /* peer closed before the step was complete */
    E_RESET,    /* ECONNRESET / EPIPE */
    E_IO,       /* any other socket error */
    E_EXTRA,    /* bytes beyond what the step expects */
    E_ACCEPT,   /* echo server: accept() failed */
    E_UNFINISHED, /* still running when --max-seconds ended the run */
    E_COUNT
};
static const char *const err_names[E_COUNT] = {
    "connect", "timeout", "method", "auth", "reply", "echo",
    "eof", "reset", "io", "extra", "accept", "unfinished",
};

enum step { S_IDLE, S_CONNECTING, S_METHOD, S_AUTH, S_REPLY, S_ECHO };
static const char *const step_names[] = {"idle", "connect", "method", "auth", "reply", "echo"};

struct obj {
    enum kind kind;
    int fd;
};

struct echo_conn {
    struct obj o;
    unsigned char *pending; /* bytes read but not yet written back (NULL if none) */
    size_t pending_len, pending_off;
    int want_out; /* EPOLLOUT is in the registered events */
    struct echo_conn *next_dead;
};

struct slot {
    struct obj o;
    enum step step;
    const unsigned char *out; /* message being sent; out_off bytes already written */
    size_t out_len, out_off;
    unsigned char *in; /* received, not yet consumed */
    size_t in_len, in_cap;
    unsigned char *payload;
    int64_t deadline_ns;
    int64_t sent_ns; /* ping-pong: when the current round's send started */
    uint64_t seq;
    int restart; /* closed during this batch; start the next cycle after it */
};

/* --- options and global state ------------------------------------------------------------ */

static struct {
    const char *mode;
    struct sockaddr_in proxy, echo;
    int have_proxy, have_echo;
    const char *user, *pass;
    long count, concurrency, payload, rounds, warmup, size, max_errors;
    double duration, timeout, max_seconds;
} opt = {
    .mode = "cycles",
    .count = 0,
    .concurrency = 64,
    .payload = 64,
    .rounds = 10000,
    .warmup = 200,
    .size = 32,
    .max_errors = 100,
    .duration = 0,
    .timeout = 10,
    .max_seconds = 300,
};

static int epfd = -1;
static struct obj listener = {K_LISTENER, -1};
static unsigned char greeting[3], auth_msg[3 + 255 + 255], connect_msg[10];
static size_t auth_len;
static int pingpong;

static uint64_t started, done, errors, err_count[E_COUNT], accepted, echo_open;
static char first_error[256];
static int stopping; /* no new cycles */
static volatile sig_atomic_t got_signal;

static int64_t *samples;
static long nsamples, rounds_done;

static struct echo_conn *dead_echo;
static unsigned char echo_scratch[ECHO_BUF];

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("cyclegen: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static void note_error(enum err kind, const char *fmt, ...) {
    err_count[kind]++;
    if (kind != E_ACCEPT && kind != E_UNFINISHED) errors++;
    if (first_error[0] == '\0') {
        va_list ap;
        int n = snprintf(first_error, sizeof first_error, "%s: ", err_names[kind]);
        va_start(ap, fmt);
        if (n > 0 && (size_t)n < sizeof first_error)
            vsnprintf(first_error + n, sizeof first_error - (size_t)n, fmt, ap);
        va_end(ap);
    }
}

static void on_signal(int sig) {
    (void)sig;
    got_signal = 1;
}

/* --- echo server -------------------------------------------------------------------------- */

static void echo_close(struct echo_conn *c) {
    if (c->o.fd < 0) return;
    close(c->o.fd); /* also removes it from the epoll set */
    c->o.fd = -1;
    free(c->pending);
    c->pending = NULL;
    echo_open--;
    /* Freed after the event batch: a later event in this batch may still point at it. */
    c->next_dead = dead_echo;
    dead_echo = c;
}

/* Write back what is pending; 1 if all written, 0 if the socket is full, -1 if closed. */
static int echo_flush(struct echo_conn *c) {
    while (c->pending_off < c->pending_len) {
        ssize_t n = send(c->o.fd, c->pending + c->pending_off, c->pending_len - c->pending_off,
                         MSG_NOSIGNAL);
        if (n > 0) {
            c->pending_off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return 0;
        } else {
            echo_close(c);
            return -1;
        }
    }
    free(c->pending);
    c->pending = NULL;
    c->pending_len = c->pending_off = 0;
    return 1;
}

static void echo_event(struct echo_conn *c, uint32_t events) {
    if (c->pending) {
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
        if (echo_flush(c) <= 0) return; /* still full (EPOLLOUT edge will come) or closed */
    }
    /* Edge-triggered: read until a short read (the queue is then empty) or EAGAIN. */
    for (;;) {
        ssize_t n = recv(c->o.fd, echo_scratch, sizeof echo_scratch, 0);
        if (n == 0) {
            echo_close(c);
            return;
        }
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) echo_close(c);
            return;
        }
        size_t off = 0;
        while (off < (size_t)n) {
            ssize_t w = send(c->o.fd, echo_scratch + off, (size_t)n - off, MSG_NOSIGNAL);
            if (w > 0) {
                off += (size_t)w;
            } else if (w < 0 && errno == EINTR) {
                continue;
            } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                /* Keep the rest and stop reading until EPOLLOUT: back-pressure. */
                c->pending_len = (size_t)n - off;
                c->pending_off = 0;
                c->pending = malloc(c->pending_len);
                if (!c->pending) die("out of memory");
                memcpy(c->pending, echo_scratch + off, c->pending_len);
                if (!c->want_out) {
                    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                                             .data.ptr = c};
                    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->o.fd, &ev) < 0)
                        die("epoll_ctl: %s", strerror(errno));
                    c->want_out = 1;
                }
                return;
            } else {
                echo_close(c);
                return;
            }
        }
        /* A short read means the queue is empty; the FIN may be there too, with no new
         * edge to come, so with RDHUP read on until recv says 0 or EAGAIN. */
        if ((size_t)n < sizeof echo_scratch && !(events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
            return;
    }
}

static void listener_event(void) {
    for (int i = 0; i < 256; i++) { /* bounded so clients are not starved */
        int fd = accept4(listener.fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            if (errno == EINTR || errno == ECONNABORTED) continue;
            note_error(E_ACCEPT, "accept: %s", strerror(errno));
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct echo_conn *c = calloc(1, sizeof *c);
        if (!c) die("out of memory");
        c->o.kind = K_ECHO;
        c->o.fd = fd;
        /* EPOLLOUT is added only if a write ever falls short (see echo_event). */
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.ptr = c};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
        accepted++;
        echo_open++;
    }
}

static void start_listener(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket: %s", strerror(errno));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) die("bind: %s", strerror(errno));
    if (listen(fd, 4096) < 0) die("listen: %s", strerror(errno));
    socklen_t len = sizeof a;
    if (getsockname(fd, (struct sockaddr *)&a, &len) < 0) die("getsockname: %s", strerror(errno));
    listener.fd = fd;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &listener};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
    if (!opt.have_echo) {
        opt.echo = a;
        opt.have_echo = 1;
    }
}

/* --- client ------------------------------------------------------------------------------- */

static void slot_close(struct slot *s) {
    if (s->o.fd >= 0) close(s->o.fd);
    s->o.fd = -1;
    s->step = S_IDLE;
    s->out = NULL;
    s->in_len = 0;
    s->restart = 1;
}

static void slot_fail(struct slot *s, enum err kind, const char *fmt, ...) {
    char msg[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    note_error(kind, "%s (during %s)", msg, step_names[s->step]);
    slot_close(s);
}

static void slot_fail_errno(struct slot *s, int e, const char *what) {
    enum err kind = (e == ECONNRESET || e == EPIPE) ? E_RESET : E_IO;
    slot_fail(s, kind, "%s: %s", what, strerror(e));
}

/* Send a message (kept by pointer: it outlives the send). 0 on success or pending, -1 if
 * the slot failed. */
static int slot_send(struct slot *s, const unsigned char *msg, size_t len) {
    s->out = msg;
    s->out_len = len;
    s->out_off = 0;
    while (s->out_off < s->out_len) {
        ssize_t n = send(s->o.fd, s->out + s->out_off, s->out_len - s->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            s->out_off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return 0; /* the rest goes out on EPOLLOUT */
        } else {
            slot_fail_errno(s, n < 0 ? errno : EIO, "send");
            return -1;
        }
    }
    s->out = NULL;
    return 0;
}

static void fill_payload(struct slot *s) {
    /* The sequence number up front catches replies crossed between connections. */
    uint64_t seq = s->seq;
    for (long i = 0; i < opt.payload; i++)
        s->payload[i] = (unsigned char)(i < 8 ? seq >> (8 * i) : (uint64_t)('a' + i % 26));
}

static void send_payload(struct slot *s) {
    s->step = S_ECHO;
    if (pingpong) { /* one connection for the whole run: the deadline is per round */
        s->sent_ns = now_ns();
        s->deadline_ns = s->sent_ns + (int64_t)(opt.timeout * 1e9);
    }
    slot_send(s, s->payload, (size_t)opt.payload);
}

static void send_first(struct slot *s) {
    if (opt.have_proxy) {
        s->step = S_METHOD;
        slot_send(s, greeting, sizeof greeting);
    } else {
        send_payload(s);
    }
}

static void slot_start(struct slot *s) {
    s->restart = 0;
    s->seq = started++;
    s->in_len = 0;
    s->out = NULL;
    s->deadline_ns = now_ns() + (int64_t)(opt.timeout * 1e9);
    fill_payload(s);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        s->step = S_CONNECTING;
        slot_fail(s, E_CONNECT, "socket: %s", strerror(errno));
        return;
    }
    s->o.fd = fd;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    const struct sockaddr_in *to = opt.have_proxy ? &opt.proxy : &opt.echo;
    s->step = S_CONNECTING;
    int rc;
    do {
        rc = connect(fd, (const struct sockaddr *)to, sizeof *to);
    } while (rc < 0 && errno == EINTR);
    if (rc < 0 && errno != EINPROGRESS) {
        slot_fail(s, E_CONNECT, "connect: %s", strerror(errno));
        return;
    }
    /* Registered once, edge-triggered: no epoll_ctl per step. */
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = s};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
    if (rc == 0) send_first(s);
}

static void record_round(struct slot *s) {
    int64_t t = now_ns();
    if (rounds_done >= opt.warmup) samples[nsamples++] = t - s->sent_ns;
    rounds_done++;
}

/* Consume complete replies from s->in; returns 0 to keep reading, -1 if the slot closed. */
static int slot_process(struct slot *s) {
    for (;;) {
        unsigned char *b = s->in;
        size_t have = s->in_len, need;
        switch (s->step) {
        case S_METHOD:
            if (have < 2) return 0;
            if (b[0] != 0x05 || b[1] != greeting[2]) {
                slot_fail(s, E_METHOD, "method reply %02x %02x, wanted 05 %02x", b[0], b[1],
                          greeting[2]);
                return -1;
            }
            need = 2;
            break;
        case S_AUTH:
            if (have < 2) return 0;
            if (b[0] != 0x01 || b[1] != 0x00) {
                slot_fail(s, E_AUTH, "auth reply %02x %02x, wanted 01 00", b[0], b[1]);
                return -1;
            }
            need = 2;
            break;
        case S_REPLY:
            if (have < 5) return 0;
            if (b[0] != 0x05 || b[1] != 0x00 || b[2] != 0x00) {
                slot_fail(s, E_REPLY, "CONNECT reply %02x %02x %02x, wanted 05 00 00", b[0],
                          b[1], b[2]);
                return -1;
            }
            if (b[3] == 0x01) {
                need = 4 + 4 + 2;
            } else if (b[3] == 0x04) {
                need = 4 + 16 + 2;
            } else if (b[3] == 0x03) {
                need = 4 + 1 + (size_t)b[4] + 2;
            } else {
                slot_fail(s, E_REPLY, "CONNECT reply ATYP %02x", b[3]);
                return -1;
            }
            if (have < need) return 0;
            break;
        case S_ECHO:
            need = (size_t)opt.payload;
            if (have < need) {
                if (memcmp(b, s->payload, have) != 0) {
                    slot_fail(s, E_ECHO, "echoed bytes differ");
                    return -1;
                }
                return 0;
            }
            if (memcmp(b, s->payload, need) != 0) {
                slot_fail(s, E_ECHO, "echoed bytes differ");
                return -1;
            }
            break;
        default:
            if (have) {
                slot_fail(s, E_EXTRA, "%zu bytes while not expecting any", have);
                return -1;
            }
            return 0;
        }
        /* No server may send ahead of our next message: anything left over is an error. */
        if (have > need) {
            slot_fail(s, E_EXTRA, "%zu bytes after a complete reply", have - need);
            return -1;
        }
        s->in_len = 0;
        switch (s->step) {
        case S_METHOD:
            if (auth_len) {
                s->step = S_AUTH;
                if (slot_send(s, auth_msg, auth_len) < 0) return -1;
            } else {
                s->step = S_REPLY;
                if (slot_send(s, connect_msg, sizeof connect_msg) < 0) return -1;
            }
            return 0;
        case S_AUTH:
            s->step = S_REPLY;
            return slot_send(s, connect_msg, sizeof connect_msg);
        case S_REPLY:
            send_payload(s);
            return s->o.fd < 0 ? -1 : 0;
        case S_ECHO:
            if (pingpong) {
                record_round(s);
                if (rounds_done < opt.warmup + opt.rounds && !stopping) {
                    send_payload(s);
                    return s->o.fd < 0 ? -1 : 0;
                }
            }
            done++;
            slot_close(s);
            return -1;
        default:
            return 0;
        }
    }
}

static void slot_read(struct slot *s, uint32_t events) {
    for (;;) {
        size_t space = s->in_cap - s->in_len;
        if (space == 0) {
            slot_fail(s, E_EXTRA, "more than %zu bytes buffered", s->in_cap);
            return;
        }
        ssize_t n = recv(s->o.fd, s->in + s->in_len, space, 0);
        if (n > 0) {
            s->in_len += (size_t)n;
            if (slot_process(s) < 0) return;
            /* A short read means the queue is empty (edge-triggered: new data brings a new
             * event). A FIN that came with the data brings none, so after RDHUP read on
             * until recv says 0 (an EOF error) or EAGAIN. */
            if ((size_t)n < space && !(events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))) return;
        } else if (n == 0) {
            slot_fail(s, E_EOF, "closed by peer after %zu bytes", s->in_len);
            return;
        } else if (errno == EINTR) {
            continue;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return;
        } else {
            slot_fail_errno(s, errno, "recv");
            return;
        }
    }
}

static void slot_event(struct slot *s, uint32_t events) {
    if (s->o.fd < 0) return; /* closed earlier in this batch */
    if (s->step == S_CONNECTING) {
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
        int err = 0;
        /* A failed connect always reports EPOLLERR or EPOLLHUP; only then ask why. */
        if (events & (EPOLLERR | EPOLLHUP)) {
            socklen_t len = sizeof err;
            if (getsockopt(s->o.fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
        }
        if (err) {
            slot_fail(s, E_CONNECT, "connect: %s", strerror(err));
            return;
        }
        send_first(s);
        if (s->o.fd < 0) return;
    } else if (s->out && (events & EPOLLOUT)) {
        size_t off = s->out_off;
        s->out_off = 0;
        const unsigned char *msg = s->out;
        size_t len = s->out_len;
        /* Resume where it stopped. */
        if (slot_send(s, msg + off, len - off) < 0) return;
    }
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP)) slot_read(s, events);
}

/* --- main loop ---------------------------------------------------------------------------- */

static int may_start(int64_t t, int64_t t0) {
    if (stopping || got_signal) return 0;
    if (opt.max_errors > 0 && errors >= (uint64_t)opt.max_errors) return 0;
    if (opt.duration > 0) return t - t0 < (int64_t)(opt.duration * 1e9);
    return started < (uint64_t)opt.count;
}

static void free_dead_echo(void) {
    while (dead_echo) {
        struct echo_conn *c = dead_echo;
        dead_echo = c->next_dead;
        free(c);
    }
}

/* Runs until every slot is idle and no new cycle may start, or until the hard end. */
static int64_t run_loop(struct slot *slots, long nslots, int64_t t0) {
    struct epoll_event events[MAX_EVENTS];
    int64_t hard_end = t0 + (int64_t)(opt.max_seconds * 1e9);
    int64_t next_check = t0 + TIMER_CHECK_NS;
    int64_t last_done = t0;
    for (long i = 0; i < nslots; i++)
        if (may_start(now_ns(), t0)) slot_start(&slots[i]);
    for (;;) {
        if (nslots > 0) {
            long busy = 0;
            for (long i = 0; i < nslots; i++) busy += slots[i].o.fd >= 0 || slots[i].restart;
            if (busy == 0) break;
        } else if (got_signal) {
            break;
        }
        int n = epoll_wait(epfd, events, MAX_EVENTS, 50);
        if (n < 0) {
            if (errno != EINTR) die("epoll_wait: %s", strerror(errno));
            n = 0;
        }
        for (int i = 0; i < n; i++) {
            struct obj *o = events[i].data.ptr;
            if (o->kind == K_LISTENER) {
                listener_event();
            } else if (o->kind == K_ECHO) {
                if (o->fd >= 0) echo_event((struct echo_conn *)o, events[i].events);
            } else {
                slot_event((struct slot *)o, events[i].events);
            }
        }
        free_dead_echo();
        int64_t t = now_ns();
        if (t >= next_check) {
            next_check = t + TIMER_CHECK_NS;
            for (long i = 0; i < nslots; i++) {
                struct slot *s = &slots[i];
                if (s->o.fd >= 0 && t >= s->deadline_ns)
                    slot_fail(s, E_TIMEOUT, "no progress within %.1f s", opt.timeout);
            }
        }
        if (t >= hard_end || got_signal) {
            stopping = 1;
            for (long i = 0; i < nslots; i++) {
                if (slots[i].o.fd >= 0) {
                    note_error(E_UNFINISHED, "cycle still running at the end of the run");
                    close(slots[i].o.fd);
                    slots[i].o.fd = -1;
                }
                slots[i].restart = 0;
            }
            if (nslots == 0) break;
        }
        for (long i = 0; i < nslots; i++) {
            struct slot *s = &slots[i];
            if (!s->restart) continue;
            s->restart = 0;
            last_done = t;
            if (may_start(t, t0)) slot_start(s);
        }
    }
    return last_done;
}

/* --- setup -------------------------------------------------------------------------------- */

static void parse_addr(const char *text, struct sockaddr_in *a) {
    char host[64];
    const char *colon = strrchr(text, ':');
    if (!colon || (size_t)(colon - text) >= sizeof host) die("bad address %s (want IP:PORT)", text);
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port <= 0 || port > 65535) die("bad port in %s", text);
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &a->sin_addr) != 1) die("bad IPv4 address in %s", text);
}

static long parse_long(const char *name, const char *text, long lo, long hi) {
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || *end || v < lo || v > hi) die("%s: want an integer in [%ld, %ld]", name, lo, hi);
    return v;
}

static double parse_double(const char *name, const char *text) {
    char *end;
    double v = strtod(text, &end);
    if (*end || !(v >= 0) || v > 1e6) die("%s: want a number of seconds", name);
    return v;
}

static void usage(void) {
    fputs("usage: cyclegen [--mode cycles|pingpong|echo-only] [--proxy IP:PORT]\n"
          "  [--user U --pass P] [--echo IP:PORT] [--count N | --duration S]\n"
          "  [--concurrency N] [--payload BYTES] [--rounds N] [--warmup N] [--size BYTES]\n"
          "  [--timeout S] [--max-seconds S] [--max-errors N]\n"
          "Without --proxy, cycles and ping-pong go straight to the echo server. Without\n"
          "--echo, the built-in echo server (127.0.0.1, kernel-chosen port) is used.\n",
          stderr);
    exit(2);
}

static void parse_args(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) usage();
        if (!strcmp(a, "--echo-only")) {
            opt.mode = "echo-only";
            continue;
        }
        static const char *const known[] = {
            "--mode", "--proxy", "--echo", "--user", "--pass", "--count", "--duration",
            "--concurrency", "--payload", "--rounds", "--warmup", "--size", "--timeout",
            "--max-seconds", "--max-errors"};
        int is_known = 0;
        for (size_t k = 0; k < sizeof known / sizeof *known; k++) is_known |= !strcmp(a, known[k]);
        if (!is_known) die("unknown option %s (try --help)", a);
        if (i + 1 >= argc) die("%s needs a value", a);
        const char *v = argv[++i];
        if (!strcmp(a, "--mode")) opt.mode = v;
        else if (!strcmp(a, "--proxy")) parse_addr(v, &opt.proxy), opt.have_proxy = 1;
        else if (!strcmp(a, "--echo")) parse_addr(v, &opt.echo), opt.have_echo = 1;
        else if (!strcmp(a, "--user")) opt.user = v;
        else if (!strcmp(a, "--pass")) opt.pass = v;
        else if (!strcmp(a, "--count")) opt.count = parse_long(a, v, 1, 1000000000L);
        else if (!strcmp(a, "--duration")) opt.duration = parse_double(a, v);
        else if (!strcmp(a, "--concurrency")) opt.concurrency = parse_long(a, v, 1, 100000);
        else if (!strcmp(a, "--payload")) opt.payload = parse_long(a, v, 1, MAX_PAYLOAD);
        else if (!strcmp(a, "--rounds")) opt.rounds = parse_long(a, v, 1, 100000000L);
        else if (!strcmp(a, "--warmup")) opt.warmup = parse_long(a, v, 0, 100000000L);
        else if (!strcmp(a, "--size")) opt.size = parse_long(a, v, 1, MAX_PAYLOAD);
        else if (!strcmp(a, "--timeout")) opt.timeout = parse_double(a, v);
        else if (!strcmp(a, "--max-seconds")) opt.max_seconds = parse_double(a, v);
        else if (!strcmp(a, "--max-errors")) opt.max_errors = parse_long(a, v, 0, 1000000000L);
        else die("unknown option %s (try --help)", a);
    }
    if (strcmp(opt.mode, "cycles") && strcmp(opt.mode, "pingpong") && strcmp(opt.mode, "echo-only"))
        die("unknown mode %s", opt.mode);
    if ((opt.user == NULL) != (opt.pass == NULL)) die("--user and --pass go together");
    if (opt.user && (strlen(opt.user) < 1 || strlen(opt.user) > 255 || strlen(opt.pass) < 1 ||
                     strlen(opt.pass) > 255))
        die("user and password must be 1..255 bytes (RFC 1929)");
    if (opt.user && !opt.have_proxy) die("--user needs --proxy");
    if (!strcmp(opt.mode, "cycles") && !opt.count && !(opt.duration > 0)) opt.count = 10000;
    if (opt.timeout <= 0) opt.timeout = 10;
    if (opt.max_seconds <= 0) die("--max-seconds must be positive");
}

static void build_messages(void) {
    greeting[0] = 0x05;
    greeting[1] = 0x01;
    greeting[2] = opt.user ? 0x02 : 0x00;
    if (opt.user) {
        size_t ul = strlen(opt.user), pl = strlen(opt.pass);
        auth_msg[0] = 0x01;
        auth_msg[1] = (unsigned char)ul;
        memcpy(auth_msg + 2, opt.user, ul);
        auth_msg[2 + ul] = (unsigned char)pl;
        memcpy(auth_msg + 3 + ul, opt.pass, pl);
        auth_len = 3 + ul + pl;
    }
    connect_msg[0] = 0x05;
    connect_msg[1] = 0x01; /* CONNECT */
    connect_msg[2] = 0x00;
    connect_msg[3] = 0x01; /* ATYP IPv4 */
    memcpy(connect_msg + 4, &opt.echo.sin_addr.s_addr, 4);
    memcpy(connect_msg + 8, &opt.echo.sin_port, 2);
}

static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double pct_us(double q) {
    long i = (long)(q * (double)(nsamples - 1) + 0.5); /* same rule as loadgen.py */
    if (i >= nsamples) i = nsamples - 1;
    return (double)samples[i] / 1000.0;
}

static void print_json_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c < 0x20) printf("\\u%04x", c);
        else putchar(c);
    }
    putchar('"');
}

static void print_common(double seconds) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    printf("\"target\":\"%s\",\"errors\":%" PRIu64 ",\"errors_by_kind\":{",
           opt.have_proxy ? "proxy" : "direct", errors);
    int first = 1;
    for (int k = 0; k < E_COUNT; k++) {
        if (!err_count[k]) continue;
        printf("%s\"%s\":%" PRIu64, first ? "" : ",", err_names[k], err_count[k]);
        first = 0;
    }
    printf("},\"first_error\":");
    if (first_error[0]) print_json_string(first_error);
    else fputs("null", stdout);
    printf(",\"seconds\":%.6f,\"cpu_seconds\":%.6f,\"echo_accepted\":%" PRIu64, seconds, cpu,
           accepted);
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    raise_nofile();
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1: %s", strerror(errno));
    int own_echo = !opt.have_echo;
    if (own_echo || !strcmp(opt.mode, "echo-only")) start_listener();
    build_messages();

    if (!strcmp(opt.mode, "echo-only")) {
        printf("READY echo=%u\n", ntohs(opt.echo.sin_port));
        fflush(stdout);
        run_loop(NULL, 0, now_ns());
        return 0;
    }

    pingpong = !strcmp(opt.mode, "pingpong");
    long nslots = pingpong ? 1 : opt.concurrency;
    if (pingpong) {
        opt.payload = opt.size;
        opt.count = 1;
        opt.duration = 0;
        samples = calloc((size_t)opt.rounds, sizeof *samples);
        if (!samples) die("out of memory");
    }
    struct slot *slots = calloc((size_t)nslots, sizeof *slots);
    if (!slots) die("out of memory");
    size_t cap = (size_t)opt.payload > REPLY_MAX ? (size_t)opt.payload : REPLY_MAX;
    for (long i = 0; i < nslots; i++) {
        slots[i].o.kind = K_CLIENT;
        slots[i].o.fd = -1;
        slots[i].in_cap = cap;
        slots[i].in = malloc(cap);
        slots[i].payload = malloc((size_t)opt.payload);
        if (!slots[i].in || !slots[i].payload) die("out of memory");
    }

    int64_t t0 = now_ns();
    int64_t t1 = run_loop(slots, nslots, t0);
    double seconds = (double)(t1 - t0) / 1e9;
    if (seconds <= 0) seconds = 1e-9;

    int ok;
    if (pingpong) {
        ok = nsamples == opt.rounds && errors == 0;
        printf("{\"mode\":\"pingpong\",\"ok\":%s,\"rounds\":%ld,\"size\":%ld,\"warmup\":%ld,",
               ok ? "true" : "false", nsamples, opt.size, opt.warmup);
        if (nsamples > 0) {
            qsort(samples, (size_t)nsamples, sizeof *samples, cmp_i64);
            printf("\"p50_us\":%.3f,\"p99_us\":%.3f,\"max_us\":%.3f,\"min_us\":%.3f,",
                   pct_us(0.50), pct_us(0.99), (double)samples[nsamples - 1] / 1000.0,
                   (double)samples[0] / 1000.0);
        }
    } else {
        ok = done > 0;
        printf("{\"mode\":\"cycles\",\"ok\":%s,\"cycles\":%" PRIu64 ",\"started\":%" PRIu64
               ",\"concurrency\":%ld,\"payload\":%ld,\"cycles_per_s\":%.1f,",
               ok ? "true" : "false", done, started, opt.concurrency, opt.payload,
               (double)done / seconds);
    }
    print_common(seconds);
    printf("}\n");
    fflush(stdout);
    return ok ? 0 : 1;
}
