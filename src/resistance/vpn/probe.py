"""The WireGuard handshake probe: does this endpoint hold this server key?

One UDP socket, one initiation, then wait for a datagram that
:class:`~resistance.vpn.noise.Initiator` accepts.  A valid response proves
the answerer holds the server's private key and knows our key as a peer; we
then send a keepalive so the server stops retrying towards us.  WireGuard
answers nothing to a wrong server key, an unknown prober, a closed port or a
stopped server, so all of those end the same way: silence until the timeout,
reported as a failure (an ICMP "port unreachable" ends it sooner).

A server under load answers with a cookie reply instead: the probe decrypts
the cookie and sends a new initiation carrying ``mac2`` from the same socket
(the cookie is bound to our address and port), once per attempt.

An AmneziaWG server (``amnezia`` parameters given) gets the same handshake
in its wire format: every datagram goes out through a
:class:`~resistance.vpn.amnezia.Rewriter` (signature and junk packets, padding,
H headers, mac1 recomputed) and every answer comes back through it, so
the verdict still rests on the response decrypting.

:func:`handshake` is the asyncio version the registry and the probe agent
use; :func:`probe_handshake` runs it for the command line.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import socket
import time
from dataclasses import dataclass
from typing import Any

from resistance.vpn.amnezia import AmneziaParams, Rewriter
from resistance.vpn.noise import CookieReply, HandshakeError, Initiator, public_key


class Outcome(enum.StrEnum):
    """How a handshake attempt ended."""

    UP = "up"
    SILENCE = "silence"  # nothing valid before the timeout
    REFUSED = "refused"  # ICMP port unreachable
    UNREACHABLE = "unreachable"  # no route to the network or host
    INVALID = "invalid"  # answers came, none a valid response (the last one is described)
    ERROR = "error"  # could not resolve or send at all


@dataclass(frozen=True, slots=True)
class ProbeResult:
    up: bool
    detail: str
    rtt: float | None = None
    attempts: int = 1
    outcome: Outcome = Outcome.SILENCE
    #: Whether the server asked for (and got) a cookie round trip first.
    cookie: bool = False


_OS_OUTCOMES = {
    errno.ECONNREFUSED: Outcome.REFUSED,
    errno.ENETUNREACH: Outcome.UNREACHABLE,
    errno.EHOSTUNREACH: Outcome.UNREACHABLE,
    errno.ENETDOWN: Outcome.UNREACHABLE,
}


class _Receiver(asyncio.DatagramProtocol):
    """Queues what arrives: datagrams, and OS errors (ICMP) as exceptions."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | OSError] = asyncio.Queue(maxsize=64)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.queue.full():
            self.queue.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        if isinstance(exc, OSError) and not self.queue.full():
            self.queue.put_nowait(exc)


async def _resolve(host: str, port: int) -> tuple[int, tuple[Any, ...]]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    family, _, _, _, address = infos[0]
    return family, tuple(address)


async def _attempt(
    address: tuple[Any, ...],
    family: int,
    *,
    server_public: bytes,
    private_key: bytes,
    psk: bytes | None,
    within: float,
    source: str | None,
    amnezia: AmneziaParams | None,
) -> tuple[Outcome, str, float | None, bool]:
    loop = asyncio.get_running_loop()
    local = (source, 0) if source else None
    try:
        transport, receiver = await loop.create_datagram_endpoint(
            _Receiver, remote_addr=address, local_addr=local, family=family
        )
    except OSError as exc:
        return _OS_OUTCOMES.get(exc.errno or 0, Outcome.ERROR), _os_text(exc), None, False
    outcome, last, used_cookie = Outcome.SILENCE, f"no valid response within {within:g} s", False
    rewriter = None
    if amnezia is not None:
        rewriter = Rewriter(
            amnezia,
            wireguard_public=public_key(private_key),
            amnezia_publics=lambda: (server_public,),
        )

    def send(datagram: bytes) -> None:
        for wire in [datagram] if rewriter is None else rewriter.to_amnezia(datagram):
            transport.sendto(wire)

    try:
        initiator = Initiator(private_key, server_public, psk=psk)
        started = time.monotonic()
        deadline = started + within
        send(initiator.initiation)
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = await asyncio.wait_for(receiver.queue.get(), left)
            except TimeoutError:
                break
            if isinstance(item, OSError):
                outcome = _OS_OUTCOMES.get(item.errno or 0, Outcome.ERROR)
                return outcome, f"no response ({_os_text(item)})", None, used_cookie
            if rewriter is not None:
                translated = rewriter.to_wireguard(item)
                if translated is None:
                    outcome, last = (
                        Outcome.INVALID,
                        "invalid response: not AmneziaWG with these parameters",
                    )
                    continue
                item = translated
            try:
                session = initiator.receive(item)
            except CookieReply as reply:
                if used_cookie:
                    outcome, last = Outcome.INVALID, "server under load: refused our cookie"
                    continue
                used_cookie = True
                initiator = Initiator(private_key, server_public, psk=psk, cookie=reply.cookie)
                send(initiator.initiation)
                continue
            except HandshakeError as exc:
                outcome, last = Outcome.INVALID, f"invalid response: {exc}"
                continue
            rtt = time.monotonic() - started
            send(session.keepalive())
            return Outcome.UP, "handshake completed", rtt, used_cookie
    finally:
        transport.close()
    return outcome, last, None, used_cookie


def _os_text(exc: OSError) -> str:
    return exc.strerror or errno.errorcode.get(exc.errno or 0, type(exc).__name__)


async def handshake(
    host: str,
    port: int,
    *,
    server_public: bytes,
    private_key: bytes,
    psk: bytes | None = None,
    within: float = 3.0,
    attempts: int = 1,
    source: str | None = None,
    amnezia: AmneziaParams | None = None,
) -> ProbeResult:
    """Handshake with a WireGuard server; ``up`` only for a verified response.

    Each attempt uses a fresh socket and initiation and waits up to
    ``within`` seconds; ``source`` picks the local address to send from;
    ``amnezia`` speaks AmneziaWG with those parameters.
    """
    try:
        family, address = await _resolve(host, port)
    except (OSError, UnicodeError) as exc:
        return ProbeResult(False, f"cannot resolve {host}: {exc}", None, 0, Outcome.ERROR)
    result = ProbeResult(False, "not tried", None, 0, Outcome.ERROR)
    for attempt in range(1, attempts + 1):
        outcome, detail, rtt, cookie = await _attempt(
            address,
            family,
            server_public=server_public,
            private_key=private_key,
            psk=psk,
            within=within,
            source=source,
            amnezia=amnezia,
        )
        result = ProbeResult(outcome is Outcome.UP, detail, rtt, attempt, outcome, cookie)
        if result.up:
            return result
    return result


def probe_handshake(
    host: str,
    port: int,
    *,
    server_public: bytes,
    private_key: bytes,
    psk: bytes | None = None,
    timeout: float = 3.0,
    attempts: int = 1,
    amnezia: AmneziaParams | None = None,
) -> ProbeResult:
    """:func:`handshake` for callers without an event loop (the command line)."""
    return asyncio.run(
        handshake(
            host,
            port,
            server_public=server_public,
            private_key=private_key,
            psk=psk,
            within=timeout,
            attempts=attempts,
            amnezia=amnezia,
        )
    )
