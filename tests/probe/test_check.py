"""The check's pure parts: the probe exchange, the canary parser, verdicts, and the
runner against scripted peers (the network seam), with no sockets at all."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from resistance.errors import ProtocolError
from resistance.probe import canary
from resistance.probe.check import STEPS, Failure, Step, StepOutcome, verdict
from resistance.probe.exchange import ProbeExchange, StepFailed
from resistance.probe.net import Connection, NetFailure
from resistance.probe.runner import Canary, CheckSettings, Target, run_check

KEY = Ed25519PrivateKey.generate()
NONCE = bytes(range(16))
UPLOAD = b"u" * 100
AT = 1_800_000_000


def machine(key: Ed25519PrivateKey | None = KEY, download: int = 300) -> ProbeExchange:
    return ProbeExchange(
        username="probe",
        password="pw",
        canary_host="127.0.0.1",
        canary_port=9,
        canary_key=(key or KEY).public_key(),
        nonce=NONCE,
        upload=UPLOAD,
        download=download,
        at=AT,
    )


def server_bytes(key: Ed25519PrivateKey = KEY, download: int = 300) -> bytes:
    reply = b"\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x09"
    proof = canary.answer(key, NONCE, hashlib.sha256(UPLOAD).digest(), download, now=AT + 5)
    return b"\x05\x02" + b"\x01\x00" + reply + proof


@pytest.mark.parametrize("chunking", ["whole", "bytewise", "trailing"])
def test_exchange_passes_every_step(chunking: str) -> None:
    m = machine()
    m.start()
    data = server_bytes()
    steps: list[Step] = []
    if chunking == "bytewise":
        for i in range(len(data)):
            steps += [p.step for p in m.receive(data[i : i + 1])]
    else:
        steps += [p.step for p in m.receive(data)]
    assert steps == [Step.GREETING, Step.AUTH, Step.CONNECT, Step.CANARY, Step.TRANSFER]
    assert m.done and m.proof is not None
    if chunking == "trailing":
        with pytest.raises(StepFailed) as caught:
            m.receive(b"x")
        assert caught.value.failure is Failure.WRONG_ANSWER


@pytest.mark.parametrize(
    ("answer", "step", "failure"),
    [
        (b"\x04\x00", Step.GREETING, Failure.WRONG_ANSWER),
        (b"\x05\xff", Step.GREETING, Failure.REFUSED),
        (b"\x05\x02\x01\x01", Step.AUTH, Failure.REFUSED),
        (
            b"\x05\x02\x01\x00\x05\x05\x00\x01\x00\x00\x00\x00\x00\x00",
            Step.CONNECT,
            Failure.REFUSED,
        ),
    ],
)
def test_exchange_says_which_step_failed(answer: bytes, step: Step, failure: Failure) -> None:
    m = machine()
    m.start()
    with pytest.raises(StepFailed) as caught:
        m.receive(answer)
    assert (caught.value.step, caught.value.failure) == (step, failure)


def test_a_proxy_cannot_fake_the_canary() -> None:
    m = machine()
    m.start()
    with pytest.raises(StepFailed) as caught:
        m.receive(server_bytes(key=Ed25519PrivateKey.generate()))
    assert (caught.value.step, caught.value.failure) == (Step.CANARY, Failure.WRONG_ANSWER)
    good = server_bytes()
    m = machine()
    m.start()
    with pytest.raises(StepFailed) as caught:
        m.receive(good[:-1] + bytes([good[-1] ^ 1]))
    assert caught.value.step is Step.TRANSFER


@given(st.binary(max_size=600))
def test_exchange_fuzz_never_raises_anything_else(data: bytes) -> None:
    m = machine()
    m.start()
    try:
        m.receive(data)
    except StepFailed:
        pass


@pytest.mark.parametrize("chunk", [1, 7, 10_000])
def test_canary_parser_streams_the_upload(chunk: int) -> None:
    data = canary.request_bytes(NONCE, UPLOAD, 4096) + b"trailing"
    parser = canary.CanaryRequestParser()
    found = None
    for i in range(0, len(data), chunk):
        found = parser.feed(data[i : i + chunk]) or found
    assert found == canary.CanaryRequest(NONCE, hashlib.sha256(UPLOAD).digest(), 4096)


@given(st.binary(max_size=200))
def test_canary_parser_fuzz(data: bytes) -> None:
    try:
        canary.CanaryRequestParser().feed(data)
    except ProtocolError:
        pass


def test_verdict_from_outcomes() -> None:
    passed = [StepOutcome(s) for s in Step]
    assert verdict(passed).ok
    failed = [StepOutcome(Step.TCP), StepOutcome(Step.GREETING, Failure.RESET, "ECONNRESET")]
    v = verdict(failed)
    assert (v.ok, v.failed_step, v.failure) == (False, Step.GREETING, Failure.RESET)
    assert str(v) == "failed at greeting: reset (ECONNRESET)"
    assert verdict([StepOutcome(Step.TCP)]).failed_step is Step.GREETING


# --- the runner over a scripted network -----------------------------------------------


@dataclass
class Scripted:
    """A peer that answers each send with the next scripted chunk (or an action)."""

    replies: list[bytes | Callable[[], bytes]]
    sent: list[bytes] = field(default_factory=list)

    async def send(self, data: bytes) -> None:
        self.sent.append(data)

    async def recv(self) -> bytes:
        if not self.replies:
            return b""
        reply = self.replies.pop(0)
        return reply() if callable(reply) else reply

    def close(self) -> None:
        pass


class ScriptedNetwork:
    def __init__(self, conn: Scripted | NetFailure) -> None:
        self.conn = conn

    async def connect(self, host: str, port: int) -> Connection:
        if isinstance(self.conn, NetFailure):
            raise self.conn
        return self.conn


TARGET = Target("192.0.2.1", 1080, "probe", "pw", 1)
SETTINGS = CheckSettings(step_timeout=0.2, transfer_timeout=0.2, upload=64, download=256)


class Canned:
    """A canary answer computed from what the probe actually sent."""

    def __init__(self, conn: Scripted, key: Ed25519PrivateKey = KEY) -> None:
        self.conn, self.key = conn, key

    def __call__(self) -> bytes:
        request = canary.CanaryRequestParser().feed(self.conn.sent[-1])
        assert request is not None
        return canary.answer(
            self.key, request.nonce, request.upload_sha256, request.download, now=time.time()
        )


async def test_runner_passes_against_a_scripted_proxy_and_canary() -> None:
    conn = Scripted([b"\x05\x02", b"\x01\x00", b"\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x09"])
    conn.replies.append(Canned(conn))
    result = await run_check(
        TARGET, Canary("198.51.100.1", 9, KEY.public_key()), ScriptedNetwork(conn), SETTINGS
    )
    assert result.verdict.ok, result.outcomes
    assert [o.step for o in result.outcomes] == list(STEPS)  # a SOCKS5 check's steps
    assert result.timings.throughput_kbps is not None and result.proof is not None


@pytest.mark.parametrize(
    ("network", "step", "failure"),
    [
        (ScriptedNetwork(NetFailure(Failure.REFUSED, "ECONNREFUSED")), Step.TCP, Failure.REFUSED),
        (ScriptedNetwork(Scripted([])), Step.GREETING, Failure.CLOSED),
        (ScriptedNetwork(Scripted([b"\x05\x02", b""])), Step.AUTH, Failure.CLOSED),
    ],
)
async def test_runner_records_the_failed_step(
    network: ScriptedNetwork, step: Step, failure: Failure
) -> None:
    result = await run_check(TARGET, Canary("198.51.100.1", 9, None), network, SETTINGS)
    assert (result.verdict.failed_step, result.verdict.failure) == (step, failure)


async def test_runner_times_out_each_step() -> None:
    class Silent(Scripted):
        async def recv(self) -> bytes:
            import asyncio

            await asyncio.sleep(10)
            return b""

    result = await run_check(TARGET, None, ScriptedNetwork(Silent([])), SETTINGS)
    assert (result.verdict.failed_step, result.verdict.failure) == (Step.GREETING, Failure.TIMEOUT)
