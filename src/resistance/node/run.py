"""`resist node` as a process: settings in, a serving node out, until SIGTERM.

Prepares once what every serving process needs (users, policy, identity key,
TLS certificate, descriptor limit), then serves in this process or, with
``--workers``, supervises that many.  Sits above both :mod:`.service` (one
serving process) and :mod:`.workers` (the supervisor), so neither imports the
other's caller.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import TextIO

from resistance.config import NodeSettings
from resistance.node.identity import load_or_create_identity
from resistance.node.server import raise_nofile_limit
from resistance.node.service import (
    Prepared,
    build_access,
    build_policy,
    new_event_loop,
    serve,
    with_certificate,
)
from resistance.paths import resolve_state_dir


def run_node(load_settings: Callable[[], NodeSettings], *, out: TextIO = sys.stdout) -> int:
    """Run a node until SIGTERM/SIGINT; return the exit status."""
    settings = load_settings()
    state_dir = resolve_state_dir(settings.state_dir)
    access = build_access(settings, state_dir)
    policy = build_policy(settings)
    identity = load_or_create_identity(state_dir)
    settings = with_certificate(settings, state_dir)
    nofile = raise_nofile_limit()
    prepared = Prepared(settings, load_settings, state_dir, access, policy, identity, nofile, out)
    if settings.workers > 1:
        from resistance.node.workers import Workers  # threads and ctypes: only when asked

        return Workers(prepared).run()
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(serve(prepared))
