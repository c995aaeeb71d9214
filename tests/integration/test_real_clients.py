"""Clients no one here wrote, through a live node, over IPv4 and IPv6 loopback.

curl (with the node or the client resolving names), python-socks on asyncio,
PySocks over TCP and UDP, and proxychains4 running curl.  Each test proves
the traffic went through the node, not around it: the destination looks up
which process holds the other end of its connection and finds the node's, or
the client's own socket is connected to the node, and the same client fails
once the node is stopped.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import socks
from python_socks import ProxyConnectionError
from python_socks.async_.asyncio import Proxy

from tests.conftest import EchoServer, RunningNode, UdpEcho, has_ipv6_loopback

USER, PASSWORD = "alice", "secret"
NODE_ARGS = (
    "--user",
    f"{USER}:{PASSWORD}",
    "--allow",
    "127.0.0.0/8",
    "--allow",
    "::1/128",
    "--log-destinations",
)
FILE_SIZE = 3 * 1024 * 1024 + 17

needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback here")


def localhost_is_ipv4() -> bool:
    """Client-side resolution of "localhost" must land on the IPv4 site and echo server."""
    try:
        infos = socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and infos[0][4][0] == "127.0.0.1"


# -- a loopback web site that knows who calls it ---------------------------------------


def owner_pid(peer: tuple[str, int]) -> int | None:
    """The process holding the local end ``peer`` of a TCP connection to us."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and (conn.laddr.ip, conn.laddr.port) == peer and conn.pid is not None:
            return int(conn.pid)
    return None


class Site:
    """HTTP on 127.0.0.1 and ::1: GET /file sends a generated file, PUT answers the
    SHA-256 of what it got; each request records which process called."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.sha256 = hashlib.sha256(body).hexdigest()
        self.visits: list[int | None] = []
        self.servers: list[http.server.ThreadingHTTPServer] = []
        self.threads: list[threading.Thread] = []
        self.port4 = self._serve("127.0.0.1", socket.AF_INET)
        self.port6 = self._serve("::1", socket.AF_INET6) if has_ipv6_loopback() else 0

    def _serve(self, host: str, family: int) -> int:
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.visits.append(owner_pid(self.client_address[:2]))
                body = site.body if self.path == "/file" else b"hello\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self) -> None:
                site.visits.append(owner_pid(self.client_address[:2]))
                length = int(self.headers.get("Content-Length", "0"))
                digest = hashlib.sha256(self.rfile.read(length)).hexdigest().encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(digest)))
                self.end_headers()
                self.wfile.write(digest)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            address_family = family
            daemon_threads = True

        server = Server((host, 0), Handler)
        thread = threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True)
        thread.start()
        self.servers.append(server)
        self.threads.append(thread)
        return int(server.server_address[1])

    def url(self, host: str) -> str:
        port = self.port6 if host == "[::1]" else self.port4
        return f"http://{host}:{port}/file"

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()
        for thread in self.threads:
            thread.join(5)


@pytest.fixture(scope="module")
def body() -> bytes:
    return os.urandom(FILE_SIZE)


@pytest.fixture
def site(body: bytes) -> Iterator[Site]:
    s = Site(body)
    yield s
    s.close()


@pytest.fixture
def start_node(node_factory: Any) -> Iterator[Callable[..., RunningNode]]:
    """Nodes with alice, loopback allowed and destinations logged; checked when done."""
    started: list[RunningNode] = []

    def start(listen: str = "127.0.0.1:0", *extra: str) -> RunningNode:
        node = node_factory(*NODE_ARGS, *extra, listen=listen)
        started.append(node)
        return node

    yield start
    for node in started:
        status = node.stop()
        err = node.stderr()
        assert "Traceback" not in err, err
        assert status == 0, f"node exited with {status}: {err}"


def proxy_netloc(node: RunningNode, password: str = PASSWORD) -> str:
    return f"{USER}:{password}@{node.url_host}:{node.port}"


# -- curl --------------------------------------------------------------------------------


def clean_env() -> dict[str, str]:
    """The environment without proxy settings, so nothing but the flags chooses a route."""
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


def curl(
    *args: str, out: Path, timeout: float = 60, wrapper: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    cmd = [*wrapper, "curl", "-sS", "--max-time", "30", "-o", str(out), *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=clean_env(), check=False
    )


def fetched(out: Path, site: Site) -> bool:
    return out.exists() and hashlib.sha256(out.read_bytes()).hexdigest() == site.sha256


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@needs_curl
@pytest.mark.parametrize(
    ("mode", "host", "logged"),
    [
        ("--socks5-hostname", "127.0.0.1", "CONNECT 127.0.0.1:"),
        ("--socks5-hostname", "localhost", "CONNECT localhost:"),  # the node resolves
        pytest.param("--socks5-hostname", "[::1]", "CONNECT ::1:", marks=needs_ipv6),
        ("--socks5", "127.0.0.1", "CONNECT 127.0.0.1:"),
        pytest.param(
            "--socks5",
            "localhost",
            "CONNECT 127.0.0.1:",  # curl resolves and sends the address
            marks=pytest.mark.skipif(not localhost_is_ipv4(), reason="localhost is not 127.0.0.1"),
        ),
        pytest.param("--socks5", "[::1]", "CONNECT ::1:", marks=needs_ipv6),
    ],
)
def test_curl(
    start_node: Any, site: Site, tmp_path: Path, mode: str, host: str, logged: str
) -> None:
    node = start_node()
    out = tmp_path / "file"
    result = curl(mode, proxy_netloc(node), site.url(host), out=out)
    assert result.returncode == 0, result.stderr
    assert fetched(out, site)
    assert site.visits == [node.proc.pid]  # the site was called by the node
    port = site.port6 if host == "[::1]" else site.port4
    assert f"{logged}{port}" in node.stderr()


@needs_curl
@pytest.mark.parametrize("host", ["127.0.0.1", pytest.param("[::1]", marks=needs_ipv6)])
def test_curl_upload(start_node: Any, site: Site, tmp_path: Path, host: str) -> None:
    node = start_node()
    upload = tmp_path / "upload"
    upload.write_bytes(site.body[::-1])
    out = tmp_path / "digest"
    # No "Expect: 100-continue": http.server speaks HTTP/1.0 and would let curl wait.
    args = ("-H", "Expect:", "-T", str(upload), site.url(host).replace("/file", "/upload"))
    result = curl("--socks5-hostname", proxy_netloc(node), *args, out=out)
    assert result.returncode == 0, result.stderr
    assert out.read_text() == hashlib.sha256(site.body[::-1]).hexdigest()
    assert site.visits == [node.proc.pid]


@needs_curl
def test_curl_wrong_password_is_refused_and_the_node_serves_on(
    start_node: Any, site: Site, tmp_path: Path
) -> None:
    node = start_node()
    out = tmp_path / "file"
    result = curl("--socks5-hostname", proxy_netloc(node, "wrong"), site.url("127.0.0.1"), out=out)
    assert result.returncode == 97, result  # "proxy handshake error"
    assert site.visits == []
    result = curl("--socks5-hostname", proxy_netloc(node), site.url("127.0.0.1"), out=out)
    assert result.returncode == 0, result.stderr
    assert fetched(out, site)


@needs_curl
@needs_ipv6
def test_curl_through_a_node_listening_on_ipv6(start_node: Any, site: Site, tmp_path: Path) -> None:
    node = start_node("[::1]:0")
    assert node.host == "::1"
    for i, host in enumerate(["127.0.0.1", "[::1]", "localhost"]):
        out = tmp_path / f"file{i}"
        result = curl("--socks5-hostname", proxy_netloc(node), site.url(host), out=out)
        assert result.returncode == 0, (host, result.stderr)
        assert fetched(out, site)
    assert site.visits == [node.proc.pid] * 3


@needs_curl
def test_curl_fails_once_the_node_is_stopped(start_node: Any, site: Site, tmp_path: Path) -> None:
    node = start_node()
    out = tmp_path / "file"
    assert curl("--socks5", proxy_netloc(node), site.url("127.0.0.1"), out=out).returncode == 0
    node.stop()
    out.unlink()
    result = curl("--socks5", proxy_netloc(node), site.url("127.0.0.1"), out=out)
    assert result.returncode in (7, 97), result  # could not reach the proxy
    assert not fetched(out, site)
    assert site.visits == [node.proc.pid]


# -- python-socks (asyncio) -------------------------------------------------------------------


async def python_socks_echo(node: RunningNode, dest: str, port: int, rdns: bool) -> None:
    proxy = Proxy.from_url(f"socks5://{proxy_netloc(node)}", rdns=rdns)
    sock = await proxy.connect(dest_host=dest, dest_port=port, timeout=20)
    # The client's socket is connected to the node, not to the destination.
    assert sock.getpeername()[:2] == (node.host, node.port)
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        payload = os.urandom(300_000)
        writer.write(payload)
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(len(payload)), 20) == payload
    finally:
        writer.close()


LISTENS = [
    pytest.param("127.0.0.1:0", id="node-ipv4"),
    pytest.param("[::1]:0", id="node-ipv6", marks=needs_ipv6),
]


@pytest.mark.parametrize("listen", LISTENS)
@pytest.mark.parametrize("rdns", [True, False], ids=["rdns", "local-dns"])
def test_python_socks(
    start_node: Any,
    echo_server: EchoServer,
    echo_server6: EchoServer,
    listen: str,
    rdns: bool,
) -> None:
    if not rdns and not localhost_is_ipv4():
        pytest.skip("localhost does not resolve to 127.0.0.1 first here")
    node = start_node(listen)
    asyncio.run(python_socks_echo(node, "localhost", echo_server.port, rdns))
    asyncio.run(python_socks_echo(node, "127.0.0.1", echo_server.port, rdns))
    if has_ipv6_loopback():
        asyncio.run(python_socks_echo(node, "::1", echo_server6.port, rdns))
    # rdns sends the name for the node to resolve; without it the client
    # resolves and sends the address.
    log = node.stderr()
    assert (f"CONNECT localhost:{echo_server.port}" in log) is rdns
    expected_ip_requests = 1 if rdns else 2
    assert log.count(f"CONNECT 127.0.0.1:{echo_server.port}") == expected_ip_requests

    node.stop()
    with pytest.raises(ProxyConnectionError):
        asyncio.run(python_socks_echo(node, "127.0.0.1", echo_server.port, rdns))


# -- PySocks ----------------------------------------------------------------------------


def pysocks_socket(node: RunningNode, kind: int) -> socks.socksocket:
    family = socket.AF_INET6 if ":" in node.host else socket.AF_INET
    s = socks.socksocket(family, kind)
    s.set_proxy(socks.SOCKS5, node.host, node.port, username=USER, password=PASSWORD)
    s.settimeout(20)
    return s


@pytest.mark.parametrize("listen", LISTENS)
def test_pysocks_tcp(start_node: Any, echo_server: EchoServer, listen: str) -> None:
    node = start_node(listen)
    with pysocks_socket(node, socket.SOCK_STREAM) as s:
        s.connect((echo_server.host, echo_server.port))
        assert socket.socket.getpeername(s)[:2] == (node.host, node.port)
        payload = os.urandom(200_000)
        s.sendall(payload)
        got = bytearray()
        for _ in range(10_000):
            if len(got) >= len(payload):
                break
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        assert bytes(got) == payload
    assert f"CONNECT 127.0.0.1:{echo_server.port}" in node.stderr()

    node.stop()
    with pysocks_socket(node, socket.SOCK_STREAM) as s, pytest.raises(socks.ProxyError):
        s.connect((echo_server.host, echo_server.port))


def test_pysocks_udp_round_trip(start_node: Any, udp_echo: UdpEcho) -> None:
    # IPv4 only: PySocks 1.7's UDP support assumes IPv4 sockets (its bind()
    # unpacks a 2-tuple sockname and its control connection is AF_INET).
    node = start_node()
    dest = (udp_echo.host, udp_echo.port)
    with pysocks_socket(node, socket.SOCK_DGRAM) as s:
        for size in (1, 512, 1400, 8000):
            payload = os.urandom(size)
            s.sendto(payload, dest)
            data, source = s.recvfrom(65535)
            assert (data, source) == (payload, dest)
        # PySocks connects its UDP socket to the relay the node announced, so
        # the kernel hands it only datagrams from there: the answers came
        # through the node's association, which the node process holds.
        relay = socket.socket.getpeername(s)[:2]
        assert relay[0] == node.host and relay[1] not in (node.port, udp_echo.port)
        udp = psutil.Process(node.proc.pid).net_connections(kind="udp")
        assert any(c.laddr.port == relay[1] for c in udp), udp

    if localhost_is_ipv4():
        # A name in the datagram header (rdns): the node resolves it, dropping
        # datagrams until the answer is in, as UDP allows; so send until one
        # comes back (a bounded number of times).
        with pysocks_socket(node, socket.SOCK_DGRAM) as s:
            s.settimeout(0.5)
            answer = None
            for _ in range(40):
                s.sendto(b"by name", ("localhost", udp_echo.port))
                try:
                    answer = s.recvfrom(65535)
                except TimeoutError:
                    continue
                break
            assert answer == (b"by name", dest)

    node.stop()
    with pysocks_socket(node, socket.SOCK_DGRAM) as s, pytest.raises(OSError):
        s.sendto(b"nobody home", dest)


# -- proxychains4 running curl ---------------------------------------------------------------

PROXYCHAINS = shutil.which("proxychains4")
needs_proxychains = pytest.mark.skipif(
    PROXYCHAINS is None or shutil.which("curl") is None,
    reason="proxychains4 (or curl) is not installed; .ci/run installs it (apt-get install "
    "proxychains4)",
)


def proxychains_conf(path: Path, node: RunningNode, *, proxy_dns: bool) -> Path:
    # proxychains4 proxies loopback destinations unless told otherwise
    # (localnet exclusions are opt-in), so this is all it needs.
    lines = ["strict_chain", "quiet_mode"]
    if proxy_dns:
        lines.append("proxy_dns")
    lines += [
        "tcp_read_time_out 15000",
        "tcp_connect_time_out 8000",
        "[ProxyList]",
        f"socks5 {node.host} {node.port} {USER} {PASSWORD}",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@needs_proxychains
@pytest.mark.parametrize("proxy_dns", [False, True], ids=["no-proxy-dns", "proxy-dns"])
@pytest.mark.parametrize("listen", LISTENS)
def test_proxychains_curl(
    start_node: Any, site: Site, tmp_path: Path, proxy_dns: bool, listen: str
) -> None:
    node = start_node(listen)
    conf = proxychains_conf(tmp_path / "proxychains.conf", node, proxy_dns=proxy_dns)
    wrapper = (str(PROXYCHAINS), "-q", "-f", str(conf))
    hosts = ["127.0.0.1", "[::1]"] if has_ipv6_loopback() else ["127.0.0.1"]
    for i, host in enumerate(hosts):
        out = tmp_path / f"file{i}"
        result = curl(site.url(host), out=out, wrapper=wrapper)
        assert result.returncode == 0, (host, result.stderr)
        assert fetched(out, site)
    # No flag tells curl about a proxy: only proxychains' hooks sent it there.
    assert site.visits == [node.proc.pid] * len(hosts)
    assert f"CONNECT 127.0.0.1:{site.port4}" in node.stderr()

    node.stop()
    out = tmp_path / "after-stop"
    result = curl(site.url("127.0.0.1"), out=out, wrapper=wrapper)
    assert result.returncode != 0, result
    assert not fetched(out, site)
    assert len(site.visits) == len(hosts)
