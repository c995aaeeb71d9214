/*
 * floorrelay: the least a splice relay can cost per round trip, to measure the node against.
 *
 * Why: the ping-pong target asks `resist node` (Python on uvloop, its sockets in an epoll
 * nested in the loop's epoll) to be no slower than microsocks (C, a thread per client
 * blocked in poll). This program is that relay with everything but the wake-up path taken
 * away: C, one thread, splice through a pipe per direction, exactly the system calls the
 * node makes per message. Run in the two shapes an event-loop proxy can have:
 *
 *   --shape flat    the client's and upstream's sockets in the epoll the process blocks in
 *                   (a C event-loop proxy);
 *   --shape nested  the sockets in an inner epoll, itself watched by the outer one and
 *                   polled with timeout 0 when it fires (the node's structure).
 *
 * Not a proxy to use: it is a measuring instrument for bench/alternate.py. The SOCKS5
 * handshake (RFC 1928 with RFC 1929 username/password, CONNECT to an IPv4 address) is read
 * blocking with a 5 s timeout, any destination is dialed, it binds 127.0.0.1 only, and it
 * serves until killed.
 *
 *   floorrelay --port 1080 --shape nested --user bench --pass bench
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define MAX_FD 65536
#define CHUNK (1 << 20)
#define PAGE 4096
#define INNER_TAG -2 /* data.fd of the inner epoll's entry in the outer one */

struct side {
    int peer;     /* the other socket of the pair; -1 when this fd is not relayed */
    int pipe[2];  /* bytes read from this socket, waiting to go to the peer */
    size_t held;  /* bytes in the pipe */
};

static struct side sides[MAX_FD];
static const char *user, *pass;

static int read_exact(int fd, unsigned char *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

static int write_all(int fd, const void *buf, size_t n)
{
    return write(fd, buf, n) == (ssize_t)n ? 0 : -1;
}

/* The handshake, blocking; returns the connected upstream socket or -1. */
static int handshake(int c)
{
    unsigned char b[520];
    struct timeval tv = {.tv_sec = 5};
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (read_exact(c, b, 2) || b[0] != 5 || read_exact(c, b + 2, b[1])) return -1;
    if (!memchr(b + 2, 2, b[1])) { /* username/password not offered */
        write_all(c, "\x05\xff", 2);
        return -1;
    }
    if (write_all(c, "\x05\x02", 2)) return -1;
    if (read_exact(c, b, 2) || b[0] != 1) return -1;
    size_t ulen = b[1];
    if (read_exact(c, b, ulen + 1)) return -1;
    size_t plen = b[ulen];
    unsigned char pw[256];
    if (read_exact(c, pw, plen)) return -1;
    int ok = ulen == strlen(user) && !memcmp(b, user, ulen) && plen == strlen(pass) &&
             !memcmp(pw, pass, plen);
    if (write_all(c, ok ? "\x01\x00" : "\x01\x01", 2) || !ok) return -1;
    if (read_exact(c, b, 4) || b[0] != 5 || b[1] != 1 || b[3] != 1) {
        write_all(c, "\x05\x08\x00\x01\0\0\0\0\0\0", 10);
        return -1;
    }
    struct sockaddr_in dst = {.sin_family = AF_INET};
    if (read_exact(c, (unsigned char *)&dst.sin_addr, 4) ||
        read_exact(c, (unsigned char *)&dst.sin_port, 2))
        return -1;
    int u = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (u < 0 || u >= MAX_FD || connect(u, (struct sockaddr *)&dst, sizeof dst)) {
        write_all(c, "\x05\x05\x00\x01\0\0\0\0\0\0", 10);
        if (u >= 0) close(u);
        return -1;
    }
    int one = 1;
    setsockopt(u, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (write_all(c, "\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x00", 10)) {
        close(u);
        return -1;
    }
    return u;
}

static void drop(int epfd, int fd)
{
    int peer = sides[fd].peer;
    int ends[2] = {fd, peer};
    for (int i = 0; i < 2; i++) {
        struct side *s = &sides[ends[i]];
        epoll_ctl(epfd, EPOLL_CTL_DEL, ends[i], NULL);
        close(s->pipe[0]);
        close(s->pipe[1]);
        close(ends[i]);
        s->peer = -1;
    }
}

/* Move what `fd` has to its peer until EAGAIN on either side; 0 = keep, -1 = pair closed. */
static int pump(int epfd, int fd)
{
    struct side *s = &sides[fd];
    for (;;) {
        while (s->held) {
            ssize_t w = splice(s->pipe[0], NULL, s->peer, NULL, s->held,
                               SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (w < 0 && errno == EAGAIN) return 0; /* the peer's writable edge resumes */
            if (w <= 0) goto closed;
            s->held -= (size_t)w;
        }
        ssize_t r = splice(fd, NULL, s->pipe[1], NULL, CHUNK, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (r < 0 && errno == EAGAIN) return 0;
        if (r <= 0) goto closed; /* EOF or error: the floor needs no half-close */
        s->held = (size_t)r;
        if (r < PAGE) { /* a short read emptied the socket: flush and wait for an edge */
            while (s->held) {
                ssize_t w = splice(s->pipe[0], NULL, s->peer, NULL, s->held,
                                   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
                if (w < 0 && errno == EAGAIN) return 0;
                if (w <= 0) goto closed;
                s->held -= (size_t)w;
            }
            return 0;
        }
    }
closed:
    drop(epfd, fd);
    return -1;
}

static void on_event(int epfd, int fd, unsigned events)
{
    if (sides[fd].peer < 0) return;
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP)) {
        if (pump(epfd, fd)) return;
    }
    if (events & EPOLLOUT) pump(epfd, sides[fd].peer);
}

static void usage(void)
{
    fputs("usage: floorrelay --port N --shape flat|nested --user U --pass P\n", stderr);
    exit(2);
}

int main(int argc, char **argv)
{
    int port = 0, nested = -1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--port")) port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--shape")) nested = !strcmp(argv[i + 1], "nested") ? 1
                                                       : !strcmp(argv[i + 1], "flat")  ? 0
                                                                                       : -1;
        else if (!strcmp(argv[i], "--user")) user = argv[i + 1];
        else if (!strcmp(argv[i], "--pass")) pass = argv[i + 1];
        else usage();
    }
    if (port <= 0 || port > 65535 || nested < 0 || !user || !pass) usage();
    for (int i = 0; i < MAX_FD; i++) sides[i].peer = -1;

    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(ls, (struct sockaddr *)&addr, sizeof addr) || listen(ls, 128)) {
        perror("floorrelay: listen");
        return 1;
    }
    int outer = epoll_create1(EPOLL_CLOEXEC), inner = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
    epoll_ctl(outer, EPOLL_CTL_ADD, ls, &ev);
    if (nested) {
        ev.data.fd = INNER_TAG;
        epoll_ctl(outer, EPOLL_CTL_ADD, inner, &ev);
    }
    int relay_ep = nested ? inner : outer;
    struct epoll_event events[64], inner_events[64];
    for (;;) {
        int n = epoll_wait(outer, events, 64, -1);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            perror("floorrelay: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == ls) {
                int c = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
                if (c < 0) continue;
                int u = c < MAX_FD ? handshake(c) : -1;
                if (u < 0) {
                    close(c);
                    continue;
                }
                setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                fcntl(c, F_SETFL, O_NONBLOCK);
                fcntl(u, F_SETFL, O_NONBLOCK);
                sides[c].peer = u;
                sides[u].peer = c;
                if (pipe2(sides[c].pipe, O_NONBLOCK | O_CLOEXEC) ||
                    pipe2(sides[u].pipe, O_NONBLOCK | O_CLOEXEC)) {
                    perror("floorrelay: pipe2");
                    return 1;
                }
                sides[c].held = sides[u].held = 0;
                struct epoll_event rev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET};
                rev.data.fd = c;
                epoll_ctl(relay_ep, EPOLL_CTL_ADD, c, &rev);
                rev.data.fd = u;
                epoll_ctl(relay_ep, EPOLL_CTL_ADD, u, &rev);
            } else if (fd == INNER_TAG) {
                int m = epoll_wait(inner, inner_events, 64, 0);
                for (int j = 0; j < m; j++)
                    on_event(inner, inner_events[j].data.fd, inner_events[j].events);
            } else {
                on_event(outer, fd, events[i].events);
            }
        }
    }
}
