"""AmneziaWG endpoints in the registry (SQLite and PostgreSQL): registered, probed, rolled up.

The server is the independent WireGuard responder (tests/vpn/responder.py)
behind the project's AmneziaWG translator on loopback, as ``resist vpn
serve`` runs it in front of wireguard-go.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy import text

from resistance.config import Endpoint
from resistance.probe.runner import CheckSettings, Target
from resistance.probe.wireguard import run_wireguard_check
from resistance.registry.services import publish
from resistance.vpn import keys
from resistance.vpn.amnezia import AmneziaParams
from resistance.vpn.translator import Side, Translator
from tests.registry.test_wireguard import (
    JSON,
    World,
    batch,
    make_probe,
    responder,
    wg_result,
    world,
)

__all__ = ["world"]  # the fixture, shared with test_wireguard.py

PARAMS = AmneziaParams.generate()
AWG3 = AmneziaParams.generate(awg3=True)


@asynccontextmanager
async def amnezia_server(
    w: World, *peers: bytes, params: AmneziaParams = PARAMS
) -> AsyncIterator[int]:
    """The responder behind a server-side translator; yields the AmneziaWG port."""
    with responder(w) as wg:
        wg.peers |= set(peers)
        t = Translator(
            params,
            side=Side.SERVER,
            listen=Endpoint("127.0.0.1", 0),
            target=Endpoint("127.0.0.1", wg.port),
            wireguard_public=w.server.public,
            amnezia_publics=lambda: [keys.decode(w.prober), *peers],
        )
        bound = await t.start()
        try:
            yield bound.port
        finally:
            await t.close()


async def test_an_amneziawg_server_is_proven_by_an_amneziawg_handshake(world: World) -> None:
    async with amnezia_server(world) as port:
        plain = await world.register(port)
        assert plain.status_code == 422, plain.text  # plain WireGuard hears silence there
        response = await world.register(port, public=True, amnezia=PARAMS.to_json())
        assert response.status_code == 201, response.text
    view = response.json()
    assert view["protocols"] == ["amneziawg"]
    assert view["wg_public_key"] == world.server.public_text
    # The directory carries the kind and the key, never the parameters.
    signed = await publish(world.reg.registry)
    (entry,) = signed["document"]["proxies"]
    assert entry["protocols"] == ["amneziawg"]
    assert entry["wg_public_key"] == world.server.public_text
    listed = json.dumps(entry)
    assert '"amnezia"' not in listed and "jmin" not in listed and str(PARAMS.h1) not in listed


async def test_an_awg3_server_is_proven_with_its_header_protection(world: World) -> None:
    async with amnezia_server(world, params=AWG3) as port:
        # the AWG 2 parameters of the same headers and sizes hear silence there
        without = AWG3.to_json()
        del without["header_protection_key"], without["random_trailers"]
        refused = await world.register(port, amnezia=without)
        assert refused.status_code == 422, refused.text
        response = await world.register(port, public=True, amnezia=AWG3.to_json())
        assert response.status_code == 201, response.text
    assert response.json()["protocols"] == ["amneziawg"]
    signed = await publish(world.reg.registry)
    (entry,) = signed["document"]["proxies"]
    key = AWG3.to_json()["header_protection_key"]
    assert key not in json.dumps(entry)  # the key, like every parameter, stays off the directory


async def test_bad_parameters_are_refused_before_any_handshake(world: World) -> None:
    bad = PARAMS.to_json() | {"h2": str(PARAMS.h1)}
    response = await world.register(9, amnezia=bad)
    assert response.status_code == 422 and "overlap" in response.json()["error"]


async def test_probes_get_the_parameters_and_their_results_count(world: World) -> None:
    probe, key, wg = await make_probe(world.reg, "ams-1", "NL", control=True)
    async with amnezia_server(world, wg.public) as port:
        view = await world.register(port, probe_keys=[wg.public_text], amnezia=PARAMS.to_json())
        assert view.status_code == 201, view.text
        proxy_id = view.json()["proxy_id"]
        (target,) = (await probe.get("/api/v1/probe/assignment")).json()["proxies"]
        assert target["protocol"] == "amneziawg" and target["amnezia"] == PARAMS.to_json()
        # the probe agent's own check, with what the assignment gave it
        result = await run_wireguard_check(
            Target(
                "127.0.0.1", port, None, None, proxy_id, "amneziawg",
                target["wg_public_key"], None, target["amnezia"],
            ),
            wg.private,
            CheckSettings(step_timeout=4.0),
        )  # fmt: skip
        assert result.verdict.ok, result.steps
    results = [wg_result(proxy_id, ok=True, protocol="amneziawg")] * 2
    stored = await probe.post(
        "/api/v1/probe/batches", headers=JSON, content=batch(key, results, "ams-1", "NL")
    )
    assert stored.status_code == 201, stored.text
    status = await world.reg.client(token=world.reg.admin_token).get(
        f"/api/v1/proxies/{proxy_id}/status"
    )
    assert status.json()["status"] == "functional"
    # a result that calls it plain WireGuard is refused
    wrong = await probe.post(
        "/api/v1/probe/batches",
        headers=JSON,
        content=batch(key, [wg_result(proxy_id, ok=True)], "ams-1", "NL"),
    )
    assert wrong.status_code == 422 and "not a WireGuard server" in wrong.json()["error"]
    async with world.reg.registry.sessions() as session:
        rows = (
            await session.execute(
                text(f"SELECT attempts, successes FROM probe_rollups WHERE proxy_id = {proxy_id}")
            )
        ).all()
    assert [tuple(r) for r in rows] == [(2, 2)]


async def test_migration_0010_adds_and_removes_its_column(tmp_path: Path) -> None:
    import sqlite3

    from resistance.registry.db import migrate
    from tests.registry.test_wireguard import downgrade

    db = tmp_path / "m.sqlite3"
    url = f"sqlite+aiosqlite:///{db}"

    def columns() -> set[str]:
        with sqlite3.connect(db) as conn:
            return {row[1] for row in conn.execute("PRAGMA table_info(proxies)")}

    await migrate(url)
    assert "awg_params" in columns()
    await downgrade(url, "0007")
    assert "awg_params" not in columns()
    await migrate(url)
    assert "awg_params" in columns()
