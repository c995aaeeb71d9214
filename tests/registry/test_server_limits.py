"""Issue 26 (points 2, 4, 7) against the real server: slow and bloated clients are cut
off by `serve`'s documented limits, forwarded headers are believed only from
--trust-proxy, and `serve -vv` writes no token, password or key."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from resistance.registry import repositories as repo
from resistance.registry.db import make_engine, make_sessions
from resistance.registry.settings import RateLimit
from tests.registry.conftest import ThreadedServer, make_settings
from tests.registry.test_serve import resist, serve_process

LIMITS = (
    "--header-timeout", "1", "--body-timeout", "1", "--max-headers", "20",
    "--max-header-bytes", "4096", "--max-body-bytes", "2048", "--max-connections", "40",
)  # fmt: skip


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[tuple[str, int]]:
    db = f"sqlite+aiosqlite:///{tmp_path / 'registry.sqlite3'}"
    with serve_process(tmp_path / "reg", db, *LIMITS) as (url, _token):
        parts = urlsplit(url)
        assert parts.hostname and parts.port
        yield parts.hostname, parts.port


def _connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=10)
    sock.settimeout(10)
    return sock


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closes the connection (reading until EOF, at most 10 s)."""
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def _answer(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data and data.endswith(b"}"):
                break
    except (TimeoutError, ConnectionResetError):
        pass
    assert data.startswith(b"HTTP/1.1 "), data
    return int(data[9:12]), data


def test_slow_headers_are_cut_off(limited: tuple[str, int]) -> None:
    sock = _connect(limited)
    start = time.monotonic()
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    cut = False
    for i in range(40):  # one header byte every 0.2 s: 8 s if nobody cuts it
        try:
            sock.sendall(b"X"[: i % 1 + 1])
        except (BrokenPipeError, ConnectionResetError):
            cut = True
            break
        sock.settimeout(0.2)
        try:
            if sock.recv(1) == b"":
                cut = True
                break
        except TimeoutError:
            pass
    sock.close()
    assert cut, "a client sending its headers a byte at a time was not cut off"
    assert time.monotonic() - start < 7  # the limit is 1 s; generous for a busy machine


def test_half_sent_and_silent_connections_are_closed(limited: tuple[str, int]) -> None:
    socks = [_connect(limited) for _ in range(30)]
    for i, sock in enumerate(socks):
        if i % 2:
            sock.sendall(b"POST /api/v1/operators HTTP/1.1\r\nHost: x\r\n")  # never finished
    assert all(_closed_by_server(sock) for sock in socks)
    for sock in socks:
        sock.close()
    # and the server still serves (keep-alive works between requests)
    with httpx.Client(base_url=f"http://{limited[0]}:{limited[1]}") as client:
        assert [client.get("/healthz").status_code for _ in range(3)] == [200] * 3


def test_header_floods_are_refused(limited: tuple[str, int]) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(1000))
    some = b"".join(b"X-H%d: v\r\n" % i for i in range(25))
    big = b"X-Big: " + b"a" * 5000 + b"\r\n"
    for headers, says in [
        (many, b"more than 20 header lines"),
        (some, b"more than 20 header lines"),
        (big, b"headers are larger than 4096 bytes"),
    ]:
        with _connect(limited) as sock:
            sock.sendall(request + headers + b"\r\n")
            status, data = _answer(sock)
            assert status == 431 and says in data, data[:200]
    # a header block still arriving is cut at the limit by h11 (400, closed)
    with _connect(limited) as sock:
        sock.sendall(request)
        for _ in range(10):
            try:
                sock.sendall(b"X-Slow: " + b"b" * 1000 + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
        assert _answer(sock)[0] == 400
        assert _closed_by_server(sock)


def test_chunked_body_over_the_limit_is_413(limited: tuple[str, int]) -> None:
    head = (
        b"POST /api/v1/operators HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    with _connect(limited) as sock:
        sock.sendall(head)
        for _ in range(3):
            sock.sendall(b"400\r\n" + b" " * 0x400 + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
        status, data = _answer(sock)
    assert status == 413 and b"larger than 2048 bytes" in data
    with _connect(limited) as sock:  # a declared length over the limit too
        sock.sendall(b"POST /api/v1/operators HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n\r\n{")
        assert _answer(sock)[0] == 413


def test_slow_body_gets_408(limited: tuple[str, int]) -> None:
    with _connect(limited) as sock:
        sock.sendall(
            b"POST /api/v1/operators HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 20\r\n\r\n{"name":'
        )
        status, data = _answer(sock)
    assert status == 408 and b"did not arrive within 1 s" in data


def test_connections_beyond_the_limit_get_503(limited: tuple[str, int]) -> None:
    held = [_connect(limited) for _ in range(40)]
    try:
        with _connect(limited) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _answer(sock)[0] == 503
    finally:
        for sock in held:
            sock.close()


# --- forwarded headers ------------------------------------------------------------------


def _forged(i: int) -> dict[str, str]:
    return {"X-Forwarded-For": f"198.{i + 1}.0.7"}  # another /16 (assignment) and /24 (sign-up)


@pytest.mark.parametrize("trusted", [False, True])
def test_forged_forwarded_for_from_loopback(tmp_path: Path, db_url: str, trusted: bool) -> None:
    settings = make_settings(
        tmp_path / "reg", db_url, signup_limit=RateLimit(1 / 60, 5),
        trust_proxy=("127.0.0.1/32",) if trusted else (),
    )  # fmt: skip
    from resistance.registry.app import create_app

    app = create_app(settings, on_admin_token=lambda _: None)
    with ThreadedServer(app, settings) as server:
        base = f"http://127.0.0.1:{server.port}"
        asyncio.run(_add_hidden_proxies(db_url, count=6))
        seen: set[str] = set()
        for i in range(10):
            answer = httpx.get(f"{base}/api/v1/proxies/assign", headers=_forged(i), timeout=10)
            assert answer.status_code == 200, answer.text
            seen |= {p["endpoint"]["host"] for p in answer.json()["proxies"]}
        codes = [
            httpx.post(
                f"{base}/api/v1/operators", json={"name": f"f{i}"}, headers=_forged(i), timeout=10
            ).status_code
            for i in range(10)
        ]
    if trusted:  # the operator named loopback a proxy: each forged network counts alone
        assert len(seen) > 3 and codes == [201] * 10
    else:  # from loopback the header is ignored: one network, its 3 proxies, 5 sign-ups
        assert len(seen) == 3 and codes == [201] * 5 + [429] * 5


async def _add_hidden_proxies(db_url: str, *, count: int) -> None:
    engine = make_engine(db_url)
    try:
        async with make_sessions(engine).begin() as session:
            op = await repo.add_operator(session, name="hidden", now=1)
            for i in range(count):
                host = f"203.0.113.{i + 1}"
                await repo.save_proxy(session, fields=_proxy_fields(op.id, host))
    finally:
        await engine.dispose()


def _proxy_fields(operator_id: int, host: str) -> dict[str, Any]:
    return {
        "operator_id": operator_id, "host": host, "port": 1080, "network": host + "/32",
        "public_key": "k" * 43, "protocols": ["socks5"], "probe_user": "p",
        "probe_password": "q", "credentials": [{"username": "u", "password": "s"}],
        "public": False, "status": "active", "registered_at": 1, "verified_at": 1,
    }  # fmt: skip


# --- no secret in the log ---------------------------------------------------------------


def test_serve_vv_logs_no_secret(tmp_path: Path, db_url: str, node_factory: Any) -> None:
    from resistance.directory.keys import public_key_text
    from resistance.node.identity import probe_credential
    from resistance.probe.keys import load_or_create_probe_key

    log = tmp_path / "serve.log"
    node_state = tmp_path / "node"
    node = node_factory("--user", "alice:n0de-user-pass", state_dir=node_state)
    with serve_process(tmp_path / "reg", db_url, "-vv", stderr=log) as (url, admin):
        operator = httpx.post(f"{url}/api/v1/operators", json={"name": "vv"}, timeout=10).json()
        done = resist(
            "registry", "register-node", "--registry", url, "--token", operator["token"],
            "--public-host", "127.0.0.1", "--port", str(node.port),
            "--state-dir", str(node_state), "--user", "alice:n0de-user-pass",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        probe_key = public_key_text(load_or_create_probe_key(tmp_path / "probe").public_key())
        probe = httpx.post(
            f"{url}/api/v1/probes",
            json={"name": "p1", "country": "RU", "public_key": probe_key},
            headers={"Authorization": f"Bearer {admin}"},
            timeout=10,
        ).json()
        work = httpx.get(
            f"{url}/api/v1/probe/assignment",
            headers={"Authorization": f"Bearer {probe['token']}"},
            timeout=10,
        )
        assert work.status_code == 200 and work.json()["proxies"], work.text
        httpx.get(f"{url}/api/v1/operators/me", headers={"Authorization": f"Bearer {admin}"})
    text = log.read_text()
    assert "DEBUG" in text or "INFO" in text, "-vv wrote nothing: the scan proves nothing"
    _user, probe_password = probe_credential(node_state)
    secrets = {
        "admin token": admin, "operator token": operator["token"], "probe token": probe["token"],
        "probe password": probe_password, "user password": "n0de-user-pass",
    }  # fmt: skip
    for name in ("admin", "operator", "probe"):
        token = secrets[f"{name} token"]
        secrets[f"{name} token digest"] = hashlib.sha256(token.encode()).hexdigest()
    key_files = [p for p in (tmp_path / "reg").rglob("*.key") if p.is_file()]
    key_files += [p for p in (tmp_path / "reg").rglob("*.pem") if p.is_file()]
    assert key_files, "the registry made no key files to look for"
    for path in key_files:  # every line of key material (not PEM's BEGIN/END lines)
        for n, line in enumerate(path.read_text().splitlines()):
            if not line.startswith("-----") and len(line.strip()) >= 16:
                secrets[f"{path.name} line {n}"] = line.strip()
    for name, secret in secrets.items():
        assert secret and secret not in text, f"{name} is in the -vv log"


def test_bad_limits_are_refused_before_serving(tmp_path: Path) -> None:
    serve = ("registry", "serve", "--state-dir", str(tmp_path), "--listen", "127.0.0.1:0")
    done = resist(*serve, "--trust-proxy", "10.0.0.0/33")
    assert done.returncode == 2, done.stderr
    assert done.stderr == "resist: error: --trust-proxy '10.0.0.0/33' is not an address or CIDR\n"
    done = resist(*serve, "--max-headers", "5")  # click's own range check
    assert done.returncode == 2 and "5 is not in the range 8<=x<=1000" in done.stderr
