"""The AmneziaWG translator on loopback, in front of an independent WireGuard responder.

The responder (tests/vpn/responder.py) is written from the whitepaper and
shares no code with the translator: a handshake that completes through the
translator means the rewritten datagrams are WireGuard's own.  Every test
runs with AWG 2 parameters and with AWG 3's (header protection, random
trailers), on the C path and all in Python.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from resistance.config import Endpoint
from resistance.vpn import keys
from resistance.vpn import translator as translator_module
from resistance.vpn.amnezia import AmneziaParams, junk_packets
from resistance.vpn.probe import Outcome, ProbeResult, handshake
from resistance.vpn.translator import Side, Translator
from tests.vpn.responder import UdpResponder

SERVER = keys.KeyPair.generate()
CLIENT = keys.KeyPair.generate()
VERSIONS = {"awg2": AmneziaParams.generate(), "awg3": AmneziaParams.generate(awg3=True)}
PARAMS = VERSIONS["awg2"]  # the test's own, set by the ``version`` fixture


@pytest.fixture(autouse=True, params=sorted(VERSIONS))
def version(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(globals(), "PARAMS", VERSIONS[request.param])
    return str(request.param)


@pytest.fixture(autouse=True, params=["c", "python"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test twice: transport messages moved by _awg.c, and all in Python."""
    if request.param == "c" and translator_module._native_module() is None:
        pytest.skip("resistance.vpn._awg is not built here")
    if request.param == "python":
        monkeypatch.setattr(translator_module, "_native_module", lambda: None)
    return str(request.param)


@asynccontextmanager
async def translator(
    side: Side, target: int, *, peers: Callable[[], list[bytes]], wg: bytes, **kw: object
) -> AsyncIterator[Translator]:
    t = Translator(
        PARAMS,
        side=side,
        listen=Endpoint("127.0.0.1", 0),
        target=Endpoint("127.0.0.1", target),
        wireguard_public=wg,
        amnezia_publics=peers,
        **kw,  # type: ignore[arg-type]
    )
    await t.start()
    try:
        yield t
    finally:
        await t.close()


def port_of(t: Translator) -> int:
    assert t._sock is not None
    return int(t._sock.getsockname()[1])


async def shake(
    t: Translator,
    private: bytes,
    *,
    server: bytes = SERVER.public,
    within: float = 3.0,
    amnezia: AmneziaParams | str | None = "the test's",
) -> ProbeResult:
    """The handshake probe (AmneziaWG unless ``amnezia`` is None) against ``t``."""
    if isinstance(amnezia, str):
        amnezia = PARAMS
    return await handshake(
        "127.0.0.1",
        port_of(t),
        server_public=server,
        private_key=private,
        within=within,
        amnezia=amnezia,
    )


async def test_amnezia_probe_completes_through_the_server_translator() -> None:
    with UdpResponder(SERVER.private, {CLIENT.public}) as wg:
        async with translator(
            Side.SERVER, wg.port, peers=lambda: [CLIENT.public], wg=SERVER.public
        ) as t:
            result = await shake(t, CLIENT.private)
            assert result.up, result.detail
            # plain WireGuard to the AmneziaWG port: nothing comes back
            plain = await shake(t, CLIENT.private, within=0.5, amnezia=None)
            assert not plain.up and plain.outcome is Outcome.SILENCE
            await asyncio.sleep(0.1)
            # the responder saw exactly one initiation and one keepalive: no junk
            assert (wg.counts.datagrams, wg.counts.initiations, wg.counts.keepalives) == (2, 1, 1)
            assert t.flows == 1


async def test_cookie_round_trip_through_the_translator() -> None:
    with UdpResponder(SERVER.private, {CLIENT.public}, under_load=True) as wg:
        async with translator(
            Side.SERVER, wg.port, peers=lambda: [CLIENT.public], wg=SERVER.public
        ) as t:
            result = await shake(t, CLIENT.private)
            assert result.up and result.cookie, result.detail
            assert wg.counts.cookie_replies == 1


async def test_stock_wireguard_through_client_and_server_translators() -> None:
    with UdpResponder(SERVER.private, {CLIENT.public}) as wg:
        async with (
            translator(
                Side.SERVER, wg.port, peers=lambda: [CLIENT.public], wg=SERVER.public
            ) as server,
            translator(
                Side.CLIENT, port_of(server), peers=lambda: [SERVER.public], wg=CLIENT.public
            ) as client,
        ):
            # plain WireGuard (the probe without parameters) into the client side
            result = await shake(client, CLIENT.private, amnezia=None)
            assert result.up, result.detail
            await asyncio.sleep(0.1)
            assert wg.counts.keepalives == 1
            assert client.counters.outbound >= PARAMS.jc + 2


async def test_junk_garbage_and_strangers_never_reach_wireguard() -> None:
    stranger = keys.KeyPair.generate()
    with UdpResponder(SERVER.private, {CLIENT.public}) as wg:
        async with translator(
            Side.SERVER, wg.port, peers=lambda: [CLIENT.public], wg=SERVER.public
        ) as t:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                for datagram in [*junk_packets(PARAMS), os.urandom(148), b"", b"x" * 2000]:
                    sock.sendto(datagram, ("127.0.0.1", port_of(t)))
                # a stranger with the right parameters but a wrong server key
                result = await shake(t, CLIENT.private, server=stranger.public, within=0.5)
                assert not result.up
            finally:
                sock.close()
            await asyncio.sleep(0.1)
            assert wg.counts.datagrams == 0
            assert t.flows == 0 and t.counters.dropped >= PARAMS.jc + 3


async def test_flows_are_capped() -> None:
    other = keys.KeyPair.generate()
    with UdpResponder(SERVER.private, {CLIENT.public, other.public}) as wg:
        async with translator(
            Side.SERVER,
            wg.port,
            peers=lambda: [CLIENT.public, other.public],
            wg=SERVER.public,
            max_flows=1,
        ) as t:
            first = await shake(t, CLIENT.private)
            second = await shake(t, other.private, within=0.5)
            assert first.up and not second.up
            assert t.flows == 1 and wg.counts.initiations == 1
