"""Building, tracking and tearing down one lab.

Theory of operation
-------------------
A lab is its namespaces plus the processes started in them, recorded in
``STATE_DIR/lab.json`` as they are made: each process with its PID *and* its
start time (from /proc), so ``down`` signals only a process that is still the
one it started, never one that reused the PID.  ``up`` refuses to build over
a lab that exists; if any step of ``up`` fails, everything made so far is torn
down before the error is reported.  ``down`` stops the recorded processes
(SIGTERM, then SIGKILL after a grace period), then any process still inside
the lab's namespaces (only lab programs can be there), then deletes the
namespaces, which removes their veth links with them.  It works from the
record alone, so it also cleans up after a crashed ``up`` or demo.
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from resistance.lab import censor, netns
from resistance.lab import topology as topo
from resistance.lab.errors import LabError
from resistance.paths import write_private

STATE_FILE = "lab.json"
WG_SOCKET_DIR = "/var/run/wireguard"
READY_SECONDS = 60.0
STOP_GRACE = 10.0
ADMIN_TOKEN = re.compile(r"admin token \(shown once, keep it\): (\S+)")

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass
class Process:
    role: str
    namespace: str
    pid: int
    ticks: int
    log: str
    argv: list[str] = field(default_factory=list)

    def alive(self) -> bool:
        return netns.process_start_ticks(self.pid) == self.ticks


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab makes network namespaces and needs root: run it with sudo")
    missing = [tool for tool in ("ip", "nft") if not _which(tool)]
    if missing:
        raise LabError(f"the lab needs {' and '.join(missing)} (apt-get install iproute2 nftables)")


def _which(tool: str) -> bool:
    return shutil.which(tool) is not None


class Lab:
    """One lab world: its topology, its state directory and what runs in it."""

    def __init__(self, topology: topo.Topology, state_dir: Path) -> None:
        self.topology = topology
        self.dir = state_dir
        self.processes: list[Process] = []
        #: What later steps need: admin token, directory keys, accounts made.
        self.info: dict[str, Any] = {}
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # --- record ----------------------------------------------------------------------------

    @property
    def record_file(self) -> Path:
        return self.dir / STATE_FILE

    def save(self) -> None:
        record = {
            "name": self.topology.name,
            "namespaces": list(self.topology.namespaces),
            "processes": [asdict(p) for p in self.processes],
            "info": self.info,
        }
        write_private(self.record_file, json.dumps(record, indent=1))

    @classmethod
    def load(cls, state_dir: Path, name: str) -> Lab:
        lab = cls(topo.Topology(name), state_dir)
        try:
            record = json.loads(lab.record_file.read_text())
        except FileNotFoundError:
            return lab
        except (OSError, ValueError) as exc:
            raise LabError(f"cannot read {lab.record_file}: {exc}") from None
        lab.processes = [Process(**p) for p in record.get("processes", [])]
        lab.info = dict(record.get("info", {}))
        return lab

    def exists(self) -> bool:
        return bool(set(self.topology.namespaces) & netns.namespaces())

    def process(self, role: str) -> Process:
        for p in self.processes:
            if p.role == role:
                return p
        raise LabError(f"the lab has no {role}")

    # --- processes -------------------------------------------------------------------------

    def start(
        self,
        role: str,
        namespace: str,
        args: Sequence[str],
        *,
        ready: tuple[str, int] | None = None,
        env: dict[str, str] | None = None,
    ) -> Process:
        """Start ``resist ARGS`` inside ``namespace``; wait until ``ready`` accepts
        TCP connections from inside the namespace.  Secrets go in ``env``, never
        in the arguments (which any user can read in ps)."""
        log = self.dir / "logs" / f"{role}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        argv = [*self.resist_argv(), *args]
        environment = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        with log.open("ab") as out:
            child = subprocess.Popen(
                [*netns.exec_prefix(namespace), *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=environment,
            )
        ticks = netns.process_start_ticks(child.pid) or 0
        proc = Process(role, namespace, child.pid, ticks, str(log), argv)
        self._children[child.pid] = child
        self.processes.append(proc)
        self.save()
        if ready is not None:
            self.wait_ready(proc, *ready)
        return proc

    @staticmethod
    def resist_argv() -> list[str]:
        """This same installation of ``resist``, whatever PATH says inside sudo."""
        return [sys.executable, "-m", "resistance"]

    def start_probe(self, name: str, country: str, *, control: bool, censored: bool) -> Process:
        """Make a probe account for a vantage and run its agent in the right network."""
        from resistance.directory.keys import public_key_text
        from resistance.probe.keys import load_or_create_probe_key

        state = self.dir / f"probe-{name}"
        state.mkdir(parents=True, exist_ok=True)
        key = public_key_text(load_or_create_probe_key(state).public_key())
        body = {"name": name, "country": country, "control": control, "public_key": key}
        token = self.api("POST", "/api/v1/probes", body=body)["token"]
        return self.start(
            f"probe-{name}",
            self.topology.censored if censored else self.topology.free,
            [
                "probe", "run", "--registry", self.topology.registry_url,
                "--vantage", name, "--country", country, "--state-dir", str(state),
                "--min-round", "1", "--step-timeout", "2",
            ],
            env={"RESIST_PROBE_TOKEN": token},
        )  # fmt: skip

    def start_connect(self) -> Process:
        """The user's resist connect in the censored network, trusting the registry's key."""
        state = self.dir / "connect"
        self.info["connect_state"] = str(state)
        trust = [a for k in self.info["directory_keys"] for a in ("--trust", k)]
        return self.start(
            "connect",
            self.topology.censored,
            [
                "connect", "--directory", self.topology.directory_url, *trust,
                "--country", topo.TARGET_COUNTRY,
                "--listen", f"127.0.0.1:{topo.CONNECT_PORT}",
                "--check-interval", "5",
                "--state-dir", str(state),
            ],
            ready=("127.0.0.1", topo.CONNECT_PORT),
        )  # fmt: skip

    def adopt(self, role: str, namespace: str, pid: int) -> Process | None:
        """Record a process another command started in the lab (wireguard-go), so
        status shows it and down stops it by PID like the lab's own."""
        ticks = netns.process_start_ticks(pid)
        if ticks is None:
            return None
        proc = Process(role, namespace, pid, ticks, "", list(netns.argv_of(pid)))
        self.processes.append(proc)
        self.save()
        return proc

    def wait_ready(self, proc: Process, host: str, port: int) -> None:
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            child = self._children.get(proc.pid)
            if child is not None and child.poll() is not None:
                raise LabError(f"{proc.role} exited at start: {self.last_line(proc)}")
            if netns.call_in(proc.namespace, netns.tcp_open, host, port, 0.5):
                return
            time.sleep(0.1)
        raise LabError(f"{proc.role} did not listen on {host}:{port} in {READY_SECONDS:g} s")

    @staticmethod
    def last_line(proc: Process) -> str:
        try:
            lines = Path(proc.log).read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return lines[-1] if lines else "(empty log)"

    def log_text(self, role: str) -> str:
        return Path(self.process(role).log).read_text(errors="replace")

    def _signal_and_wait(self, procs: Sequence[Process], grace: float) -> None:
        live = [p for p in procs if p.alive()]
        for p in live:
            _kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in live:
            child = self._children.pop(p.pid, None)
            while p.alive() and time.monotonic() < deadline:
                if child is not None and child.poll() is not None:
                    break
                time.sleep(0.05)
            if p.alive():
                _kill(p.pid, signal.SIGKILL)
            if child is not None:
                try:
                    child.wait(5)
                except subprocess.TimeoutExpired:
                    pass

    # --- the world -------------------------------------------------------------------------

    def up(self, say: Say = _quiet) -> None:
        """Build the namespaces and the censor; start the data centre, registry and nodes."""
        require_root()
        if self.exists():
            raise LabError(f"lab {self.topology.name} is already up: `resist lab down` removes it")
        self._fresh_dir()
        self.processes, self.info = [], {}
        self.save()
        try:
            self._build(say)
        except BaseException:
            self.down()
            raise

    def _fresh_dir(self) -> None:
        """An empty state directory: a lab never starts from an earlier lab's database."""
        if self.dir.exists() and any(self.dir.iterdir()):
            if not self.record_file.exists():
                raise LabError(f"{self.dir} is not empty and holds no lab record; not touching it")
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)

    def _build(self, say: Say) -> None:
        t = self.topology
        for cmd in t.build_commands():
            netns.run(*cmd)
        say(
            f"namespaces {', '.join(t.namespaces)} joined by veth links "
            f"({topo.LAB_RANGE}, the benchmarking range)"
        )
        censor.install(t.censor)
        censor.block(t.censor, censor.ranges_of([topo.DATACENTRE_RANGE]))
        say(
            f"censor: nftables table {censor.TABLE}; {topo.DATACENTRE_RANGE} blocked from the start"
        )
        self.start(
            "datacentre",
            t.free,
            ["lab", "datacentre", "--listen", f"{topo.DATACENTRE_ADDR}:{topo.DATACENTRE_PORT}"],
            ready=(topo.DATACENTRE_ADDR, topo.DATACENTRE_PORT),
        )
        registry_dir = self.dir / "registry"
        control_pw = secrets.token_hex(8)
        control_url = f"socks5://probe:{control_pw}@{topo.CONTROL_ADDR}:{topo.NODE_PORT}"
        registry = self.start(
            "registry",
            t.free,
            [
                "registry", "serve",
                "--listen", f"{topo.REGISTRY_ADDR}:{topo.REGISTRY_PORT}",
                "--state-dir", str(registry_dir),
                "--network", "regtest",
                "--publish-interval", "2",
                "--allow-private-endpoints",
                "--approve-open-periods",
                "--canary", f"{topo.REGISTRY_ADDR}:{topo.CANARY_PORT}",
                "--probe-round", "2",
                "--verdict-window", "2",
                "--fresh", "30",
                "--probe-control", control_url,
            ],
            ready=(topo.REGISTRY_ADDR, topo.REGISTRY_PORT),
        )  # fmt: skip
        # The socket listens before the app has started: the token line says it has.
        deadline = time.monotonic() + READY_SECONDS
        while not (match := ADMIN_TOKEN.search(self.log_text("registry"))):
            child = self._children.get(registry.pid)
            if time.monotonic() > deadline or (child is not None and child.poll() is not None):
                raise LabError(f"the registry printed no admin token: {self.last_line(registry)}")
            time.sleep(0.1)
        self.info["admin_token"] = match.group(1)
        keys = self.api("GET", "/api/v1/directory/keys")["keys"]
        self.info["directory_keys"] = [k["public_key"] for k in keys]
        say(f"registry at {t.registry_url} (regtest payouts), canary on port {topo.CANARY_PORT}")
        from resistance.node.tlscert import default_name, ensure_certificate

        for i, addr in enumerate(topo.NODE_ADDRS):
            # A volunteer's certificate names a host (a random www.<letters>.net, as a
            # node without a domain gets): the name its users' hellos carry once seen,
            # and what a censor's SNI list can hold.
            (self.dir / f"node-{i + 1}").mkdir(mode=0o700, parents=True, exist_ok=True)
            ensure_certificate(self.dir / f"node-{i + 1}", common_name=default_name())
            self.start(
                f"node-{i + 1}",
                t.free,
                [
                    "node", "--listen", f"{addr}:{topo.NODE_PORT}",
                    "--tls-listen", f"{addr}:{topo.NODE_TLS_PORT}",
                    "--state-dir", str(self.dir / f"node-{i + 1}"),
                    "--public-host", addr,
                    "--allow", topo.DATACENTRE_RANGE,
                    "--allow", f"{topo.REGISTRY_ADDR}/32",
                ],
                ready=(addr, topo.NODE_PORT),
            )  # fmt: skip
        self.start(
            "control-proxy",
            t.free,
            [
                "node", "--listen", f"{topo.CONTROL_ADDR}:{topo.NODE_PORT}",
                "--state-dir", str(self.dir / "control-proxy"),
                "--user", f"probe:{control_pw}",
                "--allow", f"{topo.REGISTRY_ADDR}/32",
            ],
            ready=(topo.CONTROL_ADDR, topo.NODE_PORT),
        )  # fmt: skip
        say(f"the probes' control proxy (up, unregistered, on no list): {topo.CONTROL_ADDR}")
        say(
            f"three SOCKS5 nodes: {', '.join(topo.NODE_ADDRS)} port {topo.NODE_PORT}, "
            f"SOCKS5 inside TLS on {topo.NODE_TLS_PORT}"
        )
        self.save()

    def down(self) -> tuple[int, int]:
        """Stop every process and remove every namespace; (processes, namespaces) removed."""
        stopped = sum(1 for p in self.processes if p.alive())
        self._signal_and_wait(list(reversed(self.processes)), STOP_GRACE)
        present = set(self.topology.namespaces) & netns.namespaces()
        for ns in sorted(present):
            stopped += self._stop_stragglers(ns)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30, check=False)
        censor.forget(self.topology.censor)
        # wireguard-go's control socket lives on the host's file system, not in the
        # namespace: a killed one leaves it behind, and the name could not be reused.
        stale = Path(WG_SOCKET_DIR) / f"{self.topology.wg_interface}.sock"
        if stale.exists() and not self.exists():
            stale.unlink(missing_ok=True)
        self.processes = []
        if self.dir.exists():
            self.save()
        return stopped, len(present)

    @staticmethod
    def _stop_stragglers(namespace: str) -> int:
        """Stop what still runs inside one of the lab's namespaces (the lab started it:
        wireguard-go, say).  SIGTERM first, so wireguard-go removes its control socket."""

        def pids() -> list[int]:
            done = subprocess.run(
                ["ip", "netns", "pids", namespace], capture_output=True, text=True, check=False
            )
            return [int(p) for p in done.stdout.split() if p.isdigit()]

        found = pids()
        for pid in found:
            _kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        while (left := pids()) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in left:
            _kill(pid, signal.SIGKILL)
        return len(found)

    # --- talking to the registry -----------------------------------------------------------

    def api(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: dict[str, Any] | None = None,
        admin: bool = True,
        expect: tuple[int, ...] = (200, 201),
        namespace: str | None = None,
    ) -> dict[str, Any]:
        """A registry API call made from inside ``namespace`` (the free network unless
        said: the registry's rate limits count per network); its JSON object back."""
        from resistance.registry.client import call_registry

        bearer = token or (self.info.get("admin_token") if admin else None)
        request = functools.partial(
            call_registry,
            self.topology.registry_url,
            path,
            token=bearer,
            method=method,
            body=body,
            expect=expect,
            error=LabError,
        )
        return netns.call_in(namespace or self.topology.free, request)

    def status(self) -> dict[str, Any]:
        present = set(self.topology.namespaces) & netns.namespaces()
        report: dict[str, Any] = {
            "name": self.topology.name,
            "namespaces": {ns: ns in present for ns in self.topology.namespaces},
            "processes": [
                {"role": p.role, "namespace": p.namespace, "pid": p.pid, "alive": p.alive()}
                for p in self.processes
            ],
        }
        if self.topology.censor in present:
            try:
                report["censor"] = censor.blocked(self.topology.censor)
                report["censor"]["rules_on"] = censor.load_settings(self.topology.censor).on
            except LabError as exc:
                report["censor"] = {"error": str(exc)}
        return report


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
