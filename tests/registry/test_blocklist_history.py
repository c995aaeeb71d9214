"""Blocklist imports as versions (issue 25): diffs, which import blocked a proxy, retention,
refusal of cut-short or broken files, the CLI and the public API (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from resistance.cli import main
from resistance.errors import ConfigError
from resistance.registry import repositories as repo
from resistance.registry.blocklist import ParseReport, address_hex, parse_blocklist
from resistance.registry.censor import check_import, import_blocklist, range_text
from resistance.registry.models import BlocklistImport, BlocklistRange, ProxyBlocklistFlag
from resistance.registry.services import publish
from tests.registry.conftest import RunningRegistry, start_registry

V1 = b"192.0.2.0/24\n10.0.0.0/8\n"
# 192.0.2.0/24 grows into 192.0.2.0/23 (a new range row), 10/8 goes, 198.51.100.0/24 comes.
V2 = b"192.0.2.0/24\n192.0.3.0/24\n198.51.100.0/24\n"


# --- pure functions ---------------------------------------------------------------------


def _report(data: bytes) -> ParseReport:
    return parse_blocklist(data)[1]


def test_range_text_names_prefixes_and_spans() -> None:
    def text(a: str, b: str) -> str:
        return range_text(address_hex(a), address_hex(b))

    assert text("192.0.2.0", "192.0.2.255") == "192.0.2.0/24"
    assert text("192.0.2.7", "192.0.2.7") == "192.0.2.7/32"
    assert text("192.0.2.0", "192.0.3.255") == "192.0.2.0/23"
    assert text("192.0.2.1", "192.0.2.2") == "192.0.2.1-192.0.2.2"
    assert text("192.0.2.0", "192.0.4.255") == "192.0.2.0-192.0.4.255"
    assert text("2001:db8::", "2001:db8::ffff") == "2001:db8::/112"


def test_check_import_accepts_a_whole_file_with_a_bad_line() -> None:
    data = b"192.0.2.0/24\nnot an address\n198.51.100.0/24\n"
    check_import(data, _report(data), previous_prefixes=2, allow_shrink=False)


def test_check_import_refuses_a_file_cut_mid_line() -> None:
    data = b"192.0.2.0/24\n198.51.100.0/24\n203.0.11"
    with pytest.raises(ConfigError, match="cut short"):
        check_import(data, _report(data), previous_prefixes=None, allow_shrink=False)
    # the same bad last line, but the file ends its line: a bad record, not a cut
    check_import(data + b"\n", _report(data + b"\n"), previous_prefixes=None, allow_shrink=False)
    # cut after a whole address: nothing marks it, the size check is what remains
    whole = b"192.0.2.0/24\n198.51.100.0/24"
    check_import(whole, _report(whole), previous_prefixes=2, allow_shrink=False)


def test_check_import_refuses_mostly_broken_and_empty_files() -> None:
    junk = b"".join(b"garbage %d\n" % i for i in range(20)) + b"192.0.2.0/24\n"
    with pytest.raises(ConfigError, match="not a blocklist"):
        check_import(junk, _report(junk), previous_prefixes=None, allow_shrink=False)
    with pytest.raises(ConfigError, match="no address"):
        check_import(b"# nothing\n", _report(b"# nothing\n"), previous_prefixes=None,
                     allow_shrink=False)  # fmt: skip


def test_check_import_refuses_a_shrink_unless_allowed() -> None:
    data = b"192.0.2.0/24\n"
    with pytest.raises(ConfigError, match="1 prefixes, the current version 3"):
        check_import(data, _report(data), previous_prefixes=3, allow_shrink=False)
    check_import(data, _report(data), previous_prefixes=3, allow_shrink=True)
    check_import(data, _report(data), previous_prefixes=2, allow_shrink=False)  # half is fine


# --- against the database ------------------------------------------------------------------


async def _proxy(reg: RunningRegistry, host: str, *, public: bool = True) -> int:
    async with reg.registry.sessions.begin() as session:
        op = await repo.operator_by_name(session, name="op")
        if op is None:
            op = await repo.add_operator(session, name="op", now=1)
        proxy = await repo.save_proxy(
            session,
            fields={
                "operator_id": op.id, "host": host, "port": 1080, "network": "x",
                "public_key": "k" * 43, "protocols": ["socks5"], "probe_user": "p",
                "probe_password": "q", "credentials": [], "public": public, "status": "active",
                "registered_at": 1, "verified_at": 1,
            },
        )  # fmt: skip
        return proxy.id


async def _state(
    reg: RunningRegistry,
) -> tuple[
    list[tuple[int, int, int]],
    list[tuple[str, str, int, int | None]],
    dict[int, tuple[int, bool, int | None]],
]:
    async with reg.registry.sessions() as s:
        imports = (await s.execute(
            select(BlocklistImport.id, BlocklistImport.added, BlocklistImport.removed)
            .order_by(BlocklistImport.id)
        )).all()  # fmt: skip
        spans = (await s.execute(
            select(BlocklistRange.start_hex, BlocklistRange.end_hex, BlocklistRange.first_import,
                   BlocklistRange.until_import).order_by(BlocklistRange.id)
        )).all()  # fmt: skip
        flags = await repo.flags_by_proxy(s)
    return [tuple(r) for r in imports], [tuple(r) for r in spans], flags  # type: ignore[misc]


async def _flag_since(reg: RunningRegistry, proxy_id: int) -> tuple[bool, int | None]:
    async with reg.registry.sessions() as s:
        flag = await s.get(ProxyBlocklistFlag, proxy_id)
        assert flag is not None
        return flag.listed, flag.listed_since


async def test_each_import_is_a_version_with_its_diff_and_who_blocked_whom(
    tmp_path: Path, db_url: str
) -> None:
    async with start_registry(tmp_path / "reg", db_url) as reg:
        early = await _proxy(reg, "192.0.2.7")
        late = await _proxy(reg, "198.51.100.9")
        never = await _proxy(reg, "203.0.113.5")
        one = await import_blocklist(db_url, V1, "v1.lst", auto_migrate=False)
        assert (one.added, one.removed, one.ranges) == (2, 0, 2)
        assert await _flag_since(reg, early) == (True, one.import_id)
        assert await _flag_since(reg, late) == (False, None)
        two = await import_blocklist(db_url, V2, "v2.lst", auto_migrate=False)
        assert (two.added, two.removed, two.ranges) == (2, 2, 2)
        # still blocked by the first import, though its range changed shape
        assert await _flag_since(reg, early) == (True, one.import_id)
        assert await _flag_since(reg, late) == (True, two.import_id)
        assert await _flag_since(reg, never) == (False, None)
        imports, spans, _ = await _state(reg)
        assert [i[1:] for i in imports] == [(2, 0), (2, 2)]
        assert len(spans) == 4  # stored once each: 2 of v1 (both dropped), 2 of v2

        # the publish path follows the ranges back for a proxy with no flag yet
        joined = await _proxy(reg, "192.0.3.4")
        async with reg.registry.sessions.begin() as s:
            await s.delete(await s.get(ProxyBlocklistFlag, early))
        signed = await publish(reg.registry)
        by_host = {p["endpoint"]["host"]: p["measurements"] for p in signed["document"]["proxies"]}
        assert by_host["192.0.2.7"]["censor_listed_since"] == one.import_id
        assert by_host["192.0.3.4"]["censor_listed_since"] == two.import_id
        assert by_host["198.51.100.9"]["censor_listed_since"] == two.import_id
        assert by_host["203.0.113.5"]["censor_listed"] is False
        assert by_host["203.0.113.5"]["censor_listed_since"] is None
        assert await _flag_since(reg, joined) == (True, two.import_id)

        # unlisted, then listed again: the new run starts at the relisting import
        three = await import_blocklist(
            db_url, b"198.51.100.0/24\n", "v3.lst", auto_migrate=False, allow_shrink=True
        )
        assert await _flag_since(reg, early) == (False, None)
        four = await import_blocklist(db_url, V2, "v4.lst", auto_migrate=False)
        assert await _flag_since(reg, early) == (True, four.import_id)
        assert await _flag_since(reg, late) == (True, two.import_id)
        async with reg.registry.sessions() as s:
            assert await repo.listed_since(s, address_hex=address_hex("192.0.2.7")) == (
                four.import_id
            )
            assert await repo.listed_since(s, address_hex=address_hex("198.51.100.1")) == (
                two.import_id
            )
            assert three.removed == 1 and three.added == 0


async def test_an_import_finds_who_blocked_new_proxies_a_version_at_a_time(
    tmp_path: Path, db_url: str
) -> None:
    """Proxies with no flag of the previous version (registered since) are followed back
    through the versions all at once: as many statements for 40 as for 4, and each
    names the import ``listed_since`` finds for its address."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    statements: list[str] = []

    def count(_conn: object, _cursor: object, sql: str, *_args: object) -> None:
        statements.append(sql)

    async with start_registry(tmp_path / "reg", db_url) as reg:
        one = await import_blocklist(db_url, V1, "v1.lst", auto_migrate=False)
        two = await import_blocklist(db_url, V2, "v2.lst", auto_migrate=False)
        runs = []
        for many in (4, 40):
            hosts = [f"192.0.{2 + n % 2}.{n // 2 + 1 + many}" for n in range(many)]
            ids = {await _proxy(reg, host): host for host in hosts}
            event.listen(Engine, "before_cursor_execute", count)
            try:
                statements.clear()
                done = await import_blocklist(db_url, V2, f"v{many}.lst", auto_migrate=False)
            finally:
                event.remove(Engine, "before_cursor_execute", count)
            walked = sum("blocklist_spans" in sql and "until_import" in sql for sql in statements)
            runs.append(walked)
            for proxy_id, host in ids.items():
                expected = one.import_id if host.startswith("192.0.2.") else two.import_id
                assert await _flag_since(reg, proxy_id) == (True, expected), host
                async with reg.registry.sessions() as s:
                    assert await repo.listed_since(s, address_hex=address_hex(host)) == expected
            assert done.import_id > two.import_id
        # one indexed lookup per address for the range holding it (as many as a publication
        # makes), but the versions before are walked once each, not once per proxy
        assert runs[1] - runs[0] <= 36 + 2


async def test_bad_imports_change_nothing_stored(tmp_path: Path, db_url: str) -> None:
    async with start_registry(tmp_path / "reg", db_url) as reg:
        await _proxy(reg, "192.0.2.7")
        await import_blocklist(db_url, V2, "v2.lst", auto_migrate=False)
        before = await _state(reg)
        bad = {
            "cut mid-line": V2[:-8],
            "mostly junk": b"".join(b"<html>%d\n" % i for i in range(40)) + b"192.0.2.0/24\n",
            "empty": b"",
            "a third of it": b"192.0.2.0/24\n",
        }
        for why, data in bad.items():
            with pytest.raises(ConfigError, match=r"nothing changed|no address"):
                await import_blocklist(db_url, data, why, auto_migrate=False)
            assert await _state(reg) == before, why


async def test_old_versions_are_pruned_and_storage_stays_bounded(
    tmp_path: Path, db_url: str
) -> None:
    async with start_registry(tmp_path / "reg", db_url) as reg:
        ids = []
        for n in range(6):  # each import swaps one of four /24s for the next
            data = b"".join(b"10.0.%d.0/24\n" % (2 * k) for k in range(n, n + 4))
            done = await import_blocklist(
                db_url, data, f"v{n}", auto_migrate=False, keep_versions=3
            )
            ids.append(done.import_id)
        imports, spans, _ = await _state(reg)
        assert [i[0] for i in imports] == ids[-3:]
        # 4 current ranges + what the 3 kept versions dropped (the oldest's diff included)
        assert len(spans) == 4 + 3
        async with reg.registry.sessions() as s:
            assert await repo.blocklist_changes(s, import_id=ids[-3], added=False) == [
                (address_hex("10.0.4.0"), address_hex("10.0.4.255"))
            ]
            assert await repo.blocklist_version(s, import_id=ids[0]) is None
            # a range added before the oldest kept version is still current and still found
            assert await repo.listed_since(s, address_hex=address_hex("10.0.12.1")) == ids[3]
            assert await repo.listed_since(s, address_hex=address_hex("10.0.10.1")) == ids[2]
            count = await s.execute(select(func.count()).select_from(BlocklistRange))
            assert count.scalar_one() == 7


async def test_versions_and_diffs_over_the_api_and_the_cli(tmp_path: Path, db_url: str) -> None:
    async with start_registry(tmp_path / "reg", db_url) as reg:
        one = await import_blocklist(db_url, V1, "v1.lst", auto_migrate=False)
        two = await import_blocklist(db_url, V2, "v2.lst", auto_migrate=False)
        client = reg.client()
        listed = (await client.get("/api/v1/blocklist/versions")).json()
        assert [v["import_id"] for v in listed["versions"]] == [two.import_id, one.import_id]
        assert listed["versions"][0] | {} == listed["versions"][0]
        assert (listed["versions"][0]["added"], listed["versions"][0]["removed"]) == (2, 2)
        assert listed["next_before"] is None
        page = (await client.get("/api/v1/blocklist/versions", params={"limit": 1})).json()
        assert page["next_before"] == two.import_id
        older = (
            await client.get("/api/v1/blocklist/versions", params={"before": page["next_before"]})
        ).json()
        assert [v["import_id"] for v in older["versions"]] == [one.import_id]

        url = f"/api/v1/blocklist/versions/{two.import_id}/diff"
        first = (await client.get(url, params={"limit": 1})).json()
        assert first["ranges"] == ["192.0.2.0/23"] and first["next_after"]
        rest = (await client.get(url, params={"limit": 1, "after": first["next_after"]})).json()
        assert rest["ranges"] == ["198.51.100.0/24"]
        last = (await client.get(url, params={"limit": 1, "after": rest["next_after"]})).json()
        assert last["ranges"] == [] and last["next_after"] is None
        removed = (await client.get(url, params={"change": "removed"})).json()
        assert removed["ranges"] == ["192.0.2.0/24", "10.0.0.0/8"] or removed["ranges"] == [
            "10.0.0.0/8",
            "192.0.2.0/24",
        ]
        assert (await client.get("/api/v1/blocklist/versions/999/diff")).status_code == 404
        bad = await client.get(url, params={"after": "zz"})
        assert bad.status_code == 422
        censor_page = (await client.get("/ui/censor")).text
        assert "+2" in censor_page and "-2" in censor_page

    run = CliRunner().invoke
    versions = await asyncio.to_thread(
        run, main, ["registry", "blocklist-versions", "--db", db_url]
    )
    assert versions.exit_code == 0, versions.output
    lines = versions.output.splitlines()
    assert lines[0].split()[0] == str(two.import_id) and "+2 -2" in lines[0]
    assert lines[1].split()[0] == str(one.import_id) and "+2 -0" in lines[1]
    diff = await asyncio.to_thread(
        run, main, ["registry", "blocklist-diff", str(two.import_id), "--removed", "--db", db_url]
    )
    assert diff.exit_code == 0, diff.output
    assert "-10.0.0.0/8" in diff.output and "-192.0.2.0/24" in diff.output
    missing = await asyncio.to_thread(
        run, main, ["registry", "blocklist-diff", "999", "--db", db_url]
    )
    assert missing.exit_code != 0 and "no blocklist version 999" in missing.output


async def test_migration_0018_carries_the_current_ranges_down_and_up(db_url: str) -> None:
    from sqlalchemy import text

    from resistance.registry.db import make_engine, migrate
    from tests.registry.test_wireguard import downgrade

    await migrate(db_url)
    await downgrade(db_url, "0013")
    a, b = address_hex("192.0.2.0"), address_hex("192.0.2.255")
    engine = make_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(
                "INSERT INTO blocklist_imports (id, source, kind, updated, imported_at, prefixes,"
                " ranges, skipped) VALUES (5, 's', 'prefix-list', NULL, 1, 1, 1, 0)"
            ))  # fmt: skip
            await conn.execute(
                text("INSERT INTO blocklist_ranges VALUES (:a, :b, 5)"), {"a": a, "b": b}
            )
        await migrate(db_url)
        async with engine.connect() as conn:
            rows = (await conn.execute(text(
                "SELECT start_hex, end_hex, first_import, until_import FROM blocklist_spans"
            ))).all()  # fmt: skip
            assert [tuple(r) for r in rows] == [(a, b, 5, None)]
            sizes = (await conn.execute(text("SELECT added, removed FROM blocklist_imports"))).all()
            assert [tuple(r) for r in sizes] == [(0, 0)]
        await downgrade(db_url, "0013")
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT * FROM blocklist_ranges"))).all()
            assert [tuple(r) for r in rows] == [(a, b, 5)]
        await migrate(db_url)
    finally:
        await engine.dispose()


# --- a property: the stored versions are exactly what was imported ---------------------

_PREFIXES = st.lists(
    st.tuples(st.integers(0, 63), st.sampled_from([26, 27, 28, 30, 32])), min_size=1, max_size=12
)


def _prefix_lines(items: list[tuple[int, int]]) -> bytes:
    return b"".join(b"10.0.0.%d/%d\n" % (4 * n - (4 * n) % (1 << (32 - k)), k) for n, k in items)


@pytest.fixture(scope="module")
def migrated_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from resistance.registry.db import migrate

    path = tmp_path_factory.mktemp("template") / "template.sqlite3"
    asyncio.run(migrate(f"sqlite+aiosqlite:///{path}"))
    return path


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    # each example is a database: shrinking one takes minutes, past the test timeout
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(versions=st.lists(_PREFIXES, min_size=1, max_size=5), keep=st.integers(1, 4))
def test_every_kept_version_its_diff_and_who_blocked_whom_match_the_imports(
    tmp_path: Path, migrated_file: Path, versions: list[list[tuple[int, int]]], keep: int
) -> None:
    import shutil
    import uuid

    from resistance.registry.blocklist import merge_ranges
    from resistance.registry.db import make_engine, make_sessions

    path = tmp_path / f"{uuid.uuid4().hex}.sqlite3"
    shutil.copy(migrated_file, path)
    url = f"sqlite+aiosqlite:///{path}"
    probes = [address_hex(f"10.0.0.{i}") for i in range(0, 256, 3)]

    async def run() -> None:
        expected: list[tuple[int, set[tuple[str, str]]]] = []
        for items in versions:
            data = _prefix_lines(items)
            done = await import_blocklist(
                url, data, "p", auto_migrate=False, keep_versions=keep, allow_shrink=True
            )
            ranges = merge_ranges(parse_blocklist(data)[0])
            spans = {(f"{a:033x}", f"{b:033x}") for a, b in ranges}
            previous = expected[-1][1] if expected else set()
            assert (done.added, done.removed) == (len(spans - previous), len(previous - spans))
            expected.append((done.import_id, spans))
        kept = expected[-keep:]
        engine = make_engine(url)
        try:
            async with make_sessions(engine)() as s:
                rows = (await s.execute(select(BlocklistRange))).scalars().all()
                ids = [v.id for v in await repo.blocklist_versions(s)]
                assert ids == [v for v, _ in reversed(kept)]
                for index, (version, spans) in enumerate(kept):
                    held = {
                        (r.start_hex, r.end_hex) for r in rows
                        if r.first_import <= version
                        and (r.until_import is None or r.until_import > version)
                    }  # fmt: skip
                    assert held == spans
                    before = expected[len(expected) - len(kept) + index - 1][1] if (
                        len(expected) - len(kept) + index > 0
                    ) else set()  # fmt: skip
                    added = await repo.blocklist_changes(s, import_id=version, added=True)
                    removed = await repo.blocklist_changes(s, import_id=version, added=False)
                    assert set(added) == spans - before and set(removed) == before - spans
                for hexed in probes:
                    since = None
                    for version, spans in reversed(expected):
                        if not any(a <= hexed <= b for a, b in spans):
                            break
                        since = version
                    found = await repo.listed_since(s, address_hex=hexed)
                    if since is not None and since < kept[0][0]:
                        # the run reaches back past the kept versions: some import at or
                        # before the oldest kept one is named
                        assert found is not None and found <= kept[0][0]
                    else:
                        assert found == since
        finally:
            await engine.dispose()

    asyncio.run(run())
