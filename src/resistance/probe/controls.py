"""The control experiments a probe runs beside a failed check, and the diagnosis.

A check that passed needs no controls (its 64 KiB download is already a
transfer past the 16 KB freeze size).  A check that failed in a way the
proxy cannot be blamed for yet is followed, on the same network seam, by:

* a TCP connect to each other listener of the same host that the registry
  names (``control_ports``: the node's TLS port) — the whole address or
  one port;
* the same check through a control proxy (``control`` in the assignment:
  a proxy that is up and not on the censor's lists) — the protocol or
  this host; it is also the unlisted host of the whitelist test;
* the canary, reached directly at the round's start, as the listed host
  (the round only runs when it answers);
* the registry's control vantages' latest view of this proxy
  (``outside_ok``): down or blocked;
* whether this same check's first connection to the host went through
  (``first_ok``, a retry now finding the address dark), or, when the main
  flow got past its handshake and then stopped, the other port tried right
  after: an address that went dark during the check, right
  after the check's own flow, is an active probe's block.  A passing check
  in an earlier round is not that evidence: an IP block that landed since
  looks the same, and the address block is named.

For TLS, :func:`tls_attempt` opens a TLS handshake with a chosen server name
and the client's own browser-like hello; the same handshake with a benign
name is the benign-SNI control (:func:`sni_evidence`).  The agent's rounds
check plain SOCKS5 and WireGuard, so it names ``blocked-sni`` only where a
caller runs these (the lab's end-to-end test does).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass, replace

from resistance.client.hello import learn_name, next_variant, server_name, variant
from resistance.probe.check import Failure
from resistance.probe.diagnose import (
    MAX_BYTES,
    Attempt,
    Diagnosis,
    Evidence,
    Stage,
    diagnose,
)
from resistance.probe.net import NetFailure, Network, TlsNetwork, translate
from resistance.probe.runner import Canary, CheckResult, CheckSettings, Target, run_check

#: At most this many other ports of one host are tried.
MAX_OTHER_PORTS = 2


@dataclass(frozen=True, slots=True)
class Controls:
    """What the assignment offers for one target's controls."""

    other_ports: tuple[int, ...] = ()
    control: Target | None = None
    outside_ok: bool | None = None
    #: This same check's first connection to the target went through (seconds ago);
    #: the attempt diagnosed is its retry.
    first_ok: bool = False
    #: The control proxy's check, when already made this round (one per round, not one
    #: per failing proxy): how :attr:`control` went, instead of checking it again.
    control_seen: Attempt | None = None


def main_attempt(result: CheckResult) -> Attempt:
    v = result.verdict
    return Attempt.from_step(v.failed_step, v.failure, min(result.received, 1 << 40))


async def tcp_attempt(network: Network, host: str, port: int, seconds: float) -> Attempt:
    """Whether a TCP connection opens (then closed at once)."""
    try:
        async with asyncio.timeout(seconds):
            conn = await network.connect(host, port)
    except TimeoutError:
        return Attempt.stopped(Stage.TCP, Failure.TIMEOUT)
    except NetFailure as exc:
        return Attempt.stopped(Stage.TCP, exc.failure)
    conn.close()
    return Attempt.passed()


async def gather_evidence(
    result: CheckResult,
    *,
    canary: Canary | None,
    network: Network,
    settings: CheckSettings,
    controls: Controls,
    listed_ok: bool,
) -> Evidence:
    """The evidence for ``result`` (a failed check); runs the controls that apply."""
    target = result.target
    main = main_attempt(result)
    other_port = None
    control = None
    # No TCP: the whole address or one port?  A flow the censor let through that then
    # stopped short of a freeze: did the address go dark right after it?
    if not main.got_tcp or (main.stage is Stage.TRANSFER and main.censor_like):
        for port in controls.other_ports[:MAX_OTHER_PORTS]:
            if port == target.port:
                continue
            other_port = await tcp_attempt(network, target.host, port, settings.step_timeout)
            if other_port.got_tcp:
                break
    if main.stage in (Stage.TCP, Stage.HANDSHAKE):
        if controls.control_seen is not None:
            control = controls.control_seen
        elif controls.control is not None:
            control = main_attempt(await run_check(controls.control, canary, network, settings))
    outside = None
    if controls.outside_ok is not None:
        # The registry passes only whether its control vantages' latest check worked.
        outside = (
            Attempt.passed() if controls.outside_ok else Attempt.stopped(Stage.TCP, Failure.ERROR)
        )
    return Evidence(
        main=main,
        tls=False,
        outside=outside,
        other_port=other_port,
        control_host=control,
        listed_host=Attempt.passed() if listed_ok else None,
        first_ok=controls.first_ok and not main.got_tcp,
    )


async def diagnose_check(
    result: CheckResult,
    *,
    canary: Canary | None,
    network: Network,
    settings: CheckSettings,
    controls: Controls,
    listed_ok: bool,
) -> tuple[Evidence, Diagnosis]:
    evidence = await gather_evidence(
        result,
        canary=canary,
        network=network,
        settings=settings,
        controls=controls,
        listed_ok=listed_ok,
    )
    return evidence, diagnose(evidence)


#: A server name no censor lists, for the benign-SNI control.
BENIGN_SNI = "www.wikipedia.org"


async def tls_attempt(
    host: str,
    port: int,
    server_name: str | None,
    seconds: float,
    *,
    context: ssl.SSLContext | None = None,
    source: str | None = None,
) -> Attempt:
    """TCP (from ``source`` if given), then a TLS handshake naming ``server_name``
    with the client's own hello; where it stopped, if it did."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        try:
            if source is not None:
                sock.bind((source, 0))
            async with asyncio.timeout(seconds):
                await loop.sock_connect(sock, (host, port))
        except TimeoutError:
            return Attempt.stopped(Stage.TCP, Failure.TIMEOUT)
        except OSError as exc:
            return Attempt.stopped(Stage.TCP, translate(exc).failure)
        try:
            async with asyncio.timeout(seconds):
                _, writer = await asyncio.open_connection(
                    sock=sock, ssl=context or variant(*next_variant(listener_key(host, port))),
                    server_hostname=server_name or "", ssl_handshake_timeout=seconds,
                )  # fmt: skip
        except TimeoutError:
            return Attempt.stopped(Stage.HANDSHAKE, Failure.TIMEOUT)
        except ssl.SSLError:
            return Attempt.stopped(Stage.HANDSHAKE, Failure.WRONG_ANSWER)
        except (ConnectionResetError, BrokenPipeError):
            return Attempt.stopped(Stage.HANDSHAKE, Failure.RESET)
        except OSError as exc:
            return Attempt.stopped(Stage.HANDSHAKE, translate(exc).failure)
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der:  # as the client does: the next hello to this listener names the certificate
            learn_name(listener_key(host, port), der)
        writer.transport.abort()
        return Attempt.passed()
    finally:
        sock.close()


def listener_key(host: str, port: int) -> str:
    """The key a TLS listener is known by in this process: its learned server name,
    its own turn of hello variants."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def sni_evidence(
    host: str, port: int, server_name: str, seconds: float, *, outside_ok: bool | None = None
) -> Evidence:
    """A TLS handshake naming ``server_name`` and its benign-SNI control."""
    # One hello for both (the control changes only the name); hellos taken in turn, so a
    # rule against one of the client's variants is met within len(VARIANTS) rounds.
    hello = variant(*next_variant(listener_key(host, port)))
    main = await tls_attempt(host, port, server_name, seconds, context=hello)
    benign = None if main.ok else await tls_attempt(host, port, BENIGN_SNI, seconds, context=hello)
    outside = None
    if outside_ok is not None:
        outside = Attempt.passed() if outside_ok else Attempt.stopped(Stage.TCP, Failure.ERROR)
    return Evidence(main=main, tls=True, benign_sni=benign, outside=outside)


async def tls_reach(
    result: CheckResult,
    tls_port: int,
    *,
    seconds: float,
    outside_ok: bool | None,
    source: str | None = None,
    canary: Canary | None = None,
    settings: CheckSettings | None = None,
    plain_evidence: Evidence | None = None,
) -> tuple[Evidence, Diagnosis]:
    """Whether the node's TLS listener gets through from here, as a client dials it
    (the client's browser-like hello, naming a server as the client does: the name
    in the listener's certificate once a handshake has shown it, a plausible one
    before), and why not.

    The plain check beside it is the other-port control (its TCP outcome tells an
    address block from a dropped hello), and a failed handshake is tried again
    naming a benign server (the hello itself, or the name).

    When the plain check did not carry its download (a rule stopped it first, a
    fingerprint rule for one) and the handshake goes through, the whole check
    (the canary's 64 KiB download, past the 16 KB freeze size) runs again over
    this TLS listener with the same hello: the big-transfer control, so a freeze
    behind the plain protocol's block is still named ``frozen`` with its byte
    count (``canary`` and ``settings`` given; the round's canary).

    ``plain_evidence``, the plain check's evidence when it failed, lends its whitelist
    controls (the unlisted control host, the listed host) to a handshake that got
    no TCP either, so a whitelist is named on this transport too.
    """
    target = result.target
    key = listener_key(target.host, tls_port)
    name = server_name(target.host, key)
    # The control differs from the main attempt by the name only; hellos taken in turn, so
    # a rule against one of the client's variants is met within len(VARIANTS) rounds.
    hello = variant(*next_variant(key))
    main = await tls_attempt(target.host, tls_port, name, seconds, context=hello, source=source)
    benign = None
    if not main.ok and main.got_tcp:
        benign = await tls_attempt(
            target.host, tls_port, BENIGN_SNI, seconds, context=hello, source=source
        )
    big = None
    if main.ok and not result.verdict.ok and canary is not None and settings is not None:
        over_tls = replace(target, port=tls_port)
        network = TlsNetwork(hello, server_name(target.host, key), source)
        big = main_attempt(await run_check(over_tls, canary, network, settings))
        if network.last is not None:  # where it stopped, counted as the censor counts
            big = replace(big, received=min(network.last.wire_received, MAX_BYTES))
    plain = main_attempt(result)
    other = Attempt.passed() if plain.got_tcp else plain
    outside = None
    if outside_ok is not None:
        outside = Attempt.passed() if outside_ok else Attempt.stopped(Stage.TCP, Failure.ERROR)
    # The plain check ran before this handshake: its TCP outcome tells an address block
    # only when this one got no TCP either (not "dark after this flow").
    lent = plain_evidence if not main.got_tcp else None
    evidence = Evidence(
        main=main, tls=True, outside=outside, benign_sni=benign, big_transfer=big,
        other_port=None if main.got_tcp else other,
        control_host=lent.control_host if lent else None,
        listed_host=lent.listed_host if lent else None,
    )  # fmt: skip
    return evidence, diagnose(evidence)
