"""Entries kept between publications (issue 25): the document signed is byte for byte the
one built whole, however the rows change between publications (SQLite and PostgreSQL),
and the document put together from encoded entries is the one encoded at once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, update

from resistance.directory.canonical import CanonicalError, canonical_bytes
from resistance.directory.document import sign_and_dump, sign_and_dump_encoded
from resistance.probe import rollup
from resistance.registry import repositories as repo
from resistance.registry import services
from resistance.registry.blocklist import address_hex
from resistance.registry.entries import entry_bytes
from resistance.registry.measurements import measurement_rows, recent_days
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

# --- the document put together from its entries' bytes --------------------------------

_text = st.text(max_size=12)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=20,
)
_entries = st.lists(st.dictionaries(_text, _json, max_size=5), max_size=6)


def _keys() -> list[Ed25519PrivateKey]:
    return [Ed25519PrivateKey.from_private_bytes(bytes([i]) * 32) for i in (1, 2)]


@given(
    entries=_entries,
    serial=st.integers(0, 2**63 - 1),
    network=_text,
    extra=st.dictionaries(st.sampled_from(["a", "zz", "pro", "proxiez", "é"]), _json, max_size=3),
)
@settings(max_examples=200, deadline=None)
def test_a_document_put_together_from_encoded_entries_is_the_one_encoded_whole(
    entries: list[dict[str, Any]], serial: int, network: str, extra: dict[str, Any]
) -> None:
    fields = {"version": 1, "serial": serial, "network": network, **extra}
    keys = _keys()
    encoded = [canonical_bytes(e) for e in entries]
    whole = sign_and_dump({**fields, "proxies": entries}, keys)
    signed, body = sign_and_dump_encoded(fields, encoded, keys)
    assert body == whole[1]
    assert signed == whole[0]  # the entries decoded from their bytes
    assert list(signed["document"]["proxies"]) == entries


def test_an_entry_with_no_canonical_form_is_refused_as_before() -> None:
    """What the JSON columns may hold is checked; a lone surrogate is refused anywhere."""
    good: dict[str, Any] = {
        "protocols": ["socks5"], "credentials": [{"username": "u"}], "port": 1,
        "measurements": {"blocked_in": ["RU"], "since": None, "reach": {"ru-1": {"x": "ok"}}},
    }  # fmt: skip
    assert entry_bytes(good) == canonical_bytes(good)
    bad: list[dict[str, Any]] = [
        {"credentials": [{"username": 1.5}]},
        {"credentials": [{"u": 2**63}]},
        {"protocols": ["socks5", 1.0]},
        {"measurements": {"blocked_in": [float("nan")]}},
        {"endpoint": {"host": "\ud800"}},
    ]
    for entry in bad:
        with pytest.raises(CanonicalError):
            canonical_bytes(entry)
        with pytest.raises(CanonicalError):
            entry_bytes(entry)
    with pytest.raises(ValueError):
        sign_and_dump_encoded({"proxies": []}, [], _keys())


# --- publications over changing rows ------------------------------------------------------

PROXIES = 8


async def _seed(registry: services.Registry) -> list[int]:
    """Proxies of every kind the directory lists (SOCKS5, with TLS, a bridge, MTProto,
    WireGuard, AmneziaWG) and an exit it does not, verdicts for some, today's and
    yesterday's rollups from two vantages, two probes' views (one with transports), and
    a blocklist import holding some addresses, flags written for half of them."""
    now = registry.now()
    days = recent_days(now)
    async with registry.sessions.begin() as db:
        db.add(Operator(id=1, name="op", created_at=now))
        inside = ProbeAccount(
            name="ru-1", public_key="a" * 43, country="RU", control=False, created_at=now
        )
        outside = ProbeAccount(
            name="de-1", public_key="b" * 43, country="DE", control=True, created_at=now
        )
        db.add_all([inside, outside])
        await db.flush()
        kinds: list[dict[str, Any]] = [
            {"protocols": ["socks5"]},
            {"protocols": ["socks5"], "tls_port": 8443, "tls_sha256": "f" * 64},
            {"protocols": ["socks5"], "cascade_role": "bridge"},
            {"protocols": ["mtproto"], "mtproto_mode": "ee", "mtproto_domain": "example.com",
             "mtproto_key": "0" * 32},
            {"protocols": ["mtproto"], "mtproto_mode": "dd", "mtproto_key": "1" * 32},
            {"protocols": ["wireguard"], "wg_public_key": "c" * 43 + "="},
            {"protocols": ["amneziawg"], "wg_public_key": "d" * 43 + "="},
            {"protocols": ["socks5"], "cascade_role": "exit"},
        ]  # fmt: skip
        proxies = []
        for i in range(PROXIES):
            proxy = Proxy(
                operator_id=1, host=f"198.51.100.{i + 1}", port=1080 + i, network="198.51.100.0/24",
                public_key="k" * 43, probe_user="p", probe_password="p",
                credentials=[{"username": f"u{i}", "password": "пароль"}], public=True,
                status="active", registered_at=now, verified_at=now, **kinds[i % len(kinds)],
            )  # fmt: skip
            db.add(proxy)
            proxies.append(proxy)
        await db.flush()
        ids = [p.id for p in proxies]
        for n, pid in enumerate(ids):
            if n % 3 != 2:
                db.add(ProxyVerdict(
                    proxy_id=pid, verdict="blocked" if n % 2 else "functional",
                    blocked_in=["RU", "BY"] if n % 2 else [], since=now - n, updated_at=now,
                ))  # fmt: skip
            for day in days:
                for country, control in (("RU", False), ("DE", True)):
                    lat = rollup.empty(rollup.LATENCY_BOUNDS_MS)
                    thr = rollup.empty(rollup.THROUGHPUT_BOUNDS_KBPS)
                    lat[n % len(lat)] += 3 + n
                    thr[(n * 5) % len(thr)] += 2
                    db.add(ProbeRollup(
                        proxy_id=pid, day=day, country=country, control=control,
                        attempts=10 + n, successes=n, latency_hist=lat, latency_p50_ms=None,
                        latency_p90_ms=None, throughput_hist=thr, throughput_p50_kbps=None,
                    ))  # fmt: skip
            for probe, ok in ((inside, n % 2 == 0), (outside, True)):
                db.add(ProbeEvidenceRow(
                    proxy_id=pid, probe_id=probe.id, country=probe.country,
                    control=probe.control, last_at=now - 60, last_ok=ok, fail_streak=0,
                    fail_windows=[], mechanism=None if ok else "rst",
                    transports={"tls": "ok"} if n % 4 == 1 else None,
                ))  # fmt: skip
        record = BlocklistImport(
            source="dump.csv", kind="dump", updated=days[0], imported_at=now, prefixes=1,
            ranges=1, skipped=0,
        )  # fmt: skip
        db.add(record)
        await db.flush()
        db.add(BlocklistRange(
            start_hex=address_hex("198.51.100.1"), end_hex=address_hex("198.51.100.3"),
            first_import=record.id,
        ))  # fmt: skip
        for n, pid in enumerate(ids[: PROXIES // 2]):
            db.add(ProxyBlocklistFlag(
                proxy_id=pid, import_id=record.id, listed=n < 3, checked_at=now,
                listed_since=record.id if n < 3 else None,
            ))  # fmt: skip
    return ids


async def _publish_both(registry: services.Registry) -> tuple[bytes, int]:
    """The directory as a publication signs it (entries kept from the last one) and as
    built whole, from the same rows; returns the bytes and how many entries were built."""
    now = registry.now()
    async with registry.sessions.begin() as session:
        proxies = services.listed(await repo.active_proxy_rows(session, public=True))
        rows = await measurement_rows(session, proxies, now)
    both: list[Any] = []
    for sign in (services._sign_directory, services._sign_directory_whole):
        try:
            both.append(sign(registry, proxies, rows, 7, now))
        except CanonicalError as exc:  # refused: then by both paths
            both.append(exc)
    (kept_signed, kept), (whole_signed, whole) = _refused_by_both(*both)
    assert kept == whole
    assert kept_signed == whole_signed
    return kept, registry.entries.built


def _refused_by_both(kept: Any, whole: Any) -> tuple[Any, Any]:
    refused = [isinstance(x, CanonicalError) for x in (kept, whole)]
    assert refused[0] == refused[1], (kept, whole)
    if refused[0]:
        raise whole
    return kept, whole


def _change(pid: int, what: str, value: int) -> Any:
    """One change of the rows a proxy's entry is made of."""
    if what == "rollup":
        return (
            update(ProbeRollup)
            .where(ProbeRollup.proxy_id == pid, ProbeRollup.country == "RU")
            .values(attempts=ProbeRollup.attempts + value)
        )
    if what == "verdict":
        return (
            update(ProxyVerdict)
            .where(ProxyVerdict.proxy_id == pid)
            .values(verdict="down" if value % 2 else "functional", blocked_in=[], since=value)
        )
    if what == "evidence":
        return (
            update(ProbeEvidenceRow)
            .where(ProbeEvidenceRow.proxy_id == pid)
            .values(last_ok=bool(value % 2), mechanism=None if value % 2 else "timeout")
        )
    if what == "transports":
        return (
            update(ProbeEvidenceRow)
            .where(ProbeEvidenceRow.proxy_id == pid)
            .values(transports={"tls": f"m{value}"})
        )
    if what == "flag":
        return (
            update(ProxyBlocklistFlag)
            .where(ProxyBlocklistFlag.proxy_id == pid)
            .values(listed=bool(value % 2), listed_since=None)
        )
    if what == "unflag":  # looked up again at the next publication
        return delete(ProxyBlocklistFlag).where(ProxyBlocklistFlag.proxy_id == pid)
    if what == "credentials":
        return (
            update(Proxy)
            .where(Proxy.id == pid)
            .values(credentials=[{"username": f"v{value}", "password": "x"}])
        )
    if what == "hidden":
        return update(Proxy).where(Proxy.id == pid).values(public=bool(value % 2))
    raise AssertionError(what)


_CHANGES = st.lists(
    st.tuples(
        st.integers(0, PROXIES - 1),
        st.sampled_from(
            [
                "rollup",
                "verdict",
                "evidence",
                "transports",
                "flag",
                "unflag",
                "credentials",
                "hidden",
            ]
        ),
        st.integers(1, 50),
    ),
    max_size=4,
)


def test_kept_entries_sign_the_document_built_whole_as_rows_change(
    tmp_path: Path, db_url: str
) -> None:
    async def run() -> None:
        async with start_registry(tmp_path / "registry", db_url, keep_entries=True) as reg:
            registry = reg.registry
            ids = await _seed(registry)
            first, built = await _publish_both(registry)
            assert built == PROXIES - 1  # the exit is not listed
            again, built = await _publish_both(registry)
            assert (again, built) == (first, 0)

            @given(changes=_CHANGES)
            @settings(
                max_examples=30,
                deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture],
            )
            def changed(changes: list[tuple[int, str, int]]) -> None:
                async def one() -> None:
                    async with registry.sessions.begin() as db:
                        for index, what, value in changes:
                            await db.execute(_change(ids[index], what, value))
                    _, built = await _publish_both(registry)
                    assert built <= len({index for index, _, _ in changes})
                    _, built = await _publish_both(registry)
                    assert built == 0

                asyncio.run_coroutine_threadsafe(one(), loop).result()

            loop = asyncio.get_running_loop()
            await asyncio.to_thread(changed)

            # what a JSON column holds is still checked, on both paths
            for change in (
                update(Proxy).where(Proxy.id == ids[0]).values(credentials=[{"username": 1.5}]),
                update(ProxyVerdict)
                .where(ProxyVerdict.proxy_id == ids[0])
                .values(verdict="functional", blocked_in=[1.5]),
            ):
                async with registry.sessions.begin() as db:
                    await db.execute(update(Proxy).where(Proxy.id == ids[0]).values(public=True))
                    await db.execute(change)
                with pytest.raises(CanonicalError):
                    await _publish_both(registry)
                registry.entries.clear()
                with pytest.raises(CanonicalError):
                    await _publish_both(registry)
                async with registry.sessions.begin() as db:
                    await db.execute(_change(ids[0], "credentials", 1))
                    await db.execute(_change(ids[0], "verdict", 1))

    asyncio.run(run())


def test_the_collector_runs_again_after_a_publication_even_a_failed_one() -> None:
    import gc

    assert gc.isenabled()
    with pytest.raises(RuntimeError), services._collector_paused():
        assert not gc.isenabled()
        raise RuntimeError("publication failed")
    assert gc.isenabled()
    gc.disable()  # paused by someone else: left as it was
    try:
        with services._collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_without_keep_entries_a_publication_keeps_no_entry(tmp_path: Path, db_url: str) -> None:
    """The default (no ``--keep-entries``): every publication builds every entry and keeps
    none, so the rows it read are not held until the next (bench/scale.py at 100,000
    proxies: kept, the second publication went past 6 GB); it signs the same bytes."""

    async def run() -> None:
        async with start_registry(tmp_path / "registry", db_url) as reg:
            registry = reg.registry
            assert registry.settings.keep_entries is False
            await _seed(registry)
            for _ in range(2):
                _, built = await _publish_both(registry)
                assert built == PROXIES - 1  # all built again: nothing was kept
                assert registry.entries._kept == {}

    asyncio.run(run())
