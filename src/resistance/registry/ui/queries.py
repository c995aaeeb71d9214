"""The dashboard's reads: small keyword-only functions, each one bounded query.

Every list is paginated by key (``after`` an id, ``limit`` rows), never by
offset, so page 1,000 costs what page 1 costs.  Aggregates group on indexed
columns (migration 0011 adds the ones the pages need).  Nothing here returns
a secret: no credentials, keys or contacts leave these functions for the
public pages (the operator's own page reads its proxy through
:func:`proxy_of`, which checks ownership in the query).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Boolean, String, case, cast, column, func, select, table
from sqlalchemy.ext.asyncio import AsyncSession

from resistance.registry.models import (
    ApiToken,
    BlocklistImport,
    BlocklistRange,
    GrantRoundRow,
    ProbeAccount,
    ProbeEvidenceRow,
    ProbeResult,
    Proxy,
    ProxyBlocklistFlag,
    ProxyVerdict,
    ProxyVerdictChange,
)

#: Verdicts as the dashboard names them (the probes' "untested" is a new proxy's probation).
STATES = {"untested": "probation", "functional": "serving", "blocked": "blocked", "down": "down"}
KINDS = ("SOCKS5", "MTProto", "WireGuard")
#: Time-to-block buckets: (label, upper bound in seconds).
BLOCK_BUCKETS: tuple[tuple[str, int], ...] = (
    ("< 1 h", 3600),
    ("1-6 h", 6 * 3600),
    ("6-24 h", 86400),
    ("1-3 d", 3 * 86400),
    ("3-7 d", 7 * 86400),
    ("7-30 d", 30 * 86400),
    ("> 30 d", 2**62),
)


def kind_of(protocols: list[str] | str) -> str:
    """SOCKS5, MTProto or WireGuard from a proxy's protocol list (or its JSON text)."""
    names = json.loads(protocols) if isinstance(protocols, str) else protocols
    if "mtproto" in names:
        return "MTProto"
    if "wireguard" in names:
        return "WireGuard"
    return "SOCKS5"


async def token_by_id(session: AsyncSession, *, token_id: int) -> ApiToken | None:
    return await session.get(ApiToken, token_id)


async def token_by_hash(session: AsyncSession, *, digest: str) -> ApiToken | None:
    result = await session.execute(select(ApiToken).where(ApiToken.token_hash == digest))
    return result.scalar_one_or_none()


# --- public ---------------------------------------------------------------------------


async def kinds_by_state(session: AsyncSession) -> dict[tuple[str, str], int]:
    """``(kind, state) -> proxies`` over active proxies."""
    verdict = func.coalesce(ProxyVerdict.verdict, "untested")
    result = await session.execute(
        select(cast(Proxy.protocols, String), verdict, func.count())
        .select_from(Proxy)
        .outerjoin(ProxyVerdict, ProxyVerdict.proxy_id == Proxy.id)
        .where(Proxy.status == "active")
        .group_by(cast(Proxy.protocols, String), verdict)
    )
    counts: dict[tuple[str, str], int] = {}
    for protocols, state, n in result.all():
        key = (kind_of(protocols), STATES.get(state, state))
        counts[key] = counts.get(key, 0) + int(n)
    return counts


@dataclass(frozen=True, slots=True)
class VantageRow:
    country: str
    control: bool
    probes: int
    reachable: int
    unreachable: int


async def vantages(session: AsyncSession) -> list[VantageRow]:
    """Per vantage network (country, control or inside): proxies whose last check worked."""
    probes = await session.execute(
        select(ProbeAccount.country, ProbeAccount.control, func.count()).group_by(
            ProbeAccount.country, ProbeAccount.control
        )
    )
    accounts = {(c, bool(k)): int(n) for c, k, n in probes.all()}
    result = await session.execute(
        select(
            ProbeEvidenceRow.country,
            ProbeEvidenceRow.control,
            ProbeEvidenceRow.last_ok,
            func.count(),
        ).group_by(ProbeEvidenceRow.country, ProbeEvidenceRow.control, ProbeEvidenceRow.last_ok)
    )
    seen: dict[tuple[str, bool], list[int]] = {}
    for country, control, ok, n in result.all():
        seen.setdefault((country, bool(control)), [0, 0])[0 if ok else 1] += int(n)
    rows = [
        VantageRow(country, control, accounts.get((country, control), 0), ok, failed)
        for (country, control), (ok, failed) in seen.items()
    ]
    return sorted(rows, key=lambda r: (r.control, r.country))


#: Per-day totals of the rollups, kept by triggers (migration 0011).
DAILY_REACH = table(
    "dashboard_daily_reach",
    column("day", String),
    column("control", Boolean),
    column("attempts", BigInteger),
    column("successes", BigInteger),
)


async def reach_by_day(session: AsyncSession, *, since: str) -> list[tuple[str, bool, int, int]]:
    """``(day, control, attempts, successes)`` per UTC day from ``since`` on."""
    c = DAILY_REACH.c
    result = await session.execute(
        select(c.day, c.control, c.attempts, c.successes)
        .where(c.day >= since)
        .order_by(c.day, c.control)
    )
    return [(d, bool(k), int(a), int(s)) for d, k, a, s in result.all()]


async def time_to_block(session: AsyncSession) -> list[tuple[str, int]]:
    """How long proxies served before their first "blocked" verdict, bucketed."""
    first = (
        select(
            ProxyVerdictChange.proxy_id.label("proxy_id"),
            func.min(ProxyVerdictChange.at).label("at"),
        )
        .where(ProxyVerdictChange.verdict == "blocked")
        .group_by(ProxyVerdictChange.proxy_id)
        .subquery()
    )
    took = first.c.at - Proxy.registered_at
    bucket = case(
        *[(took < bound, n) for n, (_, bound) in enumerate(BLOCK_BUCKETS)],
        else_=len(BLOCK_BUCKETS) - 1,
    )
    result = await session.execute(
        select(bucket, func.count())
        .select_from(first)
        .join(Proxy, Proxy.id == first.c.proxy_id)
        .group_by(bucket)
    )
    counts: dict[int, int] = {int(b): int(n) for b, n in result.all()}
    return [(label, int(counts.get(n, 0))) for n, (label, _) in enumerate(BLOCK_BUCKETS)]


async def blocklist_imports(session: AsyncSession, *, limit: int = 60) -> list[BlocklistImport]:
    """The latest imports of the censor's registry, oldest first."""
    result = await session.execute(
        select(BlocklistImport).order_by(BlocklistImport.id.desc()).limit(limit)
    )
    return list(reversed(result.scalars().all()))


async def current_ranges(session: AsyncSession) -> Sequence[tuple[str, str]]:
    result = await session.execute(
        select(BlocklistRange.start_hex, BlocklistRange.end_hex).where(
            BlocklistRange.until_import.is_(None)
        )
    )
    return [(a, b) for a, b in result.all()]


@dataclass(frozen=True, slots=True)
class ListedProxy:
    proxy_id: int
    endpoint: str
    since: int | None
    #: When the import that blocked it was made, and the list's own date (None: pruned).
    since_at: int | None
    since_updated: str | None


async def listed_public_proxies(session: AsyncSession, *, limit: int = 100) -> list[ListedProxy]:
    """Public proxies the current import lists, with the import that blocked each,
    most recently blocked first (non-public ones are never named on a public page)."""
    result = await session.execute(
        select(
            Proxy.id,
            Proxy.host,
            Proxy.port,
            ProxyBlocklistFlag.listed_since,
            BlocklistImport.imported_at,
            BlocklistImport.updated,
        )
        .join(Proxy, Proxy.id == ProxyBlocklistFlag.proxy_id)
        .outerjoin(BlocklistImport, BlocklistImport.id == ProxyBlocklistFlag.listed_since)
        .where(ProxyBlocklistFlag.listed.is_(True), Proxy.public.is_(True))
        .order_by(ProxyBlocklistFlag.listed_since.desc(), Proxy.id)
        .limit(limit)
    )
    return [
        ListedProxy(pid, f"{host}:{port}", since, at, updated)
        for pid, host, port, since, at, updated in result.all()
    ]


async def listed_proxies(session: AsyncSession) -> tuple[int, int]:
    """``(proxies checked, proxies listed)`` against the current import."""
    listed = func.sum(case((ProxyBlocklistFlag.listed, 1), else_=0))
    result = await session.execute(select(func.count(), listed).select_from(ProxyBlocklistFlag))
    checked, hit = result.one()
    return int(checked), int(hit or 0)


@dataclass(frozen=True, slots=True)
class ProxyRow:
    proxy: Proxy
    state: str
    blocked_in: list[str]
    since: int | None


async def proxies_page(
    session: AsyncSession, *, after: int, limit: int, public: bool | None, operator_id: int | None
) -> list[ProxyRow]:
    """Up to ``limit`` proxies with id > ``after`` (public ones, or one operator's)."""
    query = (
        select(Proxy, ProxyVerdict)
        .outerjoin(ProxyVerdict, ProxyVerdict.proxy_id == Proxy.id)
        .where(Proxy.id > after)
        .order_by(Proxy.id)
        .limit(limit)
    )
    if public is not None:
        query = query.where(Proxy.public.is_(public), Proxy.status == "active")
    if operator_id is not None:
        query = query.where(Proxy.operator_id == operator_id)
    result = await session.execute(query)
    return [_row(p, v) for p, v in result.all()]


def _row(proxy: Proxy, verdict: ProxyVerdict | None) -> ProxyRow:
    if verdict is None:
        return ProxyRow(proxy, "probation", [], None)
    return ProxyRow(
        proxy, STATES.get(verdict.verdict, verdict.verdict), list(verdict.blocked_in), verdict.since
    )


# --- operator -------------------------------------------------------------------------


async def proxy_of(session: AsyncSession, *, operator_id: int, proxy_id: int) -> ProxyRow | None:
    """One proxy, only if ``operator_id`` owns it."""
    result = await session.execute(
        select(Proxy, ProxyVerdict)
        .outerjoin(ProxyVerdict, ProxyVerdict.proxy_id == Proxy.id)
        .where(Proxy.id == proxy_id, Proxy.operator_id == operator_id)
    )
    found = result.first()
    return None if found is None else _row(found[0], found[1])


async def evidence_of(
    session: AsyncSession, *, proxy_id: int
) -> list[tuple[ProbeEvidenceRow, str]]:
    """What each vantage last saw of the proxy, with the vantage's name."""
    result = await session.execute(
        select(ProbeEvidenceRow, ProbeAccount.name)
        .join(ProbeAccount, ProbeAccount.id == ProbeEvidenceRow.probe_id)
        .where(ProbeEvidenceRow.proxy_id == proxy_id)
        .order_by(ProbeEvidenceRow.control.desc(), ProbeEvidenceRow.country, ProbeAccount.name)
    )
    return [(row, name) for row, name in result.all()]


async def history_of(
    session: AsyncSession, *, proxy_id: int, limit: int
) -> Sequence[ProxyVerdictChange]:
    """The proxy's latest verdict changes, newest first."""
    result = await session.execute(
        select(ProxyVerdictChange)
        .where(ProxyVerdictChange.proxy_id == proxy_id)
        .order_by(ProxyVerdictChange.at.desc(), ProxyVerdictChange.id.desc())
        .limit(limit)
    )
    return result.scalars().all()


async def recent_results(session: AsyncSession, *, proxy_id: int, limit: int) -> Sequence[Any]:
    """The proxy's latest raw results (the evidence behind the verdicts), newest first."""
    result = await session.execute(
        select(
            ProbeResult.measured_at,
            ProbeAccount.name,
            ProbeResult.country,
            ProbeResult.control,
            ProbeResult.ok,
            ProbeResult.step,
            ProbeResult.failure,
            ProbeResult.mechanism,
            ProbeResult.detail,
            ProbeResult.batch_id,
        )
        .join(ProbeAccount, ProbeAccount.id == ProbeResult.probe_id)
        .where(ProbeResult.proxy_id == proxy_id)
        .order_by(ProbeResult.measured_at.desc(), ProbeResult.id.desc())
        .limit(limit)
    )
    return result.all()


async def rounds(
    session: AsyncSession, *, statuses: Sequence[str] | None = None
) -> list[GrantRoundRow]:
    """Grant rounds, newest period first."""
    query = select(GrantRoundRow).order_by(GrantRoundRow.period_start.desc(), GrantRoundRow.id)
    if statuses is not None:
        query = query.where(GrantRoundRow.status.in_(statuses))
    result = await session.execute(query.limit(200))
    return list(result.scalars().all())
