"""Importing a censor's registry into the database, and flagging the proxies in it.

The import replaces the current ranges (merged and disjoint, see
:mod:`resistance.registry.blocklist`) in one transaction, so readers see the
old registry or the new one, never half of each; then every proxy is looked
up against the new ranges in memory and its flag written.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from resistance.errors import ConfigError
from resistance.registry import repositories as repo
from resistance.registry.blocklist import (
    HEX_DIGITS,
    ParseReport,
    PrefixSet,
    address_value,
    parse_blocklist,
)
from resistance.registry.db import make_engine, make_sessions, migrate
from resistance.registry.models import BlocklistImport, ProxyBlocklistFlag


@dataclass(frozen=True, slots=True)
class ImportSummary:
    import_id: int
    report: ParseReport
    ranges: int
    proxies: int
    flagged: list[str]
    seconds: float


def read_blocklist(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


async def import_blocklist(
    url: str, data: bytes, source: str, *, auto_migrate: bool = True
) -> ImportSummary:
    started = time.monotonic()
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
            record = BlocklistImport(
                source=str(path)[-255:], kind=report.kind, updated=report.updated,
                imported_at=now, prefixes=report.prefixes, ranges=len(stored),
                skipped=report.skipped,
            )  # fmt: skip
            import_id = await repo.replace_blocklist(session, record=record, ranges=stored)
            proxies = await repo.all_active_proxies(session)
            for proxy in proxies:
                try:
                    listed = prefixes.contains_value(address_value(proxy.host))
                except ValueError:
                    continue
                session.add(
                    ProxyBlocklistFlag(
                        proxy_id=proxy.id, import_id=import_id, listed=listed, checked_at=now
                    )
                )
                if listed:
                    flagged.append(f"{proxy.host}:{proxy.port}")
    except SQLAlchemyError as exc:
        raise ConfigError(f"cannot store the blocklist: {type(exc).__name__}") from None
    finally:
        await engine.dispose()
    return ImportSummary(
        import_id, report, len(stored), len(proxies), flagged, time.monotonic() - started
    )
