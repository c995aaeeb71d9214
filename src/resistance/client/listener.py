"""The local listener of `resist connect`: a node whose sessions go through upstreams.

:class:`ConnectNode` is a :class:`~resistance.node.server.Node` serving
:class:`~resistance.client.session.ClientSession`; the sessions see it only as
the :class:`~resistance.client.session.ConnectHost` they forward through, so they
do not import this module.  It also runs the health check of one upstream (the
node challenge) and reports the status that :mod:`resistance.client.service`
writes for ``resist connect status``.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resistance import __version__
from resistance.client.dial import DialError, dial, read_at_least
from resistance.client.freeze import bulk_through
from resistance.client.ladder import LADDER_FILE, TRANSPORTS, Ladder, current_network
from resistance.client.session import ClientSession
from resistance.client.upstreams import Upstream, UpstreamPool
from resistance.config import Endpoint, NodeLimits, NodeSettings
from resistance.errors import ConfigError
from resistance.net.mtproto import ask_res_pq
from resistance.node.identity import (
    challenge_name,
    public_key_from_text,
    verify_challenge,
)
from resistance.node.metrics import NodeMetrics
from resistance.node.policy import EgressPolicy, Network
from resistance.node.server import Node
from resistance.node.users import UserDB
from resistance.proto.socks5 import Address, Command

if TYPE_CHECKING:
    from resistance.client.directory import DirectoryConfig
    from resistance.client.session import ConnectHost


@dataclass(frozen=True, slots=True)
class ConnectSettings:
    listen: Endpoint = field(default_factory=lambda: Endpoint("127.0.0.1", 1090))
    upstreams: tuple[Upstream, ...] = ()
    users: dict[str, str] | None = None
    check_interval: float = 30.0
    dial_timeout: float = 8.0
    #: An application's connection gets an upstream or a SOCKS5 error within this
    #: many seconds, trying as many upstreams as fit (see :mod:`..failover`).
    failover_budget: float = 5.0
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
    #: A canary to download from through each upstream at every health check, so a
    #: flow that freezes partway is seen (see :mod:`resistance.client.freeze`).
    freeze_check: Endpoint | None = None
    #: Seconds without a byte before the end of that download that count as a freeze.
    freeze_stall: float = 3.0
    #: Networks whose CONNECTs count as Telegram data centres besides the published
    #: ranges (the lab's and tests' DC stand-ins), for the MTProto rung.
    telegram_ranges: tuple[Network, ...] = ()
    #: Lab data-centre addresses (``--telegram-dc N=IP``): each counts as Telegram's
    #: and gives the DC index to inits that leave it out.
    telegram_dcs: dict[str, int] = field(default_factory=dict)


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
        self.ladder = ladder or Ladder(
            settings.state_dir / LADDER_FILE, current_network(settings.network)
        )
        self.pool = UpstreamPool(
            settings.upstreams, prefer_tls=settings.transport != "plain", ladder=self.ladder
        )
        self.dial_timeout = settings.dial_timeout
        self.failover_budget = settings.failover_budget
        self.race_after = settings.race_after
        self.dial_failures = 0
        self.telegram_ranges = settings.telegram_ranges
        self.telegram_dcs = settings.telegram_dcs

    async def check(self, upstream: Upstream) -> None:
        """One health check: the node challenge through ``upstream``."""
        secret = upstream.mtproto
        if secret is not None:  # an MTProto proxy: a resPQ from DC 2 through it
            res_pq = await ask_res_pq(
                upstream.host, upstream.port, secret, within=self.dial_timeout
            )
            if res_pq.ok:
                self.pool.succeeded(upstream, (res_pq.tcp_us or 0) / 1e6)
            else:
                self.pool.failed(upstream, f"health check: {res_pq.reason}")
            return
        nonce = os.urandom(16)
        address = Address.from_host(challenge_name(nonce), 0)
        try:
            dialed = await dial(upstream, Command.CONNECT, address, seconds=self.dial_timeout)
        except DialError as exc:
            self.pool.failed(upstream, str(exc), lying=exc.identity)
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
            pin = None if upstream.tls_sha256 is None else bytes.fromhex(upstream.tls_sha256)
            try:
                key = public_key_from_text(upstream.public_key)
            except ConfigError:
                key = None
            if key is None or not verify_challenge(key, nonce, answer, cert_sha256=pin):
                self.pool.failed(
                    upstream, "health check: not the node the directory names", lying=True
                )
                return
        source = self.connect_settings.freeze_check
        if source is not None:
            bulk = await bulk_through(upstream, source, stall=self.connect_settings.freeze_stall)
            if bulk.frozen:
                self.pool.failed(
                    upstream, f"frozen: a download stopped after {bulk.received} bytes"
                )
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
                    "resting_seconds": max(
                        0.0, round(max(h.down_until, h.sidelined_until) - now, 1)
                    ),
                    "failed_identity_checks": h.lies,
                    "successes": h.successes,
                    "failures": h.failures,
                    "latency_ms": round(h.latency * 1000, 1) if h.latency is not None else None,
                    "last_error": h.last_error,
                }
                for u in self.pool.order(now)
                for h in (self.pool.health[u],)
            ],
        }


if TYPE_CHECKING:

    def _hosts_sessions(node: ConnectNode) -> ConnectHost:
        return node  # mypy checks that the listener is what its sessions expect


__all__ = ["ConnectNode", "ConnectSettings"]
