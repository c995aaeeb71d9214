"""A live world on loopback for the probe tests: registry, canary, nodes, a censor, agents.

The censor is a TCP middlebox the proxy is registered behind: it forwards
connections to the node, except those coming from the censored vantage's
source addresses (127.0.0.2, 127.0.0.3), which it resets at once, as DPI
boxes that inject RSTs do.  Every 127.0.0.0/8 address is local on Linux, so
the censored agents simply connect from those addresses (``--source``);
nothing leaves loopback and nothing needs root.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from resistance.config import Endpoint
from resistance.directory.keys import public_key_text
from resistance.probe.keys import load_or_create_probe_key
from resistance.registry.app import create_app
from resistance.registry.client import post_registration, registration_body
from tests.registry.conftest import make_settings


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class RegistryServer:
    """The registry app under uvicorn in a thread, on a fixed port, restartable."""

    def __init__(self, state_dir: Path, db_url: str, **overrides: Any) -> None:
        self.port = free_port()
        self.canary_port = free_port()
        self.settings = make_settings(
            state_dir,
            db_url,
            canary=Endpoint("127.0.0.1", self.canary_port),
            probe_round_seconds=1,
            verdict_window_seconds=1,
            **overrides,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin = ""
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        tokens: list[str] = []
        app = create_app(self.settings, on_admin_token=tokens.append)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            assert self.thread.is_alive(), "registry thread died"
            time.sleep(0.05)
        assert self.server.started
        sock.close()  # uvicorn holds its own reference while serving
        if tokens:
            self.admin = tokens[0]

    def stop(self) -> None:
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.thread.join(15)
            self.server = None

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.admin}"}
        return httpx.request(method, self.url + path, headers=headers, timeout=15, **kw)

    def add_probe(self, state_dir: Path, name: str, country: str, *, control: bool) -> str:
        state_dir.mkdir(parents=True, exist_ok=True)
        key = public_key_text(load_or_create_probe_key(state_dir).public_key())
        body = {"name": name, "country": country, "control": control, "public_key": key}
        response = self.api("POST", "/api/v1/probes", json=body)
        assert response.status_code == 201, response.text
        token: str = response.json()["token"]
        return token

    def register(
        self, node_state: Path, port: int, name: str = "volunteer", *, host: str = "127.0.0.1"
    ) -> int:
        signup = httpx.post(f"{self.url}/api/v1/operators", json={"name": name}, timeout=10)
        token = signup.json()["token"]
        body = registration_body(
            state_dir=node_state,
            operator_id=signup.json()["operator_id"],
            host=host,
            port=port,
            public=True,
            users=[{"username": "alice", "password": "secret"}],
        )
        proxy_id: int = post_registration(registry=self.url, token=token, body=body)["proxy_id"]
        return proxy_id

    def status(self, proxy_id: int) -> dict[str, Any]:
        response = self.api("GET", f"/api/v1/proxies/{proxy_id}/status")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


def sqlite_rows(db_file: Path, query: str) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(db_file)) as conn:
        return list(conn.execute(query))


class Censor:
    """Forwards 127.0.0.1:port → the node; resets connections from blocked sources."""

    def __init__(self, upstream_port: int, blocked: set[str]) -> None:
        self.upstream = upstream_port
        self.blocked = blocked
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, (peer, _) = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if peer in self.blocked:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()  # RST
                continue
            threading.Thread(target=self._forward, args=(conn,), daemon=True).start()

    def _forward(self, conn: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
        except OSError:
            conn.close()
            return

        def pump(a: socket.socket, b: socket.socket) -> None:
            with contextlib.suppress(OSError):
                a.settimeout(30)
                while data := a.recv(65536):
                    b.sendall(data)
            with contextlib.suppress(OSError):
                b.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=pump, args=(upstream, conn), daemon=True)
        t.start()
        pump(conn, upstream)
        t.join(30)
        conn.close()
        upstream.close()

    def close(self) -> None:
        self.stopping.set()
        self.sock.close()
        self.thread.join(2)


SIGNED = re.compile(r"signed batch ([0-9a-f]{32})")


@dataclass
class AgentProcess:
    proc: subprocess.Popen[str]
    log_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text()

    def signed(self) -> set[str]:
        return set(SIGNED.findall(self.log()))

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def start_agent(
    registry: RegistryServer,
    token: str,
    state_dir: Path,
    name: str,
    country: str,
    *,
    source: str | None = None,
    extra: tuple[str, ...] = (),
) -> AgentProcess:
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / f"agent-{time.monotonic_ns()}.log"
    cmd = [
        sys.executable, "-m", "resistance", "probe", "run", "--registry", registry.url,
        "--token", token, "--vantage", name, "--country", country, "--state-dir", str(state_dir),
        "--min-round", "0.5", "--step-timeout", "2", *extra,
    ]  # fmt: skip
    if source:
        cmd += ["--source", source]
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True
        )
    return AgentProcess(proc, log_path)


def wait_for(condition: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {seconds:g} s waiting for {what}")


@contextlib.contextmanager
def agents() -> Iterator[list[AgentProcess]]:
    running: list[AgentProcess] = []
    try:
        yield running
    finally:
        for agent in running:
            agent.stop()
