"""One check of one proxy, as step outcomes, and the verdict those outcomes give.

A check walks the steps a user's application walks, in order: TCP connect to
the proxy, SOCKS5 greeting, username/password authentication with the probe
credential, CONNECT through the proxy to the canary, the canary's signed
answer to a fresh nonce (bytes up), and the download that follows (bytes
down).  Each step either passes or fails in one recorded way; the first
failure ends the check.  A WireGuard endpoint has one step, the handshake
(:mod:`resistance.probe.wireguard`); an MTProto proxy has TCP, the fake-TLS
handshake (ee only) and ``respq`` (:mod:`resistance.probe.mtproto`).
Everything here is pure: the I/O that produces the outcomes is in
:mod:`resistance.probe.runner`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass


class Step(enum.StrEnum):
    TCP = "tcp"
    GREETING = "greeting"
    AUTH = "auth"
    CONNECT = "connect"
    CANARY = "canary"
    TRANSFER = "transfer"
    #: WireGuard's only step: a handshake that the server answers with its key.
    #: Also an MTProto ee proxy's fake-TLS handshake (its ServerHello's HMAC'd random).
    HANDSHAKE = "handshake"
    #: MTProto's last step: req_pq_multi through the proxy, answered by a data
    #: centre's resPQ echoing our nonce (:mod:`resistance.probe.mtproto`).
    RESPQ = "respq"


#: A SOCKS5 check's steps, in order.
STEPS: tuple[Step, ...] = (
    Step.TCP,
    Step.GREETING,
    Step.AUTH,
    Step.CONNECT,
    Step.CANARY,
    Step.TRANSFER,
)


class Failure(enum.StrEnum):
    """How a step failed."""

    TIMEOUT = "timeout"
    #: Still sending, too slowly to finish the step by its deadline: cut off (the proxy's fault).
    SLOW = "slow"
    REFUSED = "refused"  # TCP RST to SYN, or the proxy said no (method, credentials, reply code)
    RESET = "reset"  # connection reset or broken pipe mid-step
    CLOSED = "closed"  # orderly close before the step's answer was complete
    UNREACHABLE = "unreachable"  # no route to the network or host
    WRONG_ANSWER = "wrong-answer"  # bytes that are not the protocol or not the canary's proof
    ERROR = "error"  # any other local error (e.g. no free ports)


@dataclass(frozen=True, slots=True)
class StepOutcome:
    step: Step
    failure: Failure | None = None
    detail: str = ""
    micros: int = 0

    @property
    def passed(self) -> bool:
        return self.failure is None


@dataclass(frozen=True, slots=True)
class Timings:
    """Microseconds; ``None`` when the check did not get that far."""

    tcp_us: int | None = None
    #: TCP connect + SOCKS5 greeting + auth + CONNECT: what a user waits before sending.
    connect_us: int | None = None
    #: From sending the canary request to the first byte of its answer.
    ttfb_us: int | None = None
    #: Download throughput over the short transfer, kilobits per second.
    throughput_kbps: int | None = None


@dataclass(frozen=True, slots=True)
class CheckVerdict:
    ok: bool
    failed_step: Step | None
    failure: Failure | None
    detail: str

    def __str__(self) -> str:
        if self.ok:
            return "functional: every step passed"
        step = self.failed_step.value if self.failed_step else "?"
        kind = self.failure.value if self.failure else "?"
        return f"failed at {step}: {kind}" + (f" ({self.detail})" if self.detail else "")


def verdict(outcomes: Sequence[StepOutcome], *, required: Sequence[Step] = STEPS) -> CheckVerdict:
    """The verdict from step outcomes: ok iff every required step passed, in order.

    The first failed step is the one reported; a required step with no outcome
    (the check stopped before it) counts as a failure of the step before it, or
    as an error if there is nothing before it.
    """
    seen = {o.step: o for o in outcomes}
    for outcome in outcomes:
        if not outcome.passed:
            return CheckVerdict(False, outcome.step, outcome.failure, outcome.detail)
    for step in required:
        if step not in seen:
            return CheckVerdict(False, step, Failure.ERROR, "step not run")
    return CheckVerdict(True, None, None, "")


def throughput_kbps(nbytes: int, micros: int) -> int:
    """Kilobits per second, integer, for ``nbytes`` in ``micros`` (at least 1 µs)."""
    return nbytes * 8 * 1000 // max(micros, 1)
