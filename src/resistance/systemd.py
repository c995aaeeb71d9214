"""systemd units for the commands that run for good: node, vpn, registry, probe.

The units ship in the package (``data/systemd``) with ``@RESIST@`` where the
path of the ``resist`` program goes; `resist service install` fills it in and
writes the unit where systemd looks.  Each runs as a dynamic user with only
the capability it needs (binding ports below 1024 for the node, network
administration for the VPN, none for the others), a read-only system, a
private /tmp, and its state in ``/var/lib/resist-NAME`` (``StateDirectory``),
so a reboot or an upgrade keeps keys, users and databases.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import click

from resistance.clikit import CONTEXT, one_line_errors
from resistance.errors import ConfigError

UNITS = ("node", "vpn", "registry", "probe")
UNIT_DIR = Path("/etc/systemd/system")
PLACEHOLDER = "@RESIST@"
#: Where a unit's program cannot be (ProtectHome=yes, and other users cannot read it).
HIDDEN = ("/root/", "/home/", "/run/user/")


def unit_name(name: str) -> str:
    return f"resist-{name}.service"


def unit_text(name: str, resist: str) -> str:
    """The unit for ``name`` with ``resist`` as the program it runs."""
    if name not in UNITS:
        raise ConfigError(f"no unit {name!r}: one of {', '.join(UNITS)}")
    if not Path(resist).is_absolute():
        raise ConfigError(f"systemd needs an absolute path to resist, not {resist!r}")
    template = resources.files("resistance") / "data" / "systemd" / unit_name(name)
    return template.read_text(encoding="utf-8").replace(PLACEHOLDER, resist)


def resist_program() -> str:
    """The absolute path of the `resist` being run (the one the unit should start)."""
    found = shutil.which("resist")
    here = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    if here is not None and here.name == "resist" and here.exists():
        return str(here)
    if found is not None:
        return str(Path(found).resolve())
    raise ConfigError("cannot find the resist program; give it with --resist PATH")


def install_unit(name: str, *, unit_dir: Path, resist: str) -> Path:
    path = unit_dir / unit_name(name)
    try:
        unit_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(unit_text(name, resist), encoding="utf-8")
        path.chmod(0o644)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    return path


@click.group(context_settings=CONTEXT)
def service() -> None:
    """systemd units that keep a node, VPN, registry or probe running across reboots.

    \b
    Examples:
      resist service install node --now
      resist service show registry
    """


@service.command(context_settings=CONTEXT)
@click.argument("name", type=click.Choice(UNITS))
@click.option("--resist", "resist", metavar="PATH", help="The resist program the unit runs.")
@one_line_errors
def show(name: str, resist: str | None) -> None:
    """Print a unit (to read it, or to install it by hand).

    \b
    Example:
      resist service show node > /etc/systemd/system/resist-node.service
    """
    click.echo(unit_text(name, resist or resist_program()), nl=False)


@service.command(context_settings=CONTEXT)
@click.argument("name", type=click.Choice(UNITS))
@click.option(
    "--unit-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=UNIT_DIR,
    show_default=True,
    help="Where to write the unit.",
)
@click.option("--resist", "resist", metavar="PATH", help="The resist program the unit runs.")
@click.option("--now", is_flag=True, help="Also reload systemd and enable and start the unit.")
@one_line_errors
def install(name: str, unit_dir: Path, resist: str | None, now: bool) -> None:
    """Install a unit; its settings go in /etc/resist/NAME.env, its state in /var/lib.

    \b
    Examples:
      resist service install node --now
      echo 'RESIST_NODE_ARGS=--listen 0.0.0.0:1080 --public-host 203.0.113.7' \\
          > /etc/resist/node.env && systemctl restart resist-node
    """
    program = resist or resist_program()
    path = install_unit(name, unit_dir=unit_dir, resist=program)
    click.echo(f"wrote {path}")
    if program.startswith(HIDDEN):
        click.echo(
            f"warning: {program} is under a home directory, which the unit's dynamic user "
            "cannot read: install resist in /opt/resist (see the README)",
            err=True,
        )
    steps = [["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", unit_name(name)]]
    if not now:
        click.echo("start it with: " + " && ".join(" ".join(step) for step in steps))
        return
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, check=False, timeout=120)
        if done.returncode != 0:
            raise ConfigError(f"{' '.join(step)} failed: {done.stderr.strip()[-300:]}")
    click.echo(f"{unit_name(name)} enabled and started")
