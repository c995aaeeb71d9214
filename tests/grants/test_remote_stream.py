"""``grants.remote.stream`` against a real HTTP server on loopback.

A refused answer is read for its explanation only up to ``ERROR_BODY``
bytes: a registry (or anything at its address) that answers 500 with an
endless body must give one clear error, not hold the funder's command until
the timeout with the body growing in memory.

A registry that drips its answer (every read in time, the answer never done)
is stopped by the stream's overall deadline: the export command ends with
one line and leaves no file behind (nor touches the one already there).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from resistance.cli import main
from resistance.grants import remote
from resistance.grants.errors import RegistryError
from resistance.grants.remote import ERROR_BODY, stream


class Handler(BaseHTTPRequestHandler):
    sent = 0  # bytes of the endless body the server got out before the client stopped

    def do_GET(self) -> None:
        if self.path == "/endless":
            self.send_response(500)
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            chunk = b"x" * 65536
            try:
                for _ in range(4096):  # 256 MB if read whole (the bug this test is for)
                    self.wfile.write(chunk)
                    Handler.sent += len(chunk)
            except OSError:  # the client stopped reading: what the test wants
                return
        elif self.path.startswith(("/drip", "/api/v1/grants/rounds/")):
            # a round file's first bytes, then one byte every 20 ms for up to a minute
            self.send_response(500 if self.path == "/drip-refused" else 200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            try:
                self.wfile.write(b'{"format": "resistance.grants.round/1", "settings": ')
                self.wfile.flush()
                for _ in range(3000):
                    time.sleep(0.02)
                    self.wfile.write(b" ")
                    self.wfile.flush()
            except OSError:  # the client gave up: what the test wants
                return
        elif self.path == "/refused":
            body = json.dumps({"error": "round 7 is not approved"}).encode()
            self.send_response(409)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            body = b"round-bytes" * 10
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def registry() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_endless_refusal_is_one_error_after_a_bounded_read(registry: str) -> None:
    Handler.sent = 0
    with pytest.raises(RegistryError, match=r"registry refused \(500\): no explanation given"):
        b"".join(stream(registry, "/endless", token="t", timeout=30))
    # what it read is ERROR_BODY; what the server got out besides is socket buffers
    assert Handler.sent < 64 * 1024 * 1024 + ERROR_BODY, Handler.sent


def test_a_refusal_says_why(registry: str) -> None:
    with pytest.raises(RegistryError, match=r"refused \(409\): round 7 is not approved"):
        b"".join(stream(registry, "/refused", token="t", timeout=30))


def test_an_answer_streams_whole(registry: str) -> None:
    assert b"".join(stream(registry, "/ok", token="t", timeout=30)) == b"round-bytes" * 10


@pytest.mark.timeout(30)  # before the deadline, each read came in time and this never ended
@pytest.mark.parametrize("path", ["/drip", "/drip-refused"])
def test_a_dripping_answer_is_stopped_at_its_deadline(registry: str, path: str) -> None:
    with pytest.raises(RegistryError, match=r"sent \d+ bytes in \d+ s .*: stopped$"):
        b"".join(stream(registry, path, token="t", timeout=1, min_rate=64 * 1024))


def test_the_deadline_grows_with_what_arrives(registry: str) -> None:
    """A slow answer that keeps the rate is whole, however long past ``timeout``."""
    # 1 byte per 20 ms past a 50-byte head is ~50 B/s: within a 10 B/s floor
    parts = stream(registry, "/drip", token="t", timeout=0.2, min_rate=10)
    got = b""
    for part in parts:
        got += part
        if len(got) > 100:
            break
    assert got.startswith(b'{"format"')


@pytest.mark.timeout(30)
def test_export_from_a_dripping_registry_is_one_line_and_no_file(
    registry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(remote, "STREAM_TIME", 1.0)
    out = tmp_path / "round.json"
    out.write_text("the round exported last time\n")
    res = CliRunner().invoke(
        main,
        ["grants", "round", "export", "2026-10-RU", "--registry", registry, "--token", "t",
         "--out", str(out)],
    )  # fmt: skip
    assert res.exit_code == 2, res.output  # a registry error
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert "stopped" in res.output
    assert out.read_text() == "the round exported last time\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round.json"]  # no temporary left


@pytest.mark.timeout(30)  # before, httpx read the dripping answer until it ended
def test_a_call_to_a_dripping_registry_is_stopped_too(registry: str) -> None:
    """Every command's request (``call_registry``: rounds, register-node, add-probe)
    has the same deadline as the export's stream."""
    with pytest.raises(RegistryError, match=r"sent \d+ bytes in \d+ s .*: stopped$"):
        remote.call(registry, "/drip", token="t", timeout=1)
