"""The README is tested: every ```console block runs, in order, and prints what it shows.

Convention (also in a comment at the top of README.md):

* A ```console block runs by default.  Each line starting with ``$ `` or ``# `` is a
  command (a trailing ``\\`` continues it on the next line); the lines after it,
  up to the next command, are what it prints (stdout and stderr together).
* An HTML comment right before the block changes that:
  ``<!-- readme-test: skip (why) -->`` does not run it (say why: a VPS, the
  internet, a wallet, the lab…);
  ``<!-- readme-test: background -->`` starts each command and leaves it running
  until the test ends; the test waits until it has printed the lines shown, which
  are compared (a server's banner is its readiness).
* A line ``…`` in a shown output stands for any number of lines.
* A foreground command must exit 0, unless its shown output says ``error``.
* ``README_TEST_UPDATE=1`` rewrites the shown outputs with this run's, once every
  block passes: the values shown then all come from one real run.

All blocks run as root in one network namespace the test makes (only loopback,
so the defaults' ports are free and nothing can reach the internet), in a
temporary directory holding a ``.venv`` link to the test's environment, with
``resist`` on PATH and RESIST_HOME in that directory.

Before comparing, both the shown and the real output pass through MASKS (in
order): each match becomes ``<name>``, and runs of spaces and table rules
collapse, so generated values and column widths may differ.  When a shown
line matches a real one, each masked value shown is remembered with the real
one, and later commands get the real one: the README can show a real token in
one block and use it in the next, as a reader would copy theirs.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.netns import can_make_namespaces, exec_prefix, loopback_namespace

README = Path(__file__).resolve().parents[2] / "README.md"

#: What differs from run to run, masked in shown and real output alike.
MASKS: tuple[tuple[str, str], ...] = (
    ("time", r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"),  # log lines' timestamps
    ("date", r"\d{4}-\d\d-\d\d"),  # today's round
    ("token", r"rst_[A-Za-z0-9_-]{43}"),  # API tokens
    ("wgkey", r"(?<![\w+/])[A-Za-z0-9+/]{43}="),  # WireGuard keys (base64)
    ("key", r"(?<![\w-])[A-Za-z0-9_-]{43}(?![\w-])"),  # Ed25519 keys (base64url)
    ("hex", r"(?<!\w)[0-9a-f]{32}(?:[0-9a-f]{32})?(?!\w)"),  # batch ids, key ids, digests
    ("password", r"(?<![\w-])[A-Za-z0-9_-]{24}(?![\w-])"),  # the node's generated password
    ("user", r"(?<![\w-])u[0-9a-f]{6}(?![\w-])"),  # the node's generated user
    ("dir", r"(?:/[\w.-]+)+/(?=[\w.-])"),  # directories in paths (state, temporary)
    ("serial", r"(?<!\d)\d{9,}(?!\d)"),  # directory serials, big counts
    ("pid", r"(?<=pid )\d+"),
    ("fdlimit", r"(?<=fd limit )\d+"),  # the machine's descriptor limit
    ("amount", r"(?<![\w.])\d+(?:\.\d+)?(?= ?(?:s|ms|ago)\b)"),  # durations, ages
    ("decimal", r"(?<![\w.])\d+\.\d+(?![\w.])"),  # latencies
)
_MASK = re.compile("|".join(f"(?P<{name}>{pattern})" for name, pattern in MASKS))
_RULES = re.compile(r"[ \t━─═]+")
_DIRECTIVE = re.compile(r"<!--\s*readme-test:\s*(.*?)\s*-->")
_BLOCK = re.compile(r"^```console\n(.*?)^```", re.S | re.M)
ELLIPSIS = "…"
WAIT_SECONDS = 60.0
COMMAND_SECONDS = 180.0


@dataclass
class Command:
    text: str
    shown: list[str]
    line: int  # in README.md
    output_line: int = 0  # where its shown output starts in README.md


@dataclass
class Block:
    line: int
    mode: str  # "run", "background" or "skip"
    commands: list[Command] = field(default_factory=list)


def parse_readme(text: str) -> list[Block]:
    """The ```console blocks of a README, with their directives and commands."""
    blocks = []
    for match in _BLOCK.finditer(text):
        start = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip().splitlines()
        directive = _DIRECTIVE.fullmatch(before[-1].strip()) if before else None
        mode = "run"
        if directive is not None:
            word = directive.group(1).split()[0] if directive.group(1) else ""
            if word == "skip":
                if not re.fullmatch(r"skip \(.+\)", directive.group(1)):
                    raise ValueError(
                        f"README.md:{start}: say why: <!-- readme-test: skip (why) -->"
                    )
                mode = "skip"
            elif word == "background":
                mode = "background"
            else:
                raise ValueError(f"README.md:{start}: unknown directive {directive.group(1)!r}")
        block = Block(start, mode)
        lines = match.group(1).splitlines()
        i = 0
        while i < len(lines):
            line = lines[i]
            if line.startswith(("$ ", "# ")):
                text_ = line[2:]
                at = start + 1 + i
                while text_.endswith("\\") and i + 1 < len(lines):
                    i += 1
                    text_ = text_[:-1].rstrip() + " " + lines[i].strip()
                block.commands.append(Command(text_, [], at, start + 2 + i))
            elif block.commands:
                block.commands[-1].shown.append(line)
            i += 1
        blocks.append(block)
    return blocks


def mask(line: str) -> tuple[str, list[str]]:
    """The line with what varies masked, and the masked values in order."""
    values: list[str] = []

    def one(m: re.Match[str]) -> str:
        values.append(m.group(0))
        return f"<{m.lastgroup}>"

    return _RULES.sub(" ", _MASK.sub(one, line)).strip(), values


def compare(shown: list[str], real: list[str], learned: dict[str, str]) -> str | None:
    """None if ``real`` shows what ``shown`` does (learning masked values), else why not."""
    if ELLIPSIS in shown:
        pattern = "".join(
            r"(?:[^\n]*\n)*?" if line == ELLIPSIS else re.escape(mask(line)[0]) + r"\n"
            for line in shown
        )
        text = "".join(mask(line)[0] + "\n" for line in real)
        return None if re.fullmatch(pattern, text) else _diff(shown, real)
    if len(shown) != len(real):
        return _diff(shown, real)
    pairs: dict[str, str] = {}
    for want, got in zip(shown, real, strict=True):
        (want_masked, want_values), (got_masked, got_values) = mask(want), mask(got)
        if want_masked != got_masked:
            return _diff(shown, real)
        pairs.update(zip(want_values, got_values, strict=True))
    learned.update((k, v) for k, v in pairs.items() if k != v and len(k) >= 6)
    return None


def _diff(shown: list[str], real: list[str]) -> str:
    return "shown:\n  " + "\n  ".join(shown) + "\nreal:\n  " + "\n  ".join(real)


def substitute(command: str, learned: dict[str, str]) -> str:
    for shown in sorted(learned, key=len, reverse=True):
        command = command.replace(shown, learned[shown])
    return command


def test_the_readme_parses_and_says_why_it_skips() -> None:
    blocks = parse_readme(README.read_text(encoding="utf-8"))
    assert any(b.mode == "run" for b in blocks), "no README block runs"
    for block in blocks:
        assert block.commands, f"README.md:{block.line}: a console block without a command"


def test_the_parser_and_masks() -> None:
    text = (
        "<!-- readme-test: background -->\n```console\n$ resist a \\\n   --b\nout\n```\n\n"
        "```console\n$ echo rst_" + "A" * 43 + "\nx\n```\n"
    )
    first, second = parse_readme(text)
    assert first.mode == "background" and first.commands[0].text == "resist a --b"
    assert first.commands[0].shown == ["out"] and second.mode == "run"
    learned: dict[str, str] = {}
    assert compare(["token rst_" + "A" * 43], ["token rst_" + "b" * 43], learned) is None
    assert learned == {"rst_" + "A" * 43: "rst_" + "b" * 43}
    assert compare(["a", ELLIPSIS, "z"], ["a", "b", "c", "z"], learned) is None
    assert compare(["took 1.2 s"], ["took 10.25 s"], learned) is None
    assert compare(["paid 5 sat"], ["paid 6 sat"], learned) is not None
    with pytest.raises(ValueError, match="say why"):
        parse_readme("<!-- readme-test: skip -->\n```console\n$ x\n```\n")


@pytest.fixture
def namespace() -> Iterator[str]:
    if not can_make_namespaces():
        pytest.skip("the README's walkthroughs run as root in a network namespace")
    with loopback_namespace("readme") as name:
        yield name


@pytest.mark.timeout(1200)  # every walkthrough, one command at a time, on a shared machine
def test_every_console_block_does_what_it_shows(namespace: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / ".venv").symlink_to(sys.prefix)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.prefix) / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "RESIST_HOME": str(tmp_path / "home"),
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "80",
        "NO_COLOR": "1",
        "TERM": "dumb",
    }
    env.pop("VIRTUAL_ENV", None)
    learned: dict[str, str] = {}
    background: list[tuple[subprocess.Popen[bytes], Path]] = []
    outputs: list[tuple[Command, list[str]]] = []
    try:
        for block in parse_readme(README.read_text(encoding="utf-8")):
            if block.mode == "skip":
                continue
            for command in block.commands:
                where = f"README.md:{command.line}: {command.text}"
                argv = [*exec_prefix(namespace), "bash", "-c", substitute(command.text, learned)]
                if block.mode == "background":
                    log = tmp_path / f"background-{len(background)}.log"
                    with log.open("wb") as out:
                        proc = subprocess.Popen(
                            argv, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True,
                        )  # fmt: skip
                    background.append((proc, log))
                    real = _wait_for_lines(proc, log, len(command.shown))
                else:
                    done = subprocess.run(
                        argv, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL, timeout=COMMAND_SECONDS,
                    )  # fmt: skip
                    real = done.stdout.decode(errors="replace").splitlines()
                    if done.returncode != 0 and not any(
                        "error" in s.lower() for s in command.shown
                    ):
                        pytest.fail(f"{where}\nexited {done.returncode}:\n" + "\n".join(real))
                problem = compare(command.shown, real, learned)
                if problem is not None:
                    pytest.fail(f"{where}\n{problem}")
                outputs.append((command, real))
    finally:
        for proc, _log in reversed(background):
            _stop(proc)
    assert len(outputs) >= 10, "the walkthroughs' blocks did not run"
    if os.environ.get("README_TEST_UPDATE") == "1":
        _rewrite(outputs, learned, tmp_path)


#: Where the state directory is shown (root's default) when the README is rewritten.
HOME_SHOWN = "/root/.local/share/resistance"
#: ... and the directory the commands run in.
WORK_SHOWN = "/root"


def _rewrite(
    outputs: list[tuple[Command, list[str]]], learned: dict[str, str], tmp_path: Path
) -> None:
    """Put this run's outputs in README.md in place of the shown ones, and the values
    they carry into the commands that use them."""
    lines = README.read_text(encoding="utf-8").split("\n")
    values = {k: v for k, v in learned.items() if not v.startswith(str(tmp_path))}
    shown_paths = {str(tmp_path / "home"): HOME_SHOWN, str(tmp_path / "work"): WORK_SHOWN}
    for command, real in sorted(outputs, key=lambda o: o[0].line, reverse=True):
        at = command.output_line - 1
        if ELLIPSIS not in command.shown:
            lines[at : at + len(command.shown)] = [substitute(x, shown_paths) for x in real]
        for n in range(command.line - 1, at):
            lines[n] = substitute(lines[n], values)
    README.write_text("\n".join(lines), encoding="utf-8")


def _wait_for_lines(proc: subprocess.Popen[bytes], log: Path, count: int) -> list[str]:
    """The first ``count`` lines a background command prints (all if it exits first)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        lines = log.read_bytes().decode(errors="replace").splitlines()
        if (len(lines) >= count and log.read_bytes().endswith(b"\n")) or proc.poll() is not None:
            return lines[:count] if len(lines) >= count else lines
        if time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the command's own process group (it was started in a new session)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
