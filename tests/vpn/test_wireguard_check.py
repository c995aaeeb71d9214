"""The probe's WireGuard check and how its results travel in signed batches.

The server is the test responder on a loopback UDP port (see
``tests.vpn.responder``); the real wireguard-go is in
``tests/registry/test_wireguard_live.py``.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from resistance.directory.keys import public_key_text
from resistance.probe.agent import parse_assignment
from resistance.probe.batch import BatchError, new_batch_id, parse_batch, result_json, sign_batch
from resistance.probe.check import Failure, Step
from resistance.probe.runner import CheckSettings, Target
from resistance.probe.wireguard import run_wireguard_check
from resistance.vpn import keys
from tests.vpn.responder import UdpResponder

PROBE = keys.KeyPair.generate()
SERVER = keys.KeyPair.generate()
SETTINGS = CheckSettings(step_timeout=0.6)


def target(port: int, server_key: str = SERVER.public_text) -> Target:
    return Target("127.0.0.1", port, "", "", 7, "wireguard", server_key)


def signed(results: list[dict[str, object]]) -> bytes:
    key = Ed25519PrivateKey.generate()
    return sign_batch(
        key=key, probe_key=public_key_text(key.public_key()), batch_id=new_batch_id(),
        vantage="ams-1", country="NL", created_at=int(time.time()), results=results,
    )  # fmt: skip


def test_a_server_that_knows_the_probe_is_up() -> None:
    with UdpResponder(SERVER.private, {PROBE.public}, under_load=True) as server:
        result = asyncio.run(run_wireguard_check(target(server.port), PROBE.private, SETTINGS))
    assert result.verdict.ok and result.required == (Step.HANDSHAKE,)
    assert result.timings.connect_us is not None and result.proof is None
    record = result_json(result)
    assert record["protocol"] == "wireguard" and record["canary"] is None
    (parsed,) = parse_batch(signed([record])).results
    assert parsed.ok and parsed.protocol == "wireguard" and parsed.connect_us


@pytest.mark.parametrize("case", ["unknown probe", "wrong server key", "no server"])
def test_silence_is_a_failed_handshake(case: str) -> None:
    peers = set() if case == "unknown probe" else {PROBE.public}
    with UdpResponder(SERVER.private, peers) as server:
        port = server.port
        key = keys.KeyPair.generate().public_text if case == "wrong server key" else None
        if case == "no server":
            server.close()
        result = asyncio.run(
            run_wireguard_check(target(port, key or SERVER.public_text), PROBE.private, SETTINGS)
        )
    assert not result.verdict.ok and result.verdict.failed_step is Step.HANDSHAKE
    expected = Failure.REFUSED if case == "no server" else Failure.TIMEOUT
    assert result.verdict.failure is expected
    record = result_json(result)
    assert record["step"] == "handshake" and record["protocol"] == "wireguard"
    assert not parse_batch(signed([record])).results[0].ok


def test_a_socks5_success_still_needs_its_canary_and_handshakes_stay_wireguard() -> None:
    base = {
        "proxy_id": 3, "at": int(time.time()), "ok": True, "step": None, "failure": None,
        "detail": "", "tcp_us": None, "connect_us": 10, "ttfb_us": None,
        "throughput_kbps": None, "canary": None,
    }  # fmt: skip
    with pytest.raises(BatchError, match="canary"):
        parse_batch(signed([base]))
    with pytest.raises(BatchError, match="protocol"):
        parse_batch(signed([{**base, "protocol": "openvpn"}]))
    failed = {**base, "ok": False, "step": "handshake", "failure": "timeout"}
    with pytest.raises(BatchError, match="only a WireGuard check"):
        parse_batch(signed([failed]))
    assert parse_batch(signed([{**failed, "protocol": "wireguard"}])).results[0].step == "handshake"


def test_assignment_entries_say_their_protocol() -> None:
    raw = {
        "vantage": "ams-1", "country": "NL", "control": True, "issued_at": 1,
        "round_seconds": 60, "canary": None,
        "proxies": [
            {"proxy_id": 1, "host": "192.0.2.1", "port": 1080, "username": "u", "password": "p",
             "due_ms": 5},
            {"proxy_id": 2, "host": "192.0.2.2", "port": 51820, "username": "", "password": "",
             "due_ms": 1, "protocol": "wireguard", "wg_public_key": SERVER.public_text},
        ],
    }  # fmt: skip
    assignment = parse_assignment(raw)
    (_, wg), (_, socks) = assignment.targets
    assert (wg.protocol, wg.wg_public_key) == ("wireguard", SERVER.public_text)
    assert (socks.protocol, socks.wg_public_key) == ("socks5", None)
    del raw["proxies"][1]["wg_public_key"]
    with pytest.raises(ValueError, match="server key"):
        parse_assignment(raw)
