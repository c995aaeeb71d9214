"""The `resist` command line: the top-level group; each command loads only when used.

A command group is named here by module path and imported the first time it
runs or its help is shown, so `resist node` never pays for the registry's
database layer or the grants' Bitcoin library.
"""

from __future__ import annotations

from pathlib import Path

import click

from resistance import __version__
from resistance.clikit import CONTEXT, LazyCommand, LazyGroup, one_line_errors

__all__ = ["CONTEXT", "main", "one_line_errors"]

#: Command name → where it lives and its summary for `resist --help` (which then
#: imports no command group).  tests/unit/test_cli_help.py keeps each summary equal
#: to the first sentence of the command's docstring.
COMMANDS = {
    "node": LazyCommand(
        "resistance.node.cli:node", "Run a SOCKS5 proxy node that volunteers can safely expose."
    ),
    "connect": LazyCommand(
        "resistance.client.cli:connect",
        "A local SOCKS5 proxy that keeps working while upstream proxies get blocked.",
    ),
    "registry": LazyCommand(
        "resistance.registry.cli:registry",
        "The registry: operators, proxies, payout addresses and the signed directory.",
    ),
    "directory": LazyCommand(
        "resistance.directory.cli:directory",
        "Verify and co-sign signed directories (works offline, on any copy).",
    ),
    "grants": LazyCommand(
        "resistance.grants.cli:grants",
        "Grant rounds: awards from measurements, payouts a real wallet signs.",
    ),
    "probe": LazyCommand(
        "resistance.probe.cli:probe",
        "Measure proxies the way users use them, from inside and outside the block.",
    ),
    "vpn": LazyCommand(
        "resistance.vpn.cli:vpn",
        "A WireGuard server for volunteers: peers, limits, probes, metrics.",
    ),
    "service": LazyCommand(
        "resistance.systemd:service",
        "systemd units that keep a node, VPN, registry or probe running across reboots.",
    ),
    "lab": LazyCommand(
        "resistance.lab.cli:lab",
        "A censorship lab in network namespaces: a censored network, a censor, a free world.",
    ),
}


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, context_settings=CONTEXT)
@click.version_option(__version__, package_name="resistance")
def main() -> None:
    """Digital Resistance: proxies through censorship, measured and paid in Bitcoin.

    \b
    Examples:
      resist node --listen 0.0.0.0:1080 --public-host 203.0.113.7 --qr
      resist link socks5://alice:secret@203.0.113.7:1080
    """


@main.command(context_settings=CONTEXT)
@click.argument("proxy_url")
@click.option("--qr", "qr", is_flag=True, help="Also draw a QR code in the terminal.")
@click.option(
    "--qr-file", type=click.Path(path_type=Path), help="Write the QR code (.png or .svg)."
)
@one_line_errors
def link(proxy_url: str, qr: bool, qr_file: Path | None) -> None:
    """Print Telegram's links (and a QR code) for a SOCKS5 or MTProto proxy.

    PROXY_URL is socks5://USER:PASS@HOST:PORT, an MTProto link (tg://proxy?...,
    https://t.me/proxy?...) or mtproto://SECRET@HOST:PORT.

    \b
    Examples:
      resist link socks5://alice:s3cret@203.0.113.7:1080 --qr
      resist link mtproto://ee0123456789abcdef0123456789abcdef6578616d706c652e636f6d@203.0.113.7:443
    """
    from resistance.links import qr_save, qr_terminal, telegram_links_for

    links = telegram_links_for(proxy_url)
    click.echo(links.tg)
    click.echo(links.https)
    if qr:
        click.echo(qr_terminal(links.https), nl=False)
    if qr_file is not None:
        qr_save(links.https, str(qr_file))
        click.echo(f"QR code written to {qr_file}")
