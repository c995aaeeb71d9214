"""Importing a censor's registry into the database, and flagging the proxies in it.

Each import is a version: its ranges (merged and disjoint, see
:mod:`resistance.registry.blocklist`) are stored as the difference from the
version before (:func:`resistance.registry.repositories.replace_blocklist`)
in one transaction, so readers see the old registry or the new one, never
half of each; then every proxy is looked up against the new ranges in memory
and its flag written, with the import that blocked it.

Bad input changes nothing: before anything is stored an import is refused
(:func:`check_import`) when it holds no prefix, when its last line is a
broken record without a line end (a download cut short), when most of its
records are broken, or when it lists less than half the prefixes the current
version does (a truncated file parses as a smaller registry; pass
``allow_shrink`` when the censor really dropped that much).  Old versions are
pruned to ``keep_versions``.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from resistance.errors import ConfigError
from resistance.registry import repositories as repo
from resistance.registry.blocklist import (
    HEX_DIGITS,
    V4_OFFSET,
    ParseReport,
    PrefixSet,
    address_value,
    parse_blocklist,
)
from resistance.registry.db import make_engine, make_sessions, migrate
from resistance.registry.measurements import blocked_since
from resistance.registry.models import BlocklistImport, ProxyBlocklistFlag

#: Versions kept by default: a year of daily imports.
KEEP_VERSIONS = 365
#: A new import listing fewer than this share of the current version's prefixes is
#: taken for a truncated file unless the caller allows the shrink.
MIN_SHARE = 0.5


@dataclass(frozen=True, slots=True)
class ImportSummary:
    import_id: int
    report: ParseReport
    ranges: int
    proxies: int
    flagged: list[str]
    seconds: float
    added: int = 0
    removed: int = 0
    pruned: int = 0


def check_import(
    data: bytes, report: ParseReport, *, previous_prefixes: int | None, allow_shrink: bool
) -> None:
    """Refuse an import that looks cut short or broken (:class:`ConfigError` says why)."""
    if report.prefixes == 0:
        raise ConfigError(f"it holds no address or prefix ({report.skipped} bad lines)")
    last_line = report.lines
    if (
        data
        and not data.endswith((b"\n", b"\r"))
        and any(line == last_line for line, _ in report.problems)
    ):
        raise ConfigError(
            f"its last line ({last_line}) is a broken record with no line end: "
            "the file looks cut short"
        )
    if report.skipped > 10 and report.skipped > report.prefixes:
        raise ConfigError(
            f"{report.skipped} bad lines against {report.prefixes} prefixes: "
            "this is not a blocklist in a format read here"
        )
    if not allow_shrink and previous_prefixes and report.prefixes < previous_prefixes * MIN_SHARE:
        raise ConfigError(
            f"it lists {report.prefixes} prefixes, the current version "
            f"{previous_prefixes}: a file cut short? (allow the shrink to import it)"
        )


def read_blocklist(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


async def import_blocklist(
    url: str,
    data: bytes,
    source: str,
    *,
    auto_migrate: bool = True,
    keep_versions: int = KEEP_VERSIONS,
    allow_shrink: bool = False,
) -> ImportSummary:
    started = time.monotonic()
    if keep_versions < 1:
        raise ConfigError("keep at least one version of the blocklist")
    path = source
    ranges, report = parse_blocklist(data, source)
    if report.prefixes == 0:
        raise ConfigError(f"{path} holds no address or prefix ({report.skipped} bad lines)")
    prefixes = PrefixSet(ranges)
    stored = [(f"{a:0{HEX_DIGITS}x}", f"{b:0{HEX_DIGITS}x}") for a, b in prefixes.ranges()]
    if auto_migrate:
        await migrate(url)
    engine = make_engine(url)
    sessions = make_sessions(engine)
    now = int(time.time())
    flagged: list[str] = []
    try:
        async with sessions.begin() as session:
            previous = await repo.last_blocklist(session)
            try:
                check_import(
                    data,
                    report,
                    previous_prefixes=previous.prefixes if previous else None,
                    allow_shrink=allow_shrink,
                )
            except ConfigError as exc:
                raise ConfigError(f"{path} refused, nothing changed: {exc}") from None
            earlier = await repo.flags_by_proxy(session)
            record = BlocklistImport(
                source=str(path)[-255:], kind=report.kind, updated=report.updated,
                imported_at=now, prefixes=report.prefixes, ranges=len(stored),
                skipped=report.skipped,
            )  # fmt: skip
            import_id = await repo.replace_blocklist(session, record=record, ranges=stored)
            proxies = await repo.all_active_proxies(session)
            flags: dict[int, list[Any]] = {}  # proxy id: [listed, listed_since]
            unknown: dict[int, str] = {}  # listed, the import that blocked it not in its flag
            for proxy in proxies:
                try:
                    value = address_value(proxy.address)
                except ValueError:
                    continue
                listed = prefixes.contains_value(value)
                since = None
                if listed:
                    since = _since_from_flag(earlier.get(proxy.id), previous, import_id)
                    if since is None:
                        unknown[proxy.id] = f"{value:0{HEX_DIGITS}x}"
                    flagged.append(f"{proxy.host}:{proxy.port}")
                flags[proxy.id] = [listed, since]
            # followed back through the versions for all of them at once, not one by one
            for proxy_id, since in (await blocked_since(session, unknown)).items():
                flags[proxy_id][1] = since
            for proxy_id, (listed, since) in flags.items():
                session.add(
                    ProxyBlocklistFlag(
                        proxy_id=proxy_id, import_id=import_id, listed=listed, checked_at=now,
                        listed_since=since,
                    )
                )  # fmt: skip
            pruned = await repo.prune_blocklist(session, keep=keep_versions)
    except SQLAlchemyError as exc:
        raise ConfigError(f"cannot store the blocklist: {type(exc).__name__}") from None
    finally:
        await engine.dispose()
    return ImportSummary(
        import_id, report, len(stored), len(proxies), flagged, time.monotonic() - started,
        record.added, record.removed, pruned,
    )  # fmt: skip


def _since_from_flag(
    flag: tuple[int, bool, int | None] | None, previous: BlocklistImport | None, import_id: int
) -> int | None:
    """The import that blocked a proxy listed by ``import_id``, when its flag, written
    for the previous version, tells (``None``: followed back through the ranges)."""
    if flag is not None and previous is not None and flag[0] == previous.id:
        _, was_listed, since = flag
        if not was_listed:
            return import_id
        return since
    return None


# --- versions and their diffs (CLI and API) --------------------------------------------

#: The most ranges one page of a diff carries.
MAX_PAGE = 10_000


def range_text(start_hex: str, end_hex: str) -> str:
    """A stored range as the prefix it is (``192.0.2.0/24``), else ``first-last``."""
    first, last = int(start_hex, 16), int(end_hex, 16)
    v4 = first >= V4_OFFSET
    bits = 32 if v4 else 128
    offset = V4_OFFSET if v4 else 0
    low, high = first - offset, last - offset
    size = high - low + 1
    a = ipaddress.ip_address(low) if v4 else ipaddress.IPv6Address(low)
    if size & (size - 1) == 0 and low % size == 0:
        return f"{a}/{bits - size.bit_length() + 1}"
    b = ipaddress.ip_address(high) if v4 else ipaddress.IPv6Address(high)
    return f"{a}-{b}"


def version_json(record: BlocklistImport) -> dict[str, Any]:
    return {
        "import_id": record.id,
        "source": record.source,
        "kind": record.kind,
        "updated": record.updated,
        "imported_at": record.imported_at,
        "prefixes": record.prefixes,
        "ranges": record.ranges,
        "added": record.added,
        "removed": record.removed,
        "skipped": record.skipped,
    }


async def list_versions(
    session: AsyncSession, *, before: int | None = None, limit: int = 100
) -> dict[str, Any]:
    """A page of versions, newest first; ``next_before`` pages on (null at the end)."""
    rows = await repo.blocklist_versions(session, before=before, limit=limit)
    return {
        "versions": [version_json(r) for r in rows],
        "next_before": rows[-1].id if len(rows) == limit else None,
    }


async def version_diff(
    session: AsyncSession, *, import_id: int, change: str, after: str = "", limit: int = 1000
) -> dict[str, Any] | None:
    """One page of the ranges a version ``added`` or ``removed`` against the one before it,
    by start address; ``next_after`` pages on (null at the end).  ``None``: no such version."""
    record = await repo.blocklist_version(session, import_id=import_id)
    if record is None:
        return None
    page = await repo.blocklist_changes(
        session, import_id=import_id, added=change == "added", after=after, limit=limit
    )
    return {
        "version": version_json(record),
        "change": change,
        "ranges": [range_text(a, b) for a, b in page],
        "next_after": page[-1][0] if len(page) == limit else None,
    }


async def read_versions(url: str, *, before: int | None, limit: int) -> dict[str, Any]:
    engine = make_engine(url)
    try:
        async with make_sessions(engine)() as session:
            return await list_versions(session, before=before, limit=limit)
    except SQLAlchemyError as exc:
        raise ConfigError(f"cannot read the blocklist versions: {type(exc).__name__}") from None
    finally:
        await engine.dispose()


async def read_diff(
    url: str, *, import_id: int, change: str, after: str, limit: int
) -> dict[str, Any] | None:
    engine = make_engine(url)
    try:
        async with make_sessions(engine)() as session:
            return await version_diff(
                session, import_id=import_id, change=change, after=after, limit=limit
            )
    except SQLAlchemyError as exc:
        raise ConfigError(f"cannot read the blocklist diff: {type(exc).__name__}") from None
    finally:
        await engine.dispose()
