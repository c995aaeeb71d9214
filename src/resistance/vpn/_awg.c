/*
 * resistance.vpn._awg: the AmneziaWG translator's transport path in C (Linux only).
 *
 * Why C: bench/amnezia.py measured the Python translator (one recvfrom, one
 * rewrite and one send per datagram, each a few microseconds of interpreter)
 * at 29-61 % of plain WireGuard's tunnel throughput.  Transport messages are
 * nearly every datagram of a tunnel and their rewrite is trivial (strip or
 * add S4 bytes of padding, swap the 4-byte type field for 4 or a value in H4),
 * so this file moves them in batches with recvmmsg/sendmmsg and leaves every
 * other datagram (handshakes, cookie replies, junk, I packets, strangers) to
 * resistance.vpn.amnezia.Rewriter in Python, which sees them exactly as
 * before.  The rules applied here are Rewriter's transport fast path, line
 * for line (see Rewriter.to_wireguard and Rewriter.to_amnezia):
 *
 *   AmneziaWG -> WireGuard: a datagram of at least S4 + 32 bytes whose size is
 *     none of the three handshake sizes is transport or nothing: its four
 *     bytes after the padding must lie in H4 and the receiver index after them
 *     must be one our WireGuard end announced (the flow's index set), else it
 *     is dropped; it leaves as 04 00 00 00 + the rest, the padding cut off.
 *   WireGuard -> AmneziaWG: a datagram of at least 32 bytes that starts
 *     04 00 00 00 leaves as S4 random bytes + a value in H4 + the rest.
 *
 * Everything else comes back to the caller as (datagram, raw source address),
 * in arrival order, after this batch's transport messages have been sent.
 *
 * AWG 3 header protection (hp_key given): the 16-byte transport header (type,
 * receiver, counter) travels XORed with the first 16 bytes of ChaCha20(hp_key,
 * nonce = the datagram's first 12 bytes, counter 0), so S4 >= 12 and the
 * nonce is the padding.  Reading, the header is unmasked before the checks
 * above; writing, the type and the rest of the header are masked under the
 * fresh padding.  chacha20_block() below is RFC 8439 section 2.3, written from
 * the RFC (tests/vpn/test_awg_native.py holds it to the RFC's test vector and
 * to the `cryptography` package).  One block per datagram: the Python path
 * would build a cipher object per datagram, several microseconds each.
 * AWG 3 random trailers (candidates given): a handshake may then be longer
 * than its size, so a datagram that reaches a handshake's size and whose
 * (unmasked) four bytes at that handshake's padding lie in its H range goes
 * to Python, which classifies it as amneziawg-go does (handshakes first).
 *
 * relay(fd, to_wireguard, s4, h4_lo, h4_hi, handshake_sizes, routes, new_size
 *       [, hp_key[, candidates]])
 *   reads up to ROUNDS batches of BATCH datagrams (more where the kernel
 *   coalesced them) from the non-blocking socket fd.  routes is either one
 *   route (a tuple: out_fd, raw destination address bytes or None for a
 *   connected socket, the flow's receiver-index dict or None, a tag object)
 *   used for every datagram, or a dict from the raw source
 *   address (the bytes of its sockaddr) to such a route.  A datagram from a
 *   source the dict does not know goes back to Python when new_size is -1 or
 *   its size is new_size (an initiation can open a flow) or, with random
 *   trailers (candidates, whose first is the initiation's), when it reaches
 *   the initiation's size and its unmasked four bytes at S1 lie in H1; it is dropped
 *   otherwise (so junk from strangers costs no Python).  Returns
 *   (slow, received, sent, dropped, tags): the datagrams for Python, counts,
 *   and the tags of the routes that moved datagrams (consecutive repeats
 *   folded), so the caller can stamp those flows as alive.  hp_key: None or
 *   the 32-byte header protection key; candidates: a tuple of up to three
 *   (least size, padding, H lo, H hi), one per handshake type, when the
 *   receiver accepts random trailers (empty or None otherwise).
 *
 * Sending: runs of equal-sized datagrams to one destination (a tunnel's bulk
 * traffic) go as one UDP GSO sendmsg (UDP_SEGMENT), which takes them through
 * the kernel's stack once; the rest by sendmmsg.  perf put 84 % of the
 * translator's time in the kernel before GSO.  Receiving: where the caller
 * set UDP_GRO on the socket, a slot may hold a run of datagrams the kernel
 * coalesced (a UDP_GRO control message gives their size); each is handled on
 * its own, exactly as if it had come alone.
 *
 * A datagram that cannot be sent at once (full socket buffer) is dropped, as
 * the Python translator and a router do.  The GIL is kept throughout: every
 * socket is non-blocking and the translator runs one thread, and the batch
 * buffers below are this module's own, used by one call at a time.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/udp.h>

#define BATCH 64
#define ROUNDS 4
#define SLOT 65536       /* one datagram: UDP carries at most 65,507 bytes */
#define KEEPALIVE_LEN 32 /* the smallest WireGuard transport message */
#define GSO_SEGMENTS 64  /* UDP_MAX_SEGMENTS of older kernels */
#define GSO_BYTES 65000  /* one GSO send is one IP packet's worth before segmentation */

static int gso_off; /* set when the kernel refuses UDP_SEGMENT */

static unsigned char *slots;   /* BATCH * SLOT, allocated at first use */
static unsigned char *pads;    /* per datagram: S4 random bytes + a header value */
static size_t pads_size;
/* Random bytes from getrandom(2), drawn POOL at a time: a tunnel's datagrams mostly come
   one per wake-up, and a getrandom per datagram was a system call more than needed. */
#define POOL 16384
static unsigned char pool[POOL];
static size_t pool_left;
/* Out-going datagrams: a batch's, or more when UDP GRO hands over several per slot. */
#define OUT_MAX 1024
static struct mmsghdr in_msgs[BATCH], out_msgs[OUT_MAX];
static struct iovec in_iov[BATCH], out_iov[OUT_MAX][2];
static struct sockaddr_storage names[BATCH];
static union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
} controls[BATCH]; /* UDP_GRO's segment size, where the socket asked for it */
static int out_fd[OUT_MAX];
static PyObject *out_route[OUT_MAX]; /* strong references until they are sent */

static int fill_random(unsigned char *buf, size_t len)
{
    while (len) {
        ssize_t got = getrandom(buf, len, 0);
        if (got < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        buf += got;
        len -= (size_t)got;
    }
    return 0;
}

/* len (<= POOL) random bytes into buf from the pool; -1 with errno when getrandom fails. */
static int take_random(unsigned char *buf, size_t len)
{
    while (len) {
        if (pool_left == 0) {
            if (fill_random(pool, POOL)) return -1;
            pool_left = POOL;
        }
        size_t n = len < pool_left ? len : pool_left;
        memcpy(buf, pool + POOL - pool_left, n);
        pool_left -= n;
        buf += n;
        len -= n;
    }
    return 0;
}

static inline uint32_t load_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline void store_le32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

/* --- ChaCha20 (RFC 8439, section 2.3): the block function, for header protection --- */

#define ROTL32(v, n) (((v) << (n)) | ((v) >> (32 - (n))))
#define QUARTER(a, b, c, d)                                                                    \
    do {                                                                                       \
        a += b; d ^= a; d = ROTL32(d, 16);                                                     \
        c += d; b ^= c; b = ROTL32(b, 12);                                                     \
        a += b; d ^= a; d = ROTL32(d, 8);                                                      \
        c += d; b ^= c; b = ROTL32(b, 7);                                                      \
    } while (0)

/* One 64-byte keystream block: key 32 bytes, nonce 12 bytes, block counter. */
static void chacha20_block(const unsigned char *key, uint32_t counter, const unsigned char *nonce,
                           unsigned char *out)
{
    uint32_t state[16], x[16];
    state[0] = 0x61707865; /* "expand 32-byte k" */
    state[1] = 0x3320646e;
    state[2] = 0x79622d32;
    state[3] = 0x6b206574;
    for (int i = 0; i < 8; i++) state[4 + i] = load_le32(key + 4 * i);
    state[12] = counter;
    for (int i = 0; i < 3; i++) state[13 + i] = load_le32(nonce + 4 * i);
    memcpy(x, state, sizeof(x));
    for (int round = 0; round < 10; round++) {
        QUARTER(x[0], x[4], x[8], x[12]); /* column rounds */
        QUARTER(x[1], x[5], x[9], x[13]);
        QUARTER(x[2], x[6], x[10], x[14]);
        QUARTER(x[3], x[7], x[11], x[15]);
        QUARTER(x[0], x[5], x[10], x[15]); /* diagonal rounds */
        QUARTER(x[1], x[6], x[11], x[12]);
        QUARTER(x[2], x[7], x[8], x[13]);
        QUARTER(x[3], x[4], x[9], x[14]);
    }
    for (int i = 0; i < 16; i++) store_le32(out + 4 * i, x[i] + state[i]);
}

static PyObject *py_chacha20_block(PyObject *self, PyObject *args)
{
    Py_buffer key, nonce;
    unsigned long counter;
    unsigned char out[64];
    (void)self;
    if (!PyArg_ParseTuple(args, "y*ky*", &key, &counter, &nonce)) return NULL;
    if (key.len != 32 || nonce.len != 12 || counter > 0xFFFFFFFFUL) {
        PyBuffer_Release(&key);
        PyBuffer_Release(&nonce);
        PyErr_SetString(PyExc_ValueError, "chacha20_block(key of 32 bytes, counter, nonce of 12)");
        return NULL;
    }
    chacha20_block(key.buf, (uint32_t)counter, nonce.buf, out);
    PyBuffer_Release(&key);
    PyBuffer_Release(&nonce);
    return PyBytes_FromStringAndSize((const char *)out, 64);
}

static size_t msg_len(int i)
{
    size_t n = 0;
    for (size_t j = 0; j < out_msgs[i].msg_hdr.msg_iovlen; j++) n += out_msgs[i].msg_hdr.msg_iov[j].iov_len;
    return n;
}

static int same_dest(int a, int b)
{
    const struct msghdr *x = &out_msgs[a].msg_hdr, *y = &out_msgs[b].msg_hdr;
    return out_fd[a] == out_fd[b] && x->msg_namelen == y->msg_namelen &&
           (x->msg_namelen == 0 || memcmp(x->msg_name, y->msg_name, x->msg_namelen) == 0);
}

/* Where a UDP GSO run starting at `start` ends: datagrams to one destination, all of the
   first one's size but the last, which may be shorter (what UDP_SEGMENT sends). */
static int gso_run(int start, int count)
{
    size_t seg = msg_len(start), total = seg;
    int end = start + 1;
    while (end < count && end - start < GSO_SEGMENTS && same_dest(start, end)) {
        size_t len = msg_len(end);
        if (len > seg || total + len > GSO_BYTES) break;
        total += len;
        end++;
        if (len < seg) break;
    }
    return end;
}

/* out_msgs[start..end) as one sendmsg with UDP_SEGMENT: one trip through the stack. */
static int send_gso(int start, int end)
{
    static struct iovec iov[2 * GSO_SEGMENTS];
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } control;
    size_t n = 0;
    for (int i = start; i < end; i++)
        for (size_t j = 0; j < out_msgs[i].msg_hdr.msg_iovlen; j++) iov[n++] = out_msgs[i].msg_hdr.msg_iov[j];
    struct msghdr hdr = out_msgs[start].msg_hdr;
    hdr.msg_iov = iov;
    hdr.msg_iovlen = n;
    memset(&control, 0, sizeof(control));
    hdr.msg_control = control.buf;
    hdr.msg_controllen = sizeof(control.buf);
    struct cmsghdr *cm = CMSG_FIRSTHDR(&hdr);
    cm->cmsg_level = SOL_UDP;
    cm->cmsg_type = UDP_SEGMENT;
    cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
    uint16_t seg = (uint16_t)msg_len(start);
    memcpy(CMSG_DATA(cm), &seg, sizeof(seg));
    return sendmsg(out_fd[start], &hdr, 0) < 0 ? -1 : 0;
}

/* Send out_msgs[0..count); adds to *sent and *dropped.  Runs of equal-sized datagrams to
   one destination (a tunnel's bulk traffic) go as UDP GSO, one skb through the stack for
   up to GSO_SEGMENTS of them; the rest in sendmmsg calls, one per descriptor. */
static void flush(int count, long *sent, long *dropped)
{
    int start = 0;
    while (start < count) {
        int end = gso_off ? start + 1 : gso_run(start, count);
        if (end - start >= 2) {
            if (send_gso(start, end) == 0) {
                *sent += end - start;
                start = end;
                continue;
            }
            if (errno == EINTR) continue;
            if (errno == EIO || errno == EOPNOTSUPP || errno == ENOPROTOOPT)
                gso_off = 1; /* no UDP GSO here: sendmmsg from now on */
            else if (errno != EINVAL) { /* EINVAL: too big for GSO; send one by one */
                *dropped += end - start; /* a full buffer, or an error for the run */
                start = end;
                continue;
            }
        }
        /* sendmmsg up to the next datagram that starts a GSO run */
        end = start + 1;
        while (end < count && out_fd[end] == out_fd[start] &&
               (gso_off || end + 1 >= count || !same_dest(end, end + 1) ||
                msg_len(end + 1) > msg_len(end)))
            end++;
        int at = start;
        while (at < end) {
            int r = sendmmsg(out_fd[start], out_msgs + at, (unsigned)(end - at), 0);
            if (r < 0) {
                if (errno == EINTR) continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
                    *dropped += end - at; /* full buffer: drop, as a router does */
                    break;
                }
                /* an error for this one datagram (e.g. ECONNREFUSED from an
                   earlier ICMP port-unreachable): drop it and go on */
                (*dropped)++;
                at++;
                continue;
            }
            *sent += r;
            at += r;
        }
        start = end;
    }
}

/* The segment size of a datagram the kernel coalesced (UDP_GRO), or 0. */
static size_t gro_size(struct msghdr *hdr)
{
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(hdr); cm != NULL; cm = CMSG_NXTHDR(hdr, cm)) {
        if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO) {
            int value;
            memcpy(&value, CMSG_DATA(cm), sizeof(value));
            return value > 0 ? (size_t)value : 0;
        }
    }
    return 0;
}

/* Send what is queued in out_msgs, note the flows it came from; -1 on a Python error. */
static int send_out(int *out, PyObject *tags, PyObject **last_tag, long *sent, long *dropped)
{
    int error = 0;
    for (int i = 0; i < *out && !error; i++) {
        PyObject *tag = PyTuple_GET_ITEM(out_route[i], 3);
        if (tag != *last_tag) {
            error = PyList_Append(tags, tag);
            *last_tag = tag;
        }
    }
    if (!error) flush(*out, sent, dropped);
    for (int i = 0; i < *out; i++) Py_DECREF(out_route[i]);
    *out = 0;
    return error ? -1 : 0;
}

/* A route tuple's parts; 0 on success, -1 (with an exception) when malformed. */
static int unpack_route(PyObject *route, int *fd, PyObject **dest, PyObject **indices)
{
    if (!PyTuple_Check(route) || PyTuple_GET_SIZE(route) != 4) {
        PyErr_SetString(PyExc_TypeError, "a route is (out_fd, dest, indices, tag)");
        return -1;
    }
    long value = PyLong_AsLong(PyTuple_GET_ITEM(route, 0));
    if (value == -1 && PyErr_Occurred()) return -1;
    *fd = (int)value;
    *dest = PyTuple_GET_ITEM(route, 1);
    *indices = PyTuple_GET_ITEM(route, 2);
    if (*dest != Py_None && !PyBytes_Check(*dest)) {
        PyErr_SetString(PyExc_TypeError, "a route's destination is raw address bytes or None");
        return -1;
    }
    if (*indices != Py_None && !PyDict_Check(*indices)) {
        PyErr_SetString(PyExc_TypeError, "a route's indices are a dict or None");
        return -1;
    }
    return 0;
}

struct candidate {
    unsigned long least, pad, lo, hi;
};

/* With random trailers: whether a datagram can be an initiation (cand[0]) with a trailer. */
static int maybe_initiation(const unsigned char *data, size_t size, const unsigned char *key,
                            const struct candidate *cand, int ncand)
{
    if (ncand < 1 || size < cand[0].least) return 0;
    uint32_t mask = 0;
    if (key != NULL) {
        unsigned char block[64];
        chacha20_block(key, 0, data, block);
        mask = load_le32(block);
    }
    uint32_t v = load_le32(data + cand[0].pad) ^ mask;
    return v >= cand[0].lo && v <= cand[0].hi;
}

static PyObject *relay(PyObject *self, PyObject *args)
{
    int fd, to_wireguard, new_size;
    unsigned int s4;
    unsigned long lo, hi;
    long hs[3];
    PyObject *routes, *hp_obj = Py_None, *cand_obj = Py_None;
    (void)self;
    if (!PyArg_ParseTuple(args, "ipIkk(lll)Oi|OO", &fd, &to_wireguard, &s4, &lo, &hi, &hs[0],
                          &hs[1], &hs[2], &routes, &new_size, &hp_obj, &cand_obj))
        return NULL;
    if (lo > hi || hi > 0xFFFFFFFFUL || s4 > 65535) {
        PyErr_SetString(PyExc_ValueError, "bad S4 or H4");
        return NULL;
    }
    /* AWG 3: the header protection key, and the handshake types random trailers lengthen */
    unsigned char hp_key[32];
    int hp = hp_obj != Py_None;
    if (hp) {
        if (!PyBytes_Check(hp_obj) || PyBytes_GET_SIZE(hp_obj) != 32 || s4 < 12) {
            PyErr_SetString(PyExc_ValueError, "hp_key is 32 bytes or None, and needs S4 >= 12");
            return NULL;
        }
        memcpy(hp_key, PyBytes_AS_STRING(hp_obj), 32);
    }
    struct candidate cand[3];
    int ncand = 0;
    if (cand_obj != Py_None) {
        if (!PyTuple_Check(cand_obj) || PyTuple_GET_SIZE(cand_obj) > 3) {
            PyErr_SetString(PyExc_TypeError, "candidates: a tuple of up to three 4-tuples");
            return NULL;
        }
        for (; ncand < PyTuple_GET_SIZE(cand_obj); ncand++) {
            if (!PyArg_ParseTuple(PyTuple_GET_ITEM(cand_obj, ncand), "kkkk", &cand[ncand].least,
                                  &cand[ncand].pad, &cand[ncand].lo, &cand[ncand].hi))
                return NULL;
            if (cand[ncand].least < cand[ncand].pad + 4 || cand[ncand].pad > 65535) {
                PyErr_SetString(PyExc_ValueError, "a candidate's least size is below its padding + 4");
                return NULL;
            }
        }
    }
    unsigned char block[64];
    int lookup = PyDict_Check(routes);
    int fixed_fd = -1;
    PyObject *fixed_dest = NULL, *fixed_indices = NULL;
    if (!lookup && unpack_route(routes, &fixed_fd, &fixed_dest, &fixed_indices)) return NULL;

    if (slots == NULL) {
        slots = PyMem_RawMalloc((size_t)BATCH * SLOT);
        if (slots == NULL) return PyErr_NoMemory();
    }
    size_t pad_len = (size_t)s4 + 4;
    if (!to_wireguard && pads_size < OUT_MAX * pad_len) {
        unsigned char *grown = PyMem_RawRealloc(pads, OUT_MAX * pad_len);
        if (grown == NULL) return PyErr_NoMemory();
        pads = grown;
        pads_size = OUT_MAX * pad_len;
    }
    uint64_t span = (uint64_t)hi - lo + 1;
    size_t least = to_wireguard ? (size_t)s4 + KEEPALIVE_LEN : KEEPALIVE_LEN;

    PyObject *slow = PyList_New(0), *tags = PyList_New(0);
    PyObject *last_tag = NULL;
    int out = 0;
    if (slow == NULL || tags == NULL) goto error;
    long received = 0, sent = 0, dropped = 0;

    for (int round = 0; round < ROUNDS; round++) {
        for (int i = 0; i < BATCH; i++) {
            in_iov[i].iov_base = slots + (size_t)i * SLOT;
            in_iov[i].iov_len = SLOT;
            memset(&in_msgs[i].msg_hdr, 0, sizeof(struct msghdr));
            in_msgs[i].msg_hdr.msg_iov = &in_iov[i];
            in_msgs[i].msg_hdr.msg_iovlen = 1;
            in_msgs[i].msg_hdr.msg_name = &names[i];
            in_msgs[i].msg_hdr.msg_namelen = sizeof(names[i]);
            in_msgs[i].msg_hdr.msg_control = controls[i].buf;
            in_msgs[i].msg_hdr.msg_controllen = sizeof(controls[i].buf);
        }
        int got = recvmmsg(fd, in_msgs, BATCH, MSG_DONTWAIT, NULL);
        if (got < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            continue; /* ICMP errors surface here on some kernels: not ours to act on */
        }
        out = 0;
        for (int i = 0; i < got; i++) {
          /* a slot holds one datagram, or several of `seg` bytes (the last may be
             shorter) where the socket has UDP_GRO and the kernel coalesced them */
          size_t total = in_msgs[i].msg_len, seg = gro_size(&in_msgs[i].msg_hdr);
          if (seg == 0 || seg >= total) seg = total ? total : 1;
          for (size_t off = 0; off < total || (total == 0 && off == 0); off += seg) {
            unsigned char *data = (unsigned char *)in_iov[i].iov_base + off;
            size_t size = total - off < seg ? total - off : seg;
            received++;
            if (out == OUT_MAX && send_out(&out, tags, &last_tag, &sent, &dropped)) goto error;
            int fast;
            uint32_t mask = 0; /* header protection: the keystream's first four bytes */
            if (to_wireguard) {
                fast = size >= least && (long)size != hs[0] && (long)size != hs[1] &&
                       (long)size != hs[2];
                if (fast && hp) {
                    chacha20_block(hp_key, 0, data, block);
                    mask = load_le32(block);
                }
                for (int c = 0; fast && c < ncand; c++)
                    if (size >= cand[c].least) {
                        uint32_t v = load_le32(data + cand[c].pad) ^ mask;
                        if (v >= cand[c].lo && v <= cand[c].hi) fast = 0; /* maybe a handshake */
                    }
            } else
                fast = size >= least && data[0] == 4 && data[1] == 0 && data[2] == 0 &&
                       data[3] == 0;
            PyObject *route = routes;
            int route_fd = fixed_fd;
            PyObject *dest = fixed_dest, *indices = fixed_indices;
            if (lookup) {
                PyObject *key = PyBytes_FromStringAndSize((const char *)&names[i],
                                                          in_msgs[i].msg_hdr.msg_namelen);
                if (key == NULL) goto error;
                route = PyDict_GetItemWithError(routes, key);
                Py_DECREF(key);
                if (route == NULL) {
                    if (PyErr_Occurred()) goto error;
                    if (new_size >= 0 && (long)size != new_size &&
                        !(to_wireguard && maybe_initiation(data, size, hp ? hp_key : NULL, cand,
                                                           ncand))) {
                        dropped++; /* a stranger's datagram that cannot open a flow */
                        continue;
                    }
                    fast = 0;
                } else if (unpack_route(route, &route_fd, &dest, &indices)) {
                    goto error;
                }
            }
            if (!fast) {
                PyObject *item = Py_BuildValue("(y#y#)", data, (Py_ssize_t)size, &names[i],
                                               (Py_ssize_t)in_msgs[i].msg_hdr.msg_namelen);
                if (item == NULL || PyList_Append(slow, item)) {
                    Py_XDECREF(item);
                    goto error;
                }
                Py_DECREF(item);
                continue;
            }
            struct msghdr *hdr = &out_msgs[out].msg_hdr;
            memset(hdr, 0, sizeof(*hdr));
            if (to_wireguard) {
                uint32_t header = load_le32(data + s4) ^ mask;
                if (header < lo || header > hi || indices == NULL || indices == Py_None) {
                    dropped++;
                    continue;
                }
                uint32_t index = load_le32(data + s4 + 4) ^ (hp ? load_le32(block + 4) : 0);
                PyObject *receiver = PyLong_FromUnsignedLong(index);
                if (receiver == NULL) goto error;
                int known = PyDict_Contains(indices, receiver);
                Py_DECREF(receiver);
                if (known < 0) goto error;
                if (!known) {
                    dropped++; /* an index our WireGuard never announced */
                    continue;
                }
                store_le32(data + s4, 4);
                if (hp)
                    for (int k = 4; k < 16; k++) data[s4 + k] ^= block[k];
                out_iov[out][0].iov_base = data + s4;
                out_iov[out][0].iov_len = size - s4;
                hdr->msg_iovlen = 1;
            } else {
                unsigned char *pad = pads + (size_t)out * pad_len;
                if (take_random(pad, pad_len)) {
                    PyErr_SetFromErrno(PyExc_OSError);
                    goto error;
                }
                uint32_t r = load_le32(pad + s4);
                store_le32(pad + s4, (uint32_t)(span > 0xFFFFFFFFULL ? r : lo + r % span));
                if (hp) { /* mask the header under this padding's first 12 bytes */
                    chacha20_block(hp_key, 0, pad, block);
                    for (int k = 0; k < 4; k++) pad[s4 + k] ^= block[k];
                    for (int k = 4; k < 16; k++) data[k] ^= block[k];
                }
                out_iov[out][0].iov_base = pad;
                out_iov[out][0].iov_len = pad_len;
                out_iov[out][1].iov_base = data + 4;
                out_iov[out][1].iov_len = size - 4;
                hdr->msg_iovlen = 2;
            }
            hdr->msg_iov = out_iov[out];
            if (dest != Py_None) {
                hdr->msg_name = PyBytes_AS_STRING(dest);
                hdr->msg_namelen = (socklen_t)PyBytes_GET_SIZE(dest);
            }
            out_fd[out] = route_fd;
            Py_INCREF(route); /* its destination bytes must outlive the send */
            out_route[out] = route;
            out++;
          }
        }
        if (send_out(&out, tags, &last_tag, &sent, &dropped)) goto error;
        if (got < BATCH) break;
    }
    PyObject *result = Py_BuildValue("(NlllO)", slow, received, sent, dropped, tags);
    Py_DECREF(tags);
    return result;

error:
    for (int i = 0; i < out; i++) Py_DECREF(out_route[i]);
    Py_XDECREF(slow);
    Py_XDECREF(tags);
    return NULL;
}

static PyMethodDef methods[] = {
    {"relay", relay, METH_VARARGS,
     "Move one socket's transport messages in batches; the rest back to Python."},
    {"chacha20_block", py_chacha20_block, METH_VARARGS,
     "chacha20_block(key, counter, nonce) -> the 64-byte ChaCha20 block (RFC 8439 2.3)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "resistance.vpn._awg",
    "The AmneziaWG translator's transport path in C (see the comment atop _awg.c).",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__awg(void)
{
    return PyModule_Create(&module_def);
}
