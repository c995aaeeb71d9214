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
* whether this vantage's last check of the proxy passed within
  ``probed_window`` seconds (``first_ok``): an address that went dark right
  after a probe used it is an active probe's block.  An IP block that lands
  inside that window by chance looks the same; the reason says so.

Benign-SNI controls need a TLS check, which the probe does not run yet
(its checks are plain SOCKS5 and WireGuard), so ``blocked-sni`` is never
named by the agent today; :mod:`resistance.probe.diagnose` knows the rule.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from resistance.probe.check import Failure
from resistance.probe.diagnose import Attempt, Diagnosis, Evidence, Stage, diagnose
from resistance.probe.net import NetFailure, Network
from resistance.probe.runner import Canary, CheckResult, CheckSettings, Target, run_check

#: At most this many other ports of one host are tried.
MAX_OTHER_PORTS = 2


@dataclass(frozen=True, slots=True)
class Controls:
    """What the assignment offers for one target's controls."""

    other_ports: tuple[int, ...] = ()
    control: Target | None = None
    outside_ok: bool | None = None
    #: Seconds since this vantage's last passing check of the target (None: none known).
    last_ok_ago: float | None = None
    probed_window: float = 120.0


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
    if not main.got_tcp:
        for port in controls.other_ports[:MAX_OTHER_PORTS]:
            if port == target.port:
                continue
            other_port = await tcp_attempt(network, target.host, port, settings.step_timeout)
            if other_port.got_tcp:
                break
    if controls.control is not None and main.stage in (Stage.TCP, Stage.HANDSHAKE):
        control = main_attempt(await run_check(controls.control, canary, network, settings))
    outside = None
    if controls.outside_ok is not None:
        # The registry passes only whether its control vantages' latest check worked.
        outside = (
            Attempt.passed() if controls.outside_ok else Attempt.stopped(Stage.TCP, Failure.ERROR)
        )
    first_ok = controls.last_ok_ago is not None and controls.last_ok_ago <= controls.probed_window
    return Evidence(
        main=main,
        tls=False,
        outside=outside,
        other_port=other_port,
        control_host=control,
        listed_host=Attempt.passed() if listed_ok else None,
        first_ok=first_ok,
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
