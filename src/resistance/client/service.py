"""`resist connect` as a process: a local SOCKS5 endpoint that outlives blocks.

The local listener is a :class:`~resistance.node.server.Node` whose sessions
forward through upstream proxies instead of dialing destinations.  Beside
it run two named tasks: the health checker, which proves each upstream
alive with the node challenge (an authenticated no-op that also verifies
the node's identity key when it is known) and measures its handshake
latency, and the status writer, which keeps ``connect-status.json`` in the
state directory for ``resist connect status``.  Neither logs destinations.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx
from cryptography.exceptions import InvalidSignature

from resistance import __version__
from resistance.client.dial import DialError, dial, read_at_least
from resistance.client.directory import (
    DirectoryClient,
    DirectoryConfig,
    UpstreamSources,
    fetch_assigned,
    upstreams_from,
)
from resistance.client.ladder import LADDER_FILE, TRANSPORTS, Ladder, current_network
from resistance.client.session import ClientSession
from resistance.client.upstreams import Upstream, UpstreamPool
from resistance.config import Endpoint, NodeLimits, NodeSettings
from resistance.directory.document import DirectoryError
from resistance.errors import ConfigError
from resistance.links import qr_terminal, socks_links
from resistance.node.identity import (
    challenge_message,
    challenge_name,
    public_key_from_text,
    tls_challenge_message,
)
from resistance.node.metrics import NodeMetrics
from resistance.node.policy import EgressPolicy
from resistance.node.server import Node, raise_nofile_limit
from resistance.node.service import new_event_loop
from resistance.node.users import UserDB
from resistance.paths import write_private
from resistance.proto.socks5 import Address, Command

log = logging.getLogger("resistance.connect")

STATUS_FILE = "connect-status.json"


@dataclass(frozen=True, slots=True)
class ConnectSettings:
    listen: Endpoint = field(default_factory=lambda: Endpoint("127.0.0.1", 1080))
    upstreams: tuple[Upstream, ...] = ()
    users: dict[str, str] | None = None
    check_interval: float = 30.0
    dial_timeout: float = 8.0
    max_attempts: int = 3
    race_after: float | None = 1.0
    state_dir: Path = Path(".")
    directory: DirectoryConfig | None = None
    assign: tuple[str, ...] = ()
    qr: bool = False
    #: Which of a directory node's listeners to use: ``auto`` (TLS first, plain as
    #: fallback), ``tls`` or ``plain`` (see :func:`~resistance.client.directory.entry_upstreams`).
    transport: str = "auto"
    #: The network the client sits in (``None``: named from the default route), for
    #: what the ladder learns (see :mod:`resistance.client.ladder`).
    network: str | None = None


class ConnectNode(Node):
    """The local listener; its sessions go through :attr:`pool`."""

    def __init__(
        self,
        settings: ConnectSettings,
        *,
        loop: asyncio.AbstractEventLoop,
        ladder: Ladder | None = None,
    ) -> None:
        node_settings = NodeSettings(
            listen=(settings.listen,),
            users=settings.users or {},
            no_auth=not settings.users,
            bind=False,
            limits=NodeLimits(handshake_timeout=30.0, connect_timeout=settings.dial_timeout),
        )
        super().__init__(
            node_settings,
            users=UserDB(settings.users) if settings.users else None,
            policy=EgressPolicy(),
            metrics=NodeMetrics(),
            loop=loop,
        )
        self.session_class = ClientSession
        self.connect_settings = settings
        self.ladder = Ladder(settings.state_dir / LADDER_FILE, current_network(settings.network))
        self.pool = UpstreamPool(
            settings.upstreams, prefer_tls=settings.transport != "plain", ladder=self.ladder
        )
        self.dial_timeout = settings.dial_timeout
        self.max_attempts = settings.max_attempts
        self.race_after = settings.race_after
        self.dial_failures = 0

    async def check(self, upstream: Upstream) -> None:
        """One health check: the node challenge through ``upstream``."""
        nonce = os.urandom(16)
        address = Address.from_host(challenge_name(nonce), 0)
        try:
            dialed = await dial(upstream, Command.CONNECT, address, seconds=self.dial_timeout)
        except DialError as exc:
            self.pool.failed(upstream, str(exc))
            return
        try:
            answer = await read_at_least(dialed, 64, seconds=self.dial_timeout)
        except (OSError, TimeoutError) as exc:
            self.pool.failed(upstream, f"health check: {exc}")
            return
        finally:
            dialed.close()
        if len(answer) != 64:
            self.pool.failed(upstream, "health check: the upstream did not answer the challenge")
            return
        if upstream.public_key is not None:
            # Over TLS the node signs the certificate it presents too: the pin
            # that matched is that certificate's digest.
            message = (
                challenge_message(nonce)
                if upstream.tls_sha256 is None
                else tls_challenge_message(nonce, bytes.fromhex(upstream.tls_sha256))
            )
            try:
                public_key_from_text(upstream.public_key).verify(answer, message)
            except (InvalidSignature, ConfigError):
                self.pool.failed(upstream, "health check: not the node the directory names")
                return
        self.pool.succeeded(upstream, dialed.seconds)

    async def check_all(self) -> None:
        async with asyncio.TaskGroup() as group:
            for i, upstream in enumerate(self.pool.upstreams):
                group.create_task(self.check(upstream), name=f"health-{i}")

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        active = self.pool.active
        return {
            "version": __version__,
            "listen": str(self.bound[0]) if self.bound else None,
            "active": active.label if active else None,
            "switches": self.pool.switches,
            "connections_open": len(self.sessions),
            "dial_failures": self.dial_failures,
            "updated": int(time.time()),
            "network": self.ladder.network,
            "transports": [
                {"name": t.name, "usable": t.usable, "note": t.note or t.description}
                for t in TRANSPORTS
            ],
            "ladder": self.ladder.rows(self.pool.upstreams),
            "upstreams": [
                {
                    "upstream": u.label,
                    "available": h.available(now),
                    "consecutive_failures": h.consecutive_failures,
                    "resting_seconds": max(0.0, round(h.down_until - now, 1)),
                    "successes": h.successes,
                    "failures": h.failures,
                    "latency_ms": round(h.latency * 1000, 1) if h.latency is not None else None,
                    "last_error": h.last_error,
                }
                for u in self.pool.order(now)
                for h in (self.pool.health[u],)
            ],
        }


ASSIGN_REFRESH_SECONDS = 3600.0


def _assigned(settings: ConnectSettings) -> list[Upstream]:
    found: list[Upstream] = []
    for url in settings.assign:
        try:
            found += fetch_assigned(url, seconds=5.0, transport=settings.transport)
        except (DirectoryError, httpx.HTTPError) as exc:
            log.warning("assignment from %s failed: %s", url, exc)
    return found


def run_connect(settings: ConnectSettings, *, out: TextIO = sys.stdout) -> int:
    directory = DirectoryClient(settings.directory) if settings.directory else None
    sources = UpstreamSources(list(settings.upstreams), [], _assigned(settings))
    if directory is not None:
        try:
            verified = directory.refresh()
        except DirectoryError:
            if not sources.combined():
                raise
            log.warning("starting without the directory: %s", directory.last_error)
        else:
            sources.listed = upstreams_from(
                verified.document, country=directory.config.country, transport=settings.transport
            )
            log.info("directory serial %d: %d upstreams", verified.serial, len(sources.listed))
    if not sources.combined():
        raise ConfigError(
            "no upstream: give --upstream URL, or a --directory or --assign that lists some"
        )
    raise_nofile_limit()
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(_serve(settings, sources, directory, out))


async def _serve(
    settings: ConnectSettings,
    sources: UpstreamSources,
    directory: DirectoryClient | None,
    out: TextIO,
) -> int:
    loop = asyncio.get_running_loop()
    ladder = Ladder(settings.state_dir / LADDER_FILE, current_network(settings.network))
    node = ConnectNode(settings, loop=loop, ladder=ladder)
    node.pool.replace(sources.combined())
    await node.start()
    endpoint = node.bound[0]
    links = socks_links(
        endpoint.host,
        endpoint.port,
        *(next(iter(settings.users.items())) if settings.users else (None, None)),
    )
    count = len(node.pool.upstreams)
    over_tls = sum(1 for u in node.pool.upstreams if u.tls_sha256 is not None)
    out.write(
        f"resist connect {__version__}: {count} upstream{'s' if count != 1 else ''}"
        f"{f' ({over_tls} over TLS)' if over_tls else ''}\n"
        f"listening on socks5://{endpoint}\n"
        f"Telegram: {links.tg}\n"
        f"          {links.https}\n"
    )
    if settings.qr:
        out.write(qr_terminal(links.https))
    out.flush()
    status_path = settings.state_dir / STATUS_FILE

    async def health_loop() -> None:
        while True:
            await node.check_all()
            await asyncio.sleep(settings.check_interval)

    async def status_loop() -> None:
        while True:
            write_private(status_path, json.dumps(node.status(), indent=1))
            await asyncio.sleep(2.0)

    async def directory_loop(client: DirectoryClient) -> None:
        while True:
            await asyncio.sleep(client.next_refresh_in())
            try:
                verified = await asyncio.to_thread(client.refresh)
            except DirectoryError as exc:
                log.warning("directory refresh failed, keeping the current list: %s", exc)
                continue
            sources.listed = upstreams_from(
                verified.document, country=client.config.country, transport=settings.transport
            )
            node.pool.replace(sources.combined())

    async def assign_loop() -> None:
        while True:
            await asyncio.sleep(ASSIGN_REFRESH_SECONDS)
            fresh = await asyncio.to_thread(_assigned, settings)
            if fresh:  # a failed refresh keeps what the registry gave before
                sources.assigned = fresh
                node.pool.replace(sources.combined())

    tasks = [
        loop.create_task(health_loop(), name="connect-health"),
        loop.create_task(status_loop(), name="connect-status"),
    ]
    if directory is not None:
        tasks.append(loop.create_task(directory_loop(directory), name="connect-directory"))
    if settings.assign:
        tasks.append(loop.create_task(assign_loop(), name="connect-assign"))
    stopping: list[asyncio.Task[None]] = []

    def stop() -> None:
        if not stopping:
            stopping.append(loop.create_task(node.stop(), name="connect-stop"))

    loop.add_signal_handler(signal.SIGTERM, stop)
    loop.add_signal_handler(signal.SIGINT, stop)
    try:
        await node.stopped.wait()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0


def read_status(state_dir: Path) -> dict[str, Any]:
    path = state_dir / STATUS_FILE
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no status in {state_dir}: is `resist connect` running there?") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    return data
