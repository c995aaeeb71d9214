"""One check of an MTProto proxy, the way a Telegram app uses it, without an account.

The registry hands the probe the proxy's secret (in the authenticated
assignment, never in the public directory).  The check connects (``tcp``),
does the fake-TLS handshake for an ``ee`` secret (``handshake``: the proxy's
answer must be signed with the secret's key), then sends an unencrypted
``req_pq_multi`` through the proxy and needs the data centre's ``resPQ``
echoing its nonce (``respq``).  That proves the whole path, proxy and data
centre, works for a user (:mod:`resistance.net.mtproto`).  ``connect_us`` is
what a user waits before the app can send (TCP plus handshake), ``ttfb_us``
the round trip of req_pq_multi to the data centre and back.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from resistance.errors import ConfigError
from resistance.links import parse_mtproto_secret
from resistance.net.mtproto import ask_res_pq
from resistance.probe.check import Failure, Step, StepOutcome, Timings, verdict
from resistance.probe.runner import CheckResult, CheckSettings, Target


def required_steps(ee: bool) -> tuple[Step, ...]:
    return (Step.TCP, Step.HANDSHAKE, Step.RESPQ) if ee else (Step.TCP, Step.RESPQ)


async def run_mtproto_check(
    target: Target,
    settings: CheckSettings,
    *,
    source: str | None = None,
    clock: Callable[[], float] = time.time,
) -> CheckResult:
    """Check ``target`` with its ``mtproto_secret``; never raises for the proxy."""
    at = int(clock())
    try:
        secret = parse_mtproto_secret(target.mtproto_secret or "")
    except ConfigError as exc:
        outcome = StepOutcome(Step.TCP, Failure.ERROR, str(exc)[:120])
        required = required_steps(False)
        return CheckResult(target, at, [outcome], verdict([outcome], required=required),
                           Timings(), None, required)  # fmt: skip
    ee = secret.mode == "ee"
    required = required_steps(ee)
    answer = await ask_res_pq(
        target.host, target.port, secret, within=settings.step_timeout, source=source, clock=clock
    )
    outcomes: list[StepOutcome] = []
    if answer.tcp_us is not None:
        outcomes.append(StepOutcome(Step.TCP, micros=answer.tcp_us))
    if answer.handshake_us is not None:
        outcomes.append(StepOutcome(Step.HANDSHAKE, micros=answer.handshake_us))
    if answer.ok:
        outcomes.append(StepOutcome(Step.RESPQ, micros=answer.respq_us or 0))
    else:
        failure = Failure(answer.failure) if answer.failure else Failure.ERROR
        outcomes.append(StepOutcome(Step(answer.step), failure, answer.detail[:120]))
    connect_us = None
    if answer.tcp_us is not None and (not ee or answer.handshake_us is not None):
        connect_us = answer.tcp_us + (answer.handshake_us or 0)
    timings = Timings(
        tcp_us=answer.tcp_us,
        connect_us=connect_us,
        ttfb_us=answer.respq_us if answer.ok else None,
    )
    return CheckResult(
        target, at, outcomes, verdict(outcomes, required=required), timings, None, required
    )
