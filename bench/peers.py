"""The servers under test: how to start each one, what version it is, how to stop it.

Why one table of peers: every proxy is started the same way (pinned with ``taskset`` to the
proxy core, listening on a fresh loopback port, authenticated as ``bench:bench`` where it
can be), so the numbers differ only by the proxy. A peer that cannot start is skipped with
its reason; the run goes on with the others.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import procstat

USER = "bench"
PASSWORD = "bench"
VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True, slots=True)
class Peer:
    name: str
    auth: bool
    """True if the peer runs with username/password (RFC 1929), False if with no auth."""
    note: str
    argv: Callable[[int, Path], list[str]]
    """The command line, given the port and a private scratch directory."""
    version: Callable[[], str]


def _run_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc.__class__.__name__})"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else f"unknown (exit {out.returncode})"


def _deb_version(package: str) -> str:
    out = _run_version(["dpkg-query", "-W", "-f=${Version}", package])
    return f"{package} {out} (Debian)"


def _pypi_version(package: str) -> str:
    try:
        return f"{package} {importlib.metadata.version(package)} (PyPI)"
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _resist_argv(port: int, scratch: Path) -> list[str]:
    # Every bench connection comes from 127.0.0.1, so the node's per-address cap (512 by
    # default) would end the idle and concurrency tests early; the bench lifts it.
    return [
        str(VENV_BIN / "resist"),
        "node",
        "--listen",
        f"127.0.0.1:{port}",
        "--user",
        f"{USER}:{PASSWORD}",
        "--allow",
        "127.0.0.0/8",
        "--max-connections-per-ip",
        "100000",
        "--max-connections",
        "100000",
        "--state-dir",
        str(scratch / "state"),
    ]


def _microsocks_argv(port: int, _: Path) -> list[str]:
    return ["microsocks", "-i", "127.0.0.1", "-p", str(port), "-u", USER, "-P", PASSWORD]


def _aioss_argv(port: int, scratch: Path) -> list[str]:
    # The command line selects the method (-A 2); the users come only from a config file.
    config = scratch / "aioss.json"
    config.write_text(json.dumps({"USERS": {USER: PASSWORD}}))
    return [
        str(VENV_BIN / "asyncio_socks_server"),
        "-H",
        "127.0.0.1",
        "-P",
        str(port),
        "-A",
        "2",
        "--config",
        str(config),
    ]


def _pproxy_argv(port: int, _: Path) -> list[str]:
    # Same as `pproxy -l socks5://…#user:pass`, through a shim that lets it start on uvloop.
    shim = Path(__file__).with_name("pproxy_uvloop.py")
    return [sys.executable, str(shim), "-l", f"socks5://127.0.0.1:{port}#{USER}:{PASSWORD}"]


_DANTE_CONFIG = """\
logoutput: stderr
internal: 127.0.0.1 port = {port}
external: 127.0.0.1
clientmethod: none
socksmethod: none
user.privileged: root
user.unprivileged: nobody
client pass {{
    from: 127.0.0.0/8 to: 0.0.0.0/0
    log: error
}}
socks pass {{
    from: 127.0.0.0/8 to: 0.0.0.0/0
    command: connect
    log: error
}}
"""


def _dante_argv(port: int, scratch: Path) -> list[str]:
    config = scratch / "danted.conf"
    config.write_text(_DANTE_CONFIG.format(port=port))
    return ["danted", "-f", str(config), "-p", str(scratch / "danted.pid")]


PEERS: dict[str, Peer] = {
    peer.name: peer
    for peer in (
        Peer(
            name="resist",
            auth=True,
            note="ours; per-IP connection cap lifted",
            argv=_resist_argv,
            version=lambda: _run_version([str(VENV_BIN / "resist"), "--version"]),
        ),
        Peer(
            name="resist-w2",
            auth=True,
            note="ours, --workers 2: two processes on the port, each its own descriptor limit",
            argv=lambda port, scratch: [*_resist_argv(port, scratch), "--workers", "2"],
            version=lambda: _run_version([str(VENV_BIN / "resist"), "--version"]),
        ),
        Peer(
            name="microsocks",
            auth=True,
            note="C, thread per connection",
            argv=_microsocks_argv,
            version=lambda: _deb_version("microsocks"),
        ),
        Peer(
            name="asyncio-socks-server",
            auth=True,
            note="Python asyncio streams",
            argv=_aioss_argv,
            version=lambda: _pypi_version("asyncio-socks-server"),
        ),
        Peer(
            name="pproxy",
            auth=True,
            note="Python asyncio on uvloop",
            argv=_pproxy_argv,
            version=lambda: _pypi_version("pproxy"),
        ),
        Peer(
            # Dante's `username` method checks system accounts (passwd/PAM); the bench does
            # not create users on the machine, so Dante runs without authentication.
            name="dante",
            auth=False,
            note="C, multi-process; no auth",
            argv=_dante_argv,
            version=lambda: _deb_version("dante-server"),
        ),
    )
}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class StartError(Exception):
    """The server did not come up; the message says why, with the tail of its log."""


def _pinned(argv: list[str], cpu: int) -> list[str]:
    if shutil.which("taskset") is None:
        raise StartError("taskset not found (util-linux); cannot pin to a core")
    return ["taskset", "-c", str(cpu), *argv]


class Process:
    """A child started by the bench, pinned to one core, stopped by its own PID tree."""

    def __init__(self, argv: list[str], cpu: int, log_path: Path) -> None:
        self.argv = _pinned(argv, cpu)
        self.log_path = log_path
        self._log = log_path.open("wb")
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
        except OSError as exc:
            self._log.close()
            raise StartError(f"cannot run {argv[0]}: {exc}") from exc

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 8) -> str:
        self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the whole tree this process started, then SIGKILL what is left."""
        tree = procstat.process_tree(self.pid) if self.alive() else []
        for pid in tree:
            _signal(pid, signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + grace
        for pid in tree:
            while _exists(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            _signal(pid, signal.SIGKILL)
        if self.popen.poll() is None:
            self.popen.wait(grace)
        self._log.close()


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _exists(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def wait_listening(process: Process, host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            tail = process.log_tail() or "(no output)"
            raise StartError(f"exited with code {process.popen.returncode}: {tail}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise StartError(f"not listening on {host}:{port} after {timeout:.0f}s: {process.log_tail()}")


def start_sink(cpu: int, log_path: Path, timeout: float = 15.0) -> tuple[Process, int, int]:
    """Start bench/sink.py on ``cpu``; return it with its bulk and echo ports."""
    sink = Process([sys.executable, str(Path(__file__).with_name("sink.py"))], cpu, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log_path.read_text(errors="replace").splitlines():
            if line.startswith("READY "):
                ports = dict(item.split("=") for item in line.split()[1:])
                return sink, int(ports["bulk"]), int(ports["echo"])
        if not sink.alive():
            break
        time.sleep(0.05)
    tail = sink.log_tail()
    sink.stop()
    raise StartError(f"sink did not start: {tail}")
