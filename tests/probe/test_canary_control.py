"""A silent canary must not turn into proxies marked down."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from resistance.probe.check import Failure, Step
from resistance.probe.net import NetFailure
from resistance.probe.runner import (
    Canary,
    attributable,
    canary_answers,
    run_check,
)
from tests.probe.test_check import KEY, SETTINGS, TARGET, Canned, Scripted, ScriptedNetwork

CANARY = Canary("198.51.100.1", 9, KEY.public_key())


async def test_a_canary_that_signs_is_alive() -> None:
    conn = Scripted([])
    conn.replies.append(Canned(conn))
    assert await canary_answers(CANARY, ScriptedNetwork(conn), seconds=1)
    assert conn.sent[0].startswith(b"RSC1")


async def test_a_silent_refusing_or_impostor_canary_is_not() -> None:
    refused = ScriptedNetwork(NetFailure(Failure.REFUSED, "ECONNREFUSED"))
    assert not await canary_answers(CANARY, refused, seconds=1)
    assert not await canary_answers(CANARY, ScriptedNetwork(Scripted([])), seconds=1)
    impostor = Scripted([])
    impostor.replies.append(Canned(impostor, Ed25519PrivateKey.generate()))
    assert not await canary_answers(CANARY, ScriptedNetwork(impostor), seconds=1)


async def test_failures_at_the_canary_end_count_only_while_it_answers() -> None:
    # The proxy answers the handshake but the CONNECT to the (dead) canary is refused.
    conn = Scripted([b"\x05\x02", b"\x01\x00", b"\x05\x05\x00\x01\x00\x00\x00\x00\x00\x00"])
    at_canary = await run_check(TARGET, CANARY, ScriptedNetwork(conn), SETTINGS)
    assert at_canary.verdict.failed_step is Step.CONNECT
    assert attributable(at_canary, canary_alive=True)
    assert not attributable(at_canary, canary_alive=False)
    # A proxy that refuses TCP is the proxy's fault whatever the canary does.
    dead = await run_check(
        TARGET, CANARY, ScriptedNetwork(NetFailure(Failure.REFUSED, "x")), SETTINGS
    )
    assert attributable(dead, canary_alive=False)
    # Successes always count.
    ok_conn = Scripted([b"\x05\x02", b"\x01\x00", b"\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x09"])
    ok_conn.replies.append(Canned(ok_conn))
    ok = await run_check(TARGET, CANARY, ScriptedNetwork(ok_conn), SETTINGS)
    assert ok.verdict.ok and attributable(ok, canary_alive=False)
