"""`resist node`: the command line of the proxy a volunteer runs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from resistance.clikit import CONTEXT, one_line_errors, setup_logging


@click.command(context_settings=CONTEXT)
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
@click.option(
    "--allow-port",
    "allow_ports",
    multiple=True,
    metavar="PORT[-PORT]",
    help="Allow only these destination ports (repeatable) [default: every port but 25].",
)
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
@click.option(
    "--hide-passwords",
    is_flag=True,
    default=None,
    help="Print the banner with every password masked (its links and socks5s:// URL show "
    "********), for a node whose output goes to a log, e.g. an exit whose first user is a "
    "bridge's hop: resist node --config exit.toml --hide-passwords "
    "(hide_passwords = true in the file).",
)
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
@click.option(
    "--handshake-timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="S",
    help="Close a client that has not sent its request after S s (slow-loris) [default: 10].",
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="S",
    help="Give up dialling a destination after S s (reply: host unreachable) [default: 10].",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="S",
    help="Close a relayed connection after S s without a byte either way [default: 600].",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="S",
    help="On SIGTERM, wait up to S s for open connections before closing them [default: 10].",
)
@click.option("--state-dir", type=click.Path(path_type=Path), help="Where keys and state live.")
@click.option(
    "--mtproto-listen",
    multiple=True,
    metavar="HOST:PORT",
    help="MTProto proxy listener for the Telegram apps; repeatable; alone unless --listen "
    "is given too.",
)
@click.option(
    "--mtproto-user",
    multiple=True,
    metavar="NAME[:HEX32][:quota=10GiB,expires=YYYY-MM-DD,conns=N,ips=N]",
    help="An MTProto user; repeatable; without a secret one is made and kept in the state dir.",
)
@click.option("--mtproto-domain", metavar="NAME", help="Fake-TLS (ee) domain the node poses as.")
@click.option(
    "--mtproto-front",
    metavar="HOST:PORT",
    help="Where clients that do not authenticate are relayed [default: the domain, port 443].",
)
@click.option(
    "--mtproto-dc",
    multiple=True,
    metavar="N=HOST:PORT",
    help="Override a data centre's address (repeatable), e.g. 2=198.18.100.1:443.",
)
@click.option(
    "--mtproto-modes",
    metavar="LIST",
    help="Comma list of classic,dd,ee [default: ee with --mtproto-domain, else dd].",
)
@click.option(
    "--upstream",
    multiple=True,
    metavar="URL",
    help="Make this node a bridge to an exit node (repeatable, tried in order with "
    "failover): socks5s://USER:PASS@HOST:PORT#sha256=PIN (SOCKS5 inside TLS, also "
    "socks5+tls://USER:PASS@HOST:PORT?pin=PIN) or socks5://USER:PASS@HOST:PORT; "
    "UDP ASSOCIATE and BIND are then refused.",
)
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

    With --mtproto-listen it also serves the Telegram apps' own MTProto proxy
    protocol (fake-TLS with --mtproto-domain), fronting anyone who does not
    authenticate to the real site.

    Refuses private and reserved destinations (loopback, RFC 1918, link-local,
    cloud metadata, CGNAT, their IPv6 forms) and SMTP unless allowed, logs no
    client address or destination, and prints the Telegram links for its
    first user.  Without --user it generates one and keeps it in the state
    directory.  SIGHUP reloads users, policy and a bridge's upstreams;
    SIGTERM drains and stops.

    \b
    Examples:
      resist node --listen 0.0.0.0:1080 --public-host 203.0.113.7 --qr
      resist node --listen [::1]:1080 --user alice:s3cret --only telegram
      resist node --config /etc/resist/node.toml --metrics 127.0.0.1:9108
      resist node --listen 0.0.0.0:1080 --tls-listen 0.0.0.0:443 --public-host 203.0.113.7
      resist node --listen 0.0.0.0:1080 --workers 2 --public-host 203.0.113.7
      resist node --mtproto-listen 0.0.0.0:443 --mtproto-domain www.example.com \\
                  --mtproto-user alice --public-host 203.0.113.7

    \b
    A bridge on a domestic server, relaying to an exit abroad (the exit's
    banner prints its socks5s:// URL; give the bridge its own user there):
      resist node --listen 0.0.0.0:1080 --public-host 198.51.100.20 \\
        --upstream 'socks5s://bridge1:s3cret@203.0.113.7:443#sha256=<PIN>' \\
        --upstream 'socks5://bridge1:s3cret@203.0.113.7:1080'
    """
    from resistance.config import node_settings, parse_user
    from resistance.node.run import run_node

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
    for key in ("mtproto_listen", "mtproto_user", "mtproto_dc", "upstream"):
        overrides[key] = list(options[key]) or None
    for key in ("tls_cert", "tls_key", "state_dir"):
        if options[key] is not None:
            overrides[key] = str(options[key])

    def load() -> Any:
        return node_settings(config_file=config_file, overrides=overrides)

    sys.exit(run_node(load))
