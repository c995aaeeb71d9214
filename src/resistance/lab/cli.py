"""`resist lab`: build the censorship lab, tell its story, tear it down."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from resistance.clikit import CONTEXT, one_line_errors
from resistance.config import parse_endpoint
from resistance.lab import censor, netns
from resistance.lab import topology as topo
from resistance.lab.errors import LabError
from resistance.lab.world import Lab, require_root
from resistance.paths import resolve_state_dir

NAME = click.option(
    "--name",
    default="rlab",
    show_default=True,
    help="Lab name (namespaces are NAME-censored, NAME-censor, NAME-free).",
)
STATE = click.option(
    "--state-dir", type=click.Path(path_type=Path), help="Where the lab keeps its record and logs."
)


def _lab(name: str, state_dir: Path | None) -> Lab:
    try:
        topo.Topology(name)
    except ValueError as exc:
        raise LabError(str(exc)) from None
    return Lab.load(resolve_state_dir(state_dir) / "lab" / name, name)


@click.group(context_settings=CONTEXT)
def lab() -> None:
    """A censorship lab in network namespaces: a censored network, a censor, a free world.

    \b
    Root only.  Everything lives in 198.18.0.0/15 inside the lab's own
    namespaces; nothing touches the host's network.  Examples:
      sudo resist lab demo          the whole story, narrated, then torn down
      sudo resist lab up            build it and leave it running
      sudo resist lab block 198.18.10.1
      sudo ip netns exec rlab-censored curl --socks5-hostname 127.0.0.1:1080 ...
      sudo resist lab down          remove every namespace and process it made
    """


@lab.command(context_settings=CONTEXT)
@NAME
@STATE
@one_line_errors
def up(name: str, state_dir: Path | None) -> None:
    """Build the lab: namespaces, censor, data centre stand-in, registry and three nodes.

    \b
    Example:
      sudo resist lab up && sudo resist lab status
    """
    world = _lab(name, state_dir)
    world.up(say=click.echo)
    click.echo(f"lab {name} is up; record and logs in {world.dir}")


@lab.command(context_settings=CONTEXT)
@NAME
@STATE
@one_line_errors
def down(name: str, state_dir: Path | None) -> None:
    """Stop every process the lab started and delete its namespaces.

    \b
    Example:
      sudo resist lab down --name rlab
    """
    require_root()
    stopped, removed = _lab(name, state_dir).down()
    click.echo(f"lab {name} is down: {stopped} processes stopped, {removed} namespaces removed")


@lab.command(context_settings=CONTEXT)
@NAME
@STATE
@one_line_errors
def status(name: str, state_dir: Path | None) -> None:
    """What runs in the lab, and what the censor blocks.

    \b
    Example:
      sudo resist lab status
    """
    require_root()
    report = _lab(name, state_dir).status()
    console = Console()
    table = Table(title=f"lab {name}")
    for col in ("what", "where", "state"):
        table.add_column(col)
    for ns, present in report["namespaces"].items():
        table.add_row("namespace", ns, "present" if present else "absent")
    for p in report["processes"]:
        table.add_row(
            p["role"], p["namespace"], f"pid {p['pid']} {'running' if p['alive'] else 'gone'}"
        )
    c = report.get("censor")
    if c:
        state = c.get("error") or f"{c['dropped_packets']} packets dropped"
        table.add_row("censor", f"{name}-censor", state)
    console.print(table)


def _censor_of(name: str) -> str:
    """The censor namespace of a lab that is up."""
    require_root()
    try:
        censor_ns = topo.Topology(name).censor
    except ValueError as exc:
        raise LabError(str(exc)) from None
    if censor_ns not in netns.namespaces():
        raise LabError(f"lab {name} is not up (`resist lab up --name {name}` builds it)")
    return censor_ns


def _ranges(prefixes: tuple[str, ...], files: tuple[Path, ...]) -> list[tuple[int, int]]:
    ranges = censor.ranges_of(prefixes)
    for f in files:
        try:
            data = f.read_bytes()
        except OSError as exc:
            raise LabError(f"cannot read {f}: {exc.strerror}") from None
        found, count, skipped = censor.ranges_from_file(data, str(f))
        click.echo(f"{f}: {count} prefixes, {skipped} bad lines skipped")
        ranges += found
    if not ranges:
        raise click.UsageError("give addresses/prefixes or --file")
    return ranges


@lab.command(context_settings=CONTEXT)
@click.argument("prefixes", nargs=-1)
@click.option(
    "--file",
    "files",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="A blocklist in either format `resist registry import-blocklist` reads.",
)
@NAME
@one_line_errors
def block(prefixes: tuple[str, ...], files: tuple[Path, ...], name: str) -> None:
    """Make the censor drop traffic to and from addresses or prefixes.

    \b
    Examples:
      sudo resist lab block 198.18.10.1
      sudo resist lab block --file dump.csv      (Roskomnadzor's registry dump)
    """
    censor_ns = _censor_of(name)
    ranges = _ranges(prefixes, files)
    started = time.monotonic()
    merged = censor.block(censor_ns, ranges)
    took = time.monotonic() - started
    click.echo(f"blocked {len(ranges)} prefixes ({merged} ranges) in {took:.1f} s")


@lab.command(context_settings=CONTEXT)
@click.argument("prefixes", nargs=-1, required=True)
@NAME
@one_line_errors
def unblock(prefixes: tuple[str, ...], name: str) -> None:
    """Lift a block made with `resist lab block` (exactly as it was given).

    \b
    Example:
      sudo resist lab unblock 198.18.10.1
    """
    censor.unblock(_censor_of(name), censor.ranges_of(prefixes))
    click.echo(f"unblocked {len(prefixes)} prefixes")


@lab.command(context_settings=CONTEXT)
@NAME
@STATE
@click.option("--keep", is_flag=True, help="Leave the lab up afterwards.")
@one_line_errors
def demo(name: str, state_dir: Path | None, keep: bool) -> None:
    """Run the whole story with narration, then a table of what happened.

    Builds the lab, then: the data centre is blocked; volunteers register
    nodes and probes measure them; the user gets through with resist connect;
    the censor blocks the node in use and the user keeps getting through; the
    probes judge it blocked; a grant round pays the nodes and Electrum signs; a
    volunteer's MTProto proxy gets a Telegram-like client through.

    \b
    Example:
      sudo resist lab demo
    """
    from resistance.lab.story import Story

    world = _lab(name, state_dir)
    console = Console()

    def say(text: str) -> None:
        console.print(text, soft_wrap=True, highlight=False)

    started = time.monotonic()
    world.up(say=say)
    try:
        story = Story(world, say)
        story.run_all()
    finally:
        if not keep:
            stopped, removed = world.down()
            say(f"lab torn down: {stopped} processes stopped, {removed} namespaces removed")
    table = Table(title=f"the story in {time.monotonic() - started:.0f} s")
    for col in ("step", "what", "outcome"):
        table.add_column(col)
    for r in story.results:
        table.add_row(str(r.number), r.title, r.outcome)
    console.print(table)
    if keep:
        console.print(f"the lab is still up: `resist lab down --name {name}` removes it")


@lab.command(context_settings=CONTEXT, hidden=True)
@click.option("--listen", required=True, metavar="HOST:PORT")
@one_line_errors
def datacentre(listen: str) -> None:
    """Serve the data centre stand-in (the lab starts it inside the free network)."""
    from resistance.lab.datacentre import serve

    asyncio.run(serve(parse_endpoint(listen, what="listen address")))


@lab.command(context_settings=CONTEXT)
@click.argument("target")
@click.option("--within", type=float, default=5.0, show_default=True, help="Seconds per step.")
@one_line_errors
def telegram(target: str, within: float) -> None:
    """A Telegram-like client: ask a data centre for resPQ, directly or through a proxy.

    TARGET is a tg://proxy?... link (or https://t.me/proxy?..., mtproto://SECRET@HOST:PORT)
    to go through an MTProto proxy as the app does (fake-TLS or obfuscated2, then
    req_pq_multi), or HOST:PORT of a data centre to try directly.  No account is used.
    Exits 1 when no resPQ comes back.

    \b
    Examples:
      sudo ip netns exec rlab-censored resist lab telegram 198.18.100.1:443
      resist lab telegram 'tg://proxy?server=198.18.14.1&port=443&secret=ee...'
    """
    from resistance.lab.telegram import run_client

    ok, line = run_client(target, within=within)
    click.echo(line)
    if not ok:
        raise SystemExit(1)
