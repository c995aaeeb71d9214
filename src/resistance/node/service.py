"""One serving node process: prepared settings in, a node that serves until SIGTERM.

:func:`resistance.node.run.run_node` prepares what this needs once and runs
:func:`serve` itself or, with ``--workers``, in each worker of
:mod:`resistance.node.workers`; both import from here, nothing here imports
them.  Builds the user table (or the generated user), the egress policy and the
metrics endpoint from settings, prints where the node listens and the links
a user can tap, and wires the signals: SIGTERM and SIGINT drain and stop,
SIGHUP re-reads users and policy without touching established connections.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import quote

from resistance import __version__
from resistance.config import Endpoint, NodeSettings
from resistance.errors import ConfigError
from resistance.links import qr_terminal, socks_links
from resistance.net import native
from resistance.net.relay import HAS_SPLICE
from resistance.node.identity import probe_credential, public_key_text
from resistance.node.metrics import NodeMetrics, SummedMetrics
from resistance.node.policy import EgressPolicy
from resistance.node.server import Node, relay_kind
from resistance.node.tlscert import ensure_certificate
from resistance.node.users import GENERATED_USERS_FILE, UserDB, generated_user

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

log = logging.getLogger("resistance.node")


@dataclass(frozen=True, slots=True)
class Access:
    """Who may use the node, and the credentials to show in links."""

    users: UserDB | None
    link_user: str | None
    link_password: str | None
    generated: bool
    created: bool


def build_access(settings: NodeSettings, state_dir: Path) -> Access:
    """The user table: configured users (or the generated one) plus the probe user."""
    if settings.no_auth:
        return Access(None, None, None, False, False)
    probe_name, probe_password = probe_credential(state_dir)
    if settings.users:
        name, password = next(iter(settings.users.items()))
        users = {**settings.users, probe_name: probe_password}
        return Access(UserDB(users), name, password, False, False)
    name, password, created = generated_user(state_dir)
    users = {name: password, probe_name: probe_password}
    return Access(UserDB(users), name, password, True, created)


def build_policy(settings: NodeSettings) -> EgressPolicy:
    return EgressPolicy.from_options(
        allow=settings.allow,
        deny=settings.deny,
        allow_ports=settings.allow_ports or None,
        deny_ports=settings.deny_ports,
        only_presets=settings.only,
    )


def with_certificate(settings: NodeSettings, state_dir: Path) -> NodeSettings:
    """Settings whose TLS listener has a certificate: the generated one unless given."""
    if not settings.tls_listen or settings.tls_cert is not None:
        return settings
    cert, key, created = ensure_certificate(state_dir, common_name=settings.public_host)
    if created:
        log.info("made a self-signed TLS certificate in %s", cert)
    return dataclasses.replace(settings, tls_cert=cert, tls_key=key)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where installed (it is a dependency on Linux), else asyncio's loop.

    ``RESIST_EVENT_LOOP=asyncio`` picks asyncio's own loop (for comparison).
    """
    if os.environ.get("RESIST_EVENT_LOOP") == "asyncio":
        return asyncio.new_event_loop()
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


@dataclass(frozen=True, slots=True)
class Prepared:
    """What a node process needs before it serves, made once (workers share it)."""

    settings: NodeSettings
    load_settings: Callable[[], NodeSettings]
    """Reads the configuration again, for SIGHUP."""
    state_dir: Path
    access: Access
    policy: EgressPolicy
    identity: Ed25519PrivateKey
    nofile: int
    """The descriptor limit in force."""
    out: TextIO


async def serve(
    prepared: Prepared,
    *,
    sockets: tuple[list[socket.socket], list[socket.socket]] | None = None,
    mtproto_sockets: list[socket.socket] | None = None,
    worker: tuple[int, int] | None = None,
    signals_ready: Callable[[], object] | None = None,
    metrics_channel: socket.socket | None = None,
) -> int:
    """Serve until stopped; a worker of ``--workers`` gets its ``sockets``, prints
    no banner (its supervisor does), calls ``signals_ready`` once its signal
    handlers are in place (it starts with the signals blocked) and answers each
    byte on ``metrics_channel`` with a JSON line of its metrics."""
    settings, access, state_dir = prepared.settings, prepared.access, prepared.state_dir
    identity = prepared.identity
    loop = asyncio.get_running_loop()
    metrics = NodeMetrics()
    upstream: Any = None
    if settings.upstream:
        from resistance.node.upstream import upstream_network  # only a bridge needs TLS dialing

        upstream = upstream_network(settings.upstream, loop, warm=settings.upstream_warm)
    node = Node(
        settings,
        users=access.users,
        policy=prepared.policy,
        metrics=metrics,
        loop=loop,
        identity=identity if access.users is not None else None,
        sockets=sockets,
        net=upstream,
    )
    await node.start()
    mtproto = await start_mtproto(
        prepared,
        metrics,
        node,
        mtproto_sockets,
        worker,
        upstream.open_transport if upstream else None,
    )
    metrics_server: Any = None
    if metrics_channel is not None:
        _answer_metrics(loop, metrics_channel, metrics)
    try:
        if settings.metrics is not None:
            metrics_server = start_metrics(metrics, settings.metrics)
        if sockets is None:
            print_banner(
                settings,
                Listening(relay_kind(settings), node.bound, node.tls_bound, node.tls_sha256),
                access,
                state_dir,
                prepared.nofile,
                prepared.out,
            )
            if mtproto is not None:
                from resistance.node.mtproto import banner_lines

                prepared.out.write("\n".join(banner_lines(mtproto, settings)) + "\n")
                prepared.out.flush()
            log.debug("node identity %s", public_key_text(identity))
        if access.users is None:
            log.warning("without authentication the node cannot prove its identity to a registry")
    except BaseException:
        await node.stop()
        if mtproto is not None:
            await mtproto.stop()
        raise

    stopping: list[asyncio.Task[None]] = []

    def stop() -> None:
        if not stopping:
            log.info(
                "stopping: draining connections for up to %.0f s", settings.limits.drain_timeout
            )
            stopping.append(loop.create_task(node.stop(), name="node-stop"))
            if upstream is not None:
                upstream.close()
            if mtproto is not None:
                stopping.append(loop.create_task(mtproto.stop(), name="mtproto-stop"))

    def reload() -> None:
        try:
            fresh = prepared.load_settings()
            fresh_access = build_access(fresh, state_dir)
            fresh_policy = build_policy(fresh)
        except ConfigError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            return
        node.reload(users=fresh_access.users, policy=fresh_policy)
        if upstream is not None:
            try:
                upstream.reload(fresh.upstream)
            except ConfigError as exc:
                log.error("upstream reload failed, keeping the running list: %s", exc)
        elif fresh.upstream:
            log.error("--upstream: a node becomes a bridge at start only; restart it")
        if mtproto is not None and fresh.mtproto is not None:
            try:
                mtproto.reload(fresh.mtproto)
            except ConfigError as exc:
                log.error("MTProto reload failed, keeping its users: %s", exc)
        log.info("reloaded users and policy")

    loop.add_signal_handler(signal.SIGTERM, stop)
    loop.add_signal_handler(signal.SIGINT, stop)
    loop.add_signal_handler(signal.SIGHUP, reload)
    if signals_ready is not None:
        signals_ready()
    try:
        await node.stopped.wait()
        if stopping:
            await asyncio.gather(*stopping)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
    log.info("stopped")
    return 0


def _answer_metrics(
    loop: asyncio.AbstractEventLoop, channel: socket.socket, metrics: NodeMetrics
) -> None:
    """Answer the supervisor's scrapes: a byte in, a JSON line of this worker's numbers out."""
    channel.settimeout(2.0)  # a snapshot is small; the supervisor reads it at once

    def answer() -> None:
        try:
            asks = channel.recv(64)
            if not asks:
                loop.remove_reader(channel.fileno())  # the supervisor is gone
                return
            line = (json.dumps(metrics.snapshot(), separators=(",", ":")) + "\n").encode()
            channel.sendall(line * len(asks))
        except OSError as exc:
            log.warning("cannot answer the supervisor's metrics request: %s", exc)
            loop.remove_reader(channel.fileno())

    loop.add_reader(channel.fileno(), answer)


def start_metrics(metrics: NodeMetrics | SummedMetrics, endpoint: Endpoint) -> Any:
    from prometheus_client import start_http_server

    try:
        server, _thread = start_http_server(endpoint.port, endpoint.host, registry=metrics.registry)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {endpoint}: {exc.strerror}") from None
    return server


@dataclass(frozen=True, slots=True)
class Listening:
    """Where a node (or its workers) listens, for the banner."""

    relay: str
    bound: list[Endpoint]
    tls_bound: list[Endpoint]
    tls_sha256: str | None


def print_banner(
    settings: NodeSettings,
    listening: Listening,
    access: Access,
    state_dir: Path,
    nofile: int,
    out: TextIO,
) -> None:
    if access.users is None:
        auth = "NO AUTHENTICATION (--no-auth)"
    else:
        shown = len(access.users) - 1  # the probe user is the node's own
        auth = f"{shown} user{'s' if shown != 1 else ''}"
    workers = f", {settings.workers} workers" if settings.workers > 1 else ""
    lines = [
        f"resist node {__version__} ({listening.relay} relay, {auth}, fd limit {nofile}{workers})"
    ]
    for endpoint in listening.bound:
        lines.append(f"listening on socks5://{endpoint}")
    for endpoint in listening.tls_bound:
        lines.append(f"listening on socks5s://{endpoint} (TLS)")
    if listening.tls_bound:
        lines.append(f"TLS certificate sha256 {listening.tls_sha256} (clients pin this)")
        lines.append(_tls_link_line(settings, listening, access))
    if settings.metrics is not None:
        lines.append(f"metrics on http://{settings.metrics}/metrics")
    if settings.upstream:
        lines.append(
            f"bridge: everything goes through {len(settings.upstream)} upstream transport"
            f"{'s' if len(settings.upstream) != 1 else ''} to the exit (UDP and BIND refused)"
        )
    password = shown_password(settings, access)
    if access.generated and (listening.bound or listening.tls_bound):
        how = "new" if access.created else "kept"
        lines.append(
            f"user {access.link_user} password {password} "
            f"({how}, in {state_dir / GENERATED_USERS_FILE})"
        )
    if listening.bound:
        first = listening.bound[0]
        host = settings.public_host or first.host
        if not settings.public_host and host in ("0.0.0.0", "::"):
            lines.append("links: set --public-host to the address users reach this node at")
        else:
            links = socks_links(host, first.port, access.link_user, password)
            encoded = quote(PASSWORD_MASK, safe="")  # the mask shown as itself, not %2A...
            lines.append(f"Telegram: {links.tg.replace(encoded, PASSWORD_MASK)}")
            lines.append(f"          {links.https.replace(encoded, PASSWORD_MASK)}")
            if settings.qr and not settings.hide_passwords:  # a QR code would carry it
                lines.append(qr_terminal(links.https).rstrip("\n"))
    if settings.hide_passwords and access.link_password is not None:
        lines.append(f"passwords masked ({PASSWORD_MASK}, --hide-passwords)")
    # Warnings first: whoever waits for the banner then sees them too.
    if not HAS_SPLICE and settings.relay == "auto":
        log.warning("os.splice is not available: relaying by copying")
    elif listening.relay == "splice" and not native.NATIVE:
        log.warning("splicing from Python, not C: %s", native.UNAVAILABLE_BECAUSE)
    out.write("\n".join(lines) + "\n")
    out.flush()


#: What the banner shows for a password under ``--hide-passwords``.
PASSWORD_MASK = "********"


def shown_password(settings: NodeSettings, access: Access) -> str | None:
    """The first user's password as the banner prints it: masked under
    ``--hide-passwords`` (an exit whose output goes to a log: its first user is a
    bridge's hop credential)."""
    if settings.hide_passwords and access.link_password is not None:
        return PASSWORD_MASK
    return access.link_password


def _tls_link_line(settings: NodeSettings, listening: Listening, access: Access) -> str:
    """The socks5s:// URL for `resist connect --upstream` (Telegram cannot use TLS)."""
    host = settings.public_host or listening.tls_bound[0].host
    if host in ("0.0.0.0", "::"):
        return "socks5s link: set --public-host to the address users reach this node at"
    shown = f"[{host}]" if ":" in host else host
    userinfo = ""
    password = shown_password(settings, access)
    if access.link_user is not None and password is not None:
        userinfo = f"{quote(access.link_user, safe='')}:{quote(password, safe='*')}@"
    tls = listening.tls_bound[0]
    url = f"socks5s://{userinfo}{shown}:{tls.port}#sha256={listening.tls_sha256}"
    return f"resist connect --upstream '{url}'"


async def start_mtproto(
    prepared: Prepared,
    metrics: NodeMetrics,
    node: Node,
    sockets: list[socket.socket] | None = None,
    worker: tuple[int, int] | None = None,
    open_connection: Callable[..., Any] | None = None,
) -> Any:
    """The MTProto listener beside the SOCKS5 node, when ``--mtproto-listen`` asks for one
    (a worker of ``--workers`` gets its listening ``sockets`` from the supervisor;
    a bridge's ``open_connection`` dials data centres through its exit)."""
    mt = prepared.settings.mtproto
    if mt is None or not mt.listen:
        return None
    from resistance.node.mtproto import MTProtoServer

    server = MTProtoServer(
        mt,
        prepared.settings.limits,
        state_dir=prepared.state_dir,
        metrics=metrics,
        worker=worker,
        open_connection=open_connection,
    )
    try:
        await server.start(sockets)
    except BaseException:
        await node.stop()
        raise
    return server
