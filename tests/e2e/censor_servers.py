"""Servers for the censor's exactness tests, run inside the lab's free namespace.

    python censor_servers.py CERT KEY ADDR...

On each address: TCP and UDP echo (7000), a TCP sender (7001: reads a decimal
byte count and a newline, sends that many bytes), an HTTPS website (443:
answers any request with 200) and a TLS service that is no website (8443:
answers anything with two bytes and closes).  Prints "ready" once all listen;
exits on SIGTERM.
"""

from __future__ import annotations

import signal
import socket
import ssl
import sys
import threading

TIMEOUT = 20.0


def serve(sock: socket.socket, handle: object) -> None:
    def loop() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            conn.settimeout(TIMEOUT)
            threading.Thread(target=_guarded, args=(handle, conn), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


def _guarded(handle: object, conn: socket.socket) -> None:
    try:
        handle(conn)  # type: ignore[operator]
    except (OSError, ssl.SSLError, ValueError):
        pass
    finally:
        conn.close()


def echo(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


def sender(conn: socket.socket) -> None:
    line = b""
    while not line.endswith(b"\n") and len(line) < 20:
        chunk = conn.recv(1)
        if not chunk:
            return
        line += chunk
    left = int(line)
    block = bytes(65536)
    while left > 0:
        conn.sendall(block[: min(left, len(block))])
        left -= min(left, len(block))
    conn.shutdown(socket.SHUT_WR)
    conn.recv(1)


def make_tls(ctx: ssl.SSLContext, answer: bytes) -> object:
    def handle(conn: socket.socket) -> None:
        with ctx.wrap_socket(conn, server_side=True) as tls:
            data = tls.recv(65536)
            if data:
                tls.sendall(answer)

    return handle


def udp_echo(sock: socket.socket) -> None:
    while True:
        try:
            data, peer = sock.recvfrom(65536)
        except OSError:
            return
        sock.sendto(data, peer)


def listen(addr: str, port: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(64)
    return s


def main() -> None:
    cert, key, *addrs = sys.argv[1:]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    site = make_tls(ctx, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
    hidden = make_tls(ctx, b"\x05\xff")
    for addr in addrs:
        serve(listen(addr, 7000), echo)
        serve(listen(addr, 7001), sender)
        serve(listen(addr, 443), site)
        serve(listen(addr, 8443), hidden)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind((addr, 7000))
        threading.Thread(target=udp_echo, args=(u,), daemon=True).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    print("ready", flush=True)
    done.wait()


if __name__ == "__main__":
    main()
