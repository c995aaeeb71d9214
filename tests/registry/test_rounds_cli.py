"""`resist grants round …` against a live registry on 127.0.0.1, then the round file it exports.

The whole funder's path: create a round from the registry's rollups, show,
approve, export, verify the registry's signature with the key it publishes,
build the PSBT, sign it (embit, like a hardware wallet), mark it paid.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from resistance.cli import main
from resistance.probe import rollup
from resistance.registry import repositories as repo
from resistance.registry.app import create_app
from resistance.registry.db import make_engine, make_sessions
from resistance.registry.models import ProbeRollup
from tests.grants.helpers import CHANGE_DESCRIPTOR, DESCRIPTOR, address, embit_sign, utxos_for
from tests.registry.conftest import ThreadedServer, make_settings

pytest.importorskip("embit")

NOW = int(dt.datetime(2026, 11, 25, 12, tzinfo=dt.UTC).timestamp())


async def _seed(db_url: str) -> None:
    """Two operators' proxies measured all October (as probe ingestion writes rollups)."""
    engine = make_engine(db_url)
    try:
        async with make_sessions(engine).begin() as session:
            for n, name in enumerate(("alice", "bob")):
                op = await repo.operator_by_name(session, name=name)
                assert op is not None
                proxy = await repo.save_proxy(
                    session,
                    fields={
                        "operator_id": op.id, "host": f"203.0.{113 + n}.9", "port": 1080,
                        "network": f"203.0.{113 + n}.0/24", "public_key": "k" * 43,
                        "protocols": ["socks5"], "probe_user": "p", "probe_password": "q",
                        "credentials": [], "public": True, "status": "active",
                        "registered_at": 1, "verified_at": 1,
                    },
                )  # fmt: skip
                for d in range(31):
                    for country, control, ok in (("DE", True, 24), ("RU", False, 24 - 2 * n)):
                        session.add(
                            ProbeRollup(
                                proxy_id=proxy.id, day=f"2026-10-{d + 1:02d}", country=country,
                                control=control, attempts=24, successes=ok,
                                latency_hist=rollup.empty(rollup.LATENCY_BOUNDS_MS),
                                throughput_hist=rollup.empty(rollup.THROUGHPUT_BOUNDS_KBPS),
                            )
                        )  # fmt: skip
    finally:
        await engine.dispose()


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[str, str]]:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'registry.sqlite3'}"
    tokens: list[str] = []
    app = create_app(
        make_settings(tmp_path / "reg", db_url), on_admin_token=tokens.append, clock=lambda: NOW
    )
    with ThreadedServer(app) as server:
        base = f"http://127.0.0.1:{server.port}"
        for name in ("alice", "bob"):
            made = httpx.post(f"{base}/api/v1/operators", json={"name": name}, timeout=10)
            put = httpx.put(
                f"{base}/api/v1/operators/me/payout-address",
                json={"address": address(name)},
                headers={"Authorization": f"Bearer {made.json()['token']}"},
                timeout=10,
            )
            assert put.status_code == 200, put.text
        asyncio.run(_seed(db_url))
        yield base, tokens[0]


def resist(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, list(args), env=env)


def test_the_funders_path_through_the_cli(live: tuple[str, str], tmp_path: Path) -> None:
    base, token = live
    reg = ["--registry", base, "--token", token]

    res = resist("grants", "round", "create", *reg, "--period", "2026-10", "--budget", "0.1BTC",
                 "--fee-reserve", "50000sat", "--min-payout", "20000",
                 "--operator-cap", "70")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "2026-10-RU" in res.output and "alice" in res.output and "bob" in res.output
    assert "10,000,000 sat (0.10000000 BTC)" in res.output

    res = resist("grants", "round", "list", *reg)
    assert res.exit_code == 0 and "2026-10-RU" in res.output and "draft" in res.output
    # the token may come from the environment
    res = resist("grants", "round", "show", "2026-10-RU", "--registry", base,
                 env={"RESIST_ADMIN_TOKEN": token})  # fmt: skip
    assert res.exit_code == 0 and "draft" in res.output and address("alice") in res.output

    res = resist("grants", "round", "recompute", "2026-10-RU", *reg, "--budget", "0.2 btc")
    assert res.exit_code == 0 and "20,000,000 sat" in res.output

    res = resist("grants", "round", "approve", "2026-10-RU", *reg)
    assert res.exit_code == 0 and "approved" in res.output and "digest" in res.output

    round_file = tmp_path / "round.json"
    res = resist("grants", "round", "export", "2026-10-RU", *reg, "--out", str(round_file))
    assert res.exit_code == 0, res.output

    keys = httpx.get(f"{base}/api/v1/directory/keys", timeout=10).json()["keys"]
    trust = ["--trust", keys[0]["public_key"]]
    res = resist("grants", "verify", str(round_file), *trust)
    assert res.exit_code == 0, res.output
    assert "good" in res.output and keys[0]["key_id"] in res.output
    tampered = tmp_path / "tampered.json"
    data = json.loads(round_file.read_text())
    # the registry's inputs are /2: a changed chunk no longer matches the manifest, and a
    # manifest mended to match is not the one the registry signed
    inputs = data["inputs"]
    chunk = json.loads(inputs["chunks"][0])
    chunk["proxies"][0]["target_successes"][3] -= 1
    inputs["chunks"][0] = json.dumps(chunk)
    tampered.write_text(json.dumps(data))
    res = resist("grants", "verify", str(tampered), *trust)
    assert res.exit_code == 2 and "does not match manifest[0]" in res.output
    inputs["manifest"][0] = hashlib.sha256(inputs["chunks"][0].encode()).hexdigest()
    tampered.write_text(json.dumps(data))
    res = resist("grants", "verify", str(tampered), *trust)
    assert res.exit_code == 1 and "bad signature" in res.output

    utxos = tmp_path / "utxos.json"
    utxos.write_text(json.dumps(utxos_for([12_000_000, 9_000_000])))
    psbt = tmp_path / "round.psbt"
    res = resist("grants", "psbt", str(round_file), "--descriptor", DESCRIPTOR,
                 "--change-descriptor", CHANGE_DESCRIPTOR, "--utxos", str(utxos),
                 "--fee-rate", "2", "--network", "regtest", "--out", str(psbt))  # fmt: skip
    assert res.exit_code == 0, res.output
    signed, tx_hex = embit_sign(psbt.read_text().strip())
    assert signed == 2
    tx_file = tmp_path / "signed.hex"
    tx_file.write_text(tx_hex + "\n")
    paid = ["grants", "round", "mark-paid", "2026-10-RU", *reg, "--tx-file", str(tx_file),
            "--change-descriptor", CHANGE_DESCRIPTOR]  # fmt: skip
    res = resist(*paid)
    assert res.exit_code == 0 and "paid by" in res.output, res.output
    res = resist(*paid)
    assert res.exit_code == 2 and "already paid" in res.output
    assert res.output.count("\n") == 1


def test_cli_errors_are_one_line(live: tuple[str, str]) -> None:
    base, token = live
    reg = ["--registry", base, "--token", token]
    create = ["grants", "round", "create", "--period", "2026-10"]
    for args, fragment in (
        ([*create, *reg, "--budget", "1.123456789BTC"], "more than 8 decimals"),
        ([*create, *reg, "--budget", "-2BTC"], "negative"),
        ([*create, *reg, "--budget", "22000000BTC"], "21,000,000"),
        ([*create, *reg, "--budget", "lots"], "not an amount"),
        ([*create, *reg, "--budget", "1BTC", "--operator-cap", "150"], "at most 100"),
        (["grants", "round", "create", *reg, "--period", "2026-13", "--budget", "1BTC"], "month"),
        ([*create, "--registry", base, "--token", "rst_wrong", "--budget", "1BTC"], "401"),
        ([*create, *reg, "--budget", "1000sat"], "fee reserve"),
        (["grants", "round", "show", "nope", *reg], "no round"),
        (["grants", "round", "list", "--registry", "http://127.0.0.1:1", "--token", "x"],
         "cannot reach"),
    ):  # fmt: skip
        res = resist(*args)
        assert res.exit_code == 2, (args, res.output)
        assert fragment in res.output, (args, res.output)
        assert res.output.startswith("resist: error:") and res.output.count("\n") == 1


def test_a_round_without_measurements_is_flagged(live: tuple[str, str]) -> None:
    """Issue 19: a round with no measurements returns the whole budget: say so on create
    and on approve, and say nothing for a round that pays."""
    base, token = live
    reg = ["--registry", base, "--token", token]
    res = resist("grants", "round", "create", *reg, "--period", "2026-09", "--budget", "0.1BTC")
    assert res.exit_code == 0, res.output
    assert (
        "warning: this round pays nothing: no measurements from RU in 2026-09-01..2026-09-30 "
        "(did probes run there?); the whole budget is returned and approving it pays nobody"
    ) in res.output
    res = resist("grants", "round", "approve", "2026-09-RU", *reg)
    assert res.exit_code == 0 and "approved" in res.output
    assert "warning: this round pays nothing" in res.output and "and it pays nobody" in res.output

    res = resist("grants", "round", "create", *reg, "--period", "2026-10", "--budget", "0.1BTC")
    assert res.exit_code == 0 and "alice" in res.output and "warning" not in res.output
