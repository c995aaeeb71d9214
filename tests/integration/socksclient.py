"""A small blocking SOCKS5 client for tests, built on the project's wire helpers."""

from __future__ import annotations

import socket
import ssl

from resistance.proto.socks5 import (
    Address,
    ClientConnection,
    Command,
    Reply,
    UpstreamRefused,
    client_auth,
    client_greeting,
    client_request,
    parse_reply,
)


class SocksFailure(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(f"SOCKS reply {reply.name}")
        self.reply = reply


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def read_reply(sock: socket.socket) -> tuple[Reply, Address]:
    """One reply (as BIND's second), read a byte at a time so nothing after it is taken."""
    data = b""
    while True:
        parsed = parse_reply(data)
        if parsed is not None:
            code, address, end = parsed
            assert end == len(data), "read past the reply"
            return code, address
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("closed before the reply was complete")
        data += chunk


def handshake(
    sock: socket.socket,
    command: Command,
    address: Address,
    *,
    user: str | None = "alice",
    password: str | None = "secret",
) -> Address:
    """Greeting, authentication and request; returns the bound address on success.

    Lock-step, one message and its answer at a time, as most clients (curl,
    browsers) talk, where ``resist connect`` pipelines; the answers are read
    by the project's one client state machine all the same.
    """
    machine = ClientConnection(user, password)
    try:
        sock.sendall(client_greeting(auth=user is not None))
        machine.receive_data(recv_exact(sock, 2))
    except UpstreamRefused:
        raise ConnectionError("no acceptable method") from None
    if machine.auth is not None:
        sock.sendall(client_auth(*machine.auth))
        try:
            machine.receive_data(recv_exact(sock, 2))
        except UpstreamRefused:
            raise PermissionError("authentication failed") from None
    sock.sendall(client_request(command, address))
    try:
        while (done := machine.receive_data(recv_exact(sock, 1))) is None:
            pass
    except UpstreamRefused as exc:
        assert exc.code is not None
        raise SocksFailure(exc.code) from None
    assert machine.take_early_data() == b"", "read past the reply"
    return done.bound


def open_socks(
    proxy: tuple[str, int],
    host: str,
    port: int,
    *,
    user: str | None = "alice",
    password: str | None = "secret",
    tls: ssl.SSLContext | None = None,
    timeout: float = 10.0,
) -> socket.socket:
    """A socket connected through the proxy to ``host:port``."""
    sock = socket.create_connection(proxy, timeout=timeout)
    try:
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=proxy[0])
        handshake(
            sock, Command.CONNECT, Address.from_host(host, port), user=user, password=password
        )
    except BaseException:
        sock.close()
        raise
    return sock
