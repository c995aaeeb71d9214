"""The `resist` command line: parsing, help and one-line errors, nothing else."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from resistance import __version__
from resistance.clikit import CONTEXT, one_line_errors

__all__ = ["CONTEXT", "main", "one_line_errors"]


def setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose == 1 else logging.WARNING
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("resistance").setLevel(max(level, logging.INFO) if verbose else level)


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, package_name="resistance")
def main() -> None:
    """Digital Resistance: proxies through censorship, measured and paid in Bitcoin.

    \b
    Examples:
      resist node --listen 0.0.0.0:1080 --public-host 203.0.113.7 --qr
      resist link socks5://alice:secret@203.0.113.7:1080
    """


@main.command(context_settings=CONTEXT)
@click.option(
    "--listen",
    "listen",
    multiple=True,
    metavar="HOST:PORT",
    help="Plain SOCKS5 listener; repeatable; [::1]:1080 for IPv6. [default: 127.0.0.1:1080]",
)
@click.option("--user", "users", multiple=True, metavar="NAME:PASSWORD", help="A user; repeatable.")
@click.option("--no-auth", is_flag=True, default=None, help="Serve without authentication.")
@click.option("--allow", multiple=True, metavar="CIDR", help="Allow a destination range.")
@click.option("--deny", multiple=True, metavar="CIDR", help="Refuse a destination range.")
@click.option("--allow-port", "allow_ports", multiple=True, metavar="PORT[-PORT]")
@click.option(
    "--deny-port",
    "deny_ports",
    multiple=True,
    metavar="PORT[-PORT]",
    help="Refuse destination ports too (25 is always refused from the command line).",
)
@click.option(
    "--only",
    multiple=True,
    type=click.Choice(["telegram"]),
    help="Restrict destinations to a preset (Telegram's published ranges).",
)
@click.option("--metrics", metavar="HOST:PORT", help="Serve Prometheus metrics here.")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="TOML file.")
@click.option(
    "--tls-cert",
    type=click.Path(path_type=Path),
    help="Certificate (PEM) for TLS [default: a self-signed one made once in the state dir].",
)
@click.option("--tls-key", type=click.Path(path_type=Path), help="Key (PEM) for TLS.")
@click.option(
    "--tls-listen",
    multiple=True,
    metavar="HOST:PORT",
    help="SOCKS5-inside-TLS listener (for resist connect; clients pin the certificate's "
    "SHA-256, which the banner prints).",
)
@click.option("--public-host", metavar="HOST", help="Address users reach the node at (links).")
@click.option("--qr", is_flag=True, default=None, help="Print a QR code of the Telegram link.")
@click.option("--log-destinations", is_flag=True, default=None, help="Log each destination.")
@click.option("--no-udp", is_flag=True, default=None, help="Refuse UDP ASSOCIATE.")
@click.option("--no-bind", is_flag=True, default=None, help="Refuse BIND.")
@click.option("--relay", type=click.Choice(["auto", "splice", "copy"]), help="Relay method.")
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    metavar="N",
    help="Serve from N processes sharing the port (SO_REUSEPORT): more cores, and a "
    "descriptor limit each; connection limits are split between them, metrics are "
    "summed [default: 1].",
)
@click.option("--max-connections", type=click.IntRange(1), help="All clients at once.")
@click.option("--max-connections-per-ip", type=click.IntRange(1), help="Per client address.")
@click.option("--handshake-timeout", type=click.FloatRange(min=0, min_open=True), metavar="S")
@click.option("--connect-timeout", type=click.FloatRange(min=0, min_open=True), metavar="S")
@click.option("--idle-timeout", type=click.FloatRange(min=0, min_open=True), metavar="S")
@click.option("--drain-timeout", type=click.FloatRange(min=0, min_open=True), metavar="S")
@click.option("--state-dir", type=click.Path(path_type=Path), help="Where keys and state live.")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@one_line_errors
def node(
    config_file: Path | None,
    verbose: int,
    users: tuple[str, ...],
    no_udp: bool | None,
    no_bind: bool | None,
    **options: Any,
) -> None:
    """Run a SOCKS5 proxy node that volunteers can safely expose.

    Refuses private and reserved destinations (loopback, RFC 1918, link-local,
    cloud metadata, CGNAT, their IPv6 forms) and SMTP unless allowed, logs no
    client address or destination, and prints the Telegram links for its
    first user.  Without --user it generates one and keeps it in the state
    directory.  SIGHUP reloads users and policy; SIGTERM drains and stops.

    \b
    Examples:
      resist node --listen 0.0.0.0:1080 --public-host 203.0.113.7 --qr
      resist node --listen [::1]:1080 --user alice:s3cret --only telegram
      resist node --config /etc/resist/node.toml --metrics 127.0.0.1:9108
      resist node --listen 0.0.0.0:1080 --tls-listen 0.0.0.0:443 --public-host 203.0.113.7
      resist node --listen 0.0.0.0:1080 --workers 2 --public-host 203.0.113.7
    """
    from resistance.config import node_settings, parse_user
    from resistance.node.service import run_node

    setup_logging(verbose + 1)
    overrides: dict[str, Any] = dict(options)
    overrides["users"] = dict(parse_user(u) for u in users) if users else None
    overrides["udp"] = False if no_udp else None
    overrides["bind"] = False if no_bind else None
    overrides["listen"] = list(options["listen"]) or None
    overrides["tls_listen"] = list(options["tls_listen"]) or None
    for key in ("allow", "deny", "allow_ports", "only"):
        overrides[key] = list(options[key]) or None
    # Extra denied ports add to SMTP's; the config file can set deny_ports = [] to allow it.
    overrides["deny_ports"] = ["25", *options["deny_ports"]] if options["deny_ports"] else None
    if options["metrics"] is None:
        overrides.pop("metrics")
    for key in ("tls_cert", "tls_key", "state_dir"):
        if options[key] is not None:
            overrides[key] = str(options[key])

    def load() -> Any:
        return node_settings(config_file=config_file, overrides=overrides)

    sys.exit(run_node(load))


@main.command(context_settings=CONTEXT)
@click.argument("proxy_url")
@click.option("--qr", "qr", is_flag=True, help="Also draw a QR code in the terminal.")
@click.option(
    "--qr-file", type=click.Path(path_type=Path), help="Write the QR code (.png or .svg)."
)
@one_line_errors
def link(proxy_url: str, qr: bool, qr_file: Path | None) -> None:
    """Print Telegram's links (and a QR code) for a SOCKS5 proxy.

    \b
    Example:
      resist link socks5://alice:s3cret@203.0.113.7:1080 --qr
    """
    from resistance.links import parse_socks_url, qr_save, qr_terminal, socks_links

    proxy = parse_socks_url(proxy_url)
    links = socks_links(proxy.host, proxy.port, proxy.username, proxy.password)
    click.echo(links.tg)
    click.echo(links.https)
    if qr:
        click.echo(qr_terminal(links.https), nl=False)
    if qr_file is not None:
        qr_save(links.https, str(qr_file))
        click.echo(f"QR code written to {qr_file}")


@main.group(context_settings=CONTEXT, invoke_without_command=True)
@click.option("--listen", default="127.0.0.1:1080", show_default=True, metavar="HOST:PORT")
@click.option(
    "--upstream",
    "upstreams",
    multiple=True,
    metavar="URL",
    help="socks5://USER:PASS@HOST:PORT of a node; repeatable, tried in turn.",
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
    "--race-after",
    default=1.0,
    show_default=True,
    metavar="S",
    help="Try the next upstream alongside a dial still unanswered after S seconds (0: never).",
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
    race_after: float,
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
      resist connect status
    """
    if ctx.invoked_subcommand is not None:
        return
    from resistance.client.directory import DirectoryConfig
    from resistance.client.service import ConnectSettings, run_connect
    from resistance.client.upstreams import Upstream
    from resistance.config import parse_endpoint, parse_user
    from resistance.directory.keys import trusted_key
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
        race_after=race_after or None,
        state_dir=state,
        directory=directory,
        assign=assign,
        qr=qr,
        transport=transport,
    )
    sys.exit(run_connect(settings))


@connect.command("status", context_settings=CONTEXT)
@click.option("--state-dir", type=click.Path(path_type=Path), help="The client's state directory.")
@one_line_errors
def connect_status(state_dir: Path | None) -> None:
    """Show which upstream is in use and how each one is doing (no destinations).

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
        f"listening on {status['listen']}, active upstream: {status['active'] or 'none yet'}, "
        f"{status['connections_open']} connections open, {status['switches']} switches"
    )
    table = Table("upstream", "state", "latency ms", "ok", "failed", "last error")
    for row in status["upstreams"]:
        if not row["available"]:
            state = f"resting {row['resting_seconds']} s"
        elif row.get("consecutive_failures"):
            state = "failing, due for a retry"
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


def _register_groups() -> None:
    from resistance.directory.cli import directory
    from resistance.grants.cli import grants
    from resistance.lab.cli import lab
    from resistance.probe.cli import probe
    from resistance.registry.cli import registry
    from resistance.vpn.cli import vpn

    main.add_command(registry)
    main.add_command(directory)
    main.add_command(grants)
    main.add_command(probe)
    main.add_command(vpn)
    main.add_command(lab)


_register_groups()
