"""Hostile proxies against the probe's check, over the network seam (no sockets).

Anyone can register a proxy, the censor first: each kind of misbehaviour
below must end the check within its documented cap (:func:`check_cap`, the
asserts allow 2 s more), with the step and the reason it failed, and never
accept a forged or replayed canary answer.  The same kinds over real
loopback sockets are in tests/integration/test_hostile_proxies.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from resistance.probe import canary
from resistance.probe.agent import (
    Agent,
    AgentSettings,
    RoundStats,
    check_limit,
    cut_off,
    parse_assignment,
)
from resistance.probe.batch import ResultRecord, parse_batch
from resistance.probe.check import Failure, Step, StepOutcome
from resistance.probe.net import Connection, NetFailure
from resistance.probe.runner import (
    Canary,
    CheckResult,
    CheckSettings,
    Target,
    attributable,
    byte_cap,
    check_cap,
    required_steps,
    run_check,
)

KEY = Ed25519PrivateKey.generate()
TARGET = Target("192.0.2.1", 1080, "probe", "pw", 1)
CANARY = Canary("198.51.100.1", 9, KEY.public_key())
SETTINGS = CheckSettings(step_timeout=0.1, transfer_timeout=0.1, upload=64, download=4096)
CAP = check_cap(SETTINGS, required_steps(TARGET, CANARY))

GREETING = b"\x05\x02"
AUTH = b"\x01\x00"
REPLY = b"\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x09"
#: A reply with the longest bound address there is: a 255-byte domain (266 bytes).
HUGE_REPLY = b"\x05\x00\x00\x03\xff" + b"a" * 255 + b"\x00\x09"


class Peer:
    """A proxy as a script: ``answer(sent_so_far)`` gives its next bytes (or waits, or fails)."""

    def __init__(self, answer: Callable[[Peer], Awaitable[bytes]]) -> None:
        self.answer = answer
        self.sent: list[bytes] = []
        self.reads = 0
        self.closed = False

    async def send(self, data: bytes) -> None:
        self.sent.append(data)

    async def recv(self) -> bytes:
        self.reads += 1
        return await self.answer(self)

    def close(self) -> None:
        self.closed = True


class Net:
    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    async def connect(self, host: str, port: int) -> Connection:
        return self.peer


def honest_stream(peer: Peer, key: Ed25519PrivateKey = KEY) -> bytes:
    """What an honest proxy and canary send back, given the request the probe sent."""
    request = canary.CanaryRequestParser().feed(peer.sent[-1])
    assert request is not None
    return canary.answer(
        key, request.nonce, request.upload_sha256, request.download, now=time.time()
    )


def scripted(chunks: list[bytes], then: Callable[[Peer], Awaitable[bytes]]) -> Peer:
    """Answers one chunk per read (each after the probe's next send), then ``then``."""
    left = list(chunks)

    async def answer(peer: Peer) -> bytes:
        if left:
            return left.pop(0)
        return await then(peer)

    return Peer(answer)


async def silence(peer: Peer) -> bytes:
    await asyncio.sleep(3600)
    return b""


async def reset(peer: Peer) -> bytes:
    raise NetFailure(Failure.RESET, "ECONNRESET")


def dripping(data: bytes, every: float) -> Callable[[Peer], Awaitable[bytes]]:
    """One byte of ``data`` each ``every`` seconds: never idle long enough for a timeout."""
    view = iter(data)

    async def answer(peer: Peer) -> bytes:
        await asyncio.sleep(every)
        return bytes([next(view, 0)])

    return answer


async def check(peer: Peer, *, canary_: Canary | None = CANARY) -> tuple[CheckResult, float]:
    started = time.monotonic()
    result = await run_check(TARGET, canary_, Net(peer), SETTINGS)
    return result, time.monotonic() - started


def failed(result: CheckResult) -> tuple[Step | None, Failure | None]:
    return result.verdict.failed_step, result.verdict.failure


def test_the_cap_is_the_sum_of_the_step_deadlines() -> None:
    defaults = CheckSettings()
    assert check_cap(defaults) == 5 + 2 * 5 * 4 + 2 * 10 == 65
    assert byte_cap(defaults) == 1024 * 4 + canary.SIGNATURE_BYTES + 64 * 1024
    assert check_cap(SETTINGS, (Step.TCP, Step.GREETING)) == pytest.approx(0.3)


async def test_a_silent_proxy_times_out_at_the_greeting() -> None:
    result, took = await check(Peer(silence))
    assert failed(result) == (Step.GREETING, Failure.TIMEOUT)
    assert took < CAP + 2


@pytest.mark.parametrize(
    ("answers", "step"),
    [
        ([GREETING], Step.AUTH),
        ([GREETING, AUTH], Step.CONNECT),
        ([GREETING, AUTH, REPLY], Step.CANARY),
    ],
)
async def test_a_proxy_that_stalls_after_a_step_times_out_at_the_next(
    answers: list[bytes], step: Step
) -> None:
    result, took = await check(scripted(answers, silence))
    assert failed(result) == (step, Failure.TIMEOUT)
    assert [o.step for o in result.outcomes if o.passed][-1] is not step
    assert took < CAP + 2


async def test_a_proxy_that_stalls_mid_download_times_out_there() -> None:
    """A flow that stops partway stays a timeout (a freeze's mark), not "slow"."""

    async def then(peer: Peer) -> bytes:
        if peer.reads == 4:
            return honest_stream(peer)[: canary.SIGNATURE_BYTES + 2048]
        return await silence(peer)

    result, took = await check(scripted([GREETING, AUTH, REPLY], then))
    assert failed(result) == (Step.TRANSFER, Failure.TIMEOUT)
    assert result.received >= 2048 and took < CAP + 2


async def test_a_dripping_proxy_is_cut_off_as_slow_at_its_step() -> None:
    """One byte per half idle timeout never trips the idle timeout; the deadline
    cuts it off (the issue's 266-byte reply, dripped, took 270 s)."""
    result, took = await check(scripted([GREETING, AUTH], dripping(HUGE_REPLY, 0.04)))
    assert failed(result) == (Step.CONNECT, Failure.SLOW)
    assert "not done in 0.2 s" in result.verdict.detail
    assert took < CAP + 2
    assert len(HUGE_REPLY) * 0.04 > 10 * SETTINGS.deadline(Step.CONNECT)  # would have held


async def test_a_dripped_canary_signature_is_slow() -> None:
    async def then(peer: Peer) -> bytes:
        await asyncio.sleep(0.04)
        return bytes(1)  # 64 bytes of signature, one at a time

    result, took = await check(scripted([GREETING, AUTH, REPLY], then))
    assert failed(result) == (Step.CANARY, Failure.SLOW)
    assert took < CAP + 2


async def test_a_dripped_download_is_cut_off_as_slow() -> None:
    stream = b""

    async def then(peer: Peer) -> bytes:
        nonlocal stream
        if peer.reads == 4:
            stream = honest_stream(peer)
            return stream[: canary.SIGNATURE_BYTES]
        await asyncio.sleep(0.04)
        sent = canary.SIGNATURE_BYTES + peer.reads - 5
        return stream[sent : sent + 1]

    result, took = await check(scripted([GREETING, AUTH, REPLY], then))
    assert failed(result) == (Step.TRANSFER, Failure.SLOW)
    assert took < CAP + 2


async def test_a_flood_is_a_wrong_answer_and_stays_within_the_byte_cap() -> None:
    async def flood(peer: Peer) -> bytes:
        return b"\x05\x02" * 32768  # 64 KiB per read, forever

    result, took = await check(Peer(flood))
    assert failed(result)[1] is Failure.WRONG_ANSWER
    assert result.received <= byte_cap(SETTINGS) + 65536
    assert took < CAP + 2


@pytest.mark.parametrize(
    ("answers", "step"),
    [
        ([b"\x04\x00"], Step.GREETING),  # SOCKS4's version
        ([b"\x05\x01"], Step.GREETING),  # GSSAPI: a method not offered
        ([b"\x05\x00"], Step.GREETING),  # no auth, when the probe offered a password
        ([GREETING, b"\x05\x00"], Step.AUTH),  # the auth answer's version is 1
        ([GREETING, AUTH, b"\x04\x5a\x00\x00\x00\x00\x00\x00"], Step.CONNECT),
        ([GREETING, AUTH, b"\x05\x00\x00\x07" + bytes(10)], Step.CONNECT),  # bad address type
    ],
)
async def test_bad_versions_and_methods_are_wrong_answers(answers: list[bytes], step: Step) -> None:
    result, _ = await check(scripted(answers, silence))
    assert failed(result) == (step, Failure.WRONG_ANSWER)


async def test_a_huge_bound_address_is_accepted_when_on_time() -> None:
    """The longest legal reply is an answer, not an attack: the check goes on."""
    result, _ = await check(scripted([GREETING, AUTH, HUGE_REPLY], silence))
    assert failed(result) == (Step.CANARY, Failure.TIMEOUT)


@pytest.mark.parametrize("then", [silence, None], ids=["then-silent", "then-closed"])
async def test_a_truncated_bound_address_fails_the_connect(
    then: Callable[[Peer], Awaitable[bytes]] | None,
) -> None:
    async def closed(peer: Peer) -> bytes:
        return b""

    result, took = await check(scripted([GREETING, AUTH, HUGE_REPLY[:40]], then or closed))
    assert failed(result) == (Step.CONNECT, Failure.TIMEOUT if then else Failure.CLOSED)
    assert took < CAP + 2


@pytest.mark.parametrize("answered", [0, 1, 2, 3])
async def test_a_reset_at_every_step_is_recorded_at_that_step(answered: int) -> None:
    steps = [Step.GREETING, Step.AUTH, Step.CONNECT, Step.CANARY]
    result, _ = await check(scripted([GREETING, AUTH, REPLY][:answered], reset))
    assert failed(result) == (steps[answered], Failure.RESET)


async def test_a_zero_window_cannot_hold_the_check() -> None:
    """A proxy that reads nothing: the probe's send never completes."""

    class Unread(Peer):
        async def send(self, data: bytes) -> None:
            if self.reads >= 2:  # takes the greeting and credentials, then its window shuts
                await silence(self)
            self.sent.append(data)

    result, took = await check(Unread(lambda p: asyncio.sleep(0, [GREETING, AUTH][p.reads - 1])))
    assert failed(result) == (Step.CONNECT, Failure.TIMEOUT)
    assert took < CAP + 2


async def test_a_forged_canary_answer_does_not_count() -> None:
    forger = Ed25519PrivateKey.generate()

    async def then(peer: Peer) -> bytes:
        return honest_stream(peer, forger)

    result, _ = await check(scripted([GREETING, AUTH, REPLY], then))
    assert failed(result) == (Step.CANARY, Failure.WRONG_ANSWER)
    assert result.proof is None


async def test_a_replayed_canary_answer_does_not_count() -> None:
    """An answer the canary really signed, for an earlier check's nonce."""
    earlier = scripted([GREETING, AUTH, REPLY], lambda p: asyncio.sleep(0, honest_stream(p)))
    first, _ = await check(earlier)
    assert first.verdict.ok
    recorded = honest_stream(earlier)

    result, _ = await check(scripted([GREETING, AUTH, REPLY], lambda p: asyncio.sleep(0, recorded)))
    assert failed(result) == (Step.CANARY, Failure.WRONG_ANSWER)


async def test_a_100_mb_canary_answer_is_cut_at_the_byte_cap() -> None:
    async def then(peer: Peer) -> bytes:
        if peer.reads == 4:
            return honest_stream(peer)[:-1]  # all but the last byte asked for...
        return bytes(65536)  # ...then 100 MB more, a read at a time

    result, took = await check(scripted([GREETING, AUTH, REPLY], then))
    assert failed(result) == (Step.TRANSFER, Failure.WRONG_ANSWER)
    assert result.received <= byte_cap(SETTINGS) + 65536 and took < CAP + 2


@settings(max_examples=60, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=0, max_size=300), max_size=8),
    end=st.sampled_from(["silent", "reset", "closed", "drip"]),
)
def test_any_peer_ends_the_check_within_its_cap(chunks: list[bytes], end: str) -> None:
    """Whatever a peer sends and however it ends, the check ends with a step and a
    reason, within its cap, having read no more than its byte cap."""
    tiny = CheckSettings(step_timeout=0.02, transfer_timeout=0.02, upload=16, download=64)

    async def closed(peer: Peer) -> bytes:
        return b""

    ends = {"silent": silence, "reset": reset, "closed": closed, "drip": dripping(b"\x05", 0.01)}

    async def main() -> tuple[CheckResult, float]:
        started = time.monotonic()
        result = await run_check(TARGET, CANARY, Net(scripted(chunks, ends[end])), tiny)
        return result, time.monotonic() - started

    result, took = asyncio.run(main())
    assert not result.verdict.ok
    assert result.verdict.failed_step is not None and result.verdict.failure is not None
    assert took < check_cap(tiny) + 2
    assert result.received <= byte_cap(tiny) + 300


def test_slow_counts_against_the_proxy_even_when_the_canary_fell_silent() -> None:
    outcomes = [StepOutcome(Step.TCP)]
    result = cut_off(TARGET, CANARY, outcomes, started_at=time.monotonic(), seconds=1.0)
    assert failed(result) == (Step.GREETING, Failure.SLOW)
    assert attributable(result, canary_alive=False)
    at_transfer = cut_off(
        TARGET,
        CANARY,
        [StepOutcome(s) for s in required_steps(TARGET, CANARY)[:-1]],
        started_at=time.monotonic(),
        seconds=1.0,
    )
    assert failed(at_transfer) == (Step.TRANSFER, Failure.SLOW)
    assert attributable(at_transfer, canary_alive=False)


async def test_a_dripping_proxy_does_not_hold_the_round_or_its_batch(tmp_path: Path) -> None:
    """One dripping proxy among honest ones: the round ends within the cap, every
    honest result and the slow one are signed into the batch."""

    class World:
        def __init__(self) -> None:
            self.peers: list[Peer] = []

        async def connect(self, host: str, port: int) -> Connection:
            if host == "192.0.2.66":  # the censor's registered proxy
                peer = scripted([GREETING, AUTH], dripping(HUGE_REPLY, 0.04))
            elif host == CANARY.host:  # the agent asks the canary directly
                peer = Peer(lambda p: asyncio.sleep(0, honest_stream(p)[: canary.SIGNATURE_BYTES]))
            else:
                peer = scripted(
                    [GREETING, AUTH, REPLY], lambda p: asyncio.sleep(0, honest_stream(p))
                )
            self.peers.append(peer)
            return peer

    canary_raw = {"host": CANARY.host, "port": CANARY.port, "public_key": _key_text()}
    stats, records, took = await one_round(
        tmp_path, World(), SETTINGS, ids=(1, 2, 66, 3), canary_raw=canary_raw
    )
    assert took < check_limit(SETTINGS) + 2
    assert (stats.checked, stats.ok) == (4, 3)
    results = {r.proxy_id: r for r in records}
    assert sorted(results) == [1, 2, 3, 66]
    assert (results[66].step, results[66].failure) == ("connect", "slow")
    assert all(results[i].failure is None for i in (1, 2, 3))


def _key_text() -> str:
    from resistance.directory.keys import public_key_text

    return public_key_text(KEY.public_key())


async def one_round(
    tmp_path: Path,
    network: object,
    check: CheckSettings,
    *,
    ids: tuple[int, ...] = (5,),
    canary_raw: dict[str, object] | None = None,
) -> tuple[RoundStats, list[ResultRecord], float]:
    """One agent round over ``network`` for proxies ``ids`` (at 192.0.2.ID); its stats,
    signed results and seconds."""
    settings_ = AgentSettings(
        registry="http://127.0.0.1:9", token="t", vantage="msk-1", country="RU",
        state_dir=tmp_path, check=check,
    )  # fmt: skip
    agent = Agent(settings_, network=network)  # type: ignore[arg-type]
    proxy = {"username": "probe", "password": "pw", "due_ms": 0, "outside_ok": None}
    assignment = parse_assignment({
        "vantage": "msk-1", "country": "RU", "round_seconds": 0, "canary": canary_raw,
        "proxies": [{**proxy, "proxy_id": i, "host": f"192.0.2.{i}", "port": 1080,
                     "control_ports": []} for i in ids],
    })  # fmt: skip
    started = time.monotonic()
    try:
        stats = await agent.run_round(assignment)
        agent.flush()
    finally:
        await agent.link.close()
    took = time.monotonic() - started
    (path,) = agent.spool.pending()
    return stats, list(parse_batch(path.read_bytes()).results), took


async def test_a_diagnosis_that_hangs_is_cut_off_at_the_agents_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent's own bound, behind the runner's: whatever hangs after a check
    (here its diagnosis), the result is kept and the round ends."""

    async def hang(self: Agent, result: CheckResult, assignment: object) -> None:
        await asyncio.sleep(3600)

    monkeypatch.setattr(Agent, "_diagnose", hang)

    class World:
        async def connect(self, host: str, port: int) -> Connection:
            return Peer(silence)

    tiny = CheckSettings(step_timeout=0.05, transfer_timeout=0.05)
    stats, (record,), took = await one_round(tmp_path, World(), tiny)
    assert took < check_limit(tiny) + 2
    assert stats.checked == 1
    assert (record.step, record.failure) == ("greeting", "timeout")  # what the check saw


async def test_a_check_still_running_at_the_limit_is_recorded_slow_at_its_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from resistance.probe import agent as agent_module

    async def stuck(*args: object, on_step: Callable[[StepOutcome], None], **kw: object) -> None:
        on_step(StepOutcome(Step.TCP))
        on_step(StepOutcome(Step.GREETING))
        await asyncio.sleep(3600)

    monkeypatch.setattr(agent_module, "run_check", stuck)
    tiny = CheckSettings(step_timeout=0.05, transfer_timeout=0.05)
    _, (record,), _ = await one_round(tmp_path, Net(Peer(silence)), tiny)
    assert (record.step, record.failure) == ("auth", "slow")
    assert "cut off" in record.detail
