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

Theory of operation of the deadline: armed when a connection opens and when
the first byte of a later request arrives (between requests the idle
connection is keep-alive's), disarmed once h11 has read a whole header
block (uvicorn then starts a request cycle); when it fires while headers are
still awaited, the connection is closed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
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
