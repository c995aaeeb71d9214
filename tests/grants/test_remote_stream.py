"""``grants.remote.stream`` against a real HTTP server on loopback.

A refused answer is read for its explanation only up to ``ERROR_BODY``
bytes: a registry (or anything at its address) that answers 500 with an
endless body must give one clear error, not hold the funder's command until
the timeout with the body growing in memory.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

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
