"""`resist registry`: serve the registry, migrate its database, register a node."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from resistance.clikit import CONTEXT, one_line_errors, setup_logging
from resistance.config import Endpoint, parse_endpoint, parse_user
from resistance.errors import ConfigError
from resistance.paths import resolve_state_dir


@click.group(context_settings=CONTEXT)
def registry() -> None:
    """The registry: operators, proxies, payout addresses and the signed directory.

    \b
    Examples:
      resist registry serve --listen 127.0.0.1:8080 --network signet
      resist registry migrate --db postgresql+asyncpg://resist@db/resist
      resist registry register-node --registry https://reg.example --token rst_... \\
          --public-host 203.0.113.7 --port 1080
    """


#: Publication and probe interval of `serve --dev`, in seconds.
DEV_SECONDS = 5
#: The most processes `serve --workers` runs (each holds its own database pool).
MAX_WORKERS = 64


def _bind(endpoint: Endpoint) -> socket.socket:
    family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((endpoint.host, endpoint.port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {endpoint}: {exc.strerror}") from None
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


@registry.command(context_settings=CONTEXT)
@click.option("--listen", default="127.0.0.1:8080", show_default=True, metavar="HOST:PORT")
@click.option("--db", "db", metavar="URL", help="Database URL [default: SQLite in state dir].")
@click.option("--state-dir", type=click.Path(path_type=Path), help="Keys, SQLite, directory.json.")
@click.option(
    "--network",
    type=click.Choice(["bitcoin", "testnet", "signet", "regtest"]),
    default="bitcoin",
    show_default=True,
    help="Bitcoin network payout addresses must belong to.",
)
@click.option(
    "--publish-interval",
    type=click.FloatRange(min=0),
    default=3600.0,
    show_default=True,
    metavar="S",
    help="Seconds between directory publications (0: only on start and on demand).",
)
@click.option(
    "--allow-private-endpoints",
    is_flag=True,
    help="Accept proxies on loopback/private addresses (labs and tests only).",
)
@click.option(
    "--approve-open-periods",
    is_flag=True,
    help="Let grant rounds be approved before their period is over (labs and tests only).",
)
@click.option("--no-migrate", is_flag=True, help="Do not migrate the database on start.")
@click.option(
    "--canary",
    metavar="HOST:PORT",
    help="Run the canary probes reach through proxies here (given to probes).",
)
@click.option(
    "--probe-control",
    metavar="URL",
    help="A proxy that is up and on no censor's list (socks5://USER:PASS@HOST:PORT): probes "
    "check a failing proxy's protocol against it to name the mechanism that blocks it.",
)
@click.option(
    "--probe-round",
    type=click.IntRange(min=0),
    default=600,
    show_default=True,
    metavar="S",
    help="How often probes check each proxy (at random times inside the round).",
)
@click.option(
    "--verdict-window",
    type=click.IntRange(min=1),
    default=3600,
    show_default=True,
    metavar="S",
    help="Verdict window: the failures behind a block must fall in distinct windows of S s.",
)
@click.option(
    "--blocked-min-probes",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Distinct probes in a country that must fail before a proxy is blocked there.",
)
@click.option(
    "--probe-replicas",
    type=click.IntRange(1, 100),
    default=3,
    show_default=True,
    metavar="R",
    help="Probes of each vantage network (the controls; each country's) that check each proxy.",
)
@click.option(
    "--blocked-min-windows",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Distinct verdict windows those failures must span.",
)
@click.option(
    "--fresh",
    "fresh_seconds",
    type=click.IntRange(min=1),
    default=3 * 3600,
    show_default=True,
    metavar="S",
    help="Clients refresh the directory after S seconds (valid for 24 h, or S if longer).",
)
@click.option(
    "--retention-days",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    metavar="N",
    help="Keep raw probe results and batch bodies N days, then prune them in the "
    "background (0: keep for ever); rollups, verdicts and rounds are kept.",
)
@click.option(
    "--keep-entries",
    is_flag=True,
    help="Keep the last directory's entries in memory and rebuild only the changed ones "
    "at the next publication: less CPU, but the previous publication's rows stay held "
    "(at 100,000 proxies over 6 GB at the second publication, against 4.3 GB).",
)
@click.option(
    "--db-pool",
    "db_pool_size",
    type=click.IntRange(2, 1000),
    default=5,
    show_default=True,
    metavar="N",
    help="Database connections each process keeps open, at least 2 (PostgreSQL: mind "
    "its max_connections across --workers).",
)
@click.option(
    "--db-pool-overflow",
    type=click.IntRange(0, 1000),
    default=10,
    show_default=True,
    metavar="N",
    help="Connections each process may open beyond --db-pool under load.",
)
@click.option(
    "--db-pool-timeout",
    type=click.FloatRange(min=0.01),
    default=30.0,
    show_default=True,
    metavar="S",
    help="Answer 503 (Retry-After) to a request that waited S seconds for a connection.",
)
# --- HTTP server limits and forwarded headers (resistance.registry.server) ---
@click.option(
    "--header-timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    metavar="S",
    help="Close a connection whose request headers take longer than S seconds.",
)
@click.option(
    "--body-timeout",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    metavar="S",
    help="Answer 408 when a request body takes longer than S seconds.",
)
@click.option(
    "--keepalive-timeout",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    metavar="S",
    help="Close an idle keep-alive connection after S seconds.",
)
@click.option(
    "--max-headers",
    type=click.IntRange(8, 1000),
    default=64,
    show_default=True,
    metavar="N",
    help="Answer 431 to a request with more than N header lines.",
)
@click.option(
    "--max-header-bytes",
    type=click.IntRange(1024, 1 << 20),
    default=16 * 1024,
    show_default=True,
    metavar="B",
    help="Answer 431 to headers over B bytes.",
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(min=1024),
    default=64 * 1024,
    show_default=True,
    metavar="B",
    help="Answer 413 to a body over B bytes (declared or chunked).",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    metavar="N",
    help="Answer 503 beyond N connections or requests at once.",
)
@click.option(
    "--trust-proxy", "trust_proxy", multiple=True, metavar="CIDR",
    help="Believe X-Forwarded-For/-Proto from this reverse proxy's address or network "
    "(repeatable; default: from nobody, loopback included).",
)  # fmt: skip
@click.option(
    "--workers",
    type=click.IntRange(1, MAX_WORKERS),
    default=1,
    show_default=True,
    metavar="N",
    help="Serve from N processes on one listening socket (PostgreSQL only; they share "
    "rate limits and tokens through the database and take turns to sign directories).",
)
@click.option(
    "--dns", metavar="HOST:PORT",
    help="Resolve proxies registered by DNS name with this server (default: the host's).",
)  # fmt: skip
@click.option(
    "--dev",
    is_flag=True,
    help="One-machine trials: loopback proxies, regtest, quick publishing and probing, "
    "rounds approvable at once (printed at start; never on a server).",
)
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.pass_context
@one_line_errors
def serve(
    ctx: click.Context,
    listen: str,
    db: str | None,
    state_dir: Path | None,
    network: str,
    publish_interval: float,
    allow_private_endpoints: bool,
    approve_open_periods: bool,
    no_migrate: bool,
    canary: str | None,
    probe_control: str | None,
    probe_round: int,
    verdict_window: int,
    blocked_min_probes: int,
    probe_replicas: int,
    blocked_min_windows: int,
    fresh_seconds: int,
    retention_days: int,
    keep_entries: bool,
    db_pool_size: int,
    db_pool_overflow: int,
    db_pool_timeout: float,
    header_timeout: float,
    body_timeout: float,
    keepalive_timeout: int,
    max_headers: int,
    max_header_bytes: int,
    max_body_bytes: int,
    max_connections: int,
    trust_proxy: tuple[str, ...],
    workers: int,
    dns: str | None,
    dev: bool,
    verbose: int,
) -> None:
    """Serve the registry's HTTP API (migrating the database first).

    On first start it makes the admin token and prints it once: keep it, the
    registry stores only its hash.  It prints the directory signing key that
    clients pin (`resist connect --trust KEY`); the API is described at /docs.

    \b
    Examples:
      resist registry serve --listen 127.0.0.1:8080 --network signet
      resist registry serve --db postgresql+asyncpg://resist@127.0.0.1/resist
      resist registry serve --listen 0.0.0.0:8080 --canary 0.0.0.0:9900
      resist registry serve --listen 127.0.0.1:8080 --trust-proxy 127.0.0.1
      resist registry serve --db postgresql://resist@127.0.0.1/resist --workers 4
      resist registry serve --dev      # everything on one machine, to try it out
    """
    import uvicorn

    from resistance.directory.keys import public_key_text
    from resistance.registry import retention
    from resistance.registry.app import create_app
    from resistance.registry.db import database_url
    from resistance.registry.keys import load_or_create_signing_keys
    from resistance.registry.server import run_workers, server_config
    from resistance.registry.settings import RegistrySettings

    setup_logging(verbose)
    endpoint = parse_endpoint(listen, what="listen address")
    if workers > 1 and database_url(db, Path(".")).startswith("sqlite"):
        raise ConfigError(
            "--workers above 1 needs PostgreSQL (--db postgresql://...): "
            "a SQLite registry is served by one process"
        )
    if dev:
        relaxed = ["proxies on loopback and private addresses are accepted"]

        def unless_given(name: str, value: Any, what: str) -> Any:
            if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT:
                return ctx.params[name]
            relaxed.append(what)
            return value

        allow_private_endpoints = approve_open_periods = True
        network = unless_given("network", "regtest", "payout addresses are regtest")
        every = f"every {DEV_SECONDS} s"
        publish_interval = unless_given(
            "publish_interval", float(DEV_SECONDS), f"the directory is published {every}"
        )
        probe_round = unless_given("probe_round", DEV_SECONDS, f"probes check {every}")
        # Probes' successful checks must carry the canary's proof: run one beside it.
        canary = unless_given(
            "canary", f"{endpoint.host}:0", f"a canary for probes runs on {endpoint.host}"
        )
        relaxed.append("rounds can be approved before their period ends")
        click.echo(
            "DEVELOPMENT MODE (--dev), never on a server:\n"
            + "".join(f"  - {r}\n" for r in relaxed),
            nl=False,
            err=True,
        )
    from resistance.net.resolve import dns_server

    settings = RegistrySettings(
        state_dir=resolve_state_dir(state_dir),
        database_url=db,
        network=network,
        listen=endpoint,
        publish_interval=publish_interval,
        allow_private_endpoints=allow_private_endpoints,
        approve_open_periods=approve_open_periods,
        auto_migrate=not no_migrate,
        canary=parse_endpoint(canary, what="canary address") if canary else None,
        dns=dns_server(dns) if dns else None,
        probe_round_seconds=probe_round,
        probe_control=_control_proxy(probe_control) if probe_control else None,
        verdict_window_seconds=verdict_window,
        blocked_min_probes=blocked_min_probes,
        blocked_min_windows=blocked_min_windows,
        probe_replicas=probe_replicas,
        fresh_seconds=fresh_seconds,
        valid_seconds=max(24 * 3600, fresh_seconds),
        retention_days=retention_days,
        keep_entries=keep_entries,
        db_pool_size=db_pool_size,
        db_pool_overflow=db_pool_overflow,
        db_pool_timeout=db_pool_timeout,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        keepalive_timeout=keepalive_timeout,
        max_headers=max_headers,
        max_header_bytes=max_header_bytes,
        max_body_bytes=max_body_bytes,
        max_connections=max_connections,
        trust_proxy=trust_proxy,
    )

    def show_token(token: str) -> None:
        click.echo(f"admin token (shown once, keep it): {token}")
        sys.stdout.flush()

    sock = _bind(endpoint)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    many = f", {workers} processes" if workers > 1 else ""
    click.echo(f"registry listening on http://{shown}:{port} (API described at /docs{many})")
    # Made here, before any worker starts, so that all of them sign with the same keys.
    for key in load_or_create_signing_keys(settings.state_dir):
        pinned = public_key_text(key.public_key())
        click.echo(f"directory key (clients pin it: --trust KEY): {pinned}")
    click.echo(retention.describe(settings))
    sys.stdout.flush()

    def run_one() -> int:
        app = create_app(settings, on_admin_token=show_token)
        config = server_config(
            app, settings, log_level="info" if verbose else "warning", access_log=verbose > 1
        )
        server = uvicorn.Server(config)
        server.run(sockets=[sock])
        return 0 if server.started else 1

    try:
        code = run_one() if workers == 1 else run_workers(run_one, workers)
    finally:
        sock.close()
    if code:
        sys.exit(code)


@registry.command(context_settings=CONTEXT)
@click.option("--db", "db", metavar="URL", help="Database URL [default: SQLite in state dir].")
@click.option("--state-dir", type=click.Path(path_type=Path), help="Where the SQLite file is.")
@click.option("--revision", default="head", show_default=True, help="Migrate to this revision.")
@one_line_errors
def migrate(db: str | None, state_dir: Path | None, revision: str) -> None:
    """Bring the database schema up to date (serve also does this on start).

    \b
    Example:
      resist registry migrate --db postgresql+asyncpg://resist@127.0.0.1/resist
    """
    from resistance.registry.db import database_url
    from resistance.registry.db import migrate as run_migrations

    url = database_url(db, resolve_state_dir(state_dir))
    asyncio.run(run_migrations(url, revision=revision))
    click.echo("database is up to date")


def _hop(exit_id: int | None, exit_user: str | None) -> dict[str, object] | None:
    if (exit_id is None) != (exit_user is None):
        raise click.UsageError("--exit and --exit-user go together")
    if exit_id is None or exit_user is None:
        return None
    username, password = parse_user(exit_user)
    return {"exit_id": exit_id, "username": username, "password": password}


@registry.command(name="register-node", context_settings=CONTEXT)
@click.option("--registry", "registry_url", required=True, metavar="URL", help="Registry URL.")
@click.option("--token", required=True, envvar="RESIST_REGISTRY_TOKEN", help="Your operator token.")
@click.option(
    "--public-host",
    required=True,
    metavar="HOST",
    help="Address or DNS name users reach it at (a name: the registry proves control at "
    "every address it resolves to, and the directory carries the name).",
)
@click.option("--port", type=click.IntRange(1, 65535), default=1080, show_default=True)
@click.option(
    "--tls-port",
    type=click.IntRange(1, 65535),
    help="The node's --tls-listen port: the registry checks it is this node (inside TLS) "
    "and publishes its certificate's SHA-256 so clients can pin it.",
)
@click.option("--public", is_flag=True, help="List it in the public directory.")
@click.option(
    "--user",
    "users",
    multiple=True,
    metavar="NAME:PASSWORD",
    help="Credential to hand to users; repeatable [default: the node's generated user].",
)
@click.option(
    "--as-exit",
    is_flag=True,
    help="Register an exit of cascades: reached only through bridges, never published.",
)
@click.option(
    "--exit",
    "exit_id",
    type=click.IntRange(1),
    metavar="PROXY_ID",
    help="Register a bridge relaying to this exit (its proxy_id, from its operator).",
)
@click.option(
    "--exit-user",
    envvar="RESIST_EXIT_USER",
    metavar="NAME:PASSWORD",
    help="The bridge's own user on the exit (the registry logs in once to see the exit's "
    "operator agreed); may come from $RESIST_EXIT_USER.",
)
@click.option("--state-dir", type=click.Path(path_type=Path), help="The node's state directory.")
@one_line_errors
def register_node(
    registry_url: str,
    token: str,
    public_host: str,
    port: int,
    tls_port: int | None,
    public: bool,
    users: tuple[str, ...],
    as_exit: bool,
    exit_id: int | None,
    exit_user: str | None,
    state_dir: Path | None,
) -> None:
    """Register this node: sign a statement with its identity key; the registry
    then challenges the node over SOCKS5 to prove you control it.

    Run it on the node's machine with the node's state directory, while the
    node runs.  The token may come from $RESIST_REGISTRY_TOKEN.  With
    --tls-port the registry challenges the node again inside TLS and lists
    the certificate's pin, so `resist connect` reaches the node over TLS
    (registering again without --tls-port drops the TLS listener).

    A cascade: the exit's operator registers it with --as-exit and hands the
    bridge's operator its proxy_id and a user of its own on the exit; the
    bridge registers with --exit and --exit-user.  Both operators are paid.

    \b
    Examples:
      resist registry register-node --registry https://reg.example --token rst_... \\
          --public-host 203.0.113.7 --port 1080 --tls-port 443 --public
      resist registry register-node --registry https://reg.example --token rst_... \\
          --public-host 203.0.113.7 --port 1080 --as-exit
      RESIST_EXIT_USER=bridge1:s3cret resist registry register-node \\
          --registry https://reg.example --token rst_... --public-host 198.51.100.20 \\
          --port 1080 --tls-port 443 --public --exit 17
    """
    from resistance.registry.client import (
        node_user_credentials,
        operator_id_for,
        post_registration,
        registration_body,
    )

    state = resolve_state_dir(state_dir)
    credentials = [
        {"username": name, "password": password}
        for name, password in (parse_user(u) for u in users)
    ] or node_user_credentials(state)
    body = registration_body(
        state_dir=state,
        operator_id=operator_id_for(registry_url, token),
        host=public_host,
        port=port,
        public=public,
        users=credentials,
        tls_port=tls_port,
        role="exit" if as_exit else "proxy",
        exit=_hop(exit_id, exit_user),
    )
    answer = post_registration(registry=registry_url, token=token, body=body)
    endpoint = answer.get("endpoint", {})
    click.echo(
        f"registered proxy {answer.get('proxy_id')} at {endpoint.get('host')}:"
        f"{endpoint.get('port')} (network {answer.get('network')}, "
        f"{'public' if answer.get('public') else 'handed out by the registry'})"
    )
    tls = answer.get("tls")
    if isinstance(tls, dict):
        click.echo(
            f"TLS listener on port {tls.get('port')}, certificate sha256 {tls.get('sha256')}"
        )


@registry.command(name="add-probe", context_settings=CONTEXT)
@click.option("--registry", "registry_url", required=True, metavar="URL", help="Registry URL.")
@click.option("--token", required=True, envvar="RESIST_ADMIN_TOKEN", help="The admin token.")
@click.option("--name", required=True, help="The vantage's name (what `probe run --vantage` says).")
@click.option("--country", required=True, metavar="CC", help="Where the vantage measures from.")
@click.option("--public-key", required=True, help="The output of `resist probe key` there.")
@click.option("--control", is_flag=True, help="A control vantage (outside any censorship).")
@one_line_errors
def add_probe(
    registry_url: str, token: str, name: str, country: str, public_key: str, control: bool
) -> None:
    """Create a probe account and print its token (shown once).

    \b
    Example:
      resist registry add-probe --registry https://reg.example --token rst_ADMIN \\
          --name msk-1 --country RU --public-key $(ssh msk-1 resist probe key)
    """
    from resistance.registry.client import call_registry

    body = {"name": name, "country": country.upper(), "control": control, "public_key": public_key}
    answer = call_registry(
        registry_url, "/api/v1/probes", token=token, method="POST", body=body, expect=(201,)
    )
    kind = "control vantage" if control else "vantage"
    click.echo(f"probe {answer['probe_id']} {name} ({answer['country']}, {kind})")
    click.echo(f"probe token (shown once, keep it): {answer['token']}")


@registry.command(name="import-blocklist", context_settings=CONTEXT)
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--db", "db", metavar="URL", help="Database URL [default: SQLite in state dir].")
@click.option("--state-dir", type=click.Path(path_type=Path), help="Where the SQLite file is.")
@click.option("--show-problems", default=10, show_default=True, help="How many bad lines to list.")
@click.option(
    "--keep-versions",
    default=365,
    show_default=True,
    type=click.IntRange(1, 1_000_000),
    help="Versions kept; older ones are pruned.",
)
@click.option(
    "--allow-shrink",
    is_flag=True,
    help="Import even if it lists under half the prefixes of the current version.",
)
@one_line_errors
def import_blocklist(
    file: Path,
    db: str | None,
    state_dir: Path | None,
    show_problems: int,
    keep_versions: int,
    allow_shrink: bool,
) -> None:
    """Import a censor's registry and flag the proxies whose address is in it.

    Takes Roskomnadzor's registry dump (zapret-info dump.csv: "Updated: ..."
    then "IP | IP;domain;URL;body;decision;date" lines, windows-1251 or UTF-8)
    or a plain list with one address or prefix per line (antifilter style).
    Bad lines are reported and skipped; the rest is imported.  Each import is
    a new version, stored as its difference from the previous one (see
    blocklist-versions and blocklist-diff).  A file that looks cut short
    (a broken last line without a line end, mostly broken lines, or under
    half the prefixes of the current version) is refused and nothing changes.

    \b
    Examples:
      resist registry import-blocklist dump.csv
      resist registry import-blocklist ipsum.lst --db postgresql+asyncpg://resist@db/resist
    """
    from resistance.registry.censor import import_blocklist as run_import
    from resistance.registry.censor import read_blocklist
    from resistance.registry.db import database_url

    url = database_url(db, resolve_state_dir(state_dir))
    summary = asyncio.run(
        run_import(
            url,
            read_blocklist(file),
            str(file),
            keep_versions=keep_versions,
            allow_shrink=allow_shrink,
        )
    )
    report = summary.report
    click.echo(
        f"imported {report.prefixes} prefixes ({summary.ranges} merged ranges) from {file} "
        f"[{report.kind}{', updated ' + report.updated if report.updated else ''}] "
        f"in {summary.seconds:.1f} s; {report.skipped} bad lines skipped"
    )
    click.echo(
        f"version {summary.import_id}: {summary.added} ranges added, {summary.removed} "
        f"removed since the previous one; {summary.pruned} old versions pruned"
    )
    for line, why in report.problems[:show_problems]:
        click.echo(f"  line {line}: {why}", err=True)
    click.echo(f"{len(summary.flagged)} of {summary.proxies} proxies are in it")
    for endpoint in summary.flagged[:50]:
        click.echo(f"  flagged {endpoint}")


@registry.command(name="blocklist-versions", context_settings=CONTEXT)
@click.option("--db", "db", metavar="URL", help="Database URL [default: SQLite in state dir].")
@click.option("--state-dir", type=click.Path(path_type=Path), help="Where the SQLite file is.")
@click.option("--before", type=click.IntRange(1, 2**62), help="Only versions older than this id.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@one_line_errors
def blocklist_versions(
    db: str | None, state_dir: Path | None, before: int | None, limit: int
) -> None:
    """List the imported versions of the censor's registry, newest first.

    \b
    Example:
      resist registry blocklist-versions --limit 5
    """
    from resistance.registry.censor import read_versions
    from resistance.registry.db import database_url

    url = database_url(db, resolve_state_dir(state_dir))
    page = asyncio.run(read_versions(url, before=before, limit=limit))
    if not page["versions"]:
        click.echo("no blocklist imported")
    for v in page["versions"]:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(v["imported_at"]))
        click.echo(
            f"{v['import_id']:>6}  {when}  {v['prefixes']:>9} prefixes  {v['ranges']:>9} ranges"
            f"  +{v['added']} -{v['removed']}  {v['kind']} {v['source']}"
        )
    if page["next_before"] is not None:
        click.echo(f"(more: --before {page['next_before']})")


@registry.command(name="blocklist-diff", context_settings=CONTEXT)
@click.argument("version", type=click.IntRange(1, 2**62))
@click.option("--db", "db", metavar="URL", help="Database URL [default: SQLite in state dir].")
@click.option("--state-dir", type=click.Path(path_type=Path), help="Where the SQLite file is.")
@click.option("--removed", is_flag=True, help="The ranges it dropped, not those it added.")
@click.option("--after", default="", metavar="CURSOR", help="Page on from this cursor.")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1, 10_000))
@one_line_errors
def blocklist_diff(
    version: int, db: str | None, state_dir: Path | None, removed: bool, after: str, limit: int
) -> None:
    """Print the ranges a version added (or removed) against the version before it.

    \b
    Examples:
      resist registry blocklist-diff 7
      resist registry blocklist-diff 7 --removed --limit 100
    """
    from resistance.registry.censor import read_diff
    from resistance.registry.db import database_url

    url = database_url(db, resolve_state_dir(state_dir))
    change = "removed" if removed else "added"
    page = asyncio.run(read_diff(url, import_id=version, change=change, after=after, limit=limit))
    if page is None:
        raise ConfigError(f"no blocklist version {version} (pruned, or never imported)")
    v = page["version"]
    click.echo(f"version {version}: +{v['added']} -{v['removed']} ranges; {change}:")
    for text in page["ranges"]:
        click.echo(f"  {'-' if removed else '+'}{text}")
    if page["next_after"] is not None:
        click.echo(f"(more: --after {page['next_after']})")


@registry.command(name="mtproto-secret", context_settings=CONTEXT)
@click.option("--registry", "registry_url", required=True, metavar="URL", help="Registry URL.")
@click.option("--token", required=True, envvar="RESIST_REGISTRY_TOKEN", help="Your operator token.")
@one_line_errors
def mtproto_secret(registry_url: str, token: str) -> None:
    """Print your prober secret: add it to your node as an MTProto user, then register.

    The registry proves an MTProto proxy is yours by connecting through it
    with this secret (only you can read it, only you can add it to your node),
    and probes check it the same way.  Keep it out of links you hand out.

    \b
    Example:
      resist registry mtproto-secret --registry https://reg.example --token rst_...
    """
    from resistance.registry.client import call_registry

    answer = call_registry(registry_url, "/api/v1/mtproto/prober-secret", token=token)
    click.echo(answer["key"])
    click.echo(f"add to your node: {answer['node_option']} (or under [mtproto_users])")


@registry.command(name="register-mtproto", context_settings=CONTEXT)
@click.option("--registry", "registry_url", required=True, metavar="URL", help="Registry URL.")
@click.option("--token", required=True, envvar="RESIST_REGISTRY_TOKEN", help="Your operator token.")
@click.option(
    "--public-host",
    required=True,
    metavar="HOST",
    help="Address or DNS name users reach it at (a name: the registry proves control at "
    "every address it resolves to, and the directory carries the name).",
)
@click.option("--port", type=click.IntRange(1, 65535), default=443, show_default=True)
@click.option(
    "--mode",
    type=click.Choice(["ee", "dd", "classic"]),
    help="How users connect [default: ee with --domain, else dd].",
)
@click.option("--domain", metavar="NAME", help="The fake-TLS domain (the node's --mtproto-domain).")
@click.option("--public", is_flag=True, help="List it (never its secrets) in the public directory.")
@one_line_errors
def register_mtproto(
    registry_url: str,
    token: str,
    public_host: str,
    port: int,
    mode: str | None,
    domain: str | None,
    public: bool,
) -> None:
    """Register your node's MTProto listener; the registry first gets a data centre's
    resPQ through it with your prober secret (see `resist registry mtproto-secret`).

    \b
    Example:
      resist registry register-mtproto --registry https://reg.example --token rst_... \\
          --public-host 203.0.113.7 --port 443 --domain www.example.com --public
    """
    from resistance.registry.client import call_registry

    mode = mode or ("ee" if domain else "dd")
    body: dict[str, object] = {
        "endpoint": {"host": public_host, "port": port},
        "mode": mode,
        "public": public,
    }
    if domain is not None:
        body["domain"] = domain
    answer = call_registry(
        registry_url, "/api/v1/mtproto/endpoints", token=token, method="POST", body=body,
        expect=(201,),
    )  # fmt: skip
    endpoint = answer.get("endpoint", {})
    click.echo(
        f"registered MTProto proxy {answer.get('proxy_id')} at {endpoint.get('host')}:"
        f"{endpoint.get('port')} ({mode}{', ' + domain if domain else ''}; "
        f"{'public' if answer.get('public') else 'not in the public directory'})"
    )


def _control_proxy(url: str) -> dict[str, object]:
    """The probes' control proxy from its URL (it must carry the probe's credentials)."""
    from resistance.links import parse_socks_url

    proxy = parse_socks_url(url)
    if proxy.username is None or proxy.password is None:
        raise ConfigError("--probe-control needs the probes' credentials in its URL (USER:PASS@)")
    return {
        "host": proxy.host, "port": proxy.port, "username": proxy.username,
        "password": proxy.password,
    }  # fmt: skip


# --- resist registry token --------------------------------------------------------------

_DB = click.option("--db", "db", metavar="URL", help="Database URL [default: SQLite in state dir].")
_STATE = click.option(
    "--state-dir", type=click.Path(path_type=Path), help="Where the SQLite file is."
)


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    from resistance.registry.tokens import parse_duration

    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _on_database(db: str | None, state_dir: Path | None, work: Any) -> Any:
    from resistance.registry.db import database_url
    from resistance.registry.tokens import on_database

    return asyncio.run(on_database(database_url(db, resolve_state_dir(state_dir)), work))


def _when(at: int | None) -> str:
    import datetime

    if at is None:
        return "-"
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%d %H:%M")


@registry.group(context_settings=CONTEXT)
def token() -> None:
    """API tokens of the admin, operators and probes: list, rotate, expire, revoke.

    These work on the registry's database directly (run them where `serve`
    runs, with the same --db or --state-dir).  Every registry process on the
    database refuses a revoked, rotated-away or expired token from its next
    request; nothing needs a restart.  Accounts manage their own tokens
    through the API (GET /api/v1/tokens, POST /api/v1/tokens/rotate).

    \b
    Examples:
      resist registry token list --role probe
      resist registry token rotate 1 --expires 90d
      resist registry token revoke 7
    """


@token.command(name="list", context_settings=CONTEXT)
@_DB
@_STATE
@click.option("--role", type=click.Choice(["admin", "operator", "probe"]), help="Only these.")
@click.option("--live", is_flag=True, help="Only tokens that still work.")
@one_line_errors
def token_list(db: str | None, state_dir: Path | None, role: str | None, live: bool) -> None:
    """List tokens (never the tokens themselves: they are stored only as hashes).

    \b
    Example:
      resist registry token list --db postgresql+asyncpg://resist@127.0.0.1/resist --live
    """
    import time

    from resistance.registry.tokens import list_tokens

    now = int(time.time())
    found = _on_database(db, state_dir, lambda s: list_tokens(s, now=now, role=role))
    click.echo(f"{'ID':>6}  {'ROLE':8}  {'OWNER':24}  {'CREATED':16}  {'EXPIRES':16}  STATE")
    for t in found:
        if live and t["state"] != "live":
            continue
        click.echo(
            f"{t['token_id']:>6}  {t['role']:8}  {(t['owner'] or '-')[:24]:24}  "
            f"{_when(t['created_at']):16}  {_when(t['expires_at']):16}  {t['state']}"
        )


@token.command(name="rotate", context_settings=CONTEXT)
@click.argument("token_id", type=click.IntRange(1, 2**31 - 1))
@_DB
@_STATE
@click.option(
    "--expires", callback=_duration, metavar="DURATION",
    help="The new token stops working after this (30d, 12h, 2w ...) [default: never].",
)  # fmt: skip
@one_line_errors
def token_rotate(
    token_id: int, db: str | None, state_dir: Path | None, expires: int | None
) -> None:
    """Replace a token with a new one for the same account, printed once; the old one
    is refused at once by every registry process (the admin token too, no restart).

    \b
    Example:
      resist registry token rotate 1 --expires 90d
    """
    import time

    from resistance.registry.tokens import rotate

    now = int(time.time())
    text, made = _on_database(
        db, state_dir, lambda s: rotate(s, token_id=token_id, now=now, lifetime=expires)
    )
    click.echo(
        f"token {token_id} revoked; its {made['role']} token is now {made['token_id']}, "
        f"expires {_when(made['expires_at'])}"
    )
    click.echo(f"new token (shown once, keep it): {text}")


@token.command(name="expire", context_settings=CONTEXT)
@click.argument("token_id", type=click.IntRange(1, 2**31 - 1))
@click.argument("after", callback=_duration, metavar="DURATION")
@_DB
@_STATE
@one_line_errors
def token_expire(token_id: int, after: int, db: str | None, state_dir: Path | None) -> None:
    """Make a token stop working DURATION from now (30d, 12h, 90m, 2w ...).

    \b
    Example:
      resist registry token expire 7 30d
    """
    import time

    from resistance.registry.tokens import expire

    now = int(time.time())
    done = _on_database(db, state_dir, lambda s: expire(s, token_id=token_id, now=now, after=after))
    click.echo(f"token {token_id} expires {_when(done['expires_at'])} UTC")


@token.command(name="revoke", context_settings=CONTEXT)
@click.argument("token_id", type=click.IntRange(1, 2**31 - 1))
@_DB
@_STATE
@one_line_errors
def token_revoke(token_id: int, db: str | None, state_dir: Path | None) -> None:
    """Revoke a token now (the admin's last live token can only be rotated).

    \b
    Example:
      resist registry token revoke 7
    """
    import time

    from resistance.registry.tokens import revoke

    now = int(time.time())
    _on_database(db, state_dir, lambda s: revoke(s, token_id=token_id, now=now))
    click.echo(f"token {token_id} revoked")


@registry.command(context_settings=CONTEXT)
@click.option("--registry", "registry_url", required=True, metavar="URL", help="Registry URL.")
@click.option("--token", required=True, envvar="RESIST_ADMIN_TOKEN", help="The admin token.")
@one_line_errors
def publish(registry_url: str, token: str) -> None:
    """Sign and publish a new directory now (instead of at the next interval).

    \b
    Example:
      resist registry publish --registry http://127.0.0.1:8080 --token rst_ADMIN
    """
    from resistance.registry.client import call_registry

    answer = call_registry(registry_url, "/api/v1/directory/publish", token=token, method="POST")
    proxies = answer["proxies"]
    click.echo(
        f"published directory serial {answer['serial']} with {proxies} "
        f"prox{'y' if proxies == 1 else 'ies'}"
    )


@registry.command(context_settings=CONTEXT)
@click.option("--registry", "registry_url", required=True, metavar="URL", help="Registry URL.")
@one_line_errors
def keys(registry_url: str) -> None:
    """Print the registry's directory keys, one a line, for `resist connect --trust`.

    Fetched over the network they are only as trustworthy as the connection:
    compare them with what the registry's operator publishes elsewhere.

    \b
    Example:
      resist registry keys --registry http://127.0.0.1:8080
    """
    from resistance.registry.client import call_registry

    for key in call_registry(registry_url, "/api/v1/directory/keys")["keys"]:
        click.echo(key["public_key"])


@registry.group(context_settings=CONTEXT)
def operator() -> None:
    """Operator accounts: create one, list them, give one a new token.

    \b
    Examples:
      resist registry operator create alice --registry http://127.0.0.1:8080
      resist registry operator list --registry http://127.0.0.1:8080 --token rst_ADMIN
      resist registry operator token alice --registry http://127.0.0.1:8080 --token rst_ADMIN
    """


@operator.command(name="create", context_settings=CONTEXT)
@click.argument("name")
@click.option("--registry", "registry_url", required=True, metavar="URL", help="Registry URL.")
@one_line_errors
def operator_create(name: str, registry_url: str) -> None:
    """Create an operator account and print its token (shown once).

    Anyone may sign up (a few a minute per network); the token registers
    nodes and sets the payout address.

    \b
    Example:
      resist registry operator create alice --registry http://127.0.0.1:8080
    """
    from resistance.registry.client import call_registry

    answer = call_registry(
        registry_url, "/api/v1/operators", method="POST", body={"name": name}, expect=(201,)
    )
    click.echo(f"operator {answer['operator_id']} {answer['name']}")
    click.echo(f"operator token (shown once, keep it): {answer['token']}")


@operator.command(name="list", context_settings=CONTEXT)
@click.option("--registry", "registry_url", required=True, metavar="URL", help="Registry URL.")
@click.option("--token", required=True, envvar="RESIST_ADMIN_TOKEN", help="The admin token.")
@one_line_errors
def operator_list(registry_url: str, token: str) -> None:
    """List the operators, their payout address and how many proxies each has.

    \b
    Example:
      resist registry operator list --registry http://127.0.0.1:8080 --token rst_ADMIN
    """
    from resistance.registry.client import call_registry

    rows = call_registry(registry_url, "/api/v1/operators", token=token)["operators"]
    if not rows:
        click.echo("no operators yet (resist registry operator create NAME)")
    for row in rows:
        click.echo(
            f"{row['operator_id']} {row['name']}: {row['proxies']} "
            f"prox{'y' if row['proxies'] == 1 else 'ies'}, "
            f"payout address {row['payout_address'] or 'not set'}"
        )


@operator.command(name="token", context_settings=CONTEXT)
@click.argument("name")
@click.option("--registry", "registry_url", required=True, metavar="URL", help="Registry URL.")
@click.option("--token", required=True, envvar="RESIST_ADMIN_TOKEN", help="The admin token.")
@one_line_errors
def operator_token(name: str, registry_url: str, token: str) -> None:
    """Give an operator a new token (shown once); their other tokens stay valid.

    \b
    Example:
      resist registry operator token alice --registry http://127.0.0.1:8080 --token rst_ADMIN
    """
    from resistance.registry.client import call_registry

    answer = call_registry(
        registry_url, f"/api/v1/operators/{quote(name, safe='')}/tokens", token=token,
        method="POST", expect=(201,),
    )  # fmt: skip
    click.echo(f"operator token for {answer['name']} (shown once, keep it): {answer['token']}")


@registry.command(name="payout-address", context_settings=CONTEXT)
@click.argument("address")
@click.option("--registry", "registry_url", required=True, metavar="URL", help="Registry URL.")
@click.option("--token", required=True, envvar="RESIST_REGISTRY_TOKEN", help="Your operator token.")
@one_line_errors
def payout_address(address: str, registry_url: str, token: str) -> None:
    """Set the Bitcoin address your grants are paid to (checked for the registry's network).

    Rounds snapshot it when they are created; a round approved before you set it
    carries your amount to the next one.

    \b
    Example:
      resist registry payout-address bc1q... --registry https://reg.example --token rst_...
    """
    from resistance.registry.client import call_registry

    answer = call_registry(
        registry_url, "/api/v1/operators/me/payout-address", token=token, method="PUT",
        body={"address": address},
    )  # fmt: skip
    click.echo(f"payouts go to {answer['address']} ({answer['type']})")
