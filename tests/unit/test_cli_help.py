"""Every `resist` command's --help says what it does and shows an example."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from resistance.cli import COMMANDS as LAZY
from resistance.cli import main


def _commands(
    cmd: click.Command, path: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    if getattr(cmd, "hidden", False):
        return
    yield path, cmd
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd)
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            assert sub is not None, name
            yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(main, ()))


@pytest.mark.parametrize(
    ("path", "command"), COMMANDS, ids=[" ".join(p) or "resist" for p, _ in COMMANDS]
)
def test_help_has_a_summary_and_an_example(path: tuple[str, ...], command: click.Command) -> None:
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert (command.help or "").strip(), "no description"
    assert "xample" in result.output, f"resist {' '.join(path)} --help shows no example"


@pytest.mark.parametrize("name", sorted(LAZY))
def test_the_listed_summary_is_the_commands_own(name: str) -> None:
    """`resist --help` shows the table's summary without importing the command:
    it must say what the command's own docstring says."""
    command = main.get_command(click.Context(main), name)
    assert command is not None
    assert LAZY[name].short_help == command.get_short_help_str(limit=10**6)


def test_listing_shows_every_command_with_its_summary() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    listed = result.output.split("Commands:")[1]
    for name in [*LAZY, "link"]:
        assert f"\n  {name} " in listed, name
    assert "Run a SOCKS5 proxy node that volunteers can safely expose." in listed
