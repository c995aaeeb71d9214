"""The probes' views a publication reads (issue 25): ranked by the database, at most the
ones a directory names per proxy, against main's read of every view, byte for byte
(SQLite and PostgreSQL).

Main read each public proxy's every view (10,000,000 rows at 100,000 proxies and 100
probes) and ranked them in Python; ``repositories.latest_views`` ranks them in SQL and
returns the 16 the directory names.  The reference here is main's query, kept verbatim
(:func:`_main_reach_rows`); the directory is signed from either read and the bytes
compared, on a registry seeded with the edge cases: no measurements at all, one
vantage, more probes than are named with ties on the cut, names whose order differs by
code point and by case, views older than the two days, transports of every JSON shape,
blocked proxies, censor flags current and stale, empty histograms."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select

from resistance.probe import rollup
from resistance.registry import measurements, services
from resistance.registry import repositories as repo
from resistance.registry.blocklist import address_hex
from resistance.registry.measurements import (
    DAYS,
    MAX_REACH_NETWORKS,
    MeasurementRows,
    measurement_rows,
    recent_days,
)
from resistance.registry.models import (
    BlocklistImport,
    BlocklistRange,
    Operator,
    ProbeAccount,
    ProbeEvidenceRow,
    ProbeRollup,
    Proxy,
    ProxyBlocklistFlag,
    ProxyVerdict,
)
from tests.registry.conftest import start_registry

#: Probes: more than a directory names, with names ordered differently by code point,
#: by case and by locale (``Zeta`` < ``alpha`` < ``z`` < ``ä`` < ``é`` by code point), and
#: names JSON escapes.
NAMES = [
    "Zeta", "alpha", "z", "ä", "é", "ru-1", "ru-10", "ru-2", "de-1", "nl 1", "a", "aa",
    "b", "B", "ø", "ω", "x-ray", "yankee", "中", "0", "_", "~", 'q"uote\\', "tab\tname",
]  # fmt: skip
PROXIES = 9


async def _main_reach_rows(session: Any, *, proxy_ids: list[int], since: int) -> list[Any]:
    """Main's ``repositories.reach_rows`` (before this change), verbatim: every probe's
    latest view of these proxies since ``since``."""
    result = await session.execute(
        select(
            ProbeEvidenceRow.proxy_id,
            ProbeAccount.name,
            ProbeEvidenceRow.last_at,
            ProbeEvidenceRow.last_ok,
            ProbeEvidenceRow.mechanism,
            ProbeEvidenceRow.transports,
        )
        .join(ProbeAccount, ProbeAccount.id == ProbeEvidenceRow.probe_id)
        .where(
            ProbeEvidenceRow.proxy_id.in_(repo._each(session, proxy_ids)),
            ProbeEvidenceRow.last_at >= since,
        )
    )
    return list(result.all())


def _main_reach(rows: Any, transport: str) -> dict[str, Any]:
    """Main's ``measurements.reach`` (before this change), verbatim: ranks every view."""
    latest = rows
    if len(rows) > MAX_REACH_NETWORKS:  # else every row is named: no need to rank them
        latest = sorted(rows, key=lambda row: (-row.last_at, row.name))[:MAX_REACH_NETWORKS]
    out: dict[str, Any] = {}
    for row in sorted(latest, key=lambda row: row.name):
        entry = {transport: "ok" if row.last_ok else (row.mechanism or "failed")}
        if row.transports:  # most rows have none (70,000 proxies x probes of them)
            for t, m in sorted(row.transports.items())[:4]:
                entry[t] = str(m)
        out[row.name] = entry
    return out


async def _both(registry: services.Registry) -> tuple[bytes, bytes, MeasurementRows]:
    """The directory signed by this code and by main's read and ranking of the views,
    from the same rows (everything else is the same code)."""
    now = registry.now()
    async with registry.sessions.begin() as session:
        proxies = services.listed(await repo.active_proxy_rows(session, public=True))
        rows = await measurement_rows(session, proxies, now)
        seen: dict[int, list[Any]] = {}
        for row in await _main_reach_rows(
            session, proxy_ids=[p.id for p in proxies], since=now - DAYS * 86400
        ):
            seen.setdefault(row.proxy_id, []).append(row)
    main_rows = dataclasses.replace(rows, seen=seen)
    _, new = services._sign_directory(registry, proxies, rows, 3, now)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(measurements, "reach", _main_reach)
        patch.setattr(measurements, "NO_VIEWS", [])
        _, main = services._sign_directory_whole(registry, proxies, main_rows, 3, now)
    return new, main, rows


async def _seed(registry: services.Registry) -> tuple[list[int], list[int]]:
    """The edge cases (see the module's doc); returns the proxies' and probes' ids."""
    now = registry.now()
    days = recent_days(now)
    async with registry.sessions.begin() as db:
        db.add(Operator(id=1, name="op", created_at=now))
        probes = [
            ProbeAccount(
                name=name, public_key=f"{i:043d}", country=("RU", "DE", "NL")[i % 3],
                control=i % 3 != 0, created_at=now,
            )
            for i, name in enumerate(NAMES)
        ]  # fmt: skip
        db.add_all(probes)
        proxies = [
            Proxy(
                operator_id=1, host=f"198.51.100.{i + 1}", port=1080, network="198.51.100.0/24",
                public_key="k" * 43, probe_user="p", probe_password="p",
                protocols=[("socks5", "mtproto", "wireguard")[i % 3]],
                credentials=[{"username": f"u{i}", "password": "p"}], public=True,
                status="active", registered_at=now, verified_at=now,
                mtproto_mode="dd" if i % 3 == 1 else None,
                wg_public_key="c" * 43 + "=" if i % 3 == 2 else None,
            )
            for i in range(PROXIES)
        ]  # fmt: skip
        db.add_all(proxies)
        await db.flush()
        ids = [p.id for p in proxies]
        # proxy 0: nothing measured; 1: one vantage; 2..: every probe, ties on the cut
        for n, pid in enumerate(ids[1:], 1):
            seeing = probes[:1] if n == 1 else probes
            for k, probe in enumerate(seeing):
                # ages repeat (ties), the oldest two days back and past it (not named)
                age = [60, 60, 120, 60, 300][(k + n) % 5] * (1 + k // 8)
                if n == 3 and k < 4:
                    age = DAYS * 86400 + 5  # older than the days summarized
                ok = (k + n) % 4 != 0
                db.add(ProbeEvidenceRow(
                    proxy_id=pid, probe_id=probe.id, country=probe.country,
                    control=probe.control, last_at=now - age, last_ok=ok, fail_streak=0,
                    fail_windows=[], mechanism=(None, "", "rst", "timeout")[k % 4],
                    transports=[
                        None, {}, {"tls": "ok"}, {"tls": "rst", "quic": 1, "ws": None},
                        {"e": "1", "d": [1], "c": True, "b": 2.5, "a": {"x": "y"}},
                        {"tls": 'r"st\\', "é": "中\n", "": None},
                    ][(k * n) % 6],
                ))  # fmt: skip
            if n % 2 == 0:
                db.add(ProxyVerdict(
                    proxy_id=pid, verdict="blocked" if n % 4 == 0 else "functional",
                    blocked_in=["RU"] if n % 4 == 0 else [], since=now - n, updated_at=now,
                ))  # fmt: skip
            for day in days[: 1 if n == 1 else None]:
                for country, control in (("RU", False), ("DE", True))[: 1 if n == 1 else 2]:
                    lat = rollup.empty(rollup.LATENCY_BOUNDS_MS)
                    thr = rollup.empty(rollup.THROUGHPUT_BOUNDS_KBPS)
                    if n % 3:  # else the histograms stay empty (no success measured)
                        lat[n % len(lat)] += n
                        thr[n % len(thr)] += 2
                    db.add(ProbeRollup(
                        proxy_id=pid, day=day, country=country, control=control,
                        attempts=10 + n, successes=n if n % 3 else 0, latency_hist=lat,
                        latency_p50_ms=None, latency_p90_ms=None, throughput_hist=thr,
                        throughput_p50_kbps=None,
                    ))  # fmt: skip
        record = BlocklistImport(
            source="dump.csv", kind="dump", updated=days[0], imported_at=now, prefixes=1,
            ranges=1, skipped=0,
        )  # fmt: skip
        db.add(record)
        await db.flush()
        db.add(BlocklistRange(
            start_hex=address_hex("198.51.100.2"), end_hex=address_hex("198.51.100.5"),
            first_import=record.id,
        ))  # fmt: skip
        for pid in ids[:3]:  # current flags; the others are looked up at publication
            db.add(ProxyBlocklistFlag(
                proxy_id=pid, import_id=record.id, listed=pid != ids[0], checked_at=now,
                listed_since=record.id if pid != ids[0] else None,
            ))  # fmt: skip
    return ids, [p.id for p in probes]


def test_the_views_read_ranked_sign_main_s_directory_byte_for_byte(
    tmp_path: Path, db_url: str
) -> None:
    async def run() -> None:
        async with start_registry(tmp_path / "registry", db_url) as reg:
            registry = reg.registry
            ids, _ = await _seed(registry)
            new, main, rows = await _both(registry)
            assert new == main
            # the database returned the views a directory may name (the newest 16, and
            # any tied with the 16th), not every view
            assert ids[0] not in rows.seen
            assert len(rows.seen[ids[1]].names) == 1
            assert len(NAMES) > MAX_REACH_NETWORKS
            assert all(MAX_REACH_NETWORKS <= len(rows.seen[p].names) < len(NAMES) for p in ids[4:])
            # a proxy none of whose views is recent enough: no reach, as before
            async with registry.sessions.begin() as db:
                await db.execute(
                    delete(ProbeEvidenceRow).where(ProbeEvidenceRow.proxy_id != ids[1])
                )
            new, main, rows = await _both(registry)
            assert new == main
            assert list(rows.seen) == [ids[1]]

    asyncio.run(run())


_VIEWS = st.lists(
    st.tuples(
        st.integers(0, len(NAMES) - 1),  # the probe
        st.integers(0, 4),  # its view's age, in tens of seconds (many ties)
        st.booleans(),
        st.sampled_from([None, "", "rst", "timeout"]),
        st.sampled_from([None, {}, {"tls": "ok"}, {"b": 1, "a": "x", "c": None, "d": [], "e": 0}]),
    ),
    max_size=40,
)


def test_random_views_sign_main_s_directory(tmp_path: Path, db_url: str) -> None:
    """Any views of one proxy (ties on every age, any subset of the probes): the same
    bytes as main's read."""

    async def run() -> None:
        async with start_registry(tmp_path / "registry", db_url) as reg:
            registry = reg.registry
            ids, probes = await _seed(registry)
            loop = asyncio.get_running_loop()

            @given(views=_VIEWS)
            @settings(
                max_examples=25,
                deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture],
            )
            def views(views: list[tuple[int, int, bool, str | None, Any]]) -> None:
                async def one() -> None:
                    now = registry.now()
                    async with registry.sessions.begin() as db:
                        await db.execute(
                            delete(ProbeEvidenceRow).where(ProbeEvidenceRow.proxy_id == ids[2])
                        )
                        done: set[int] = set()
                        for probe, age, ok, mechanism, transports in views:
                            if probe in done:
                                continue
                            done.add(probe)
                            db.add(ProbeEvidenceRow(
                                proxy_id=ids[2], probe_id=probes[probe], country="RU",
                                control=False, last_at=now - 10 * age, last_ok=ok,
                                fail_streak=0, fail_windows=[], mechanism=mechanism,
                                transports=transports,
                            ))  # fmt: skip
                    new, main, _ = await _both(registry)
                    assert new == main

                asyncio.run_coroutine_threadsafe(one(), loop).result()

            await asyncio.to_thread(views)

    asyncio.run(run())


def test_a_probe_deleted_while_its_views_are_read_is_left_out(tmp_path: Path, db_url: str) -> None:
    """On PostgreSQL the probes' names are read after their views (each statement sees
    what is committed when it starts): a probe deleted in between, and its views with
    it, is left out of the views read (not a failed publication)."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite reads the names and the views in one snapshot")

    async def run() -> None:
        async with start_registry(tmp_path / "registry", db_url) as reg:
            registry = reg.registry
            ids, probes = await _seed(registry)
            gone = NAMES.index("Zeta")
            async with registry.sessions() as session:
                execute = session.execute

                async def then_delete(statement: Any, *args: Any, **kwargs: Any) -> Any:
                    result = await execute(statement, *args, **kwargs)
                    if statement is repo._LATEST_VIEWS_PG:
                        async with registry.sessions.begin() as other:
                            await other.execute(
                                delete(ProbeAccount).where(ProbeAccount.id == probes[gone])
                            )
                    return result

                with pytest.MonkeyPatch.context() as patch:
                    patch.setattr(session, "execute", then_delete)
                    views = await repo.latest_views(
                        session, proxy_ids=ids, since=registry.now() - 3600, most=16
                    )
            assert views[ids[1]].names == []  # its one view was the deleted probe's
            assert all("Zeta" not in v.names for v in views.values())
            assert all(
                len(v.names) == len(v.times) == len(v.oks) == len(v.transports)
                for v in views.values()
            )

    asyncio.run(run())
