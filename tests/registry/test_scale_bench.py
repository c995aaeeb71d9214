"""The scale benchmark (bench/scale.py, issue 25): its quick mode end to end on PostgreSQL,
and the pieces it is built from checked against the registry's own rules.

The end-to-end run loads a fresh database, starts ``resist registry serve`` on
it and drives every step over HTTP; it must complete every step (at 1,000
proxies nothing is over a limit), store exactly the results it says it
stored, and drop its database afterwards.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from resistance.directory.keys import public_key_text
from resistance.probe.batch import parse_batch, sign_batch, verify_canary
from tests.registry.conftest import PG_ADMIN, _pg_reachable

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "scale.py"


def _scale() -> ModuleType:
    if "bench_scale" in sys.modules:
        return sys.modules["bench_scale"]
    sys.path.insert(0, str(SCRIPT.parent))  # it imports its neighbour bench/dashboard.py
    try:
        spec = importlib.util.spec_from_file_location("bench_scale", SCRIPT)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_scale"] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPT.parent))


def test_its_batches_are_what_the_registry_accepts() -> None:
    """Results built by the bench parse as signed batches, and every functional one carries
    a canary proof bound to its probe, proxy and time; a blocked proxy fails from inside."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    scale = _scale()
    canary = Ed25519PrivateKey.generate()
    key = scale.probe_key(3)
    ids = list(range(1, 51))
    results = scale.check_results(
        key=key, canary=canary, country="RU", proxy_ids=ids, at=1_800_000_000,
        rnd=random.Random(1),
    )  # fmt: skip
    mine = public_key_text(key.public_key())
    data = sign_batch(key=key, probe_key=mine, batch_id="ab" * 16, vantage="scale-3",
                      country="RU", created_at=1_800_000_000, results=results)  # fmt: skip
    batch = parse_batch(data)
    assert [r.proxy_id for r in batch.results] == ids
    for r in batch.results:
        assert r.ok is not scale.blocked(r.proxy_id)
        if r.ok:
            assert verify_canary(r, canary.public_key(), probe_key=mine)
            assert not verify_canary(r, canary.public_key(), probe_key=public_key_text(
                scale.probe_key(4).public_key()))  # fmt: skip


def test_one_line_names_the_exception_of_a_traceback() -> None:
    scale = _scale()
    output = (
        "INFO: Waiting for application startup.\nTraceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n'
        "asyncpg.exceptions._base.InterfaceError: the number of query arguments cannot "
        "exceed 32767\n\nERROR: Application startup failed. Exiting.\n"
    )
    assert scale.one_line(output) == (
        "InterfaceError: the number of query arguments cannot exceed 32767"
    )
    wrapped = (
        "sqlalchemy.exc.InterfaceError: (sqlalchemy.dialects.postgresql.asyncpg.InterfaceError)"
        " <class 'asyncpg.exceptions._base.InterfaceError'>: the number of query arguments "
        "cannot exceed 32767\n"
    )
    assert scale.one_line(wrapped) == (
        "InterfaceError: the number of query arguments cannot exceed 32767"
    )
    assert scale.one_line("") == "no output"
    assert scale.one_line("just this\n") == "just this"


def _databases(prefix: str) -> list[str]:
    import asyncpg

    async def names() -> list[str]:
        conn = await asyncpg.connect(PG_ADMIN, timeout=5)
        try:
            rows = await conn.fetch(
                "SELECT datname FROM pg_database WHERE datname LIKE $1", prefix + "%"
            )
            return [r["datname"] for r in rows]
        finally:
            await conn.close()

    return asyncio.run(names())


@pytest.mark.timeout(150)
def test_quick_run_completes_every_step_on_postgresql(tmp_path: Path) -> None:
    if not _pg_reachable():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    out = tmp_path / "scale.json"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    printed, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, printed.decode()[-3000:]
    (run,) = json.loads(out.read_text())
    assert (run["proxies"], run["probes"], run["days"]) == (1000, 5, 2)
    figures = {(f["step"], f["name"]): f for f in run["figures"]}
    assert not [f for f in run["figures"] if f["failed"]]
    for step in ("start", "publish", "assignment", "ingest", "round"):
        assert figures[(step, "server peak RSS")]["value"] > 50, step  # MB: it was sampled
    # 1,000 proxies, 70 % public: the directory names 700, every probe's assignment 1,000.
    assert "700 proxies" in figures[("publish", "seconds")]["text"]
    assert "1,000 proxies" in figures[("assignment", "bytes, inside probe")]["text"]
    # Every uploaded result was stored (the bench compares the rows it finds with them).
    assert "500 results" in figures[("ingest", "results per second")]["text"]
    assert figures[("ingest", "results per second")]["value"] > 0
    assert figures[("round", "API p99 ms during")]["value"] > 0
    assert figures[("database", "raw results, per million")]["value"] > 0
    assert b"registry at scale: 1,000 proxies" in printed
    assert _databases(f"resist_bench_scale_{proc.pid}_") == []
