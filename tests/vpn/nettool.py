"""Tiny TCP helpers run inside test namespaces (``python -m tests.vpn.nettool``).

``serve PORT``: an echo server that first tells each client the address it
sees the client at (so a test can see the VPN's masquerade).  ``tcp HOST PORT
SIZE TIMEOUT``: connect, read that line, send SIZE bytes and read them back;
prints ``ok ADDRESS`` or ``fail REASON``.
"""

from __future__ import annotations

import socket
import sys
import threading


def serve(port: int) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    sock.listen(64)
    print("ready", flush=True)
    while True:
        conn, (host, _) = sock.accept()
        threading.Thread(target=_echo, args=(conn, host), daemon=True).start()


def _echo(conn: socket.socket, host: str) -> None:
    conn.settimeout(30)
    with conn:
        try:
            conn.sendall(f"from {host}\n".encode())
            while data := conn.recv(65536):
                conn.sendall(data)
        except OSError:
            return


def tcp(host: str, port: int, size: int, timeout: float) -> int:
    payload = bytes(i % 251 for i in range(size))
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            seen = b""
            while not seen.endswith(b"\n"):
                chunk = conn.recv(100)
                if not chunk:
                    raise OSError("closed")
                seen += chunk
            sender = threading.Thread(target=conn.sendall, args=(payload,))
            sender.start()
            got = bytearray()
            while len(got) < size:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                got += chunk
            sender.join()
    except OSError as exc:
        print(f"fail {type(exc).__name__} {exc}")
        return 1
    if bytes(got) != payload:
        print(f"fail got {len(got)} of {size} bytes")
        return 1
    print(f"ok {seen.decode().split()[1]}")
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        sys.exit(tcp(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])))
