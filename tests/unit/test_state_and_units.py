"""State directories carry a format; the systemd units verify and stay hardened."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from resistance.cli import main
from resistance.errors import ConfigError
from resistance.paths import STATE_FORMAT, STATE_FORMAT_FILE, check_state_format, resolve_state_dir
from resistance.systemd import UNITS, install_unit, unit_text

# -- state format ----------------------------------------------------------------------


def test_a_new_state_directory_is_stamped(tmp_path: Path) -> None:
    state = resolve_state_dir(tmp_path / "new")
    assert (state / STATE_FORMAT_FILE).read_text() == f"{STATE_FORMAT}\n"


def test_an_unstamped_state_directory_is_migrated(tmp_path: Path) -> None:
    """A state directory from before formats (files, no stamp) is format 0 and is
    brought up to date, keeping its files."""
    (tmp_path / "node-users.toml").write_text("u1:secret\n")
    assert check_state_format(tmp_path) == 0
    assert (tmp_path / STATE_FORMAT_FILE).read_text() == f"{STATE_FORMAT}\n"
    assert (tmp_path / "node-users.toml").read_text() == "u1:secret\n"
    assert check_state_format(tmp_path) == STATE_FORMAT  # and is left alone after


def test_an_older_format_is_migrated_step_by_step(tmp_path: Path) -> None:
    (tmp_path / STATE_FORMAT_FILE).write_text("1\n")
    (tmp_path / "old.json").write_text("{}")
    done: list[int] = []

    def rename(path: Path) -> None:
        done.append(1)
        (path / "old.json").rename(path / "new.json")

    def add(path: Path) -> None:
        done.append(2)
        assert (path / STATE_FORMAT_FILE).read_text() == "2\n"  # stamped after each step
        (path / "added").write_text("x")

    assert check_state_format(tmp_path, current=3, migrations={1: rename, 2: add}) == 1
    assert done == [1, 2] and (tmp_path / "new.json").exists() and (tmp_path / "added").exists()
    assert (tmp_path / STATE_FORMAT_FILE).read_text() == "3\n"


def test_a_newer_format_is_refused_clearly(tmp_path: Path) -> None:
    (tmp_path / STATE_FORMAT_FILE).write_text(f"{STATE_FORMAT + 1}\n")
    with pytest.raises(ConfigError) as caught:
        resolve_state_dir(tmp_path)
    message = str(caught.value)
    assert "written by a newer release" in message and "upgrade resist" in message
    assert "\n" not in message
    assert (tmp_path / STATE_FORMAT_FILE).read_text() == f"{STATE_FORMAT + 1}\n"  # untouched


def test_a_newer_format_stops_a_command_with_one_line(tmp_path: Path) -> None:
    (tmp_path / STATE_FORMAT_FILE).write_text("99\n")
    done = subprocess.run(
        [sys.executable, "-m", "resistance", "probe", "key", "--state-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert re.fullmatch(r"resist: error: state directory .* has format 99, .*\n", done.stderr)


def test_a_garbled_stamp_is_an_error(tmp_path: Path) -> None:
    (tmp_path / STATE_FORMAT_FILE).write_text("banana")
    with pytest.raises(ConfigError, match="does not hold a state format number"):
        check_state_format(tmp_path)


# -- systemd units ---------------------------------------------------------------------

RESIST = "/opt/resist/bin/resist"
#: `systemd-analyze security` exposure (0 safest .. 10) each unit must stay at or
#: below: the README records the measured scores.
MAX_EXPOSURE = 2.5


def test_units_need_a_real_program(tmp_path: Path) -> None:
    for name in UNITS:
        text = unit_text(name, RESIST)
        assert f"ExecStart={RESIST} " in text and "@RESIST@" not in text
        for setting in (
            "DynamicUser=yes", "ProtectSystem=strict", "PrivateTmp=yes",
            f"StateDirectory=resist-{name}", "NoNewPrivileges=yes", "ProtectHome=yes",
        ):  # fmt: skip
            assert setting in text, (name, setting)
    with pytest.raises(ConfigError, match="absolute path"):
        unit_text("node", "resist")
    with pytest.raises(ConfigError, match="no unit"):
        unit_text("nope", RESIST)


def test_install_writes_the_unit(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["service", "install", "registry", "--unit-dir", str(tmp_path), "--resist", RESIST]
    )
    assert result.exit_code == 0, result.output
    path = tmp_path / "resist-registry.service"
    assert path.read_text() == unit_text("registry", RESIST)
    assert "systemctl enable --now resist-registry.service" in result.output
    home = CliRunner().invoke(
        main, ["service", "install", "node", "--unit-dir", str(tmp_path), "--resist",
               "/root/.venv/bin/resist"],
    )  # fmt: skip
    assert home.exit_code == 0 and "warning: /root/.venv/bin/resist is under a home" in home.output


needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def _unit_file(tmp_path: Path, name: str) -> Path:
    """The unit with the test's own resist (verify checks that the program exists)."""
    program = shutil.which("resist") or str(Path(sys.executable).with_name("resist"))
    return install_unit(name, unit_dir=tmp_path, resist=program)


@needs_systemd
@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verify(tmp_path: Path, name: str) -> None:
    done = subprocess.run(
        ["systemd-analyze", "verify", str(_unit_file(tmp_path, name))],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"resist-{name}.service" not in done.stderr, done.stderr


@needs_systemd
@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_security(tmp_path: Path, name: str) -> None:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(_unit_file(tmp_path, name))],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", done.stdout)
    assert found is not None, done.stdout + done.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, done.stdout
