"""Operating a node: configuration, reloads, shutdown, metrics, privacy, TLS, links."""

from __future__ import annotations

import datetime
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.integration.socksclient import open_socks, recv_exact


def resist(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "resistance", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- bad configuration: one line, non-zero exit, nothing started -----------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--listen", "127.0.0.1:99999"], "port must be 0-65535"),
        (["--listen", "::1:80"], "write IPv6 addresses as [ADDR]:PORT"),
        (["--allow", "10.0.0.1/8"], "10.0.0.1/8"),
        (["--deny-port", "70000"], "70000"),
        (["--user", "nopassword"], "expected NAME:PASSWORD"),
        (["--config", "/nonexistent/node.toml"], "does not exist"),
        (["--tls-cert", "/tmp/x.pem"], "--tls-cert and --tls-key go together"),
        (["--no-auth", "--user", "a:b"], "contradict"),
    ],
)
def test_bad_configuration_is_one_clear_line(tmp_path: Path, args: list[str], message: str) -> None:
    done = resist("node", "--state-dir", str(tmp_path), *args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("resist: error: ")
    assert message in lines[0]
    assert "Traceback" not in done.stderr


def test_bad_config_file_is_one_clear_line(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    for text, message in [
        ("listen = [", "node.toml"),
        ("lisen = '127.0.0.1:1080'", "unknown setting 'lisen'"),
        ("[limits]\nidle_timeout = -1", "limits.idle_timeout"),
        ("[users]\nalice = 5", "users"),
    ]:
        config.write_text(text)
        done = resist("node", "--state-dir", str(tmp_path), "--config", str(config))
        assert done.returncode == 2, text
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert message in done.stderr, done.stderr


def test_listening_on_a_busy_port_is_one_clear_line(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        done = resist("node", "--state-dir", str(tmp_path), "--listen", f"127.0.0.1:{port}")
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


# -- users -------------------------------------------------------------------------------


def test_a_user_is_generated_once_and_kept(
    node_factory: Any, tmp_path: Path, echo_server: Any
) -> None:
    state = tmp_path / "state"
    first = node_factory("--allow", "127.0.0.0/8", state_dir=state)
    line = next(x for x in first.banner if x.startswith("user "))
    m = re.match(r"user (\S+) password (\S+) \(new, in (.+)\)", line)
    assert m, line
    user, password = m.group(1), m.group(2)
    assert Path(m.group(3)).stat().st_mode & 0o077 == 0  # only the owner can read it
    with open_socks(
        (first.host, first.port), "127.0.0.1", echo_server.port, user=user, password=password
    ) as s:
        s.sendall(b"ok")
        assert recv_exact(s, 2) == b"ok"
    first.stop()
    second = node_factory("--allow", "127.0.0.0/8", state_dir=state)
    assert f"user {user} password {password} (kept" in "\n".join(second.banner)


def test_no_auth_must_be_explicit(node_factory: Any, echo_server: Any) -> None:
    open_node = node_factory("--no-auth", "--allow", "127.0.0.0/8")
    assert "NO AUTHENTICATION" in open_node.banner[0]
    with open_socks(
        (open_node.host, open_node.port), "127.0.0.1", echo_server.port, user=None
    ) as s:
        s.sendall(b"ok")
        assert recv_exact(s, 2) == b"ok"
    closed_node = node_factory("--user", "alice:secret")
    with socket.create_connection((closed_node.host, closed_node.port), timeout=5) as s:
        s.sendall(b"\x05\x01\x00")
        assert recv_exact(s, 2) == b"\x05\xff"
        assert s.recv(1) == b""


def test_many_users(node_factory: Any, echo_server: Any) -> None:
    users = [f"user{i}:pass{i}:with:colons" for i in range(50)]
    args = [a for u in users for a in ("--user", u)]
    node = node_factory(*args, "--allow", "127.0.0.0/8")
    for i in (0, 17, 49):
        with open_socks(
            (node.host, node.port),
            "127.0.0.1",
            echo_server.port,
            user=f"user{i}",
            password=f"pass{i}:with:colons",
        ) as s:
            s.sendall(b"x")
            assert recv_exact(s, 1) == b"x"
    with pytest.raises(PermissionError):
        open_socks(
            (node.host, node.port),
            "127.0.0.1",
            echo_server.port,
            user="user1",
            password="pass2:with:colons",
        )


# -- reload and shutdown ------------------------------------------------------------------


def test_sighup_reloads_users_and_policy_without_dropping(
    node_factory: Any, tmp_path: Path, echo_server: Any
) -> None:
    config = tmp_path / "node.toml"
    config.write_text('allow = ["127.0.0.0/8"]\n[users]\nalice = "secret"\n')
    node = node_factory("--config", str(config))
    proxy = (node.host, node.port)
    established = open_socks(proxy, "127.0.0.1", echo_server.port)
    config.write_text('[users]\nbob = "builder"\n')  # alice gone, loopback no longer allowed
    node.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reloaded" not in node.stderr() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "reloaded users and policy" in node.stderr()
    with established:
        established.sendall(b"still here")
        assert recv_exact(established, 10) == b"still here"
    with pytest.raises(PermissionError):
        open_socks(proxy, "127.0.0.1", echo_server.port)
    from tests.integration.socksclient import SocksFailure

    with pytest.raises(SocksFailure):  # bob may connect, but loopback is now refused
        open_socks(proxy, "127.0.0.1", echo_server.port, user="bob", password="builder")
    # A broken file is reported and the running configuration stays.
    config.write_text("users = [")
    node.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reload failed" not in node.stderr() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "reload failed, keeping the running configuration" in node.stderr()
    assert node.proc.poll() is None


def test_sigterm_drains_then_exits(node_factory: Any, echo_server: Any) -> None:
    node = node_factory("--user", "alice:secret", "--allow", "127.0.0.0/8", "--drain-timeout", "30")
    proxy = (node.host, node.port)
    with open_socks(proxy, "127.0.0.1", echo_server.port) as established:
        node.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while "stopping" not in node.stderr() and time.monotonic() < deadline:
            time.sleep(0.05)
        # New clients are turned away ...
        with pytest.raises(OSError):
            open_socks(proxy, "127.0.0.1", echo_server.port, timeout=2)
        # ... while the established connection keeps working.
        established.sendall(b"draining")
        assert recv_exact(established, 8) == b"draining"
        assert node.proc.poll() is None
    # Once it is closed the node has nothing left and exits cleanly.
    assert node.proc.wait(15) == 0
    assert "Traceback" not in node.stderr()


def test_sigterm_closes_what_outlives_the_drain(node_factory: Any, echo_server: Any) -> None:
    node = node_factory(
        "--user", "alice:secret", "--allow", "127.0.0.0/8", "--drain-timeout", "0.5"
    )
    with open_socks((node.host, node.port), "127.0.0.1", echo_server.port) as established:
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(15) == 0
        established.settimeout(5)
        assert established.recv(1) == b""


# -- metrics and privacy -------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
def test_metrics_count_without_addresses(node_factory: Any, echo_server: Any, workers: str) -> None:
    """With --workers 2 the supervisor adds up both workers' numbers: the same totals."""
    port = free_port()
    node = node_factory(
        *("--user", "alice:secret", "--allow", "127.0.0.0/8", "--metrics", f"127.0.0.1:{port}"),
        *("-v", "--workers", workers),
    )
    proxy = (node.host, node.port)
    with open_socks(proxy, "127.0.0.1", echo_server.port) as s:
        s.sendall(b"x" * 1000)
        recv_exact(s, 1000)
    with pytest.raises(PermissionError):
        open_socks(proxy, "127.0.0.1", echo_server.port, password="wrong")
    from tests.integration.socksclient import SocksFailure

    with pytest.raises(SocksFailure):
        open_socks(proxy, "127.0.0.1", 25)
    text = ""
    deadline = time.monotonic() + 10
    while 'resist_node_bytes_total{direction="up"} 1000.0' not in text:
        assert time.monotonic() < deadline, text
        time.sleep(0.1)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "resist_node_connections_total 3.0" in text
    assert 'resist_node_auth_failures_total{reason="bad-credentials"} 1.0' in text
    assert 'resist_node_policy_refusals_total{reason="port-denied"} 1.0' in text
    assert 'resist_node_user_bytes_total{direction="down",user="alice"} 1000.0' in text
    assert 'resist_node_requests_total{command="connect"} 2.0' in text
    assert "127.0.0.1" not in text
    assert str(echo_server.port) not in text
    node.stop()
    logs = node.stderr()
    assert "127.0.0.1" not in logs and "secret" not in logs and str(echo_server.port) not in logs


def test_destinations_are_logged_only_when_asked(node_factory: Any, echo_server: Any) -> None:
    node = node_factory("--user", "alice:secret", "--allow", "127.0.0.0/8", "--log-destinations")
    with open_socks((node.host, node.port), "127.0.0.1", echo_server.port) as s:
        s.sendall(b"x")
        recv_exact(s, 1)
    node.stop()
    assert f"CONNECT 127.0.0.1:{echo_server.port}" in node.stderr()


# -- TLS -----------------------------------------------------------------------------------


def make_certificate(directory: Path) -> tuple[Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "resist test node")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "node.crt", directory / "node.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_socks5_inside_tls(node_factory: Any, tmp_path: Path, echo_server: Any) -> None:
    cert, key = make_certificate(tmp_path)
    node = node_factory(
        "--user",
        "alice:secret",
        "--allow",
        "127.0.0.0/8",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        "--tls-listen",
        "127.0.0.1:0",
    )
    assert node.tls_port
    ctx = ssl.create_default_context(cafile=str(cert))
    payload = bytes(range(256)) * 4096
    with open_socks(("127.0.0.1", node.tls_port), "127.0.0.1", echo_server.port, tls=ctx) as s:
        s.sendall(payload)
        assert recv_exact(s, len(payload)) == payload
    # Plain SOCKS5 to the TLS port gets nowhere.
    with socket.create_connection(("127.0.0.1", node.tls_port), timeout=5) as raw:
        raw.sendall(b"\x05\x01\x02")
        raw.settimeout(3)
        try:
            answer = raw.recv(16)
        except TimeoutError:
            answer = b""  # the node waits for the rest of a TLS handshake
        assert not answer.startswith(b"\x05")


# -- links -------------------------------------------------------------------------------------


def test_banner_prints_telegram_links_and_qr(node_factory: Any) -> None:
    node = node_factory("--user", "alice:s&cret", "--qr", "--public-host", "203.0.113.7")
    text = "\n".join(node.banner)
    assert f"tg://socks?server=203.0.113.7&port={node.port}&user=alice&pass=s%26cret" in text
    assert (
        f"https://t.me/socks?server=203.0.113.7&port={node.port}&user=alice&pass=s%26cret" in text
    )
    deadline = time.monotonic() + 5
    while not any("█" in line or "▀" in line for line in node.banner):
        assert time.monotonic() < deadline, node.banner
        time.sleep(0.05)


def _whole_banner(node: Any, last: str) -> str:
    """The banner once the line starting with ``last`` is in (it is read in the
    background after the links)."""
    deadline = time.monotonic() + 10
    while not any(line.startswith(last) for line in node.banner):
        assert time.monotonic() < deadline, node.banner
        time.sleep(0.05)
    return "\n".join(node.banner)


def test_hide_passwords_masks_the_first_users_password_everywhere_in_the_banner(
    node_factory: Any, tmp_path: Path, echo_server: Any
) -> None:
    """An exit's first user is a bridge's hop credential, and its banner goes to a log
    (the lab's cascade-exit.log): with hide_passwords no line carries the password."""
    secret = "hop-Kq3rT8vw-secret"
    config = tmp_path / "exit.toml"
    config.write_text(f'hide_passwords = true\n[users]\n"bridge-7" = "{secret}"\n')
    node = node_factory(
        "--config", str(config), "--allow", "127.0.0.0/8", "--tls-listen", "127.0.0.1:0",
        "--public-host", "127.0.0.1", "--qr",
    )  # fmt: skip
    text = _whole_banner(node, "passwords masked")
    assert secret not in text and secret not in node.stderr()
    assert f"tg://socks?server=127.0.0.1&port={node.port}&user=bridge-7&pass=********" in text
    assert f"socks5s://bridge-7:********@127.0.0.1:{node.tls_port}#sha256=" in text
    assert not any("█" in line or "▀" in line for line in node.banner)  # no QR of it
    # the password itself still works: only the banner masks it
    with open_socks(
        (node.host, node.port), "127.0.0.1", echo_server.port, user="bridge-7", password=secret
    ) as s:
        s.sendall(b"ok")
        assert recv_exact(s, 2) == b"ok"


def test_hide_passwords_masks_a_generated_users_password(node_factory: Any, tmp_path: Path) -> None:
    state = tmp_path / "state"
    node = node_factory("--allow", "127.0.0.0/8", "--hide-passwords", state_dir=state)
    text = _whole_banner(node, "passwords masked")
    from resistance.node.users import generated_user

    name, password, created = generated_user(state)  # the one the node made and kept
    assert not created
    assert re.search(rf"user {name} password \*{{8}} \(new, in .+\)", text), text
    assert password not in text


def test_resist_link(tmp_path: Path) -> None:
    png = tmp_path / "proxy.png"
    done = resist("link", "socks5://bob:p%40ss@[2001:db8::7]:1080", "--qr-file", str(png))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "tg://socks?server=2001%3Adb8%3A%3A7&port=1080&user=bob&pass=p%40ss"
    assert lines[1].startswith("https://t.me/socks?server=2001%3Adb8%3A%3A7&port=1080")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = resist("link", "http://example.com")
    assert bad.returncode == 2 and bad.stderr.startswith("resist: error:")
