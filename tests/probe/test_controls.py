"""The agent's control experiments over the network seam, and the diagnosis as it is
recorded in (and checked from) a signed batch."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from resistance.probe.batch import BatchError, parse_batch, result_json
from resistance.probe.check import Failure
from resistance.probe.controls import Controls, diagnose_check
from resistance.probe.diagnose import Mechanism, Stage
from resistance.probe.net import Connection, NetFailure
from resistance.probe.runner import Canary, CheckResult, CheckSettings, Target, run_check
from tests.probe.test_check import KEY, Canned, Scripted
from tests.probe.test_parsers import signed

PROXY = Target("192.0.2.1", 1080, "probe", "pw", 7)
CONTROL = Target("198.51.100.9", 1080, "probe", "pw", 0)
SETTINGS = CheckSettings(step_timeout=0.1, transfer_timeout=0.1, upload=64, download=4096)
REPLY = b"\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x09"


class Silent(Scripted):
    """Connected, then nothing: a censor that drops the flow after its first payload."""

    async def recv(self) -> bytes:
        if self.replies:
            return await super().recv()
        await asyncio.sleep(10)
        return b""


async def _hang() -> Connection:
    await asyncio.sleep(10)
    raise AssertionError("unreachable")


class World:
    """Each (host, port) behaves as scripted: 'drop' (SYN dropped), 'refuse', 'silent'
    (TCP opens, the first payload is swallowed), 'socks' (a proxy that lets the probe in)."""

    def __init__(self, behaviour: dict[str, str]) -> None:
        self.behaviour = behaviour
        self.connects: list[str] = []

    async def connect(self, host: str, port: int) -> Connection:
        endpoint = f"{host}:{port}"
        self.connects.append(endpoint)
        kind = self.behaviour.get(endpoint, "drop")
        if kind == "drop":
            return await _hang()
        if kind == "refuse":
            raise NetFailure(Failure.REFUSED, "ECONNREFUSED")
        if kind == "silent":
            return Silent([])
        assert kind == "socks"
        return Scripted([b"\x05\x02", b"\x01\x00"])


def world(**endpoints: str) -> World:
    return World(dict(endpoints))


async def diagnosed(
    net: World, *, ports: tuple[int, ...] = (443,), control: Target | None = CONTROL,
    outside: bool | None = True, first_ok: bool = False, listed: bool = True,
) -> CheckResult:  # fmt: skip
    result = await run_check(PROXY, None, net, SETTINGS)
    assert not result.verdict.ok
    controls = Controls(ports, control, outside, first_ok)
    result.evidence, result.diagnosis = await diagnose_check(
        result, canary=None, network=net, settings=SETTINGS, controls=controls, listed_ok=listed
    )
    return result


def mechanism(result: CheckResult) -> Mechanism:
    assert result.diagnosis is not None
    return result.diagnosis.mechanism


A, A443, C = "192.0.2.1:1080", "192.0.2.1:443", "198.51.100.9:1080"


async def test_ip_block_every_port_dark_control_host_fine() -> None:
    net = world(**{A: "drop", A443: "drop", C: "socks"})
    result = await diagnosed(net)
    assert mechanism(result) is Mechanism.BLOCKED_IP
    assert A443 in net.connects and C in net.connects
    # near miss: the host's TLS port still opens
    net = world(**{A: "drop", A443: "socks", C: "socks"})
    assert mechanism(await diagnosed(net)) is Mechanism.INCONCLUSIVE


async def test_down_when_the_control_vantages_fail_too() -> None:
    net = world(**{A: "refuse", A443: "refuse", C: "socks"})
    assert mechanism(await diagnosed(net, outside=False)) is Mechanism.DOWN


async def test_socks5_fingerprint_block_greeting_swallowed_everywhere() -> None:
    net = world(**{A: "silent", A443: "socks", C: "silent"})
    result = await diagnosed(net)
    assert mechanism(result) is Mechanism.BLOCKED_FINGERPRINT
    assert result.evidence is not None and result.evidence.control_host is not None
    assert result.evidence.control_host.stage is Stage.HANDSHAKE
    # near miss: the same protocol to the control host works: not the protocol
    net = world(**{A: "silent", A443: "socks", C: "socks"})
    assert mechanism(await diagnosed(net)) is Mechanism.INCONCLUSIVE


async def test_whitelist_unlisted_control_unreachable_listed_canary_fine() -> None:
    net = world(**{A: "drop", A443: "drop", C: "drop"})
    assert mechanism(await diagnosed(net, outside=None)) is Mechanism.WHITELISTED_OUT
    # near miss: without a listed host that answered, nothing can be said
    assert mechanism(await diagnosed(net, outside=None, listed=False)) is Mechanism.INCONCLUSIVE


async def test_probed_only_when_the_address_went_dark_during_this_check() -> None:
    net = world(**{A: "drop", A443: "drop", C: "socks"})
    assert mechanism(await diagnosed(net, first_ok=True)) is Mechanism.PROBED
    # an IP block is told first: the same darkness, no connection of this check through
    assert mechanism(await diagnosed(net)) is Mechanism.BLOCKED_IP
    # a greeting that died and a host dark on its other port right after is no probe's
    # mark (a whitelist switched on during the greeting's timeout looks the same)
    net = world(**{A: "silent", A443: "drop", C: "socks"})
    assert mechanism(await diagnosed(net)) is Mechanism.INCONCLUSIVE


async def test_a_freeze_is_named_with_the_byte_count_where_the_flow_stopped() -> None:
    conn = Silent([b"\x05\x02", b"\x01\x00", REPLY])
    canned = Canned(conn)
    conn.replies.append(lambda: canned()[: 64 + 1500])

    class One:
        async def connect(self, host: str, port: int) -> Connection:
            return conn

    canary = Canary("203.0.113.5", 9, KEY.public_key())
    result = await run_check(PROXY, canary, One(), SETTINGS)
    assert result.received == 2 + 2 + len(REPLY) + 64 + 1500
    result.evidence, result.diagnosis = await diagnose_check(
        result, canary=canary, network=One(), settings=SETTINGS,
        controls=Controls(outside_ok=True), listed_ok=True,
    )  # fmt: skip
    assert result.diagnosis.mechanism is Mechanism.FROZEN
    assert result.diagnosis.frozen_at == result.received


# --- the diagnosis in a signed batch ----------------------------------------------------


async def test_a_diagnosis_travels_in_the_signed_batch_and_is_checked() -> None:
    net = world(**{A: "drop", A443: "drop", C: "socks"})
    result = await diagnosed(net)
    raw = result_json(result)
    assert raw["diagnosis"]["mechanism"] == "blocked-ip"
    batch = parse_batch(signed([raw]))
    assert batch.results[0].mechanism == "blocked-ip"
    # a probe cannot claim a mechanism its own evidence does not give
    forged: dict[str, Any] = {**raw, "diagnosis": {**raw["diagnosis"], "mechanism": "down"}}
    with pytest.raises(BatchError, match="evidence gives blocked-ip"):
        parse_batch(signed([forged]))
    # nor evidence whose main attempt passed for a failed result
    main_ok = {**raw["diagnosis"]["evidence"], "main": {"ok": True, "stage": None,
                                                       "failure": None, "received": 0}}  # fmt: skip
    with pytest.raises(BatchError):
        parse_batch(signed([{**raw, "diagnosis": {"mechanism": "ok", "evidence": main_ok}}]))


def test_results_without_a_diagnosis_stay_valid() -> None:
    batch = parse_batch(signed())
    assert batch.results[0].mechanism is None
