"""A ClientHello reader for tests: the lists a JA3/JA4 fingerprint is made of."""

from __future__ import annotations

import socket
import ssl
import struct
import threading
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Hello:
    ciphers: tuple[int, ...]
    extensions: tuple[int, ...]
    groups: tuple[int, ...]
    alpn: tuple[bytes, ...]

    @property
    def fingerprint(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """What a censor's exact-match rule compares: the cipher and extension lists."""
        return self.ciphers, self.extensions


def parse_hello(record: bytes) -> Hello:
    """One TLS record holding a ClientHello; raises ValueError otherwise."""
    if len(record) < 9 or record[0] != 22 or record[5] != 1:
        raise ValueError("not a ClientHello record")
    body = record[9:]
    try:
        p = 2 + 32
        p += 1 + body[p]
        (n,) = struct.unpack_from(">H", body, p)
        ciphers = struct.unpack_from(f">{n // 2}H", body, p + 2)
        p += 2 + n
        p += 1 + body[p]
        (n,) = struct.unpack_from(">H", body, p)
        p += 2
        end = p + n
        extensions, groups, alpn = [], (), []
        while p < end:
            kind, size = struct.unpack_from(">HH", body, p)
            data = body[p + 4 : p + 4 + size]
            if len(data) != size:
                raise ValueError("extension runs past the record")
            extensions.append(kind)
            if kind == 10:
                groups = struct.unpack_from(f">{(size - 2) // 2}H", data, 2)
            elif kind == 16:
                q = 2
                while q < size:
                    alpn.append(data[q + 1 : q + 1 + data[q]])
                    q += 1 + data[q]
            p += 4 + size
    except (IndexError, struct.error) as exc:
        raise ValueError(f"truncated ClientHello: {exc}") from None
    return Hello(tuple(ciphers), tuple(extensions), tuple(groups), tuple(alpn))


def capture_hello(ctx: ssl.SSLContext, server_hostname: str | None = None) -> Hello:
    """The ClientHello ``ctx`` sends, caught by a listener on 127.0.0.1."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        got: list[bytes] = []

        def accept() -> None:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(5)
                data = b""
                while len(data) < 5 or len(data) < 5 + struct.unpack(">H", data[3:5])[0]:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                got.append(data)

        thread = threading.Thread(target=accept)
        thread.start()
        with socket.create_connection(server.getsockname(), timeout=5) as sock:
            try:
                ctx.wrap_socket(sock, server_hostname=server_hostname)
            except (ssl.SSLError, OSError):
                pass  # the listener closes after the hello
        thread.join(10)
    return parse_hello(got[0])
