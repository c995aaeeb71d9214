"""``resist vpn``: the command line of the WireGuard server, nothing else."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from resistance.clikit import one_line_errors
from resistance.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


_one_line_errors = one_line_errors


def _state_dir_option(func: F) -> F:
    return click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Where the VPN's keys and peer database live.",
    )(func)


def _server(state_dir: Path | None) -> Any:
    from resistance.paths import resolve_state_dir
    from resistance.vpn.server import VpnServer

    return VpnServer(resolve_state_dir(state_dir))


def _emit_client_config(
    name: str, text: str, out: Path | None, qr: bool, qr_file: Path | None
) -> None:
    from resistance.links import qr_save, qr_terminal
    from resistance.paths import write_private
    from resistance.vpn import clientconf
    from resistance.vpn.applink import app_link

    if out is not None:
        write_private(out, text)
        click.echo(f"client config for {name} written to {out} (mode 0600)", err=True)
    else:
        click.echo(text, nl=False)
    if qr:
        click.echo(qr_terminal(text), nl=False)
    if qr_file is not None:
        qr_save(text, str(qr_file))
        qr_file.chmod(0o600)
        click.echo(f"QR code written to {qr_file}", err=True)
    config = clientconf.parse(text)
    if config.amnezia is not None:
        # the AmneziaVPN apps' own share format, on standard error so that standard
        # output stays the .conf other tools read
        link = app_link(text, description=f"{name} ({config.endpoint})")
        click.echo(
            f"AmneziaVPN app link (the same config; import it in the app):\n{link}", err=True
        )


def _expiry(text: str | None) -> datetime | None:
    from resistance.vpn.peers import parse_expiry, utcnow

    return None if text is None else parse_expiry(text, now=utcnow())


def _config_out_options(func: F) -> F:
    func = click.option(
        "--qr-file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Also write the config as a QR code (.png or .svg).",
    )(func)
    func = click.option("--qr", is_flag=True, help="Also draw the QR code in the terminal.")(func)
    return click.option(
        "--out",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Write the config to this file (0600) instead of standard output.",
    )(func)


@click.group(context_settings=CONTEXT)
def vpn() -> None:
    """A WireGuard server for volunteers: peers, limits, probes, metrics.

    Clients use the official WireGuard apps with the config (or QR code) that
    `add` prints; on a server made with `init --amnezia`, the AmneziaVPN apps
    (AmneziaWG, which DPI that blocks WireGuard does not recognise).  Clients
    reach the internet only: private, link-local (cloud metadata) and other
    reserved ranges behind the server are refused, as on the SOCKS node.

    \b
    Examples:
      resist vpn init --endpoint 203.0.113.7:51820 --dns 9.9.9.9 --amnezia
      resist vpn add alice --expires 30d --quota 50GB --qr
      resist vpn list
      resist vpn serve --metrics 127.0.0.1:9109
      resist vpn register --registry https://reg.example --token rst_...
    """


@vpn.command(context_settings=CONTEXT)
@click.option("--endpoint", required=True, metavar="HOST[:PORT]", help="Where clients connect.")
@click.option("--subnet", default="10.66.0.0/24", show_default=True, help="Tunnel addresses.")
@click.option("--dns", multiple=True, metavar="IP", help="DNS server for clients; repeatable.")
@click.option("--interface", default="wg-resist", show_default=True, metavar="NAME")
@click.option("--allow", multiple=True, metavar="CIDR", help="Let clients reach this range.")
@click.option("--deny", multiple=True, metavar="CIDR", help="Refuse this range too.")
@click.option("--netns", metavar="NS", help="Run the interface in this network namespace.")
@click.option(
    "--amnezia",
    is_flag=True,
    help="Also serve AmneziaWG (parameters generated now); `add` then prints AmneziaWG configs.",
)
@click.option(
    "--amnezia-port",
    type=int,
    metavar="PORT",
    help="UDP port of the AmneziaWG translator [default: the WireGuard port + 1].",
)
@click.option(
    "--amnezia-legacy",
    is_flag=True,
    help="AWG 1.0 parameters (single H values, no S3/S4) for older AmneziaVPN apps.",
)
@click.option(
    "--amnezia-v3",
    is_flag=True,
    help="AWG 3 parameters: HeaderProtectionKey, RandomTrailers on, S1-S4 >= 12 (AmneziaVPN and "
    "amneziawg-go 3.x clients only).  Example: resist vpn init --endpoint vpn.example.org:51820 "
    "--amnezia --amnezia-v3",
)
@_state_dir_option
@click.option("-v", "--verbose", count=True, help="More logging.")
@_one_line_errors
def init(
    endpoint: str,
    subnet: str,
    dns: tuple[str, ...],
    interface: str,
    allow: tuple[str, ...],
    deny: tuple[str, ...],
    netns: str | None,
    amnezia: bool,
    amnezia_port: int | None,
    amnezia_legacy: bool,
    amnezia_v3: bool,
    state_dir: Path | None,
    verbose: int,
) -> None:
    """Create the server keys and bring the VPN up.

    Uses the WireGuard kernel module when present and wireguard-go otherwise,
    turns on IPv4 forwarding and adds an nftables table of its own
    (masquerade and the egress policy) that `down` removes.

    With --amnezia the server also speaks AmneziaWG (the AmneziaVPN apps,
    awg-quick), which DPI that blocks WireGuard does not recognise: `serve`
    runs a translator on --amnezia-port in front of the same interface.
    --amnezia alone makes AWG 2 parameters; --amnezia-v3 adds AWG 3's header
    protection and random trailers (clients must speak AWG 3).

    \b
    Examples:
      resist vpn init --endpoint vpn.example.org:51820 --dns 9.9.9.9
      resist vpn init --endpoint vpn.example.org:51820 --amnezia --amnezia-port 443
      resist vpn init --endpoint vpn.example.org:51820 --amnezia --amnezia-v3
    """
    from resistance.clikit import setup_logging
    from resistance.paths import resolve_state_dir
    from resistance.vpn.server import VpnServer, fail_if_missing_tools, make_config

    setup_logging(verbose)
    config = make_config(
        endpoint=endpoint,
        subnet=subnet,
        dns=dns,
        interface=interface,
        allow=allow,
        deny=deny,
        netns=netns,
        amnezia=amnezia,
        amnezia_port=amnezia_port,
        amnezia_legacy=amnezia_legacy,
        amnezia_v3=amnezia_v3,
    )
    fail_if_missing_tools()
    server = VpnServer.initialise(resolve_state_dir(state_dir), config)
    how = server.up()
    click.echo(
        f"vpn {config.interface} up ({how}): endpoint {config.endpoint}, "
        f"subnet {config.subnet}, server public key {server.public_key}"
    )
    if config.amnezia is not None and config.amnezia_endpoint is not None:
        click.echo(
            f"AmneziaWG on {config.amnezia_endpoint} ({config.amnezia.version}; "
            "run resist vpn serve): "
            + ", ".join(f"{k} {v}" for k, v in config.amnezia.interface_keys())
        )


@vpn.command(context_settings=CONTEXT)
@_state_dir_option
@click.option("-v", "--verbose", count=True, help="More logging.")
@_one_line_errors
def up(state_dir: Path | None, verbose: int) -> None:
    """Bring the interface up and apply the peer database (after a reboot).

    On an interface that is already up, adds and removes peers one by one
    until it matches the database, without dropping anyone's session.

    \b
    Example:
      resist vpn up
    """
    from resistance.clikit import setup_logging

    setup_logging(verbose)
    server = _server(state_dir)
    how = server.up()
    click.echo(f"vpn {server.config.interface} up ({how})")


@vpn.command(context_settings=CONTEXT)
@_state_dir_option
@_one_line_errors
def down(state_dir: Path | None) -> None:
    """Take the interface down and remove the VPN's nftables table.

    \b
    Example:
      resist vpn down
    """
    server = _server(state_dir)
    server.down()
    click.echo(f"vpn {server.config.interface} down")


@vpn.command(context_settings=CONTEXT)
@click.argument("name")
@click.option(
    "--expires", metavar="DATE", help="2025-12-31 (through that day, UTC), ISO time, 30d."
)
@click.option("--quota", metavar="SIZE", help="Data allowed, both directions: 50GB, 500MB, 2GiB.")
@_config_out_options
@_state_dir_option
@_one_line_errors
def add(
    name: str,
    expires: str | None,
    quota: str | None,
    out: Path | None,
    qr: bool,
    qr_file: Path | None,
    state_dir: Path | None,
) -> None:
    """Add a client and print its wg-quick config (works with the WireGuard apps).

    On a server made with --amnezia it is an AmneziaWG config (the Jc, Jmin,
    Jmax, S1-S4 and H1-H4 keys in [Interface]) for the AmneziaVPN apps and
    awg-quick, or for `resist vpn amnezia-client` in front of stock WireGuard.
    The client's private key exists only in this output: keep it, or use
    `rotate` later to make a new one.

    \b
    Examples:
      resist vpn add alice --expires 2025-12-31 --quota 50GB --qr
      resist vpn add bob --out bob.conf --qr-file bob.png
    """
    from resistance.vpn.peers import parse_size

    expiry = _expiry(expires)
    size = None if quota is None else parse_size(quota)
    peer, text = _server(state_dir).add(name, expires=expiry, quota=size)
    _emit_client_config(peer.name, text, out, qr, qr_file)


@vpn.command("add-probe", context_settings=CONTEXT)
@click.argument("public_key", metavar="KEY")
@click.option("--name", help="Peer name [default: probe-<start of key>].")
@_state_dir_option
@_one_line_errors
def add_probe(public_key: str, name: str | None, state_dir: Path | None) -> None:
    """Let a prober handshake with this server (a peer with no routes at all).

    \b
    Example:
      resist vpn add-probe "$(wg pubkey < probe.key)" --name probe-fra
    """
    server = _server(state_dir)
    peer, _ = server.add_probe(public_key, name)
    host_key, endpoint = server.probe_config()
    click.echo(f"added probe peer {peer.name}; probe it with:")
    click.echo(f"  resist vpn probe {endpoint} --server-key {host_key} --key PRIVATE_KEY_FILE")


@vpn.command(context_settings=CONTEXT)
@click.option("--registry", "registry_url", required=True, metavar="URL", help="Registry URL.")
@click.option("--token", required=True, envvar="RESIST_REGISTRY_TOKEN", help="Your operator token.")
@click.option(
    "--public-host", metavar="IP", help="Address users reach it at [default: the endpoint's]."
)
@click.option("--public", is_flag=True, help="List it in the public directory.")
@_state_dir_option
@_one_line_errors
def register(
    registry_url: str,
    token: str,
    public_host: str | None,
    public: bool,
    state_dir: Path | None,
) -> None:
    """Register this WireGuard server with a registry, to be measured and paid.

    Adds the registry's prober key and the probes' WireGuard keys as probe
    peers (they can handshake, never carry traffic), then asks the registry to
    register the endpoint; the registry proves it by a real handshake with the
    server's key before it stores anything.  Run it again (from cron, say) to
    add probes that joined since.  The token may come from $RESIST_REGISTRY_TOKEN.

    \b
    Example:
      resist vpn register --registry https://reg.example --token rst_... \\
          --public-host 203.0.113.7
    """
    from resistance.vpn.registration import register as do_register

    done = do_register(
        _server(state_dir),
        registry=registry_url,
        token=token,
        public_host=public_host,
        public=public,
    )
    if done.added:
        click.echo(f"added probe peers: {', '.join(done.added)}")
    click.echo(
        f"registered WireGuard endpoint {done.host}:{done.port} as proxy {done.proxy_id} "
        f"({'public' if done.public else 'not in the public directory'}; "
        f"{done.probes} probe(s) will check it)"
    )
    if done.amnezia_proxy_id is not None:
        click.echo(
            f"registered AmneziaWG endpoint {done.host}:{done.amnezia_port} "
            f"as proxy {done.amnezia_proxy_id}"
        )


def _peer_command(action: str, verb: str) -> Callable[..., None]:
    @_state_dir_option
    @click.argument("name")
    @_one_line_errors
    def command(name: str, state_dir: Path | None) -> None:
        server = _server(state_dir)
        getattr(server, action)(name)
        click.echo(f"{verb} {name}")

    return command


vpn.command(
    "remove",
    context_settings=CONTEXT,
    help="Remove a peer; it is cut off at once.\n\n\b\nExample:\n  resist vpn remove alice",
)(_peer_command("remove", "removed"))
vpn.command(
    "disable",
    context_settings=CONTEXT,
    help="Cut a peer off at once, keeping it for `enable`.\n\n\b\nExample:\n"
    "  resist vpn disable alice",
)(_peer_command("disable", "disabled"))
vpn.command(
    "enable",
    context_settings=CONTEXT,
    help="Let a disabled peer connect again (it reconnects at its next handshake).\n\n\b\n"
    "Example:\n  resist vpn enable alice",
)(_peer_command("enable", "enabled"))


@vpn.command(context_settings=CONTEXT)
@click.argument("name")
@_config_out_options
@_state_dir_option
@_one_line_errors
def rotate(
    name: str, out: Path | None, qr: bool, qr_file: Path | None, state_dir: Path | None
) -> None:
    """Give a client new keys and print its new config; the old one stops working.

    \b
    Example:
      resist vpn rotate alice --qr
    """
    server = _server(state_dir)
    peer, text = server.rotate(name)
    _emit_client_config(peer.name, text, out, qr, qr_file)


@vpn.command(context_settings=CONTEXT)
@click.argument("name")
@click.option("--expires", metavar="DATE", help="New expiry (as for add), or 'never'.")
@click.option("--quota", metavar="SIZE", help="New quota (as for add), or 'none'.")
@click.option("--reset-usage", is_flag=True, help="Count the peer's traffic from zero again.")
@_state_dir_option
@_one_line_errors
def limit(
    name: str,
    expires: str | None,
    quota: str | None,
    reset_usage: bool,
    state_dir: Path | None,
) -> None:
    """Change a peer's expiry or quota (`enforce` applies them; `enable` re-admits).

    \b
    Examples:
      resist vpn limit alice --expires 2026-06-30
      resist vpn limit bob --quota 100GB --reset-usage
    """
    from resistance.vpn.peers import parse_size

    if expires is None and quota is None and not reset_usage:
        raise click.UsageError("give --expires, --quota or --reset-usage")
    server = _server(state_dir)
    never = expires is not None and expires.strip().lower() == "never"
    unlimited = quota is not None and quota.strip().lower() == "none"
    peer = server.limit(
        name,
        expires=None if never else _expiry(expires),
        clear_expiry=never,
        quota=None if unlimited or quota is None else parse_size(quota),
        clear_quota=unlimited,
        reset_usage=reset_usage,
    )
    click.echo(f"{peer.name}: expires {_when(peer.expires)}, quota {_quota(peer)}")


def _when(moment: datetime | None) -> str:
    return "never" if moment is None else moment.strftime("%Y-%m-%d %H:%M UTC")


def _quota(peer: Any) -> str:
    from resistance.vpn.peers import format_size

    used = format_size(peer.used_bytes)
    if peer.quota_bytes is None:
        return f"{used} used, no quota"
    share = 100 * peer.used_bytes / peer.quota_bytes
    return f"{used} of {format_size(peer.quota_bytes)} ({share:.0f}%)"


def _ago(stamp: int, now: float) -> str:
    if not stamp:
        return "never"
    seconds = int(max(0, now - stamp))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


@vpn.command("list", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_state_dir_option
@_one_line_errors
def list_(as_json: bool, state_dir: Path | None) -> None:
    """Peers with their traffic, last handshake, expiry and quota use.

    \b
    Examples:
      resist vpn list
      resist vpn list --json
    """
    from rich.console import Console
    from rich.table import Table

    from resistance.vpn.peers import PeerKind, format_size

    server = _server(state_dir)
    views = server.view()
    now = time.time()
    if as_json:
        rows = [
            {
                "name": v.peer.name,
                "kind": v.peer.kind.value,
                "address": None if v.peer.address is None else str(v.peer.address),
                "enabled": v.peer.enabled,
                "disabled": None if v.peer.disabled is None else v.peer.disabled.value,
                "up_bytes": v.peer.counted_rx,
                "down_bytes": v.peer.counted_tx,
                "latest_handshake": v.live.latest_handshake if v.live else 0,
                "expires": None if v.peer.expires is None else v.peer.expires.isoformat(),
                "quota_bytes": v.peer.quota_bytes,
            }
            for v in views
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    # Piped output is not cut to 80 columns: scripts and logs get whole rows.
    console = Console(width=None if sys.stdout.isatty() else 200)
    state = "up" if server.is_up() else "down"
    console.print(
        f"vpn {server.config.interface} {state}, endpoint {server.config.endpoint}, "
        f"server public key {server.public_key}"
    )
    table = Table(
        "name", "address", "state", "up", "down", "handshake", "expires", "quota", title="users"
    )
    probes = Table("name", "public key", "state", "handshake", title="probes (handshake only)")
    for v in views:
        p = v.peer
        state = "enabled" if p.enabled else f"disabled ({p.disabled.value})" if p.disabled else ""
        handshake = _ago(v.live.latest_handshake if v.live else 0, now)
        if p.kind is PeerKind.PROBE:
            probes.add_row(p.name, p.public_key, state, handshake)
            continue
        table.add_row(
            p.name,
            "—" if p.address is None else str(p.address),
            state,
            format_size(p.counted_rx),
            format_size(p.counted_tx),
            handshake,
            _when(p.expires),
            _quota(p),
        )
    console.print(table)
    if probes.row_count:
        console.print(probes)


@vpn.command(context_settings=CONTEXT)
@_state_dir_option
@_one_line_errors
def enforce(state_dir: Path | None) -> None:
    """Disable every peer past its expiry or over its quota (run it from cron).

    \b
    Example:
      resist vpn enforce
    """
    server = _server(state_dir)
    for name, reason in server.enforce():
        click.echo(f"disabled {name}: {reason.value}")


@vpn.command(context_settings=CONTEXT)
@click.option("--interval", default=30.0, show_default=True, metavar="S", help="Seconds a round.")
@click.option("--metrics", metavar="HOST:PORT", help="Serve Prometheus metrics here.")
@_state_dir_option
@click.option("-v", "--verbose", count=True, help="More logging.")
@_one_line_errors
def serve(interval: float, metrics: str | None, state_dir: Path | None, verbose: int) -> None:
    """Keep the VPN up, enforce expiry and quotas, and export metrics by peer name.

    On an AmneziaWG server it also runs the translator (`amnezia-relay`) as a
    child process, in the interface's namespace, and stops it on exit.

    \b
    Example:
      resist vpn serve --interval 60 --metrics 127.0.0.1:9109
    """
    from resistance.clikit import setup_logging
    from resistance.config import parse_endpoint
    from resistance.vpn.service import run_serve

    setup_logging(verbose + 1)
    if interval <= 0:
        raise ConfigError("--interval must be positive")
    endpoint = None if metrics is None else parse_endpoint(metrics, what="--metrics")
    sys.exit(run_serve(_server(state_dir), interval=interval, metrics=endpoint))


@vpn.command(context_settings=CONTEXT)
@click.argument("endpoint", metavar="HOST:PORT")
@click.option("--server-key", required=True, metavar="PUB", help="The server's public key.")
@click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="File with the prober's private key (wg genkey), added with add-probe.",
)
@click.option("--psk", "psk_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--timeout", default=3.0, show_default=True, metavar="S")
@click.option("--attempts", default=1, show_default=True, type=click.IntRange(1, 10))
@_one_line_errors
def probe(
    endpoint: str,
    server_key: str,
    key_file: Path,
    psk_file: Path | None,
    timeout: float,
    attempts: int,
) -> None:
    """Do a real WireGuard handshake; exit 0 if the server answered with its key.

    Silence (wrong key, unknown prober, closed port, stopped server) exits 1.

    \b
    Example:
      resist vpn probe 203.0.113.7:51820 --server-key SERVERPUB= --key probe.key
    """
    from resistance.config import parse_endpoint
    from resistance.vpn import keys
    from resistance.vpn.probe import probe_handshake

    target = parse_endpoint(endpoint, what="endpoint")
    result = probe_handshake(
        target.host,
        target.port,
        server_public=keys.decode(server_key, what="--server-key"),
        private_key=keys.read_key_file(key_file),
        psk=None if psk_file is None else keys.read_key_file(psk_file, what="preshared key"),
        timeout=timeout,
        attempts=attempts,
    )
    if result.up:
        assert result.rtt is not None
        click.echo(f"up: {target} handshake completed in {result.rtt * 1000:.1f} ms")
    else:
        click.echo(f"down: {target}: {result.detail}")
        sys.exit(1)


def _listen_host(host: str) -> str:
    """The endpoint's address when it is one of ours, else every address.

    A UDP server bound to every address answers from whichever address the
    route picks, and a client whose socket is connected to the endpoint
    ignores answers from any other; bound to the endpoint, answers come
    from it.  (Behind 1:1 NAT the public address is not ours: then the
    wildcard, and the host's one address answers.)
    """
    import socket
    from ipaddress import ip_address

    try:
        ip_address(host)
    except ValueError:
        return "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((host, 0))
        except OSError:
            return "::" if family == socket.AF_INET6 else "0.0.0.0"
    return host


@vpn.command("amnezia-relay", context_settings=CONTEXT)
@_state_dir_option
@click.option("--max-flows", default=4096, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("-v", "--verbose", count=True, help="More logging.")
@_one_line_errors
def amnezia_relay(state_dir: Path | None, max_flows: int, verbose: int) -> None:
    """Translate AmneziaWG on the AmneziaWG port to this server's WireGuard.

    `serve` runs it for you; run it alone (in the interface's namespace) to
    keep it apart.  SIGTERM stops it.

    \b
    Example:
      resist vpn amnezia-relay --state-dir /var/lib/resist
    """
    from resistance.clikit import setup_logging
    from resistance.config import Endpoint
    from resistance.vpn import keys
    from resistance.vpn.translator import Side, Translator, run_translator

    setup_logging(verbose)
    server = _server(state_dir)
    cfg = server.config
    if cfg.amnezia is None or cfg.amnezia_port is None:
        raise ConfigError("this VPN has no AmneziaWG: make it with resist vpn init --amnezia")
    translator = Translator(
        cfg.amnezia,
        side=Side.SERVER,
        listen=Endpoint(_listen_host(cfg.endpoint.host), cfg.amnezia_port),
        target=Endpoint("127.0.0.1", cfg.endpoint.port),
        wireguard_public=keys.decode(server.public_key),
        amnezia_publics=server.peer_public_keys,
        max_flows=max_flows,
    )
    sys.exit(run_translator(translator))


@vpn.command("amnezia-client", context_settings=CONTEXT)
@click.argument("config_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--listen",
    default="127.0.0.1:51821",
    show_default=True,
    metavar="HOST:PORT",
    help="Where the local WireGuard client sends.",
)
@click.option(
    "--wg-config",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Write the plain WireGuard config for wg-quick here (0600).",
)
@click.option(
    "--fwmark",
    default=51820,
    show_default=True,
    type=click.IntRange(0, 2**32 - 1),
    help="Mark the translator's packets as wg-quick marks its own (0: none).",
)
@click.option("-v", "--verbose", count=True, help="More logging.")
@_one_line_errors
def amnezia_client(
    config_file: Path, listen: str, wg_config: Path, fwmark: int, verbose: int
) -> None:
    """Let a stock WireGuard client (wg-quick, wireguard-go) use an AmneziaWG server.

    Reads the AmneziaWG config `resist vpn add` printed, writes a plain
    WireGuard config pointing at --listen, and translates between them until
    SIGTERM.  With wg-quick's full tunnel the translator's own packets carry
    wg-quick's fwmark, so they leave outside the tunnel.

    \b
    Example:
      resist vpn amnezia-client alice.conf --wg-config /etc/wireguard/awg0.conf &
      wg-quick up awg0
    """
    from dataclasses import replace

    from resistance.clikit import setup_logging
    from resistance.config import parse_endpoint
    from resistance.paths import write_private
    from resistance.vpn import clientconf, keys
    from resistance.vpn.translator import Side, Translator, run_translator

    setup_logging(verbose)
    try:
        text = config_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {config_file}: {exc}") from None
    config = clientconf.parse(text)
    if config.amnezia is None:
        raise ConfigError(f"{config_file} has no AmneziaWG keys (Jc, S1, H1...)")
    local = parse_endpoint(listen, what="--listen")
    remote = parse_endpoint(config.endpoint, what="endpoint")
    plain = replace(config, amnezia=None, endpoint=str(local))
    write_private(wg_config, clientconf.render(plain))
    translator = Translator(
        config.amnezia,
        side=Side.CLIENT,
        listen=local,
        target=remote,
        wireguard_public=keys.public_from_private(keys.decode(config.private_key)),
        amnezia_publics=lambda: [keys.decode(config.server_public_key)],
        max_flows=4,
        fwmark=fwmark,
    )
    sys.exit(run_translator(translator, announce=f"{wg_config} written; "))
