"""The WireGuard handshake probe: does this endpoint hold this server key?

One UDP socket, one initiation, then wait for a datagram that
:class:`~resistance.vpn.noise.Initiator` accepts.  A valid response proves
the answerer holds the server's private key and knows our key as a peer; we
then send a keepalive so the server stops retrying towards us.  WireGuard
answers nothing to a wrong server key, an unknown prober, a closed port or a
stopped server, so all of those end the same way: silence until the timeout,
reported as a failure.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Any

from resistance.vpn.noise import CookieReply, HandshakeError, Initiator


@dataclass(frozen=True, slots=True)
class ProbeResult:
    up: bool
    detail: str
    rtt: float | None = None
    attempts: int = 1


def _resolve(host: str, port: int) -> tuple[int, tuple[Any, ...]]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    family, _, _, _, address = infos[0]
    return family, tuple(address)


def probe_handshake(
    host: str,
    port: int,
    *,
    server_public: bytes,
    private_key: bytes,
    psk: bytes | None = None,
    timeout: float = 3.0,
    attempts: int = 1,
) -> ProbeResult:
    """Handshake with a WireGuard server; ``up`` only for a verified response."""
    try:
        family, address = _resolve(host, port)
    except (OSError, UnicodeError) as exc:
        return ProbeResult(False, f"cannot resolve {host}: {exc}", attempts=0)
    last = "no response"
    for attempt in range(1, attempts + 1):
        initiator = Initiator(private_key, server_public, psk=psk)
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            try:
                sock.connect(address)
                started = time.monotonic()
                sock.send(initiator.initiation)
                deadline = started + timeout
                while (left := deadline - time.monotonic()) > 0:
                    sock.settimeout(left)
                    try:
                        datagram = sock.recv(2048)
                    except TimeoutError:
                        break
                    try:
                        session = initiator.receive(datagram)
                    except CookieReply as exc:
                        last = str(exc)
                        continue
                    except HandshakeError as exc:
                        last = f"invalid response: {exc}"
                        continue
                    rtt = time.monotonic() - started
                    sock.send(session.keepalive())
                    return ProbeResult(True, "handshake completed", rtt, attempt)
            except OSError as exc:
                # A closed port may answer ICMP unreachable: still "no valid response".
                last = f"no response ({exc.strerror or exc})"
                continue
        if last == "no response" or last.startswith("no response"):
            last = f"no valid response within {timeout:g} s"
    return ProbeResult(False, last, None, attempts)
