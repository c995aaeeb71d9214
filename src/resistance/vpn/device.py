"""The only place that runs ``ip``, ``wg``, ``nft``, ``sysctl`` and ``wireguard-go``.

Every command runs in the server's network namespace when one is set
(``ip netns exec NS ...``, for tests and labs).  Secrets never go on a
command line (where ``ps`` shows them): private and preshared keys are
handed to ``wg`` on standard input (``private-key /dev/stdin``).

This module never runs ``wg show IF dump`` nor ``wg showconf``: both print the
server's private key.  Status comes from ``wg show IF transfer``,
``latest-handshakes`` and ``public-key``, which hold public keys only.

OS failures are translated here, once, into :class:`VpnError` whose message
is one line made of the command's name and ``stderr`` (which for these
commands never contains a secret, as secrets only travel on stdin).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from resistance.commands import run_tool
from resistance.errors import ResistanceError

log = logging.getLogger(__name__)

SOCKET_DIR: Final = Path("/var/run/wireguard")
_TIMEOUT: Final = 20.0


class VpnError(ResistanceError):
    """A system command needed by the VPN failed; the message says which and why."""


@dataclass(frozen=True, slots=True)
class PeerStatus:
    public_key: str
    rx: int
    tx: int
    latest_handshake: int  # unix time, 0 = never


class Host:
    """Runs commands on this host, or inside network namespace ``netns``."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def _prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    def run(self, *cmd: str, input: str | None = None, check: bool = True) -> str:
        argv = [*self._prefix(), *cmd]
        return run_tool(argv, error=VpnError, input=input, timeout=_TIMEOUT, check=check, shown=cmd)

    def _status(self, *cmd: str) -> int:
        argv = [*self._prefix(), *cmd]
        try:
            return subprocess.run(argv, capture_output=True, timeout=_TIMEOUT).returncode
        except (FileNotFoundError, subprocess.TimeoutExpired):
            return 127

    def succeeds(self, *cmd: str) -> bool:
        return self._status(*cmd) == 0

    def spawn(self, *cmd: str, log_path: Path, env: dict[str, str]) -> int:
        """Start a long-lived process in its own session; its PID."""
        with log_path.open("ab") as out:
            proc = subprocess.Popen(
                [*self._prefix(), *cmd],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                env={**os.environ, **env},
            )
        return proc.pid


def tools_missing(*, userspace: bool = True) -> list[str]:
    names = ["ip", "wg", "nft", "sysctl"] + (["wireguard-go"] if userspace else [])
    return [n for n in names if shutil.which(n) is None]


class WireGuardDevice:
    """One WireGuard interface: create, configure live, read status, delete."""

    def __init__(self, name: str, host: Host) -> None:
        self.name = name
        self.host = host

    # -- life cycle ----------------------------------------------------------

    def exists(self) -> bool:
        return self.host.succeeds("ip", "link", "show", "dev", self.name)

    def create(self, log_path: Path) -> int | None:
        """Create the interface: the kernel module if present, else wireguard-go.

        Returns wireguard-go's PID, or None when the kernel made the interface.
        """
        if self.host.succeeds("ip", "link", "add", "dev", self.name, "type", "wireguard"):
            log.info("interface %s created by the kernel module", self.name)
            return None
        if shutil.which("wireguard-go") is None:
            raise VpnError(
                "no WireGuard kernel module and no wireguard-go: install wireguard-go "
                "(apt-get install wireguard-go)"
            )
        socket = SOCKET_DIR / f"{self.name}.sock"
        if socket.exists():
            raise VpnError(
                f"{socket} exists: interface name {self.name!r} is in use (maybe in another "
                "network namespace); choose another --interface"
            )
        pid = self.host.spawn(
            "wireguard-go",
            "-f",
            self.name,
            log_path=log_path,
            env={"LOG_LEVEL": "error", "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"},
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if socket.exists() and self.exists():
                log.info("interface %s created by wireguard-go (pid %d)", self.name, pid)
                return pid
            if not _alive(pid):
                break
            time.sleep(0.05)
        stop_process(pid)
        raise VpnError(f"wireguard-go did not create {self.name}; see {log_path}")

    def delete(self, pid: int | None) -> None:
        if self.exists():
            self.host.run("ip", "link", "del", "dev", self.name, check=False)
        if pid is not None:
            stop_process(pid)
        socket = SOCKET_DIR / f"{self.name}.sock"
        if pid is not None and socket.exists():
            socket.unlink(missing_ok=True)

    def configure(self, private_key: str, port: int) -> None:
        self.host.run(
            "wg",
            "set",
            self.name,
            "listen-port",
            str(port),
            "private-key",
            "/dev/stdin",
            input=private_key + "\n",
        )

    def address_up(self, address: str, mtu: int) -> None:
        if address not in self.host.run("ip", "-4", "-o", "address", "show", "dev", self.name):
            self.host.run("ip", "address", "add", address, "dev", self.name)
        self.host.run("ip", "link", "set", "dev", self.name, "mtu", str(mtu), "up")

    # -- peers, live ---------------------------------------------------------

    def set_peer(self, public_key: str, preshared_key: str | None, allowed_ips: list[str]) -> None:
        """Add or update one peer, without touching the others or their sessions."""
        self.host.run(
            "wg",
            "set",
            self.name,
            "peer",
            public_key,
            "preshared-key",
            "/dev/stdin" if preshared_key else "/dev/null",
            "allowed-ips",
            ",".join(allowed_ips),
            input=(preshared_key + "\n") if preshared_key else None,
        )

    def remove_peer(self, public_key: str) -> None:
        self.host.run("wg", "set", self.name, "peer", public_key, "remove")

    def public_key(self) -> str:
        return self.host.run("wg", "show", self.name, "public-key").strip()

    def peers(self) -> dict[str, PeerStatus]:
        transfer = self.host.run("wg", "show", self.name, "transfer")
        handshakes = self.host.run("wg", "show", self.name, "latest-handshakes")
        latest: dict[str, int] = {}
        for line in handshakes.splitlines():
            parts = line.split("\t")
            if len(parts) == 2 and parts[1].isdigit():
                latest[parts[0]] = int(parts[1])
        status: dict[str, PeerStatus] = {}
        for line in transfer.splitlines():
            parts = line.split("\t")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                key = parts[0]
                # wg's "received" is what the server got from the peer: the peer's upload.
                status[key] = PeerStatus(key, int(parts[1]), int(parts[2]), latest.get(key, 0))
        return status

    # -- host settings -------------------------------------------------------

    def forwarding(self) -> str:
        return self.host.run("sysctl", "-n", "net.ipv4.ip_forward").strip()

    def set_forwarding(self, value: str) -> None:
        self.host.run("sysctl", "-q", "-w", f"net.ipv4.ip_forward={value}")

    def nft(self, script: str) -> None:
        self.host.run("nft", "-f", "-", input=script)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _is_wireguard_go(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(part.endswith(b"wireguard-go") for part in cmdline[:1])


def stop_process(pid: int, timeout: float = 5.0) -> None:
    """Stop wireguard-go by its PID (only if that PID still is wireguard-go)."""
    if not _alive(pid) or not _is_wireguard_go(pid):
        _reap(pid)
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not _alive(pid):
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    _reap(pid)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
