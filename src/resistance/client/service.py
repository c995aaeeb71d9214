"""`resist connect` as a process: a local SOCKS5 endpoint that outlives blocks.

The local listener is a :class:`~resistance.client.listener.ConnectNode`, a
node whose sessions forward through upstream proxies instead of dialing
destinations.  Beside
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
import signal
import sys
from pathlib import Path
from typing import Any, TextIO

import httpx

from resistance import __version__
from resistance.client.directory import (
    DirectoryClient,
    UpstreamSources,
    fetch_assigned,
    reach_hints,
    upstreams_from,
)
from resistance.client.ladder import LADDER_FILE, Ladder, current_network
from resistance.client.listener import ConnectNode, ConnectSettings
from resistance.client.upstreams import Upstream
from resistance.directory.document import DirectoryError
from resistance.errors import ConfigError
from resistance.links import qr_terminal, socks_links
from resistance.node.server import raise_nofile_limit
from resistance.node.service import new_event_loop
from resistance.paths import write_private

log = logging.getLogger("resistance.connect")

STATUS_FILE = "connect-status.json"
STATUS_SECONDS = 2.0
STATUS_POLL_SECONDS = 0.1

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
    if directory is not None and directory.current is not None:
        ladder.hint(reach_hints(directory.current.document, ladder.network))
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
        # Saved at once after a dial succeeds or fails (so `connect status` right after
        # a request shows it), else every STATUS_SECONDS for the ages and rest times.
        written, since = -1, 0.0
        while True:
            if node.pool.version != written or since >= STATUS_SECONDS:
                written, since = node.pool.version, 0.0
                write_private(status_path, json.dumps(node.status(), indent=1))
            await asyncio.sleep(STATUS_POLL_SECONDS)
            since += STATUS_POLL_SECONDS

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
            node.ladder.hint(reach_hints(verified.document, node.ladder.network))
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
