"""The canary service the registry runs: answers a probe's nonce with a signature
that also covers the canary's clock (in 5-minute windows).

See :mod:`resistance.probe.canary` for the exchange.  One asyncio protocol
per connection, fed by :class:`~resistance.probe.canary.CanaryRequestParser`;
each connection has a deadline and the number open at once is capped, so a
flood cannot exhaust the registry.  The key is ``STATE_DIR/canary-key.pem``
(Ed25519, made on first start), distinct from the directory keys so a canary
answer can never be taken for a directory signature.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path
from typing import cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from resistance import keyfile
from resistance.config import Endpoint
from resistance.errors import ConfigError, ProtocolError
from resistance.probe.canary import CanaryRequestParser, answer

log = logging.getLogger(__name__)

CANARY_KEY_FILE = "canary-key.pem"
DEADLINE = 15.0
MAX_OPEN = 20_000


def load_or_create_canary_key(state_dir: Path) -> Ed25519PrivateKey:
    return keyfile.load_or_create_ed25519(state_dir / CANARY_KEY_FILE, what="canary key")


class CanaryProtocol(asyncio.Protocol):
    __slots__ = ("_parser", "_server", "_timer", "_transport")

    def __init__(self, server: CanaryServer) -> None:
        self._server = server
        self._parser = CanaryRequestParser()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance here.
        self._transport = tcp = cast(asyncio.Transport, transport)
        self._server.open += 1
        if self._server.open > MAX_OPEN:
            tcp.abort()
            return
        self._timer = asyncio.get_running_loop().call_later(DEADLINE, tcp.abort)

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        try:
            request = self._parser.feed(data)
        except ProtocolError:
            transport.abort()
            return
        if request is not None:
            transport.write(
                answer(
                    self._server.key,
                    request.nonce,
                    request.upload_sha256,
                    request.download,
                    now=time.time(),
                )
            )
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.open -= 1
        if self._timer is not None:
            self._timer.cancel()


class CanaryServer:
    def __init__(self, key: Ed25519PrivateKey) -> None:
        self.key = key
        self.open = 0
        self.server: asyncio.Server | None = None

    async def start(self, endpoint: Endpoint) -> tuple[str, int]:
        """Listen; returns the address actually bound (port 0 picks one)."""
        family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
        try:
            self.server = await asyncio.get_running_loop().create_server(
                lambda: CanaryProtocol(self),
                endpoint.host,
                endpoint.port,
                family=family,
                reuse_address=True,
                # Every worker of `serve --workers N` runs its canary on the same port.
                reuse_port=endpoint.port != 0,
                backlog=4096,
            )
        except OSError as exc:
            raise ConfigError(f"cannot run the canary on {endpoint}: {exc.strerror}") from None
        host, port = self.server.sockets[0].getsockname()[:2]
        log.info("canary listening on %s:%d", host, port)
        return host, port

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
