"""A small blocking SOCKS5 client for tests, built on the project's wire helpers."""

from __future__ import annotations

import socket
import ssl

from resistance.proto.socks5 import (
    Address,
    Command,
    Reply,
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
    """Greeting, authentication and request; returns the bound address on success."""
    auth = user is not None
    sock.sendall(client_greeting(auth=auth))
    method = recv_exact(sock, 2)
    if method[1] == 0xFF:
        raise ConnectionError("no acceptable method")
    if auth:
        assert user is not None and password is not None
        sock.sendall(client_auth(user.encode(), password.encode()))
        status = recv_exact(sock, 2)
        if status[1] != 0:
            raise PermissionError("authentication failed")
    sock.sendall(client_request(command, address))
    code, bound = read_reply(sock)
    if code is not Reply.SUCCEEDED:
        raise SocksFailure(code)
    return bound


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
