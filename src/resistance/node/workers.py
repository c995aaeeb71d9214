"""`resist node --workers N`: N processes serving one port, and their supervisor.

Why processes: one Python process uses one core, and a volunteer's VPS
often has two; and each process has its own descriptor table, so where the
hard ``RLIMIT_NOFILE`` is fixed (a container, a shared host) N workers hold N
times the connections (a relayed client costs two descriptors).

How (as nginx does with ``reuseport``): the supervisor opens N listening
sockets per endpoint, all in one ``SO_REUSEPORT`` group (the first decides a
``:0`` port, the others bind to it), forks one worker per set and closes
its own copies, so only workers listen and the kernel spreads new
connections over them.  Each worker is an ordinary node (its own event loop,
relays, UDP and BIND sockets) with the connection limits divided by N.

With ``--metrics`` the supervisor serves them: on each scrape it asks every
worker for its numbers over a socketpair (one byte out, one JSON line back)
and adds them up, so the counters mean the whole node.  A worker that is
restarted starts its counters at zero, which Prometheus reads as a reset.

With ``--mtproto-listen`` the MTProto listener joins the same scheme (its
own ``SO_REUSEPORT`` group).  Before forking, the supervisor resolves the
MTProto users once (so generated secrets are made once) and makes the
shared per-user table afresh; the replay cache and that table are files of
the state directory every worker maps (:mod:`resistance.node.mtproto_shared`),
so a replayed hello is refused and quotas and ``conns=`` hold whichever
worker a connection reaches.

The supervisor prints the banner, passes SIGHUP on (each worker reloads
users and policy), turns SIGTERM/SIGINT into a SIGTERM for every worker and
waits for them to drain (``drain_timeout``, then SIGKILL), and restarts a
worker that dies, on a new socket set for the same port, unless workers keep
dying (``RESPAWN_LIMIT`` deaths within ``RESPAWN_WINDOW`` seconds), which
ends the node with an error.  It waits only in ``sigtimedwait``, one second
at a time, with the signals blocked, so no signal is lost between checks.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import dataclasses
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resistance.config import Endpoint, NodeSettings
from resistance.node.identity import public_key_text
from resistance.node.metrics import SummedMetrics
from resistance.node.server import listening_socket, relay_kind, tls_context
from resistance.node.service import (
    Listening,
    Prepared,
    new_event_loop,
    print_banner,
    serve,
    start_metrics,
)

log = logging.getLogger("resistance.node")

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
RESPAWN_WINDOW = 10.0
RESPAWN_LIMIT = 5
PR_SET_PDEATHSIG = 1
KILL_GRACE = 5.0
"""Seconds past the drain timeout before a worker that is still there is killed."""


def worker_settings(settings: NodeSettings) -> NodeSettings:
    """One worker's settings: the connection limits split between the workers.

    The kernel hashes connections over the workers, so each holds about an
    equal share of every client's connections, and of the total.
    """
    n = settings.workers
    limits = settings.limits
    return dataclasses.replace(
        settings,
        metrics=None,  # served by the supervisor, summed over the workers
        limits=dataclasses.replace(
            limits,
            max_connections=math.ceil(limits.max_connections / n),
            max_connections_per_ip=math.ceil(limits.max_connections_per_ip / n),
        ),
    )


class Workers:
    """Starts, watches and stops the worker processes of one node."""

    def __init__(self, prepared: Prepared) -> None:
        self.prepared = prepared
        self.settings = settings = prepared.settings
        self.worker = dataclasses.replace(prepared, settings=worker_settings(settings))
        self.bound: list[Endpoint] = []
        self.tls_bound: list[Endpoint] = []
        self.mt_bound: list[Endpoint] = []
        self.pids: dict[int, int] = {}  # worker PID -> slot
        self.deaths: collections.deque[float] = collections.deque(maxlen=RESPAWN_LIMIT)
        self.stop_deadline: float | None = None
        self.failed = False
        # With --metrics: the supervisor's end of a socketpair per worker slot,
        # used by the metrics server's thread under the lock.
        self.channels: dict[int, socket.socket] = {}
        self.channels_lock = threading.Lock()

    def run(self) -> int:
        relay = relay_kind(self.settings)  # a bad setting fails here, not in every worker
        digest = tls_context(self.settings)[1] if self.settings.tls_listen else None
        mt_view = None
        if self._mtproto_endpoints():
            from resistance.node.mtproto import banner_view

            assert self.settings.mtproto is not None
            mt_view = banner_view(self.settings.mtproto, self.prepared.state_dir)
            _share_mtproto_users(self.prepared.state_dir, self.settings.workers)
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            for slot in range(self.settings.workers):
                self._spawn(slot, blocked)
            metrics_server = None
            if self.settings.metrics is not None:
                summed = SummedMetrics(self._scrape)
                if self._mtproto_endpoints():
                    from resistance.node.mtproto import MTProtoMetrics

                    MTProtoMetrics(summed.template)  # its families, summed like the others
                metrics_server = start_metrics(summed, self.settings.metrics)
            listening = Listening(
                relay, self.bound, self.tls_bound, digest.hex() if digest is not None else None
            )
            prepared = self.prepared
            print_banner(
                self.settings,
                listening,
                prepared.access,
                prepared.state_dir,
                prepared.nofile,
                prepared.out,
            )
            if mt_view is not None:
                from resistance.node.mtproto import banner_lines

                mt_view.bound.extend(self.mt_bound)
                lines = banner_lines(mt_view, self.settings)
                prepared.out.write("\n".join(lines) + "\n")
                prepared.out.flush()
            log.debug("node identity %s", public_key_text(prepared.identity))
            try:
                return self._watch(blocked)
            finally:
                if metrics_server is not None:
                    metrics_server.shutdown()
                    metrics_server.server_close()
        finally:
            self._kill_all(signal.SIGKILL)  # only if something above failed: none are left
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    # -- sockets ------------------------------------------------------------------

    def _mtproto_endpoints(self) -> tuple[Endpoint, ...]:
        mt = self.settings.mtproto
        return mt.listen if mt is not None else ()

    def _sockets(self) -> tuple[list[socket.socket], list[socket.socket], list[socket.socket]]:
        """One worker's listening sockets (SOCKS5, SOCKS5 over TLS, MTProto), in the
        node's SO_REUSEPORT groups; the first set made decides the ports (``:0``
        included) for all the others."""
        first = not (self.bound or self.tls_bound or self.mt_bound)
        plain: list[socket.socket] = []
        tls: list[socket.socket] = []
        mt: list[socket.socket] = []
        try:
            for endpoints, made, bound in (
                (self.settings.listen, plain, self.bound),
                (self.settings.tls_listen, tls, self.tls_bound),
                (self._mtproto_endpoints(), mt, self.mt_bound),
            ):
                for i, endpoint in enumerate(endpoints):
                    sock = listening_socket(endpoint if first else bound[i], reuse_port=True)
                    made.append(sock)
                    if first:
                        host, port = sock.getsockname()[:2]
                        bound.append(Endpoint(host, port))
        except BaseException:
            for sock in plain + tls + mt:
                sock.close()
            raise
        return plain, tls, mt

    # -- workers ------------------------------------------------------------------

    def _spawn(self, slot: int, mask: set[int | signal.Signals]) -> None:
        plain, tls, mt = self._sockets()
        channel = theirs = None
        if self.settings.metrics is not None:
            channel, theirs = socket.socketpair()
        self.prepared.out.flush()
        sys.stderr.flush()
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                for sig in SIGNALS:
                    signal.signal(sig, signal.SIG_DFL)
                _end_with_parent(supervisor)
                for other in [*self.channels.values(), channel]:
                    if other is not None:
                        other.close()  # other workers' and the supervisor's ends
                # The signals stay blocked (pending) until the worker's loop handles
                # them: a SIGHUP now must not kill it with the default action.
                code = self._serve(
                    slot,
                    (plain, tls, mt),
                    lambda: signal.pthread_sigmask(signal.SIG_SETMASK, mask),
                    theirs,
                )
            except BaseException:
                log.exception("worker %d failed", slot)
            finally:
                os._exit(code)
        for sock in plain + tls + mt:
            sock.close()  # the worker's now: the supervisor must not hold a queue nobody accepts
        if channel is not None and theirs is not None:
            theirs.close()
            channel.settimeout(2.0)
            with self.channels_lock:
                old = self.channels.pop(slot, None)
                self.channels[slot] = channel
            if old is not None:
                old.close()
        self.pids[pid] = slot
        log.debug("worker %d started (pid %d)", slot, pid)

    def _serve(
        self,
        slot: int,
        sockets: tuple[list[socket.socket], list[socket.socket], list[socket.socket]],
        signals_ready: Callable[[], object],
        metrics_channel: socket.socket | None,
    ) -> int:
        plain, tls, mt = sockets
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            return runner.run(
                serve(
                    self.worker,
                    sockets=(plain, tls),
                    mtproto_sockets=mt,
                    worker=(slot, self.settings.workers),
                    signals_ready=signals_ready,
                    metrics_channel=metrics_channel,
                )
            )

    def _scrape(self) -> list[dict[str, list[list[Any]]]]:
        """Every live worker's metrics (runs in the metrics server's thread)."""
        snapshots = []
        with self.channels_lock:
            for slot, channel in self.channels.items():
                try:
                    channel.sendall(b"?")
                    line = b""
                    while not line.endswith(b"\n"):
                        chunk = channel.recv(1 << 16)
                        if not chunk:
                            raise ConnectionError("worker closed its metrics channel")
                        line += chunk
                    snapshot = json.loads(line)
                except (OSError, ValueError) as exc:
                    log.warning("no metrics from worker %d: %s", slot, exc)
                    continue
                if isinstance(snapshot, dict):
                    snapshots.append(snapshot)
        return snapshots

    def _watch(self, mask: set[int | signal.Signals]) -> int:
        while self.pids:
            info = signal.sigtimedwait(SIGNALS, 1.0)
            if info is not None:
                if info.si_signo in (signal.SIGTERM, signal.SIGINT):
                    self._stop()
                elif info.si_signo == signal.SIGHUP:
                    log.info("reloading users and policy in %d workers", len(self.pids))
                    self._kill_all(signal.SIGHUP)
            self._reap(mask)
            if self.stop_deadline is not None and time.monotonic() > self.stop_deadline:
                log.warning("workers still running after the drain timeout: killing them")
                self._kill_all(signal.SIGKILL)
                self.stop_deadline = math.inf
        log.info("stopped")
        return 1 if self.failed else 0

    def _stop(self) -> None:
        if self.stop_deadline is None:
            log.info(
                "stopping: draining connections for up to %.0f s",
                self.settings.limits.drain_timeout,
            )
            self.stop_deadline = time.monotonic() + self.settings.limits.drain_timeout + KILL_GRACE
            self._kill_all(signal.SIGTERM)

    def _reap(self, mask: set[int | signal.Signals]) -> None:
        while self.pids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.pids.clear()
                return
            if pid == 0:
                return
            slot = self.pids.pop(pid, None)
            if slot is None:
                continue
            if self.stop_deadline is not None:
                continue
            log.error("worker %d (pid %d) ended: %s", slot, pid, _describe(status))
            now = time.monotonic()
            self.deaths.append(now)
            if len(self.deaths) == RESPAWN_LIMIT and now - self.deaths[0] < RESPAWN_WINDOW:
                log.error(
                    "%d workers ended within %.0f s: stopping the node",
                    RESPAWN_LIMIT,
                    RESPAWN_WINDOW,
                )
                self.failed = True
                self._stop()
                continue
            try:
                self._spawn(slot, mask)
            except OSError as exc:
                log.error("cannot restart worker %d: %s", slot, exc)
                self.failed = True
                self._stop()

    def _kill_all(self, sig: signal.Signals) -> None:
        for pid in list(self.pids):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def _share_mtproto_users(state_dir: Path, workers: int) -> None:
    """The table through which workers count MTProto users' bytes and connections
    node-wide, made afresh from the kept usage before any worker starts."""
    from resistance.node.mtproto_shared import SHARED_USERS_FILE, SharedUsers, state_lock
    from resistance.node.mtproto_users import load_usage

    with state_lock(state_dir):
        SharedUsers.create(state_dir / SHARED_USERS_FILE, workers, load_usage(state_dir))


def _end_with_parent(supervisor: int) -> None:
    """Have the kernel SIGTERM this worker if its supervisor dies (even by SIGKILL),
    so that no worker outlives the node and keeps its port."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != supervisor:  # it died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


__all__ = ["Workers", "worker_settings"]
