"""The registry's HTTP server: uvicorn, with every limit set and the one it lacks added.

uvicorn caps the header block's size (``h11_max_incomplete_event_size``),
idle keep-alive connections (``timeout_keep_alive``) and connections at once
(``limit_concurrency``: 503 beyond), but gives a client all the time it likes
to send its headers, so a client sending one byte a second holds a
connection for ever.  :class:`HeaderDeadlineProtocol` is uvicorn's h11
protocol plus that deadline; the number of header lines, the body's size and
the body's read time are the request guard's (:mod:`resistance.registry.guard`).

Forwarded headers (``X-Forwarded-For``/``-Proto``) are believed only from
the networks in ``settings.trust_proxy``; with none (the default) they are
ignored, also from loopback, where uvicorn would believe them, so a
same-host front end that passes them on (an onion service, stunnel, haproxy
in TCP mode) cannot be used to forge the client address rate limits and
proxy assignment are keyed on.

Several processes (``serve --workers N``, :func:`run_workers`): the parent
binds the listening socket, forks N workers that each run their own uvicorn
server and event loop on it (the kernel hands each new connection to one
of them), and then only waits: SIGTERM or SIGINT to the parent is passed to
every worker as SIGTERM, which uvicorn takes as a graceful stop (no new
connections, finish the open requests, run the lifespan's shutdown).  A
worker that dies on its own stops the others and the parent exits with its
status, so a supervisor (systemd) restarts the whole set rather than
running it short-handed; a parent that dies takes its workers with it
(``PR_SET_PDEATHSIG``).  What workers share lives in the database -- see
:mod:`resistance.registry.db` and :mod:`resistance.registry.ratelimit`.

Theory of operation of the deadline: armed when a connection opens and when
the first byte of a later request arrives (between requests the idle
connection is keep-alive's), disarmed once h11 has read a whole header
block (uvicorn then starts a request cycle); when it fires while headers are
still awaited, the connection is closed.
"""

from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from resistance.registry.settings import RegistrySettings

log = logging.getLogger(__name__)


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol; a request's header block must arrive within ``header_timeout``."""

    header_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._awaiting_headers():
            self._arm()
        super().data_received(data)
        if not self._awaiting_headers():
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _awaiting_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self._awaiting_headers() and not self.transport.is_closing():
            log.debug("closing a connection whose headers did not arrive in time")
            self.transport.close()


def trusted_networks(settings: RegistrySettings) -> list[str]:
    return [str(ipaddress.ip_network(n, strict=False)) for n in settings.trust_proxy]


def server_config(
    app: Any, settings: RegistrySettings, *, log_level: str = "warning", access_log: bool = False
) -> uvicorn.Config:
    """The uvicorn configuration every registry server runs with (``serve`` and tests)."""
    protocol = type(
        "RegistryHttpProtocol",
        (HeaderDeadlineProtocol,),
        {"header_timeout": settings.header_timeout},
    )
    trusted = trusted_networks(settings)
    return uvicorn.Config(
        app,
        http=protocol,
        ws="none",
        lifespan="on",
        log_level=log_level,
        access_log=access_log,
        timeout_keep_alive=settings.keepalive_timeout,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        limit_concurrency=settings.max_connections,
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or None,
        server_header=False,
    )


#: ``prctl(PR_SET_PDEATHSIG, ...)``: the signal a process gets when its parent dies.
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: workers then outlive a killed parent
        pass


def run_workers(run_one: Callable[[], int], workers: int) -> int:
    """Fork ``workers`` processes running ``run_one()`` (each its own server on the socket
    the caller bound before), pass SIGTERM/SIGINT on to them, and wait for all.

    Returns 0 if they stopped because they were told to, else the exit status of
    the first that stopped on its own (the others are then stopped too).
    """
    parent = os.getpid()
    children: set[int] = set()
    for _ in range(workers):
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the caller's code
            code = 1
            try:
                # Its own process group: a terminal's Ctrl-C reaches only the parent,
                # which passes it on once (uvicorn takes a second signal as "force").
                os.setpgid(0, 0)
                _die_with_parent()
                if os.getppid() == parent:
                    code = run_one()
            except BaseException:
                log.exception("registry worker %d failed", os.getpid())
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children.add(pid)
    stopping = False

    def stop_all(signum: int = signal.SIGTERM, _frame: FrameType | None = None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass

    previous = {sig: signal.signal(sig, stop_all) for sig in (signal.SIGTERM, signal.SIGINT)}
    code = 0
    try:
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            children.discard(pid)
            if not stopping:
                code = max(1, os.waitstatus_to_exitcode(status))
                log.error("registry worker %d stopped (status %d): stopping the rest", pid, code)
                stop_all()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code
