"""One check over the network seam: every step has a timeout and a deadline.

The runner drives :class:`~resistance.probe.exchange.ProbeExchange` over a
:class:`~resistance.probe.net.Connection`, timing each step and turning
timeouts, OS errors and protocol faults into step outcomes.  It never raises
for anything the proxy does; the result always says which step failed and
how.

Bounds (a registered proxy may be the censor's, and hostile on purpose).
Each step has two clocks, so no peer can hold a check longer than its cap:

* an *idle* timeout, ``step_timeout`` (``transfer_timeout`` for TRANSFER),
  restarted by every byte: a peer that falls silent fails the step with
  ``timeout`` (a flow that stops partway, the mark of a freeze, stays a
  timeout);
* a *deadline*, twice that timeout from the step's start, that bytes do not
  move: a peer that keeps sending too slowly to finish the step (one byte a
  second, say) is cut off there and the step fails with ``slow``.

TCP has only its connect timeout.  So a whole check ends within
:func:`check_cap` seconds, ``step_timeout * (1 + 2 * handshake steps) + 2 *
transfer_timeout`` (65 s with the defaults 5 s and 10 s for a full SOCKS5
check: TCP, greeting, auth, CONNECT, canary, transfer), and reads at most
:func:`byte_cap` bytes: 1 KiB of answer per handshake step, the canary's
signature and the download asked for (plus one read of 64 KiB already in
flight); a peer that sends more fails with ``wrong-answer``.  A ``slow``
failure is the proxy's: it counts against the proxy even when the canary
fell silent (see :func:`attributable`).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from resistance.probe.canary import SIGNATURE_BYTES, bound_nonce, request_bytes, verify_proof
from resistance.probe.check import (
    STEPS,
    CheckVerdict,
    Failure,
    Step,
    StepOutcome,
    Timings,
    throughput_kbps,
    verdict,
)
from resistance.probe.diagnose import Diagnosis, Evidence
from resistance.probe.exchange import (
    MAX_HEADER_BUFFER,
    CanaryProof,
    ProbeExchange,
    StepFailed,
)
from resistance.probe.net import Connection, NetFailure, Network


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    username: str | None
    password: str | None
    proxy_id: int = 0
    #: "socks5", "wireguard" with the server's key (see :mod:`.wireguard`), or
    #: "mtproto" with the secret to connect with (see :mod:`.mtproto`).
    protocol: str = "socks5"
    wg_public_key: str | None = None
    mtproto_secret: str | None = None
    #: "amneziawg": the server's key and these parameters (AmneziaParams.to_json).
    amnezia: dict[str, Any] | None = None
    #: A target registered by DNS name: the addresses its control was proven at.  The
    #: agent resolves ``host`` per measurement and pins one of them (see :func:`pinned`).
    addresses: tuple[str, ...] = ()
    #: Set on a pinned target: the name it was registered by (``host`` is the address).
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Canary:
    host: str
    port: int
    public_key: Ed25519PublicKey | None


#: A step's deadline is this many times its idle timeout.
DEADLINE_FACTOR = 2


@dataclass(frozen=True, slots=True)
class CheckSettings:
    #: Idle timeout of each step but TRANSFER (and TCP's connect timeout); the
    #: step's deadline is twice this (see the module docstring).
    step_timeout: float = 5.0
    #: Idle timeout of the TRANSFER step; its deadline is twice this.
    transfer_timeout: float = 10.0
    upload: int = 16 * 1024
    download: int = 64 * 1024

    def idle(self, step: Step) -> float:
        """Seconds without a byte after which ``step`` fails with ``timeout``."""
        return self.transfer_timeout if step is Step.TRANSFER else self.step_timeout

    def deadline(self, step: Step) -> float:
        """Seconds from its start after which ``step`` fails with ``slow``."""
        return self.step_timeout if step is Step.TCP else DEADLINE_FACTOR * self.idle(step)


def check_cap(settings: CheckSettings, required: tuple[Step, ...] = STEPS) -> float:
    """The longest a check of ``required`` steps can take, whatever the peer does."""
    return sum(settings.deadline(step) for step in required)


def byte_cap(settings: CheckSettings, required: tuple[Step, ...] = STEPS) -> int:
    """The most bytes a check of ``required`` steps accepts from the peer."""
    answers = MAX_HEADER_BUFFER * sum(1 for s in required if s not in (Step.TCP, Step.TRANSFER))
    if Step.TRANSFER in required:
        answers += SIGNATURE_BYTES + settings.download
    return answers


@dataclass(slots=True)
class CheckResult:
    target: Target
    at: int
    outcomes: list[StepOutcome]
    verdict: CheckVerdict
    timings: Timings
    proof: CanaryProof | None = None
    required: tuple[Step, ...] = field(default=STEPS)
    #: Bytes that came from the proxy on the check's connection (where a freeze stopped it).
    received: int = 0
    #: For a failed check: the control experiments' evidence and the mechanism they name.
    evidence: Evidence | None = None
    diagnosis: Diagnosis | None = None
    #: Other transports of the same node measured beside it (``tls``): evidence, diagnosis.
    transports: dict[str, tuple[Evidence, Diagnosis]] = field(default_factory=dict)


def required_steps(target: Target, canary: Canary | None) -> tuple[Step, ...]:
    steps = [Step.TCP, Step.GREETING]
    if target.username is not None:
        steps.append(Step.AUTH)
    if canary is not None:
        steps += [Step.CONNECT, Step.CANARY, Step.TRANSFER]
    return tuple(steps)


async def run_check(
    target: Target,
    canary: Canary | None,
    network: Network,
    settings: CheckSettings,
    *,
    clock: Callable[[], float] = time.time,
    on_step: Callable[[StepOutcome], None] | None = None,
    probe_key: str | None = None,
) -> CheckResult:
    """Check one proxy; the result lists each step's outcome in order.

    With ``probe_key`` (the agent's checks, which it uploads) the canary nonce is bound
    to that key, the proxy and the check's time (:func:`~resistance.probe.canary.
    bound_nonce`), as the registry requires; without it (one-off checks) it is random.
    """
    at = int(clock())
    outcomes: list[StepOutcome] = []
    upload = secrets.token_bytes(settings.upload) if canary else b""
    machine = ProbeExchange(
        username=target.username,
        password=target.password,
        canary_host=canary.host if canary else None,
        canary_port=canary.port if canary else 0,
        canary_key=canary.public_key if canary else None,
        nonce=(
            bound_nonce(probe_key, target.proxy_id, at)
            if probe_key is not None
            else secrets.token_bytes(16)
        ),
        at=at,
        upload=upload,
        download=settings.download if canary else 0,
    )
    required = required_steps(target, canary)
    marks: dict[Step, float] = {}
    conn: Connection | None = None
    received = [0]

    def record(outcome: StepOutcome) -> None:
        outcomes.append(outcome)
        if on_step is not None:
            on_step(outcome)

    started = time.perf_counter()
    try:
        try:
            async with asyncio.timeout(settings.step_timeout):
                conn = await network.connect(target.host, target.port)
        except TimeoutError:
            raise StepFailed(Step.TCP, Failure.TIMEOUT, f"{settings.step_timeout:g} s") from None
        except NetFailure as exc:
            raise StepFailed(Step.TCP, exc.failure, exc.detail) from None
        now = time.perf_counter()
        marks[Step.TCP] = now
        record(StepOutcome(Step.TCP, micros=int((now - started) * 1e6)))
        await _drive(conn, machine, settings, required, marks, record, received)
    except StepFailed as exc:
        begun = marks[max(marks, key=marks.__getitem__)] if marks else started
        record(
            StepOutcome(
                exc.step, exc.failure, exc.detail[:120], int((time.perf_counter() - begun) * 1e6)
            )
        )
    finally:
        if conn is not None:
            conn.close()
    return CheckResult(
        target=target,
        at=at,
        outcomes=outcomes,
        verdict=verdict(outcomes, required=required),
        timings=_timings(started, marks, machine),
        proof=machine.proof if Step.TRANSFER in marks else None,
        required=required,
        received=received[0],
    )


async def _drive(
    conn: Connection,
    machine: ProbeExchange,
    settings: CheckSettings,
    required: tuple[Step, ...],
    marks: dict[Step, float],
    record: Callable[[StepOutcome], None],
    received: list[int],
) -> None:
    """Send, receive and advance until the last required step passes.

    Every wait ends at the sooner of the step's idle timeout (from the last
    byte) and its deadline (from the step's start): see the module docstring.
    """
    last = required[-1]
    cap = byte_cap(settings, required)
    loop = asyncio.get_running_loop()
    step_started = time.perf_counter()
    step = machine.step
    deadline = loop.time() + settings.deadline(step)
    pending = machine.start()
    while True:
        idle_end = loop.time() + settings.idle(step)
        try:
            async with asyncio.timeout_at(min(deadline, idle_end)):
                if pending:
                    await conn.send(pending)
                    pending = b""
                data = await conn.recv()
        except TimeoutError:
            if deadline <= idle_end:
                raise StepFailed(
                    step, Failure.SLOW, f"not done in {settings.deadline(step):g} s"
                ) from None
            raise StepFailed(
                step, Failure.TIMEOUT, f"no answer in {settings.idle(step):g} s"
            ) from None
        except NetFailure as exc:
            raise StepFailed(step, exc.failure, exc.detail) from None
        if not data:
            raise StepFailed(step, Failure.CLOSED, "connection closed")
        received[0] += len(data)
        if received[0] > cap + len(data):  # one read past the cap may be in flight
            raise StepFailed(step, Failure.WRONG_ANSWER, f"more than {cap} bytes")
        for passed in machine.receive(data):
            now = time.perf_counter()
            marks[passed.step] = now
            record(StepOutcome(passed.step, micros=int((now - step_started) * 1e6)))
            step_started = now
            pending += passed.send
            if passed.step is last:
                return
        if machine.step is not step:
            step = machine.step
            deadline = loop.time() + settings.deadline(step)


def _timings(started: float, marks: dict[Step, float], machine: ProbeExchange) -> Timings:
    def since_start(step: Step) -> int | None:
        return int((marks[step] - started) * 1e6) if step in marks else None

    connect_step = next((s for s in (Step.CONNECT, Step.AUTH, Step.GREETING) if s in marks), None)
    ttfb = kbps = None
    if Step.CANARY in marks and Step.CONNECT in marks:
        ttfb = int((marks[Step.CANARY] - marks[Step.CONNECT]) * 1e6)
    if Step.TRANSFER in marks and Step.CANARY in marks:
        micros = int((marks[Step.TRANSFER] - marks[Step.CANARY]) * 1e6)
        kbps = throughput_kbps(machine.download, micros)
    return Timings(
        tcp_us=since_start(Step.TCP),
        connect_us=since_start(connect_step) if connect_step else None,
        ttfb_us=ttfb,
        throughput_kbps=kbps,
    )


async def canary_answers(canary: Canary, network: Network, *, seconds: float) -> bool:
    """Whether the canary itself answers when asked directly, without a proxy.

    A check that fails at or after the CONNECT to the canary says nothing about
    the proxy while the canary is silent (the registry down, its network cut),
    so the agent asks the canary around every round.
    """
    nonce = secrets.token_bytes(16)
    conn: Connection | None = None
    data = b""
    try:
        async with asyncio.timeout(seconds):
            conn = await network.connect(canary.host, canary.port)
            await conn.send(request_bytes(nonce, b"", 0))
            while len(data) < SIGNATURE_BYTES:
                chunk = await conn.recv()
                if not chunk:
                    return False
                data += chunk
    except (TimeoutError, NetFailure, OSError):
        return False
    finally:
        if conn is not None:
            conn.close()
    if canary.public_key is None:
        return len(data) >= SIGNATURE_BYTES
    return verify_proof(
        canary.public_key, nonce, hashlib.sha256(b"").digest(), 0, data[:SIGNATURE_BYTES],
        around=time.time(),
    )  # fmt: skip


CANARY_SIDE = frozenset({Step.CONNECT, Step.CANARY, Step.TRANSFER})
"""Steps whose failure may be the canary's, not the proxy's."""


def attributable(result: CheckResult, *, canary_alive: bool) -> bool:
    """Whether ``result`` may be held against (or for) the proxy.

    Successes always count, and so does a proxy cut off for being too slow
    (the canary does not drip); a failure at the canary's end counts only
    when the canary answered directly before and after the round.
    """
    v = result.verdict
    return canary_alive or v.ok or v.failure is Failure.SLOW or v.failed_step not in CANARY_SIDE
