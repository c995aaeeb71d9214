"""`resist connect`: the command line of the user's local SOCKS5 endpoint."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from resistance.clikit import CONTEXT, one_line_errors, setup_logging


@click.group(context_settings=CONTEXT, invoke_without_command=True)
@click.option(
    "--listen",
    default="127.0.0.1:1090",
    show_default=True,
    metavar="HOST:PORT",
    help="Where applications connect (1090: beside a node on its default 1080).",
)
@click.option(
    "--upstream",
    "upstreams",
    multiple=True,
    metavar="URL",
    help="socks5://USER:PASS@HOST:PORT of a node, socks5s://…#sha256=PIN, or an MTProto "
    "proxy link (tg://proxy?…, mtproto://SECRET@HOST:PORT: carries Telegram's DC "
    "connections only); repeatable, tried in turn.",
)
@click.option(
    "--directory",
    "directories",
    multiple=True,
    metavar="URL_OR_FILE",
    help="A signed directory (mirrors: repeat; tried in turn).",
)
@click.option("--trust", multiple=True, metavar="KEY", help="A trusted directory key (or file).")
@click.option(
    "--assign",
    multiple=True,
    metavar="URL",
    help="A registry's /api/v1/proxies/assign: a few non-public proxies for your network.",
)
@click.option("--qr", is_flag=True, help="Print a QR code of the Telegram link.")
@click.option("--threshold", default=1, show_default=True, type=click.IntRange(1))
@click.option(
    "--country",
    metavar="CC",
    help="Where you are: proxies blocked only elsewhere stay usable (default: skip all blocked).",
)
@click.option(
    "--transport",
    type=click.Choice(["auto", "tls", "plain"]),
    default="auto",
    show_default=True,
    help="For directory and --assign nodes with a TLS listener: auto uses TLS first (a "
    "censor's DPI then sees TLS, not a SOCKS5 handshake with its password) and keeps "
    "the plain port as fallback and for UDP; tls never uses plain ports (nodes without "
    "TLS are skipped, UDP has no upstream); plain ignores TLS listeners.",
)
@click.option("--user", "users", multiple=True, metavar="NAME:PASSWORD", help="Local users.")
@click.option("--check-interval", default=30.0, show_default=True, metavar="S")
@click.option("--dial-timeout", default=8.0, show_default=True, metavar="S")
@click.option(
    "--failover-budget",
    default=5.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    metavar="S",
    help="An application's connection gets a working upstream or a SOCKS5 error within S "
    "seconds, trying as many upstreams as fit (failed fastest first).",
)
@click.option(
    "--race-after",
    default=1.0,
    show_default=True,
    metavar="S",
    help="Try the next upstream alongside a dial still unanswered after S seconds (0: never).",
)
@click.option(
    "--network",
    metavar="NAME",
    help="The network you are in, for what the client learns gets through here "
    "(default: named from the default route's gateway). Named as a probe vantage, the "
    "directory's reach for it orders what the client has not tried yet.",
)
@click.option(
    "--freeze-check",
    metavar="HOST:PORT",
    help="A registry's canary: each health check downloads 64 KiB from it through every "
    "upstream, and a download that stops partway (a censor's freeze) takes that "
    "transport out of use.",
)
@click.option(
    "--telegram-range",
    "telegram_ranges",
    multiple=True,
    metavar="CIDR",
    help="Count this network as Telegram's data centres too (lab stand-ins), for the "
    "MTProto rung; the published ranges always count.",
)
@click.option(
    "--telegram-dc",
    "telegram_dcs",
    multiple=True,
    metavar="N=IP",
    help="A lab data centre: this address counts as Telegram's DC N (for apps whose "
    "init leaves the DC index out); the published DC addresses are known already.",
)
@click.option("--state-dir", type=click.Path(path_type=Path), help="Where status and caches live.")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.pass_context
@one_line_errors
def connect(
    ctx: click.Context,
    listen: str,
    upstreams: tuple[str, ...],
    directories: tuple[str, ...],
    trust: tuple[str, ...],
    assign: tuple[str, ...],
    qr: bool,
    threshold: int,
    country: str | None,
    transport: str,
    users: tuple[str, ...],
    check_interval: float,
    dial_timeout: float,
    failover_budget: float,
    race_after: float,
    network: str | None,
    freeze_check: str | None,
    telegram_ranges: tuple[str, ...],
    telegram_dcs: tuple[str, ...],
    state_dir: Path | None,
    verbose: int,
) -> None:
    """A local SOCKS5 proxy that keeps working while upstream proxies get blocked.

    Point Telegram or a browser at it once; each connection goes through the
    best working upstream, and a failed dial is retried on the next one
    before the application sees an error.

    \b
    Examples:
      resist connect --directory https://mirror.example/directory.json --trust KEY
      resist connect --upstream socks5://alice:s3cret@203.0.113.7:1080 \\
                     --upstream socks5://bob:0ther@198.51.100.9:1080
      resist connect --upstream 'socks5s://alice:s3cret@203.0.113.7:443#sha256=PIN'
      resist connect --directory https://mirror.example/directory.json --trust KEY \\
                     --failover-budget 3
      resist connect --upstream 'tg://proxy?server=203.0.113.7&port=443&secret=ee…' \\
                     --upstream socks5://alice:s3cret@203.0.113.7:1080
      resist connect status
    """
    if ctx.invoked_subcommand is not None:
        return
    from resistance.client.directory import DirectoryConfig
    from resistance.client.listener import ConnectSettings
    from resistance.client.service import run_connect
    from resistance.client.upstreams import Upstream
    from resistance.config import parse_endpoint, parse_user
    from resistance.directory.keys import trusted_key
    from resistance.node.policy import load_networks
    from resistance.paths import resolve_state_dir

    setup_logging(verbose + 1)
    state = resolve_state_dir(state_dir)
    directory = None
    if directories:
        directory = DirectoryConfig(
            sources=directories,
            trusted=tuple(trusted_key(k) for k in trust),
            threshold=threshold,
            state_dir=state,
            country=country,
        )
    elif trust:
        raise click.UsageError("--trust goes with --directory")
    settings = ConnectSettings(
        listen=parse_endpoint(listen, what="listen address"),
        upstreams=tuple(Upstream.from_url(u) for u in upstreams),
        users=dict(parse_user(u) for u in users) or None,
        check_interval=check_interval,
        dial_timeout=dial_timeout,
        failover_budget=failover_budget,
        race_after=race_after or None,
        state_dir=state,
        directory=directory,
        assign=assign,
        qr=qr,
        transport=transport,
        network=network,
        freeze_check=parse_endpoint(freeze_check, what="canary") if freeze_check else None,
        telegram_ranges=tuple(load_networks("\n".join(telegram_ranges), source="--telegram-range"))
        if telegram_ranges
        else (),
        telegram_dcs=dict(_lab_dc(text) for text in telegram_dcs),
    )
    sys.exit(run_connect(settings))


def _lab_dc(text: str) -> tuple[str, int]:
    import ipaddress

    index, _, host = text.partition("=")
    try:
        dc = int(index)
        ip = str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: expected N=IP, e.g. 2=127.0.0.1", param_hint="--telegram-dc"
        ) from None
    if dc == 0 or abs(dc) > 10_005:
        raise click.BadParameter(f"{text!r}: DC index 1-5 (or 10001-10005, negative for media)")
    return ip, dc


@connect.command("status", context_settings=CONTEXT)
@click.option("--state-dir", type=click.Path(path_type=Path), help="The client's state directory.")
@one_line_errors
def connect_status(state_dir: Path | None) -> None:
    """Show which upstream is in use, how each one is doing, and the ladder: per
    transport of each node, whether it got through in this network (no destinations).

    \b
    Example:
      resist connect status
    """
    from rich.console import Console
    from rich.table import Table

    from resistance.client.service import read_status
    from resistance.paths import resolve_state_dir

    status = read_status(resolve_state_dir(state_dir))
    console = Console()
    console.print(
        f"listening on {status['listen']}, active upstream: {status['active'] or 'none yet'}"
    )
    console.print(f"{status['connections_open']} connections open, {status['switches']} switches")
    # Narrow columns so the table reads at 80 columns; only the error wraps.
    table = Table("upstream", "state", "ms", "ok", "failed", "last error")
    for column in table.columns[:-1]:
        column.no_wrap = True
    for row in status["upstreams"]:
        if not row["available"] and row.get("failed_identity_checks"):
            state = f"sidelined {row['resting_seconds']} s (failed its identity check)"
        elif not row["available"]:
            state = f"resting {row['resting_seconds']} s"
        elif row.get("consecutive_failures"):
            state = "retry due"
        else:
            state = "up" if row["successes"] else "untested"
        latency = "—" if row["latency_ms"] is None else f"{row['latency_ms']:.1f}"
        table.add_row(
            row["upstream"],
            state,
            latency,
            str(row["successes"]),
            str(row["failures"]),
            row["last_error"],
        )
    console.print(table)
    if "ladder" in status:
        _print_ladder(console, status)


def _print_ladder(console: Any, status: dict[str, Any]) -> None:
    from rich.table import Table

    rungs = ", ".join(
        t["name"] + ("" if t["usable"] else " (slot, not usable yet)") for t in status["transports"]
    )
    console.print(f"ladder in network {status['network']}: {rungs}")
    # The errors go under the table, so its columns fit in 80 characters.
    table = Table("#", "upstream", "transport", "here", "probes", "worked", "failed")
    errors = []
    for i, row in enumerate(status["ladder"], 1):
        table.add_row(
            str(i),
            row["upstream"],
            row["transport"],
            row["state"],
            row.get("probes") or "—",
            "—" if row["ok_ago"] is None else f"{row['ok_ago']:.0f} s ago",
            "—" if row["fail_ago"] is None else f"{row['fail_ago']:.0f} s ago",
        )
        if row["error"]:
            errors.append(f"#{i} last error: {row['error']}")
    console.print(table)
    for line in errors:
        console.print(line)
