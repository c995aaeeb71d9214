"""The registry keeps what probes' controls named: per result, per probe's latest view,
in the directory's per-network ``reach``; assignments carry the controls' inputs; and
rollups (what grants pay from) do not change with a diagnosis (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from resistance.directory.keys import public_key_text
from resistance.probe.agent import parse_assignment
from resistance.probe.check import Failure
from resistance.probe.diagnose import Attempt, Evidence, Stage, diagnose
from resistance.probe.runner import Target
from resistance.registry import repositories as repo
from resistance.registry.models import Proxy
from resistance.registry.services import publish
from tests.probe import test_batches_api
from tests.probe.test_batches_api import JSON, bad_result, batch, good_result
from tests.registry.conftest import start_registry

world = test_batches_api.world  # the registry, a probe, its key and a proxy

IP_BLOCK = Evidence(
    main=Attempt.stopped(Stage.TCP, Failure.TIMEOUT),
    outside=Attempt.passed(),
    other_port=Attempt.stopped(Stage.TCP, Failure.TIMEOUT),
)


def diagnosed(proxy_id: int, evidence: Evidence = IP_BLOCK) -> dict[str, Any]:
    found = diagnose(evidence)
    diagnosis: dict[str, Any] = {"mechanism": found.mechanism.value, "evidence": evidence.to_json()}
    return {**bad_result(proxy_id), "diagnosis": diagnosis}


async def rows(reg: Any, sql: str) -> list[Any]:
    async with reg.registry.sessions() as session:
        return list((await session.execute(text(sql))).all())


async def test_the_mechanism_is_stored_and_the_directory_reports_reach(world: Any) -> None:
    reg, probe, key, proxy_id = world
    sent = await probe.post(
        "/api/v1/probe/batches", headers=JSON, content=batch(key, [diagnosed(proxy_id)])
    )
    assert sent.status_code == 201, sent.text
    assert await rows(reg, "SELECT mechanism FROM probe_results") == [("blocked-ip",)]
    assert await rows(reg, "SELECT mechanism FROM probe_evidence") == [("blocked-ip",)]
    (entry,) = (await publish(reg.registry))["document"]["proxies"]
    assert entry["measurements"]["reach"] == {"msk-1": {"socks5": "blocked-ip"}}
    # a later success replaces it; an older result uploaded late changes nothing
    good = good_result(reg, proxy_id, key)
    late = {**diagnosed(proxy_id), "at": good["at"] - 100}
    for results in ([good], [late]):
        sent = await probe.post("/api/v1/probe/batches", headers=JSON, content=batch(key, results))
        assert sent.status_code == 201, sent.text
    (entry,) = (await publish(reg.registry))["document"]["proxies"]
    assert entry["measurements"]["reach"] == {"msk-1": {"socks5": "ok"}}


async def test_a_failure_without_a_diagnosis_reads_failed(world: Any) -> None:
    reg, probe, key, proxy_id = world
    sent = await probe.post(
        "/api/v1/probe/batches", headers=JSON, content=batch(key, [bad_result(proxy_id)])
    )
    assert sent.status_code == 201, sent.text
    (entry,) = (await publish(reg.registry))["document"]["proxies"]
    assert entry["measurements"]["reach"] == {"msk-1": {"socks5": "failed"}}


async def test_a_forged_diagnosis_is_refused_and_stores_nothing(world: Any) -> None:
    reg, probe, key, proxy_id = world
    forged = diagnosed(proxy_id)
    forged["diagnosis"]["mechanism"] = "whitelisted-out"
    sent = await probe.post("/api/v1/probe/batches", headers=JSON, content=batch(key, [forged]))
    assert sent.status_code == 422 and "evidence gives blocked-ip" in sent.text
    assert await rows(reg, "SELECT COUNT(*) FROM probe_results") == [(0,)]


async def test_rollups_and_so_grants_do_not_change_with_a_diagnosis(world: Any) -> None:
    reg, probe, key, proxy_id = world
    async with reg.registry.sessions.begin() as session:
        first = await session.get(Proxy, proxy_id)
        assert first is not None
        twin = await repo.save_proxy(
            session,
            fields={
                c: getattr(first, c)
                for c in ("operator_id", "network", "public_key", "protocols", "probe_user",
                          "probe_password", "credentials", "public", "status", "registered_at",
                          "verified_at")
            } | {"host": "192.0.2.8", "port": 1080},
        )  # fmt: skip
        twin_id = twin.id
    results = [
        good_result(reg, proxy_id, key), diagnosed(proxy_id),
        good_result(reg, twin_id, key), bad_result(twin_id),
    ]  # fmt: skip
    sent = await probe.post("/api/v1/probe/batches", headers=JSON, content=batch(key, results))
    assert sent.status_code == 201, sent.text
    rollups = await rows(
        reg, "SELECT proxy_id, attempts, successes FROM probe_rollups ORDER BY proxy_id"
    )
    assert [(a, s) for _, a, s in rollups] == [(2, 1), (2, 1)]


async def test_assignments_carry_the_controls_inputs(world: Any) -> None:
    reg, probe, _key, proxy_id = world
    async with reg.registry.sessions.begin() as session:
        proxy = await session.get(Proxy, proxy_id)
        assert proxy is not None
        proxy.tls_port, proxy.tls_sha256 = 443, "ab" * 32
    (target,) = (await probe.get("/api/v1/probe/assignment")).json()["proxies"]
    assert target["control_ports"] == [443] and target["outside_ok"] is None
    # a control vantage's latest check becomes the inside probes' outside view
    admin = reg.client(token=reg.admin_token)
    outside_key = Ed25519PrivateKey.generate()
    created = await admin.post(
        "/api/v1/probes",
        json={"name": "ams-1", "country": "NL", "control": True,
              "public_key": public_key_text(outside_key.public_key())},
    )  # fmt: skip
    assert created.status_code == 201, created.text
    outside = reg.client(token=created.json()["token"])
    data = batch(
        outside_key, [good_result(reg, proxy_id, outside_key)], vantage="ams-1", country="NL"
    )
    assert (await outside.post("/api/v1/probe/batches", headers=JSON, content=data)).is_success
    (target,) = (await probe.get("/api/v1/probe/assignment")).json()["proxies"]
    assert target["outside_ok"] is True


async def test_reach_names_each_transport_of_the_node(world: Any) -> None:
    reg, probe, key, proxy_id = world
    fingerprint = Evidence(
        main=Attempt.stopped(Stage.HANDSHAKE, Failure.TIMEOUT), outside=Attempt.passed()
    )
    tls_ok = Evidence(main=Attempt.passed(), tls=True, sni_sent=False)
    result = diagnosed(proxy_id, fingerprint)
    result["step"] = "greeting"
    result["transports"] = {"tls": {"mechanism": "ok", "evidence": tls_ok.to_json()}}
    sent = await probe.post("/api/v1/probe/batches", headers=JSON, content=batch(key, [result]))
    assert sent.status_code == 201, sent.text
    (entry,) = (await publish(reg.registry))["document"]["proxies"]
    assert entry["measurements"]["reach"] == {
        "msk-1": {"socks5": "blocked-fingerprint", "tls": "ok"}
    }


async def test_the_control_proxy_setting_reaches_every_probe(tmp_path: Path, db_url: str) -> None:
    control = {"host": "127.0.0.9", "port": 1080, "username": "probe", "password": "pw"}
    async with start_registry(tmp_path / "reg", db_url, probe_control=control) as reg:
        admin = reg.client(token=reg.admin_token)
        key = Ed25519PrivateKey.generate()
        created = await admin.post(
            "/api/v1/probes",
            json={"name": "msk-2", "country": "RU",
                  "public_key": public_key_text(key.public_key())},
        )  # fmt: skip
        assert created.status_code == 201, created.text
        probe = reg.client(token=created.json()["token"])
        body = (await probe.get("/api/v1/probe/assignment")).json()
    assert body["control_proxy"] == control
    assert parse_assignment(body).control == Target("127.0.0.9", 1080, "probe", "pw")


def test_the_registry_command_takes_the_control_proxy_with_its_credentials() -> None:
    from resistance.errors import ConfigError
    from resistance.registry.cli import _control_proxy

    assert _control_proxy("socks5://probe:pw@198.51.100.9:1080") == {
        "host": "198.51.100.9", "port": 1080, "username": "probe", "password": "pw",
    }  # fmt: skip
    with pytest.raises(ConfigError, match="credentials"):
        _control_proxy("socks5://198.51.100.9:1080")
