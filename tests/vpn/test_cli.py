"""The ``resist vpn`` command line: help with examples, one-line errors, no root needed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from resistance.cli import main
from resistance.vpn.cli import vpn

COMMANDS = sorted(vpn.commands)


def test_vpn_is_registered() -> None:
    assert main.get_command(click.Context(main), "vpn") is vpn


@pytest.mark.parametrize("name", ["", *COMMANDS])
def test_every_command_has_help_with_an_example(name: str) -> None:
    args = ["vpn", *([name] if name else []), "--help"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "Example" in result.output
    assert "resist vpn" in result.output


def test_commands_cover_the_issue() -> None:
    assert {
        "init", "up", "down", "add", "add-probe", "list", "disable", "enable", "remove",
        "rotate", "limit", "enforce", "serve", "probe", "amnezia-relay", "amnezia-client",
    } <= set(COMMANDS)  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["list"], "run resist vpn init first"),
        (["add", "bob", "--quota", "lots"], "bad quota"),
        (["init", "--endpoint", "h:99999", "--netns", "x"], "port must be"),
        (["init", "--endpoint", "h", "--subnet", "10.0.0.1/24", "--netns", "x"], "bad --subnet"),
        (
            ["init", "--endpoint", "h", "--interface", "much-too-long-name", "--netns", "x"],
            "bad interface",
        ),
        (
            ["probe", "127.0.0.1:9", "--server-key", "nope", "--key", "/dev/null"],
            "bad --server-key",
        ),
        (["init", "--endpoint", "h", "--amnezia-port", "5", "--netns", "x"], "need --amnezia"),
        (["init", "--endpoint", "h", "--amnezia-legacy", "--netns", "x"], "need --amnezia"),
        (["init", "--endpoint", "h", "--amnezia-v3", "--netns", "x"], "need --amnezia"),
        (
            [
                "init",
                "--endpoint",
                "h",
                "--amnezia",
                "--amnezia-v3",
                "--amnezia-legacy",
                "--netns",
                "x",
            ],
            "exclude each other",
        ),
        (
            ["init", "--endpoint", "h:5000", "--amnezia", "--amnezia-port", "5000", "--netns", "x"],
            "not the WireGuard port",
        ),
        (["amnezia-relay"], "run resist vpn init first"),
    ],
)
def test_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    argv = [sys.executable, "-m", "resistance", "vpn", *args]
    if args[0] != "probe":
        argv += ["--state-dir", str(tmp_path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("resist: error:")
    assert message in done.stderr


def test_probe_of_a_silent_port_fails(tmp_path: Path) -> None:
    from resistance.vpn import keys

    key = tmp_path / "probe.key"
    key.write_text(keys.KeyPair.generate().private_text)
    server = keys.KeyPair.generate().public_text
    argv = [sys.executable, "-m", "resistance", "vpn", "probe", "127.0.0.1:9"]
    argv += ["--server-key", server, "--key", str(key), "--timeout", "0.3"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and done.stdout.startswith("down:")
    assert key.read_text() not in done.stdout + done.stderr
