/*
 * resistance.net._splice: the splice relay's per-event path in C (Linux only).
 *
 * Why C: the relay's bytes never enter Python (they go socket -> pipe -> socket
 * with splice(2)), but every message still woke the interpreter: the reactor's
 * dispatch, the socket's handler and the pump's loop are three Python frames
 * and ~24k instructions per ping-pong round trip, against a few hundred in
 * microsocks.  bench/pingpong.py measured the node 14 % behind microsocks,
 * where a relay doing the same system calls in C was level with it.  No
 * library does this (uvloop relays through user-space buffers), so this file
 * carries exactly the Python code it replaces, and nothing else:
 *
 *   PipePool  resistance.net.relay.PipePool    empty pipes, reused
 *   Pump      resistance.net.relay._SplicePump one direction of a relay
 *   Side      resistance.net.relay._Side       one relayed socket's event handler
 *   dispatch  Reactor.dispatch                 the nested epoll's events
 *
 * The Python versions stay, are tested the same way, and serve where this
 * module is not built (RESIST_NO_EXTENSIONS=1, no compiler).  Everything but
 * the per-event path stays in Python: a relay's start, end, failure and
 * close call back into its Relay object (``pump_finished``, ``fail``).
 *
 * The GIL is kept across splice(2): every descriptor here is non-blocking and
 * the node runs one thread, so releasing and retaking it per call (as
 * os.splice does) would only cost.  This module parses no network bytes; it
 * moves lengths between descriptors the Python side owns.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#define ROUNDS 16 /* chunks a pump moves per turn before yielding (relay.ROUNDS) */
#define MAX_EVENTS 1024

static PyObject *str_fail, *str_pump_finished, *str_call_soon, *str_idle, *str_run;
static PyObject *zero;

/* --- PipePool --------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    int size;    /* F_SETPIPE_SZ asked for each new pipe; 0 = the kernel's default */
    int keep;    /* empty pipes kept for reuse at most */
    int count;   /* pipes in `free` */
    long slots;  /* buffer slots of the smallest pipe made so far (see relay.PipePool) */
    int (*free)[2];
} PipePool;

static long page_size;

static int pool_get(PipePool *pool, int pipe[2])
{
    if (pool->count) {
        pool->count--;
        pipe[0] = pool->free[pool->count][0];
        pipe[1] = pool->free[pool->count][1];
        return 0;
    }
    if (pipe2(pipe, O_NONBLOCK | O_CLOEXEC)) return -1;
    long size = 64 * 1024;
    if (pool->size) {
        int got = fcntl(pipe[1], F_SETPIPE_SZ, pool->size);
        if (got > 0) size = got; /* over the per-user pipe limit: the default size stays */
    }
    long slots = size / page_size > 0 ? size / page_size : 1;
    if (!pool->slots || slots < pool->slots) pool->slots = slots;
    return 0;
}

static void pool_put(PipePool *pool, const int pipe[2])
{
    if (pool->count < pool->keep) {
        pool->free[pool->count][0] = pipe[0];
        pool->free[pool->count][1] = pipe[1];
        pool->count++;
    } else {
        close(pipe[0]);
        close(pipe[1]);
    }
}

static int PipePool_init(PipePool *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"size", "keep", NULL};
    int size = 0, keep = 256;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$ii", kwlist, &size, &keep)) return -1;
    if (size < 0 || keep < 0 || keep > 1 << 20) {
        PyErr_SetString(PyExc_ValueError, "size and keep must be >= 0 (keep <= 1048576)");
        return -1;
    }
    if (self->free) {
        PyErr_SetString(PyExc_RuntimeError, "PipePool is initialised once");
        return -1;
    }
    self->free = PyMem_Calloc(keep ? (size_t)keep : 1, sizeof *self->free);
    if (!self->free) {
        PyErr_NoMemory();
        return -1;
    }
    self->size = size;
    self->keep = keep;
    return 0;
}

static PyObject *PipePool_close(PipePool *self, PyObject *Py_UNUSED(ignored))
{
    while (self->count) {
        self->count--;
        close(self->free[self->count][0]);
        close(self->free[self->count][1]);
    }
    Py_RETURN_NONE;
}

static void PipePool_dealloc(PipePool *self)
{
    PipePool_close(self, NULL);
    PyMem_Free(self->free);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *PipePool_get(PipePool *self, PyObject *Py_UNUSED(ignored))
{
    int pipe[2];
    if (pool_get(self, pipe)) return PyErr_SetFromErrno(PyExc_OSError);
    return Py_BuildValue("(ii)", pipe[0], pipe[1]);
}

static PyObject *PipePool_put(PipePool *self, PyObject *arg)
{
    int pipe[2];
    if (!PyArg_ParseTuple(arg, "ii;put() takes a (read_fd, write_fd) pair", &pipe[0], &pipe[1]))
        return NULL;
    pool_put(self, pipe);
    Py_RETURN_NONE;
}

static Py_ssize_t PipePool_len(PipePool *self) { return self->count; }

static PyMethodDef PipePool_methods[] = {
    {"get", (PyCFunction)PipePool_get, METH_NOARGS, "An empty pipe (read_fd, write_fd)."},
    {"put", (PyCFunction)PipePool_put, METH_O, "Give back an empty pipe."},
    {"close", (PyCFunction)PipePool_close, METH_NOARGS, "Close every pipe kept."},
    {NULL}};

static PyMemberDef PipePool_members[] = {
    {"size", T_INT, offsetof(PipePool, size), READONLY, NULL},
    {"keep", T_INT, offsetof(PipePool, keep), READONLY, NULL},
    {"slots", T_LONG, offsetof(PipePool, slots), READONLY, NULL},
    {NULL}};

static PySequenceMethods PipePool_as_sequence = {.sq_length = (lenfunc)PipePool_len};

static PyTypeObject PipePoolType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "resistance.net._splice.PipePool",
    .tp_doc = PyDoc_STR("PipePool(*, size=0, keep=256): empty pipes for splice pumps, reused."),
    .tp_basicsize = sizeof(PipePool),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)PipePool_init,
    .tp_dealloc = (destructor)PipePool_dealloc,
    .tp_methods = PipePool_methods,
    .tp_members = PipePool_members,
    .tp_as_sequence = &PipePool_as_sequence,
};

/* --- Pump -------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *relay; /* the owning Relay; NULL once halted (so no cycle outlives the relay) */
    PyObject *loop;
    PipePool *pool;
    int src_fd, dst_fd;
    int pipe[2]; /* -1 while none is held */
    long long pending; /* bytes in the pipe, not yet written to dst */
    long long moved;
    long chunk;
    char readable, writable, ending, eof, done;
} Pump;

static int Pump_traverse(Pump *self, visitproc visit, void *arg)
{
    Py_VISIT(self->relay);
    Py_VISIT(self->loop);
    Py_VISIT(self->pool);
    return 0;
}

static void pump_release_pipe(Pump *self)
{
    if (self->pipe[0] < 0) return;
    if (self->pending) { /* bytes nobody will read: the pipe cannot be reused */
        close(self->pipe[0]);
        close(self->pipe[1]);
    } else if (self->pool) {
        pool_put(self->pool, self->pipe);
    }
    self->pipe[0] = self->pipe[1] = -1;
}

static int Pump_clear(Pump *self)
{
    Py_CLEAR(self->relay);
    Py_CLEAR(self->loop);
    return 0;
}

static void Pump_dealloc(Pump *self)
{
    PyObject_GC_UnTrack(self);
    pump_release_pipe(self);
    Pump_clear(self);
    Py_CLEAR(self->pool);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* No pipe until one is taken: a Pump made but never initialised must not close 0 and 0. */
static PyObject *Pump_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Pump *self = (Pump *)PyType_GenericNew(type, args, kwds);
    if (self) self->pipe[0] = self->pipe[1] = -1;
    return (PyObject *)self;
}

static int Pump_init(Pump *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"relay", "src_fd", "dst_fd", "pool", "chunk", "loop", NULL};
    PyObject *relay, *pool, *loop;
    int src, dst;
    long chunk;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OiiO!lO", kwlist, &relay, &src, &dst,
                                     &PipePoolType, &pool, &chunk, &loop))
        return -1;
    if (self->pool) {
        PyErr_SetString(PyExc_RuntimeError, "Pump is initialised once");
        return -1;
    }
    if (chunk <= 0) {
        PyErr_SetString(PyExc_ValueError, "chunk must be positive");
        return -1;
    }
    Py_XSETREF(self->relay, Py_NewRef(relay));
    Py_XSETREF(self->loop, Py_NewRef(loop));
    Py_XSETREF(self->pool, (PipePool *)Py_NewRef(pool));
    self->src_fd = src;
    self->dst_fd = dst;
    self->chunk = chunk;
    self->readable = self->writable = 1; /* bytes may already wait: look once */
    return 0;
}

/* Called with an exception set or an errno: hand it to relay.fail(exc). */
static int pump_fail(Pump *self, int err)
{
    if (!self->relay) return 0;
    PyObject *exc = PyObject_CallFunction(PyExc_OSError, "is", err, strerror(err));
    if (!exc) return -1;
    PyObject *relay = Py_NewRef(self->relay);
    PyObject *r = PyObject_CallMethodOneArg(relay, str_fail, exc);
    Py_DECREF(relay);
    Py_DECREF(exc);
    if (!r) return -1;
    Py_DECREF(r);
    return 0;
}

/* The loop of relay._SplicePump.run; 0, or -1 with a Python exception set. */
static int pump_run(Pump *self)
{
    if (self->done) return 0;
    PipePool *pool = self->pool;
    const unsigned flags = SPLICE_F_MOVE | SPLICE_F_NONBLOCK;
    for (int round = 0; round < ROUNDS; round++) {
        if (self->pending) {
            if (!self->writable) return 0;
            while (self->pending) {
                ssize_t n = splice(self->pipe[0], NULL, self->dst_fd, NULL,
                                   (size_t)self->pending, flags);
                if (n < 0) {
                    if (errno == EINTR) continue;
                    if (errno == EAGAIN) {
                        self->writable = 0;
                        return 0;
                    }
                    return pump_fail(self, errno);
                }
                self->pending -= n;
            }
            pool_put(pool, self->pipe); /* empty pipes go back */
            self->pipe[0] = self->pipe[1] = -1;
            continue;
        }
        if (self->eof) {
            self->done = 1;
            if (!self->relay) return 0;
            PyObject *relay = Py_NewRef(self->relay);
            PyObject *r = PyObject_CallMethodOneArg(relay, str_pump_finished, (PyObject *)self);
            Py_DECREF(relay);
            if (!r) return -1;
            Py_DECREF(r);
            return 0;
        }
        if (!self->readable) return 0;
        if (self->pipe[0] < 0 && pool_get(pool, self->pipe)) {
            self->pipe[0] = self->pipe[1] = -1;
            return pump_fail(self, errno);
        }
        ssize_t n;
        do {
            n = splice(self->src_fd, NULL, self->pipe[1], NULL, (size_t)self->chunk, flags);
        } while (n < 0 && errno == EINTR);
        if (n < 0) {
            if (errno == EAGAIN) {
                self->readable = 0;
                pool_put(pool, self->pipe);
                self->pipe[0] = self->pipe[1] = -1;
                return 0;
            }
            return pump_fail(self, errno);
        }
        if (n) {
            self->moved += n;
            self->pending = n;
            /* Fewer bytes than the pipe has slots: the socket's queue ran dry and new
             * data brings a new edge; not so once the peer has shut down (its FIN came
             * with the last edge, and only a read returning 0 shows it). */
            if (n < pool->slots && !self->ending) self->readable = 0;
        } else {
            pool_put(pool, self->pipe);
            self->pipe[0] = self->pipe[1] = -1;
            self->eof = 1;
        }
    }
    /* Still busy after a fair share: let other connections run first. */
    PyObject *run = PyObject_GetAttr((PyObject *)self, str_run);
    if (!run) return -1;
    PyObject *r = PyObject_CallMethodOneArg(self->loop, str_call_soon, run);
    Py_DECREF(run);
    if (!r) return -1;
    Py_DECREF(r);
    return 0;
}

static PyObject *Pump_run(Pump *self, PyObject *Py_UNUSED(ignored))
{
    if (!self->pool) {
        PyErr_SetString(PyExc_RuntimeError, "Pump was not initialised");
        return NULL;
    }
    if (pump_run(self)) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Pump_halt(Pump *self, PyObject *Py_UNUSED(ignored))
{
    self->done = 1;
    pump_release_pipe(self);
    Py_CLEAR(self->relay);
    Py_RETURN_NONE;
}

static PyMethodDef Pump_methods[] = {
    {"run", (PyCFunction)Pump_run, METH_NOARGS,
     "Move bytes while both sides allow it, up to 16 chunks a turn."},
    {"halt", (PyCFunction)Pump_halt, METH_NOARGS,
     "The relay is closing: never run again, give back what is held."},
    {NULL}};

static PyMemberDef Pump_members[] = {
    {"src_fd", T_INT, offsetof(Pump, src_fd), READONLY, NULL},
    {"dst_fd", T_INT, offsetof(Pump, dst_fd), READONLY, NULL},
    {"pending", T_LONGLONG, offsetof(Pump, pending), READONLY, NULL},
    {"moved", T_LONGLONG, offsetof(Pump, moved), 0, NULL},
    {"chunk", T_LONG, offsetof(Pump, chunk), READONLY, NULL},
    {"readable", T_BOOL, offsetof(Pump, readable), 0, NULL},
    {"writable", T_BOOL, offsetof(Pump, writable), 0, NULL},
    {"ending", T_BOOL, offsetof(Pump, ending), 0, NULL},
    {"eof", T_BOOL, offsetof(Pump, eof), READONLY, NULL},
    {"done", T_BOOL, offsetof(Pump, done), READONLY, NULL},
    {NULL}};

static PyTypeObject PumpType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "resistance.net._splice.Pump",
    .tp_doc = PyDoc_STR("Pump(relay, src_fd, dst_fd, pool, chunk, loop): one direction of a "
                        "splice relay."),
    .tp_basicsize = sizeof(Pump),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Pump_new,
    .tp_init = (initproc)Pump_init,
    .tp_dealloc = (destructor)Pump_dealloc,
    .tp_traverse = (traverseproc)Pump_traverse,
    .tp_clear = (inquiry)Pump_clear,
    .tp_methods = Pump_methods,
    .tp_members = Pump_members,
};

/* --- Side -------------------------------------------------------------------------------- */

#define READABLE (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP)
#define WRITABLE (EPOLLOUT | EPOLLHUP | EPOLLERR)
#define ENDED (EPOLLRDHUP | EPOLLHUP | EPOLLERR)

typedef struct {
    PyObject_HEAD
    PyObject *relay;
    Pump *reading; /* the pump this socket is the source of */
    Pump *writing; /* the pump this socket is the destination of */
} Side;

static int Side_traverse(Side *self, visitproc visit, void *arg)
{
    Py_VISIT(self->relay);
    Py_VISIT(self->reading);
    Py_VISIT(self->writing);
    return 0;
}

static int Side_clear(Side *self)
{
    Py_CLEAR(self->relay);
    Py_CLEAR(self->reading);
    Py_CLEAR(self->writing);
    return 0;
}

static void Side_dealloc(Side *self)
{
    PyObject_GC_UnTrack(self);
    Side_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Side_init(Side *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"relay", "reading", "writing", NULL};
    PyObject *relay, *reading, *writing;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!O!", kwlist, &relay, &PumpType, &reading,
                                     &PumpType, &writing))
        return -1;
    if (!((Pump *)reading)->pool || !((Pump *)writing)->pool) {
        PyErr_SetString(PyExc_TypeError, "Side takes initialised pumps");
        return -1;
    }
    Py_XSETREF(self->relay, Py_NewRef(relay));
    Py_XSETREF(self->reading, (Pump *)Py_NewRef(reading));
    Py_XSETREF(self->writing, (Pump *)Py_NewRef(writing));
    return 0;
}

/* relay._Side.__call__ */
static int side_event(Side *self, unsigned events)
{
    if (!self->relay) { /* made but never initialised */
        PyErr_SetString(PyExc_RuntimeError, "Side was not initialised");
        return -1;
    }
    if (PyObject_SetAttr(self->relay, str_idle, zero)) return -1;
    Py_INCREF(self); /* a pump's callback may close the relay and drop this handler */
    int rc = 0;
    if (events & READABLE) {
        Pump *up = self->reading;
        up->readable = 1;
        if (events & ENDED) up->ending = 1;
        rc = pump_run(up);
    }
    if (!rc && events & WRITABLE && !self->writing->writable) {
        self->writing->writable = 1;
        rc = pump_run(self->writing);
    }
    Py_DECREF(self);
    return rc;
}

static PyObject *Side_call(Side *self, PyObject *args, PyObject *kwds)
{
    unsigned events;
    if (kwds && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "Side takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "I:Side", &events)) return NULL;
    if (side_event(self, events)) return NULL;
    Py_RETURN_NONE;
}

static PyTypeObject SideType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "resistance.net._splice.Side",
    .tp_doc = PyDoc_STR("Side(relay, reading, writing): the event handler of one relayed "
                        "socket."),
    .tp_basicsize = sizeof(Side),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Side_init,
    .tp_dealloc = (destructor)Side_dealloc,
    .tp_traverse = (traverseproc)Side_traverse,
    .tp_clear = (inquiry)Side_clear,
    .tp_call = (ternaryfunc)Side_call,
};

/* --- dispatch ---------------------------------------------------------------------------- */

/* One ready descriptor's events to its handler: a Side in C, anything else called. */
static int dispatch_one(PyObject *handlers, const struct epoll_event *event)
{
    PyObject *key = PyLong_FromLong(event->data.fd);
    if (!key) return -1;
    PyObject *handler = PyDict_GetItemWithError(handlers, key); /* borrowed */
    Py_DECREF(key);
    if (!handler) return PyErr_Occurred() ? -1 : 0; /* forgotten since: a stale event */
    if (Py_IS_TYPE(handler, &SideType)) return side_event((Side *)handler, event->events);
    PyObject *ev = PyLong_FromUnsignedLong(event->events);
    if (!ev) return -1;
    Py_INCREF(handler); /* it may forget itself */
    PyObject *r = PyObject_CallOneArg(handler, ev);
    Py_DECREF(handler);
    Py_DECREF(ev);
    if (!r) return -1;
    Py_DECREF(r);
    return 0;
}

/* dispatch(epoll_fd, handlers, max_events): Reactor.dispatch.  The epoll is polled with
 * timeout 0 (the event loop saw it readable), so the GIL is kept. */
static PyObject *dispatch(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "dispatch(epoll_fd, handlers: dict, max_events)");
        return NULL;
    }
    long epfd = PyLong_AsLong(args[0]);
    long max_events = PyLong_AsLong(args[2]);
    if (PyErr_Occurred()) return NULL;
    if (epfd < 0 || epfd > INT_MAX) {
        errno = EBADF;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (max_events < 1 || max_events > MAX_EVENTS) {
        PyErr_SetString(PyExc_ValueError, "max_events must be 1..1024");
        return NULL;
    }
    struct epoll_event events[MAX_EVENTS];
    int n;
    do {
        n = epoll_wait((int)epfd, events, (int)max_events, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0) return PyErr_SetFromErrno(PyExc_OSError);
    /* Edge-triggered events come once: a handler that raises must not cost the others
     * theirs.  The first error is raised once all were dispatched (the loop logs it). */
    PyObject *type = NULL, *value = NULL, *tb = NULL;
    for (int i = 0; i < n; i++) {
        if (dispatch_one(args[1], &events[i]) == 0) continue;
        if (type == NULL)
            PyErr_Fetch(&type, &value, &tb);
        else
            PyErr_Clear();
    }
    if (type != NULL) {
        PyErr_Restore(type, value, tb);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"dispatch", (PyCFunction)(void (*)(void))dispatch, METH_FASTCALL,
     "dispatch(epoll_fd, handlers, max_events): hand each ready descriptor's events to its "
     "handler."},
    {NULL}};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "resistance.net._splice",
    .m_doc = "The splice relay's per-event path in C (see the comment at the top of _splice.c).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__splice(void)
{
    page_size = sysconf(_SC_PAGESIZE);
    if (page_size <= 0) page_size = 4096;
    if (!(str_fail = PyUnicode_InternFromString("fail")) ||
        !(str_pump_finished = PyUnicode_InternFromString("pump_finished")) ||
        !(str_call_soon = PyUnicode_InternFromString("call_soon")) ||
        !(str_idle = PyUnicode_InternFromString("idle")) ||
        !(str_run = PyUnicode_InternFromString("run")) || !(zero = PyLong_FromLong(0)))
        return NULL;
    if (PyType_Ready(&PipePoolType) || PyType_Ready(&PumpType) || PyType_Ready(&SideType))
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "PipePool", (PyObject *)&PipePoolType) ||
        PyModule_AddObjectRef(m, "Pump", (PyObject *)&PumpType) ||
        PyModule_AddObjectRef(m, "Side", (PyObject *)&SideType) ||
        PyModule_AddIntConstant(m, "ROUNDS", ROUNDS)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
