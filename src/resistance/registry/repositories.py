"""Database access: small keyword-only functions over an open session.

Each function does one query or one change; transactions belong to the
caller (the services), so a request either changes everything it meant to or
nothing.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    Integer,
    String,
    Table,
    Text,
    and_,
    any_,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    true,
    tuple_,
    update,
)
from sqlalchemy import column as sa_column
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, aggregate_order_by
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from resistance.probe.rollup import THROUGHPUT_BOUNDS_KBPS
from resistance.registry.models import (
    ApiToken,
    BlocklistImport,
    BlocklistRange,
    GrantCarry,
    GrantRoundChunk,
    GrantRoundProxy,
    GrantRoundRow,
    Operator,
    ProbeAccount,
    ProbeBatch,
    ProbeEvidenceRow,
    ProbeResult,
    ProbeRollup,
    Proxy,
    ProxyBlocklistFlag,
    ProxyVerdict,
    ProxyVerdictChange,
    Publication,
    StatementNonce,
)


async def add_operator(session: AsyncSession, *, name: str, now: int) -> Operator:
    operator = Operator(name=name, created_at=now)
    session.add(operator)
    await session.flush()
    return operator


async def operator_by_name(session: AsyncSession, *, name: str) -> Operator | None:
    result = await session.execute(select(Operator).where(Operator.name == name))
    return result.scalar_one_or_none()


async def operator_by_id(session: AsyncSession, *, operator_id: int) -> Operator | None:
    return await session.get(Operator, operator_id)


async def add_token(
    session: AsyncSession,
    *,
    role: str,
    token_hash: str,
    now: int,
    operator_id: int | None = None,
    probe_id: int | None = None,
) -> ApiToken:
    token = ApiToken(
        role=role,
        token_hash=token_hash,
        created_at=now,
        operator_id=operator_id,
        probe_id=probe_id,
    )
    session.add(token)
    await session.flush()
    return token


async def token_by_hash(session: AsyncSession, *, token_hash: str) -> ApiToken | None:
    result = await session.execute(select(ApiToken).where(ApiToken.token_hash == token_hash))
    return result.scalar_one_or_none()


def _live(now: int) -> Any:
    return (ApiToken.revoked_at.is_(None)) & (
        ApiToken.expires_at.is_(None) | (ApiToken.expires_at > now)
    )


async def live_token_by_hash(
    session: AsyncSession, *, token_hash: str, now: int
) -> ApiToken | None:
    """The token with this digest if it is neither revoked nor expired at ``now``."""
    result = await session.execute(
        select(ApiToken).where(ApiToken.token_hash == token_hash, _live(now))
    )
    return result.scalar_one_or_none()


async def token_by_id(
    session: AsyncSession, *, token_id: int, lock: bool = False
) -> ApiToken | None:
    query = select(ApiToken).where(ApiToken.id == token_id)
    if lock:
        query = query.with_for_update()
    result = await session.execute(query)
    return result.scalar_one_or_none()


async def tokens_of(
    session: AsyncSession,
    *,
    role: str | None = None,
    operator_id: int | None = None,
    probe_id: int | None = None,
) -> list[tuple[ApiToken, str | None]]:
    """Tokens (oldest first) with their owner's name, filtered by whatever is given."""
    query = (
        select(ApiToken, func.coalesce(Operator.name, ProbeAccount.name))
        .outerjoin(Operator, Operator.id == ApiToken.operator_id)
        .outerjoin(ProbeAccount, ProbeAccount.id == ApiToken.probe_id)
        .order_by(ApiToken.id)
    )
    if role is not None:
        query = query.where(ApiToken.role == role)
    if operator_id is not None:
        query = query.where(ApiToken.operator_id == operator_id)
    if probe_id is not None:
        query = query.where(ApiToken.probe_id == probe_id)
    result = await session.execute(query)
    return [(token, owner) for token, owner in result.all()]


async def count_live_tokens(
    session: AsyncSession,
    *,
    role: str,
    operator_id: int | None,
    probe_id: int | None,
    now: int,
) -> int:
    """Live tokens of one account (the admin's, an operator's or a probe's)."""
    query = (
        select(func.count())
        .select_from(ApiToken)
        .where(
            ApiToken.role == role,
            ApiToken.operator_id.is_(None)
            if operator_id is None
            else ApiToken.operator_id == operator_id,
            ApiToken.probe_id.is_(None) if probe_id is None else ApiToken.probe_id == probe_id,
            _live(now),
        )
    )
    return int((await session.execute(query)).scalar_one())


async def count_tokens(session: AsyncSession, *, role: str) -> int:
    result = await session.execute(
        select(func.count()).select_from(ApiToken).where(ApiToken.role == role)
    )
    return int(result.scalar_one())


async def set_payout_address(
    session: AsyncSession, *, operator_id: int, address: str, kind: str
) -> None:
    operator = await session.get(Operator, operator_id)
    if operator is not None:
        operator.payout_address = address
        operator.payout_type = kind


async def proxy_by_endpoint(session: AsyncSession, *, host: str, port: int) -> Proxy | None:
    result = await session.execute(select(Proxy).where(Proxy.host == host, Proxy.port == port))
    return result.scalar_one_or_none()


async def proxy_by_id(session: AsyncSession, *, proxy_id: int) -> Proxy | None:
    return await session.get(Proxy, proxy_id)


async def save_proxy(session: AsyncSession, *, fields: dict[str, Any]) -> Proxy:
    """Insert a proxy, or update the one at the same endpoint (same operator)."""
    existing = await proxy_by_endpoint(session, host=fields["host"], port=fields["port"])
    if existing is None:
        proxy = Proxy(**fields)
        session.add(proxy)
    else:
        proxy = existing
        for key, value in fields.items():
            if key != "registered_at":
                setattr(proxy, key, value)
    await session.flush()
    return proxy


async def proxies_of(session: AsyncSession, *, operator_id: int) -> Sequence[Proxy]:
    result = await session.execute(
        select(Proxy).where(Proxy.operator_id == operator_id).order_by(Proxy.id)
    )
    return result.scalars().all()


async def active_proxies(session: AsyncSession, *, public: bool) -> Sequence[Proxy]:
    result = await session.execute(
        select(Proxy)
        .where(Proxy.public.is_(public), Proxy.status == "active")
        .order_by(Proxy.host, Proxy.port)
    )
    return result.scalars().all()


#: The columns a directory entry is made of (its listing, the transport probes measure,
#: the address the censor's registry is searched for, whether it is a cascade's exit):
#: no secret (``mtproto_key``, the probes' password) and nothing that changes without
#: changing the entry (``verified_at``), so a kept entry is not rebuilt for it.
_DIRECTORY_COLUMNS = (
    "id", "host", "port", "addresses", "protocols", "credentials", "public_key",
    "wg_public_key", "tls_port", "tls_sha256", "cascade_role", "mtproto_mode", "mtproto_domain",
)  # fmt: skip


async def active_proxy_rows(session: AsyncSession, *, public: bool) -> Sequence[Any]:
    """``active_proxies`` as plain rows of the columns a directory entry is made of (read
    as a ``Proxy`` is, by attribute), for a directory of 100,000: no ORM object, no
    identity map, no JSON column decoded that the directory does not show."""
    columns = Proxy.__table__.columns
    result = await session.execute(
        select(*(columns[name] for name in _DIRECTORY_COLUMNS))
        .where(Proxy.public.is_(public), Proxy.status == "active")
        .order_by(Proxy.host, Proxy.port)
    )
    return result.all()


async def nonce_seen(session: AsyncSession, *, nonce: str) -> bool:
    return await session.get(StatementNonce, nonce) is not None


async def add_nonce(session: AsyncSession, *, nonce: str, now: int) -> None:
    session.add(StatementNonce(nonce=nonce, seen_at=now))
    await session.flush()


async def forget_nonces(session: AsyncSession, *, before: int) -> None:
    await session.execute(delete(StatementNonce).where(StatementNonce.seen_at < before))


async def last_publication(session: AsyncSession) -> Publication | None:
    result = await session.execute(select(Publication).order_by(Publication.serial.desc()).limit(1))
    return result.scalar_one_or_none()


async def add_publication(session: AsyncSession, *, serial: int, now: int, body: str) -> None:
    session.add(Publication(serial=serial, published_at=now, body=body))
    await session.flush()


# --- probes ---------------------------------------------------------------------------


async def add_probe(
    session: AsyncSession, *, name: str, public_key: str, country: str, control: bool, now: int
) -> ProbeAccount:
    probe = ProbeAccount(
        name=name, public_key=public_key, country=country, control=control, created_at=now
    )
    session.add(probe)
    await session.flush()
    return probe


async def probe_by_name(session: AsyncSession, *, name: str) -> ProbeAccount | None:
    result = await session.execute(select(ProbeAccount).where(ProbeAccount.name == name))
    return result.scalar_one_or_none()


async def probe_by_id(session: AsyncSession, *, probe_id: int) -> ProbeAccount | None:
    return await session.get(ProbeAccount, probe_id)


async def all_probes(session: AsyncSession) -> Sequence[ProbeAccount]:
    result = await session.execute(select(ProbeAccount).order_by(ProbeAccount.id))
    return result.scalars().all()


async def all_active_proxies(session: AsyncSession) -> Sequence[Proxy]:
    result = await session.execute(select(Proxy).where(Proxy.status == "active").order_by(Proxy.id))
    return result.scalars().all()


async def active_proxy_ids(session: AsyncSession) -> list[int]:
    """The ids of every active proxy, ascending, as one value rather than a row each
    (an array on PostgreSQL, a list in text on SQLite): 100k ids in tens of ms."""
    active = Proxy.status == "active"
    if session.get_bind().dialect.name == "postgresql":
        query = select(func.array_agg(aggregate_order_by(Proxy.id, Proxy.id))).where(active)
        return list((await session.execute(query)).scalar_one() or [])
    text = (await session.execute(select(func.group_concat(Proxy.id)).where(active))).scalar()
    return sorted(int(i) for i in text.split(",")) if text else []


#: Ids per IN list on SQLite (PostgreSQL gets one array: its driver takes at most
#: 32,767 query arguments, and an array is one).
IN_CHUNK = 10_000


def _id_filters(session: AsyncSession, column: Any, ids: Sequence[int]) -> list[Any]:
    """``column`` among ``ids``, as few conditions as the database allows."""
    if session.get_bind().dialect.name == "postgresql":
        return [column == any_(cast(list(ids), ARRAY(Integer)))]
    return [column.in_(ids[i : i + IN_CHUNK]) for i in range(0, len(ids), IN_CHUNK)]


async def active_proxies_in(session: AsyncSession, *, ids: Sequence[int]) -> list[Proxy]:
    """The active proxies among ``ids``, ascending by id."""
    found: list[Proxy] = []
    for among in _id_filters(session, Proxy.id, sorted(ids)) if ids else []:
        query = select(Proxy).where(Proxy.status == "active", among).order_by(Proxy.id)
        found.extend((await session.execute(query)).scalars().all())
    return found


async def probe_liveness(session: AsyncSession) -> list[tuple[int, str, bool, int | None]]:
    """(id, country, control, last batch time) of every probe account: columns, not
    objects, since batches ask for them often."""
    result = await session.execute(
        select(
            ProbeAccount.id, ProbeAccount.country, ProbeAccount.control, ProbeAccount.last_batch_at
        )
    )
    return [(i, country, control, at) for i, country, control, at in result.all()]


async def note_probe_batch(session: AsyncSession, *, probe_id: int, now: int) -> None:
    """Record that a batch of this probe's arrived (it is live: see registry.shard)."""
    await session.execute(
        update(ProbeAccount).where(ProbeAccount.id == probe_id).values(last_batch_at=now)
    )


async def note_probe_assignment(session: AsyncSession, *, probe_id: int, now: int) -> None:
    await session.execute(
        update(ProbeAccount).where(ProbeAccount.id == probe_id).values(last_assignment_at=now)
    )


async def existing_proxy_ids(session: AsyncSession, *, ids: Sequence[int]) -> set[int]:
    result = await session.execute(select(Proxy.id).where(Proxy.id.in_(_each(session, ids))))
    return set(result.scalars().all())


async def rollups_for(
    session: AsyncSession, *, proxy_ids: Sequence[int], days: Sequence[str], lock: bool = False
) -> Sequence[ProbeRollup]:
    query = select(ProbeRollup).where(
        ProbeRollup.proxy_id.in_(_each(session, proxy_ids)), ProbeRollup.day.in_(days)
    )
    if lock:
        query = query.with_for_update()
    result = await session.execute(query)
    return result.scalars().all()


async def verdicts_for(
    session: AsyncSession, *, proxy_ids: Sequence[int]
) -> Sequence[ProxyVerdict]:
    result = await session.execute(
        select(ProxyVerdict).where(ProxyVerdict.proxy_id.in_(_each(session, proxy_ids)))
    )
    return result.scalars().all()


async def latest_inside_result(session: AsyncSession, *, proxy_id: int) -> ProbeResult | None:
    """The newest result for ``proxy_id`` from a vantage inside a censored country."""
    result = await session.execute(
        select(ProbeResult)
        .where(ProbeResult.proxy_id == proxy_id, ProbeResult.control.is_(False))
        .order_by(ProbeResult.measured_at.desc(), ProbeResult.id.desc())
        .limit(1)
    )
    return result.scalars().first()


async def verdict_history(session: AsyncSession, *, proxy_id: int) -> Sequence[ProxyVerdictChange]:
    result = await session.execute(
        select(ProxyVerdictChange)
        .where(ProxyVerdictChange.proxy_id == proxy_id)
        .order_by(ProxyVerdictChange.id)
    )
    return result.scalars().all()


async def count_rows(session: AsyncSession, *, model: type[Any]) -> int:
    result = await session.execute(select(func.count()).select_from(model))
    return int(result.scalar_one())


# --- censor registry ------------------------------------------------------------------


CHUNK = 5000


async def current_blocklist_ranges(session: AsyncSession) -> dict[tuple[str, str], int]:
    """The current version's ranges, each with its row id."""
    result = await session.execute(
        select(BlocklistRange.start_hex, BlocklistRange.end_hex, BlocklistRange.id).where(
            BlocklistRange.until_import.is_(None)
        )
    )
    return {(a, b): row_id for a, b, row_id in result.all()}


async def replace_blocklist(
    session: AsyncSession, *, record: BlocklistImport, ranges: Sequence[tuple[str, str]]
) -> int:
    """Store a new import as the next version and make its ranges the current ones.

    Only the difference is written: ranges the current version lacks are added
    with ``first_import`` = the new id, current ranges the import lacks get
    ``until_import`` = the new id; ``record.added`` and ``record.removed`` count
    them.  Flags of the previous version are dropped (the caller writes new
    ones).  Returns the import id.
    """
    current = await current_blocklist_ranges(session)
    wanted = set(ranges)
    added = sorted(wanted.difference(current))
    gone = sorted(row_id for span, row_id in current.items() if span not in wanted)
    record.added, record.removed = len(added), len(gone)
    session.add(record)
    await session.flush()
    for i in range(0, len(gone), CHUNK):
        await session.execute(
            update(BlocklistRange)
            .where(BlocklistRange.id.in_(gone[i : i + CHUNK]))
            .values(until_import=record.id)
        )
    for i in range(0, len(added), CHUNK):
        await session.execute(
            insert(BlocklistRange),
            [
                {"start_hex": a, "end_hex": b, "first_import": record.id, "until_import": None}
                for a, b in added[i : i + CHUNK]
            ],
        )
    await session.execute(delete(ProxyBlocklistFlag))
    return record.id


async def prune_blocklist(session: AsyncSession, *, keep: int) -> int:
    """Keep the newest ``keep`` versions (and what their diffs need); returns how many
    imports were dropped.  A range still part of a kept version stays, whatever
    import added it; a range dropped before the oldest kept version goes."""
    result = await session.execute(
        select(BlocklistImport.id).order_by(BlocklistImport.id.desc()).offset(keep - 1).limit(1)
    )
    oldest = result.scalar_one_or_none()
    if oldest is None:
        return 0
    await session.execute(delete(BlocklistRange).where(BlocklistRange.until_import < oldest))
    dropped = await session.execute(delete(BlocklistImport).where(BlocklistImport.id < oldest))
    return int(getattr(dropped, "rowcount", 0) or 0)


async def last_blocklist(session: AsyncSession) -> BlocklistImport | None:
    result = await session.execute(
        select(BlocklistImport).order_by(BlocklistImport.id.desc()).limit(1)
    )
    return result.scalar_one_or_none()


async def blocklist_versions(
    session: AsyncSession, *, before: int | None = None, limit: int = 100
) -> Sequence[BlocklistImport]:
    """Imports, newest first, with ids below ``before`` when given (keyset paging)."""
    query = select(BlocklistImport).order_by(BlocklistImport.id.desc()).limit(limit)
    if before is not None:
        query = query.where(BlocklistImport.id < before)
    result = await session.execute(query)
    return result.scalars().all()


async def blocklist_version(session: AsyncSession, *, import_id: int) -> BlocklistImport | None:
    return await session.get(BlocklistImport, import_id)


async def blocklist_changes(
    session: AsyncSession, *, import_id: int, added: bool, after: str = "", limit: int = 1000
) -> list[tuple[str, str]]:
    """The ranges an import added (or removed), by start, after ``after`` (keyset paging)."""
    column = BlocklistRange.first_import if added else BlocklistRange.until_import
    result = await session.execute(
        select(BlocklistRange.start_hex, BlocklistRange.end_hex)
        .where(column == import_id, BlocklistRange.start_hex > after)
        .order_by(BlocklistRange.start_hex)
        .limit(limit)
    )
    return [(a, b) for a, b in result.all()]


async def range_containing(session: AsyncSession, *, address_hex: str) -> BlocklistRange | None:
    """The current range holding the address, if any (a version's ranges are disjoint)."""
    return await _span_containing(session, address_hex=address_hex, until=None)


async def _span_containing(
    session: AsyncSession, *, address_hex: str, until: int | None
) -> BlocklistRange | None:
    """The range holding the address among those ``until_import = until`` (one version's
    worth of rows: the current ones for ``None``, else those one import dropped)."""
    column = BlocklistRange.until_import
    order: list[Any] = [BlocklistRange.start_hex.desc()]
    if until is None and _dialect(session) == "postgresql":
        # PostgreSQL does not take ``IS NULL`` as fixing the index's first column, so by
        # ``start_hex`` alone it sorted every current range below the address (100,000
        # at a time, ~50 ms a lookup); in the index's own order it reads one entry.
        order.insert(0, column.desc().nulls_first())
    result = await session.execute(
        select(BlocklistRange)
        .where(
            column.is_(None) if until is None else column == until,
            BlocklistRange.start_hex <= address_hex,
        )
        .order_by(*order)
        .limit(1)
    )
    found = result.scalar_one_or_none()
    return found if found is not None and found.end_hex >= address_hex else None


async def listed_since(session: AsyncSession, *, address_hex: str) -> int | None:
    """The import that blocked the address: the first of the unbroken run of versions
    up to the current one whose ranges hold it (``None`` if the current one does not).

    Ranges change shape between imports (merged with a neighbour, widened), so
    the run is followed back range by range: the range holding the address in a
    version, then the range holding it that the import adding that one
    replaced, until an import that added it to no range.  If the run reaches
    back past the oldest kept version, the id of the (pruned) import that added
    the oldest range is returned.
    """
    span = await _span_containing(session, address_hex=address_hex, until=None)
    if span is None:
        return None
    since = span.first_import
    for _ in range(100_000):  # bounded by the number of versions kept
        earlier = await _span_containing(session, address_hex=address_hex, until=since)
        if earlier is None or earlier.first_import >= since:
            break
        since = earlier.first_import
    return since


async def listed_since_many(session: AsyncSession, *, current: Mapping[str, int]) -> dict[str, int]:
    """:func:`listed_since` of many addresses at once: ``current`` maps each listed
    address (hex) to the ``first_import`` of the current range holding it; returns the
    import that blocked each.

    Each address's run is followed back as :func:`listed_since` does, but a version at
    a time, newest first: every address whose run has reached version ``v`` is looked
    up among the ranges ``v`` dropped in one walk of those ranges in order beside the
    addresses in order (a version's ranges are disjoint), and moves on to the import
    that added the range holding it, always an older one.  So each kept version is
    read at most once, in one query, however many proxies are listed."""
    since = dict(current)
    waiting: dict[int, list[str]] = {}
    for address, first in since.items():
        waiting.setdefault(first, []).append(address)
    while waiting:
        version = max(waiting)
        addresses = sorted(waiting.pop(version))
        for address, first in await _dropped_holding(session, version, addresses):
            if first < version:  # the run goes on to the import that added that range
                since[address] = first
                waiting.setdefault(first, []).append(address)
    return since


#: Addresses looked up one indexed query each among a version's dropped ranges; more are
#: found by one walk of the ranges between the lowest and the highest of them.
_LOOKUPS_AT_MOST = 8


async def _dropped_holding(
    session: AsyncSession, version: int, addresses: Sequence[str]
) -> list[tuple[str, int]]:
    """``(address, first_import)`` of the range holding each of the sorted ``addresses``
    among those ``version`` dropped (``until_import = version``), for those one holds."""
    if len(addresses) <= _LOOKUPS_AT_MOST:
        found = []
        for address in addresses:
            span = await _span_containing(session, address_hex=address, until=version)
            if span is not None:
                found.append((address, span.first_import))
        return found
    r = BlocklistRange
    result = await session.stream(
        select(r.start_hex, r.end_hex, r.first_import)
        .where(r.until_import == version, r.start_hex <= addresses[-1], r.end_hex >= addresses[0])
        .order_by(r.start_hex)
        .execution_options(yield_per=20_000)
    )
    hits: list[tuple[str, int]] = []
    i = 0
    async for start, end, first in result:
        while i < len(addresses) and addresses[i] < start:
            i += 1
        while i < len(addresses) and addresses[i] <= end:
            hits.append((addresses[i], first))
            i += 1
        if i == len(addresses):
            break
    await result.close()
    return hits


async def forget_blocklist_flag(session: AsyncSession, *, proxy_id: int) -> None:
    """Drop a proxy's flag, so the next publication looks its address up again."""
    await session.execute(delete(ProxyBlocklistFlag).where(ProxyBlocklistFlag.proxy_id == proxy_id))


async def flags_by_proxy(session: AsyncSession) -> dict[int, tuple[int, bool, int | None]]:
    """Every proxy's flag as ``(import_id, listed, listed_since)``."""
    result = await session.execute(
        select(
            ProxyBlocklistFlag.proxy_id,
            ProxyBlocklistFlag.import_id,
            ProxyBlocklistFlag.listed,
            ProxyBlocklistFlag.listed_since,
        )
    )
    return {p: (i, bool(listed), since) for p, i, listed, since in result.all()}


async def ranges_in_order(session: AsyncSession) -> AsyncIterator[tuple[str, str, int]]:
    """Every current range ``(start_hex, end_hex, first_import)`` by start, read a batch
    at a time."""
    order: list[Any] = [BlocklistRange.start_hex]
    if _dialect(session) == "postgresql":
        # In the index's own order (``until_import`` first, nulls last): PostgreSQL does
        # not take ``IS NULL`` as fixing that column, so by ``start_hex`` alone it read
        # every current range and sorted them before the first row came back.
        order.insert(0, BlocklistRange.until_import.asc().nulls_last())
    result = await session.stream(
        select(BlocklistRange.start_hex, BlocklistRange.end_hex, BlocklistRange.first_import)
        .where(BlocklistRange.until_import.is_(None))  # the current version's ranges
        .order_by(*order)
        .execution_options(yield_per=20_000)
    )
    async for partition in result.partitions():
        for start, end, first in partition:
            yield start, end, first


async def blocklist_flags(
    session: AsyncSession, *, proxy_ids: Sequence[int]
) -> Sequence[ProxyBlocklistFlag]:
    result = await session.execute(
        select(ProxyBlocklistFlag).where(ProxyBlocklistFlag.proxy_id.in_(_each(session, proxy_ids)))
    )
    return result.scalars().all()


# --- WireGuard ------------------------------------------------------------------------


async def proxy_rows_by_ids(session: AsyncSession, *, ids: Sequence[int]) -> Sequence[Any]:
    """A batch's proxies (at most ``MAX_RESULTS`` ids) as plain rows of every column: read
    like :class:`Proxy` objects (``row.protocols``, ``row.addresses``...) without the ORM
    building an object, and decoding its JSON columns, per proxy per batch."""
    connection = await session.connection()
    return (await connection.execute(_PROXIES_OF, {"ids": list(ids)})).all()


async def set_probe_wireguard_key(session: AsyncSession, *, probe_id: int, public_key: str) -> None:
    probe = await session.get(ProbeAccount, probe_id)
    if probe is not None:
        probe.wg_public_key = public_key


async def probe_by_wireguard_key(session: AsyncSession, *, public_key: str) -> ProbeAccount | None:
    result = await session.execute(
        select(ProbeAccount).where(ProbeAccount.wg_public_key == public_key)
    )
    return result.scalar_one_or_none()


async def probe_wireguard_keys(session: AsyncSession) -> list[str]:
    """Every WireGuard key probes have announced, oldest account first."""
    result = await session.execute(
        select(ProbeAccount.wg_public_key)
        .where(ProbeAccount.wg_public_key.is_not(None))
        .order_by(ProbeAccount.id)
    )
    return [key for key in result.scalars().all() if key is not None]


# --- grant rounds -----------------------------------------------------------------------


def _each(session: AsyncSession, values: Sequence[int] | Sequence[str]) -> Any:
    """The values as a one-column subquery bound as *one* JSON parameter.

    ``column.in_(values)`` binds a parameter per value, and databases cap
    those (SQLite at 32766, PostgreSQL's protocol at 32767): a registry with
    that many carried amounts could never approve a round.  One JSON array
    has no such limit and the query stays the same text whatever its length.
    """
    return _json_values(session.get_bind().dialect.name, values)


def _each_on(connection: AsyncConnection, values: Sequence[int] | Sequence[str]) -> Any:
    """:func:`_each` on a connection."""
    return _json_values(connection.dialect.name, values)


def _json_values(dialect: str, values: Sequence[int] | Sequence[str]) -> Any:
    encoded = json.dumps(list(values))
    if dialect == "postgresql":
        elements = func.jsonb_array_elements_text(cast(literal(encoded), JSONB))
        column = elements.table_valued("value").c.value
        kind: Any = String if values and isinstance(values[0], str) else BigInteger
        return select(cast(column, kind))
    return select(func.json_each(literal(encoded)).table_valued("value").c.value)


async def round_by_id(session: AsyncSession, *, round_id: str) -> GrantRoundRow | None:
    result = await session.execute(select(GrantRoundRow).where(GrantRoundRow.round_id == round_id))
    return result.scalar_one_or_none()


async def all_rounds(session: AsyncSession) -> Sequence[GrantRoundRow]:
    result = await session.execute(
        select(GrantRoundRow).order_by(GrantRoundRow.period_start, GrantRoundRow.round_id)
    )
    return result.scalars().all()


async def overlapping_round(
    session: AsyncSession, *, country: str, start: str, end: str, other_than: int | None = None
) -> GrantRoundRow | None:
    query = select(GrantRoundRow).where(
        GrantRoundRow.target_country == country,
        GrantRoundRow.period_start <= end,
        GrantRoundRow.period_end >= start,
    )
    if other_than is not None:
        query = query.where(GrantRoundRow.id != other_than)
    result = await session.execute(query.limit(1))
    return result.scalar_one_or_none()


async def add_round(session: AsyncSession, *, fields: dict[str, Any]) -> GrantRoundRow:
    row = GrantRoundRow(**fields)
    session.add(row)
    await session.flush()
    return row


async def move_round(
    session: AsyncSession, *, round_pk: int, from_status: str, values: Mapping[str, Any]
) -> bool:
    """Change a round only if it is still in ``from_status``; whether it was."""
    result = await session.execute(
        update(GrantRoundRow)
        .where(GrantRoundRow.id == round_pk, GrantRoundRow.status == from_status)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount) == 1  # type: ignore[attr-defined]


async def delete_round(session: AsyncSession, *, round_pk: int, status: str) -> bool:
    """Delete a round only if it is still in ``status``; whether it was."""
    result = await session.execute(
        delete(GrantRoundRow).where(GrantRoundRow.id == round_pk, GrantRoundRow.status == status)
    )
    return int(result.rowcount) == 1  # type: ignore[attr-defined]


async def all_operators(session: AsyncSession) -> Sequence[Operator]:
    return (await session.execute(select(Operator))).scalars().all()


async def all_proxies(session: AsyncSession) -> Sequence[Proxy]:
    """Every proxy, active or not (a round pays for the days it served)."""
    return (await session.execute(select(Proxy))).scalars().all()


async def round_proxies(session: AsyncSession) -> Sequence[Any]:
    """Every proxy, active or not, as plain rows of what a grant round reads of it:
    ``id, operator_id, network, cascade_role, exit_id`` (no ORM object per proxy)."""
    query = select(Proxy.id, Proxy.operator_id, Proxy.network, Proxy.cascade_role, Proxy.exit_id)
    return (await session.execute(query)).all()


async def rollup_rows(
    session: AsyncSession, *, country: str, since: str | None, before: str
) -> AsyncIterator[Sequence[Any]]:
    """``proxy_id, day, control, attempts, successes, throughput_hist`` (the histogram as
    its JSON text) of the control rows and target-country rows of the days ``since``
    (included, or from the first day) up to ``before`` (excluded); days are ISO dates,
    which sort as strings.  Ordered by proxy and day, so a caller folding them meets each
    proxy-day's rows together.  Plain rows (no ORM objects, no JSON decoded per row: 30
    days of 100,000 proxies are 6,000,000 rows), read in large batches that the caller
    folds each before the next is read."""
    query = (
        select(
            ProbeRollup.proxy_id,
            ProbeRollup.day,
            ProbeRollup.control,
            ProbeRollup.attempts,
            ProbeRollup.successes,
            cast(ProbeRollup.throughput_hist, Text),
        )
        .where(
            or_(ProbeRollup.control.is_(True), ProbeRollup.country == country),
            ProbeRollup.day < before,
        )
        .order_by(ProbeRollup.proxy_id, ProbeRollup.day)
    )
    if since is not None:
        query = query.where(ProbeRollup.day >= since)
    conn = await session.connection()
    result = await conn.stream(query.execution_options(yield_per=100_000))
    async for partition in result.partitions():
        yield partition


#: How long one ``COPY`` of a round's rollups may take (6,000,000 rows at 100,000 proxies
#: take seconds; a stuck server must not hold a round's worker for ever).
COPY_TIMEOUT_S = 600.0
#: ``rollup_lines``' histogram column when a row has none that counts: adds nothing.
_NO_HISTOGRAM = ",".join(["0"] * (len(THROUGHPUT_BOUNDS_KBPS) + 1))


#: ``rollup_lines`` hands its sink blocks of about this many bytes: COPY's messages are
#: a few kB each, and folding each alone costs per call; blocks of 1 MB no longer fit
#: the CPU's caches. 128 kB took 6.9-7.0 s of CPU to read and fold 100k proxies x 30
#: days, against 7.8-8.2 s message by message and 8.2-9.0 s by 1 MB (2026-12-08).
COPY_SINK_BYTES = 1 << 17


async def rollup_lines(
    session: AsyncSession,
    *,
    country: str,
    since: str | None,
    before: str,
    sink: Callable[[bytes], None],
) -> bool:
    """The rows of :func:`rollup_rows` as text lines of integers, on PostgreSQL: ``proxy,
    day as YYYYMMDD, control as 0/1, attempts, successes`` and the throughput histogram's
    counts (zeros when it is missing or not a list of the right length), separated by
    tabs and commas, in the same order, through one ``COPY ... TO STDOUT``: no row
    object at all on the client, which parses them with numpy.  ``sink`` gets blocks of
    whole lines as they arrive, about ``COPY_SINK_BYTES`` at a time.  False (and nothing
    sent) on another database."""
    conn = await session.connection()
    if conn.dialect.name != "postgresql":
        return False
    where = "(control OR country = $1) AND day < $2" + (" AND day >= $3" if since else "")
    query = f"""SELECT proxy_id, replace(day, '-', ''), control::int, attempts, successes,
        CASE WHEN json_typeof(throughput_hist) <> 'array' THEN '{_NO_HISTOGRAM}'
             WHEN json_array_length(throughput_hist) = {len(THROUGHPUT_BOUNDS_KBPS) + 1}
             THEN btrim(throughput_hist::text, '[] ') ELSE '{_NO_HISTOGRAM}' END
        FROM probe_rollups WHERE {where} ORDER BY proxy_id, day"""
    args = (country, before, since) if since else (country, before)
    raw = (await conn.get_raw_connection()).driver_connection
    assert raw is not None
    pending = bytearray()
    failed: list[Exception] = []

    async def take(block: bytes) -> None:
        # An exception raised into COPY would leave the connection mid-copy (the next
        # statement on it waits forever): the copy is read to its end, then it is raised.
        if failed:
            return
        pending.extend(block)
        if len(pending) < COPY_SINK_BYTES:
            return  # a sink call costs per block, whatever its size: fewer, larger ones
        end = pending.rfind(b"\n")
        if end >= 0:
            try:
                sink(bytes(pending[: end + 1]))
            except Exception as exc:
                failed.append(exc)
            del pending[: end + 1]

    await raw.copy_from_query(query, *args, output=take, timeout=COPY_TIMEOUT_S)
    if failed:
        raise failed[0]
    if pending:
        sink(bytes(pending))
    return True


async def open_carries(session: AsyncSession) -> Sequence[GrantCarry]:
    result = await session.execute(
        select(GrantCarry).where(GrantCarry.consumed_by.is_(None)).order_by(GrantCarry.id)
    )
    return result.scalars().all()


async def claim_carries(session: AsyncSession, *, ids: Sequence[int], round_pk: int) -> int:
    """Mark the open carried amounts ``ids`` as taken in by a round; how many were open."""
    if not ids:
        return 0
    result = await session.execute(
        update(GrantCarry)
        .where(GrantCarry.id.in_(_each(session, ids)), GrantCarry.consumed_by.is_(None))
        .values(consumed_by=round_pk)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def operator_ids(session: AsyncSession, *, names: Sequence[str]) -> dict[str, int]:
    """The ids of the operators of these names that exist."""
    if not names:
        return {}
    result = await session.execute(
        select(Operator.name, Operator.id).where(Operator.name.in_(_each(session, names)))
    )
    return {name: id_ for name, id_ in result.all()}


async def add_carries(
    session: AsyncSession, *, round_pk: int, amounts: Mapping[int, int], now: int
) -> None:
    """Record what a round carries out, by operator id."""
    session.add_all(
        GrantCarry(
            source_round=round_pk,
            operator_id=operator_id,
            amount_sat=amount,
            consumed_by=None,
            created_at=now,
        )
        for operator_id, amount in amounts.items()
    )
    await session.flush()


class ProbeViews(NamedTuple):
    """Probes' latest views of one proxy, as the directory's ``reach`` names them: the
    ``i``-th view is ``names[i], times[i]`` (its ``last_at``), ``oks[i]``,
    ``mechanisms[i]``, ``transports[i]`` (decoded JSON or ``None``).  Columns, not a
    tuple per view: a publication at 100,000 proxies reads 1,120,000 views."""

    names: Sequence[str]
    times: Sequence[int]
    oks: Sequence[bool]
    mechanisms: Sequence[str | None]
    transports: Sequence[Any]


async def latest_views(
    session: AsyncSession, *, proxy_ids: Sequence[int], since: int, most: int
) -> dict[int, ProbeViews]:
    """Per proxy, its probes' views since ``since`` that are among its ``most`` most
    recent: every view whose ``last_at`` fewer than ``most`` of its others pass, so
    with ties on the cut a few more (whoever takes the ``most`` newest by ``last_at``
    and then name finds them all here).

    The database ranks them (a window over each proxy's views, ordered by time alone:
    integers, no text to collate), so a publication reads ``most`` views a proxy, not
    every probe's: at 100,000 proxies and 100 probes 1,120,000 of the public proxies'
    7,000,000, as one row of arrays per proxy on PostgreSQL.  ``transports`` is decoded
    as its JSON column decodes it (each distinct text once: the decoded values are
    shared, and only read)."""
    if not proxy_ids:
        return {}
    params = {"ids": json.dumps(list(proxy_ids)), "since": since, "most": most}
    decoded: dict[str, Any] = {}

    def decode(seen: str | None) -> Any:
        if seen is None:
            return None
        value = decoded.get(seen)
        if value is None:
            value = decoded[seen] = json.loads(seen)
        return value

    if _dialect(session) != "postgresql":  # one snapshot a transaction: names and views
        names = dict((await session.execute(select(ProbeAccount.id, ProbeAccount.name))).all())
        grouped: dict[int, list[list[Any]]] = {}
        for proxy_id, probe_id, at, ok, mechanism, seen in (
            await session.execute(_LATEST_VIEWS_SQLITE, params)
        ).all():
            columns = grouped.setdefault(proxy_id, [[], [], [], [], []])
            for column, value in zip(
                columns, (names[probe_id], at, bool(ok), mechanism, decode(seen)), strict=True
            ):
                column.append(value)
        return {proxy_id: ProbeViews(*columns) for proxy_id, columns in grouped.items()}
    # The ids' subquery is estimated at 100 rows whatever its length: the planner would
    # look each proxy's views up by the key, a random page per view (60 s at 100,000
    # proxies where one pass over the table takes 2). One pass, hashed against the
    # ids, is what suits a directory: asked for by turning nested loops off.
    # (Only for this statement: a failed one ends the transaction, and the setting with it.)
    await session.execute(text("SET LOCAL enable_nestloop = off"))
    result = (await session.execute(_LATEST_VIEWS_PG, params)).all()
    await session.execute(text("RESET enable_nestloop"))
    # the probes' names read after their views: each probe a view names is there, unless
    # deleted since (its views with it): then they are left out
    names = dict((await session.execute(select(ProbeAccount.id, ProbeAccount.name))).all())
    views: dict[int, ProbeViews] = {}
    named = names.__getitem__
    for proxy_id, probes, times, oks, mechanisms, transports in result:
        if any(t is not None for t in transports):  # most proxies' views have none
            transports = [decode(t) for t in transports]
        try:
            views[proxy_id] = ProbeViews(
                list(map(named, probes)), times, oks, mechanisms, transports
            )
        except KeyError:
            kept = [i for i, probe in enumerate(probes) if probe in names]
            views[proxy_id] = ProbeViews(
                [names[probes[i]] for i in kept],
                [times[i] for i in kept],
                [oks[i] for i in kept],
                [mechanisms[i] for i in kept],
                [transports[i] for i in kept],
            )
    return views


# ``transports`` as the JSON text stored (decoded here as its column's type decodes it).
# The views in one order (ties by probe), so equal rows read twice give equal arrays (a
# kept entry is compared by them): sorted after the window, 16 a proxy, an incremental
# sort on the window's order.
_LATEST_VIEWS_PG = text(
    """SELECT proxy_id, array_agg(probe_id), array_agg(last_at), array_agg(last_ok),
         array_agg(mechanism), array_agg(transports)
    FROM (SELECT proxy_id, probe_id, last_at, last_ok, mechanism,
            transports::text AS transports,
            rank() OVER (PARTITION BY proxy_id ORDER BY last_at DESC) AS rank
          FROM probe_evidence
          WHERE proxy_id IN (SELECT value::int
                             FROM jsonb_array_elements_text(CAST(:ids AS jsonb)))
            AND last_at >= :since
          ORDER BY proxy_id, last_at DESC, probe_id) AS ranked
    WHERE rank <= :most
    GROUP BY proxy_id"""
)
_LATEST_VIEWS_SQLITE = text(
    """SELECT proxy_id, probe_id, last_at, last_ok, mechanism, transports
    FROM (SELECT proxy_id, probe_id, last_at, last_ok, mechanism, transports,
            rank() OVER (PARTITION BY proxy_id ORDER BY last_at DESC) AS rank
          FROM probe_evidence
          WHERE proxy_id IN (SELECT value FROM json_each(:ids)) AND last_at >= :since)
    WHERE rank <= :most
    ORDER BY proxy_id, last_at DESC, probe_id"""
)


async def verdict_rows(session: AsyncSession, *, proxy_ids: Sequence[int]) -> Sequence[Any]:
    """``proxy_id, verdict, blocked_in, since`` of these proxies' verdicts, as plain rows."""
    result = await session.execute(
        select(
            ProxyVerdict.proxy_id, ProxyVerdict.verdict, ProxyVerdict.blocked_in, ProxyVerdict.since
        ).where(ProxyVerdict.proxy_id.in_(_each(session, proxy_ids)))
    )
    return result.all()


async def day_rollup_rows(
    session: AsyncSession, *, proxy_ids: Sequence[int], days: Sequence[str]
) -> Sequence[Any]:
    """``proxy_id, country, attempts, successes, latency_hist, throughput_hist`` of these
    proxies' rollups of ``days``, as plain rows."""
    result = await session.execute(
        select(
            ProbeRollup.proxy_id,
            ProbeRollup.country,
            ProbeRollup.attempts,
            ProbeRollup.successes,
            ProbeRollup.latency_hist,
            ProbeRollup.throughput_hist,
        ).where(ProbeRollup.proxy_id.in_(_each(session, proxy_ids)), ProbeRollup.day.in_(days))
    )
    return result.all()


async def day_rollup_totals(
    session: AsyncSession,
    *,
    proxy_ids: Sequence[int],
    days: Sequence[str],
    buckets: tuple[int, int],
) -> list[Any]:
    """``proxy_id, country, attempts, successes, latency_hist, throughput_hist`` summed
    over these proxies' rollups of ``days``: one row per proxy and vantage country.

    ``buckets`` are the latency and throughput histograms' lengths; a stored
    histogram of another length is refused (``ValueError``), as merging it would be.
    On PostgreSQL the sums are the database's (one ``sum`` per bucket, each histogram
    parsed once as an integer array), so Python decodes one pair of histograms per
    proxy and country instead of one per rollup.  Elsewhere the rows are read and
    added here."""
    if _dialect(session) != "postgresql":
        totals: dict[tuple[int, str], list[Any]] = {}
        for row in await day_rollup_rows(session, proxy_ids=proxy_ids, days=days):
            lat, thr = list(row.latency_hist), list(row.throughput_hist)
            if (len(lat), len(thr)) != buckets:
                raise ValueError("histograms of different shapes")
            known = totals.get((row.proxy_id, row.country))
            if known is None:
                totals[(row.proxy_id, row.country)] = [
                    row.proxy_id, row.country, row.attempts, row.successes, lat, thr
                ]  # fmt: skip
                continue
            known[2] += row.attempts
            known[3] += row.successes
            known[4] = [a + b for a, b in zip(known[4], lat, strict=True)]
            known[5] = [a + b for a, b in zip(known[5], thr, strict=True)]
        return [_Totals(*values) for values in totals.values()]
    result = await session.execute(
        _rollup_totals_sql(*buckets), {"ids": json.dumps(list(proxy_ids)), "days": list(days)}
    )
    rows = result.all()
    if not all(row.shaped for row in rows):
        raise ValueError("histograms of different shapes")
    return list(rows)


@dataclass(frozen=True, slots=True)
class _Totals:
    proxy_id: int
    country: str
    attempts: int
    successes: int
    latency_hist: list[int]
    throughput_hist: list[int]


@functools.cache
def _rollup_totals_sql(latency: int, throughput: int) -> Any:
    def sums(column: str, count: int) -> str:
        return "ARRAY[" + ", ".join(f"sum({column}[{i}])" for i in range(1, count + 1)) + "]"

    def as_array(column: str) -> str:
        # A JSON array of integers is an integer array's text with [] for {} (json keeps
        # the text as written): PostgreSQL parses that as fast as it reads an array, a
        # third faster here than going through jsonb.  Anything else fails the cast.
        return f"translate({column}::text, '[]', '{{}}')::int[]"

    # OFFSET 0 keeps the subquery's casts from being inlined into every sum (each
    # bucket would parse the whole histogram again: 40 s instead of 2 at 100k).
    return text(
        f"""SELECT proxy_id, country, sum(attempts) AS attempts, sum(successes) AS successes,
          bool_and(coalesce(array_length(lat, 1) = {latency}
                            AND array_length(thr, 1) = {throughput}, false)) AS shaped,
          {sums("lat", latency)} AS latency_hist, {sums("thr", throughput)} AS throughput_hist
        FROM (SELECT proxy_id, country, attempts, successes,
                {as_array("latency_hist")} AS lat, {as_array("throughput_hist")} AS thr
              FROM probe_rollups
              WHERE proxy_id IN (SELECT value::bigint
                                 FROM jsonb_array_elements_text(CAST(:ids AS jsonb)))
                AND day = ANY(CAST(:days AS text[]))
              OFFSET 0) AS r
        GROUP BY proxy_id, country"""
    )


async def flag_rows(
    session: AsyncSession, *, proxy_ids: Sequence[int]
) -> dict[int, tuple[int, bool, int | None]]:
    """Per proxy: the blocklist import its flag was checked against, whether listed, and
    the import that blocked it."""
    f = ProxyBlocklistFlag
    result = await session.execute(
        select(f.proxy_id, f.import_id, f.listed, f.listed_since).where(
            f.proxy_id.in_(_each(session, proxy_ids))
        )
    )
    return {p: (i, bool(listed), since) for p, i, listed, since in result.all()}


_SAVE_FLAGS = text(
    """INSERT INTO proxy_blocklist_flags (proxy_id, import_id, listed, checked_at, listed_since)
    SELECT (e->>0)::bigint, CAST(:import_id AS integer), (e->>1)::boolean, CAST(:now AS bigint),
      (e->>2)::int
    FROM jsonb_array_elements(CAST(:rows AS jsonb)) AS e
    ON CONFLICT (proxy_id) DO UPDATE SET import_id = excluded.import_id,
      listed = excluded.listed, checked_at = excluded.checked_at,
      listed_since = excluded.listed_since"""
)


async def save_flags(
    session: AsyncSession,
    *,
    import_id: int,
    now: int,
    new: Mapping[int, tuple[bool, int | None]],
    changed: Mapping[int, tuple[bool, int | None]],
) -> None:
    """Record proxies' blocklist flags (listed, and the import that blocked it) against
    ``import_id``: ``new`` ones have no flag row yet, ``changed`` ones have one checked
    against an older import."""

    def row(p: int, hit: bool, since: int | None) -> dict[str, Any]:
        return {
            "proxy_id": p, "import_id": import_id, "listed": hit, "checked_at": now,
            "listed_since": since,
        }  # fmt: skip

    if _dialect(session) == "postgresql":
        # One statement per 20,000 flags, bound as one JSON value: 70,000 flags written
        # one row at a time (an executemany) were tens of seconds of a publication.
        both = [[p, hit, since] for p, (hit, since) in (*new.items(), *changed.items())]
        for i in range(0, len(both), 20_000):
            await session.execute(
                _SAVE_FLAGS,
                {"rows": json.dumps(both[i : i + 20_000]), "import_id": import_id, "now": now},
            )
        return
    rows = [row(p, hit, since) for p, (hit, since) in new.items()]
    for i in range(0, len(rows), 5000):
        await session.execute(insert(ProxyBlocklistFlag), rows[i : i + 5000])
    updates = [row(p, hit, since) for p, (hit, since) in changed.items()]
    for i in range(0, len(updates), 5000):  # by primary key, one statement executed many times
        await session.execute(update(ProxyBlocklistFlag), updates[i : i + 5000])


async def control_views(
    session: AsyncSession, *, proxy_ids: Sequence[int] | None = None
) -> dict[int, bool]:
    """Per proxy (of ``proxy_ids``, or every one): whether the latest check from a control
    vantage worked."""
    # Plain (proxy_id, last_at, last_ok) tuples: at 100,000 proxies and 20 control probes
    # one ORM object (with its JSON columns decoded) per row took the server past 6 GB.
    e = ProbeEvidenceRow
    query = select(e.proxy_id, e.last_at, e.last_ok).where(e.control.is_(True))
    if proxy_ids is None:
        filters: list[Any] = [true()]
    else:
        filters = _id_filters(session, e.proxy_id, proxy_ids) if proxy_ids else []
    latest: dict[int, tuple[int, bool]] = {}
    for among in filters:
        for proxy_id, last_at, last_ok in (await session.execute(query.where(among))).all():
            known = latest.get(proxy_id)
            if known is None or last_at > known[0]:
                latest[proxy_id] = (last_at, bool(last_ok))
    return {proxy_id: ok for proxy_id, (_, ok) in latest.items()}


async def probe_disagreement(session: AsyncSession, *, since: int) -> dict[int, tuple[int, int]]:
    """Per probe: on how many proxies its peers had a majority, and on how many its
    latest result went against it (the same as :func:`resistance.probe.verdict.
    disagreement`, counted by the database over evidence newer than ``since``)."""
    e = ProbeEvidenceRow
    network = case((e.control.is_(True), literal("control")), else_=e.country)
    ok = case((e.last_ok.is_(True), 1), else_=0)
    groups = (
        select(
            e.proxy_id.label("proxy_id"),
            network.label("network"),
            func.count().label("n"),
            func.sum(ok).label("n_ok"),
        )
        .where(e.last_at >= since)
        .group_by(e.proxy_id, network)
        .subquery()
    )
    peers = groups.c.n - 1
    peers_ok = groups.c.n_ok - ok
    compared = and_(peers > 0, 2 * peers_ok != peers)
    against = or_(
        and_(e.last_ok.is_(True), 2 * peers_ok < peers),
        and_(e.last_ok.is_(False), 2 * peers_ok > peers),
    )
    query = (
        select(
            e.probe_id,
            func.sum(case((compared, 1), else_=0)),
            func.sum(case((and_(compared, against), 1), else_=0)),
        )
        .join(groups, and_(groups.c.proxy_id == e.proxy_id, groups.c.network == network))
        .where(e.last_at >= since)
        .group_by(e.probe_id)
    )
    return {
        probe_id: (int(n or 0), int(d or 0))
        for probe_id, n, d in (await session.execute(query)).all()
    }


async def replace_round_proxies(
    session: AsyncSession, *, round_pk: int, rows: Sequence[Mapping[str, Any]]
) -> None:
    """A round's inputs summed per proxy, in page order (any earlier rows replaced)."""
    await session.execute(delete(GrantRoundProxy).where(GrantRoundProxy.round_pk == round_pk))
    numbered = [{**r, "round_pk": round_pk, "position": i} for i, r in enumerate(rows, 1)]
    for i in range(0, len(numbered), 5000):
        await session.execute(insert(GrantRoundProxy), numbered[i : i + 5000])


async def replace_round_chunks(
    session: AsyncSession, *, round_pk: int, chunks: Sequence[str]
) -> None:
    """A round's /2 input chunks, in manifest order (any earlier ones replaced)."""
    await session.execute(delete(GrantRoundChunk).where(GrantRoundChunk.round_pk == round_pk))
    rows = [{"round_pk": round_pk, "position": i, "body": c} for i, c in enumerate(chunks)]
    for i in range(0, len(rows), CHUNKS_PER_INSERT):
        await session.execute(insert(GrantRoundChunk), rows[i : i + CHUNKS_PER_INSERT])


#: Chunk rows per INSERT (a chunk of 30 days is about 1 MB).
CHUNKS_PER_INSERT = 16


async def round_chunks_page(
    session: AsyncSession, *, round_pk: int, after: int, limit: int
) -> list[tuple[int, str]]:
    """Up to ``limit`` of a round's chunks after position ``after``: (position, text)."""
    result = await session.execute(
        select(GrantRoundChunk.position, GrantRoundChunk.body)
        .where(GrantRoundChunk.round_pk == round_pk, GrantRoundChunk.position > after)
        .order_by(GrantRoundChunk.position)
        .limit(limit)
    )
    return [(int(position), body) for position, body in result.all()]


async def round_chunks(session: AsyncSession, *, round_pk: int) -> list[str]:
    """A round's /2 input chunks, in manifest order (none for a round stored before)."""
    result = await session.execute(
        select(GrantRoundChunk.body)
        .where(GrantRoundChunk.round_pk == round_pk)
        .order_by(GrantRoundChunk.position)
    )
    return list(result.scalars().all())


async def round_proxies_page(
    session: AsyncSession, *, round_pk: int, after: int, limit: int
) -> Sequence[GrantRoundProxy]:
    """Up to ``limit`` of a round's per-proxy rows after position ``after``."""
    result = await session.execute(
        select(GrantRoundProxy)
        .where(GrantRoundProxy.round_pk == round_pk, GrantRoundProxy.position > after)
        .order_by(GrantRoundProxy.position)
        .limit(limit)
    )
    return result.scalars().all()


async def round_has_proxies(session: AsyncSession, *, round_pk: int) -> bool:
    result = await session.execute(
        select(GrantRoundProxy.position).where(GrantRoundProxy.round_pk == round_pk).limit(1)
    )
    return result.first() is not None


# --- probe ingestion: Core statements, plain tuples, no ORM objects ---------------------
#
# A batch of 50 results touches 50 proxies; at 100 probes that is 5,000 evidence rows to
# read for the verdicts.  Building ORM objects (and JSON-decoding every row's columns) for
# those was most of the registry's ingest time (issue 25), so these read only the
# columns needed as tuples, on the session's connection (no ORM execution path), and
# write with one executemany statement per table, each statement built once per dialect.

#: ``pg_advisory_xact_lock(class, key)`` classes used by the registry (PostgreSQL only).
LOCK_PROXY_FOLD = 25_001
LOCK_PRUNE = 25_002


def _table(model: type[Any]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


_BATCHES = _table(ProbeBatch)
_RESULTS = _table(ProbeResult)
_EVIDENCE = _table(ProbeEvidenceRow)
_ROLLUPS = _table(ProbeRollup)
_VERDICTS = _table(ProxyVerdict)
_HISTORY = _table(ProxyVerdictChange)
_ROLLUP_KEY = ("proxy_id", "day", "country", "control")
_EVIDENCE_STATE = ("country", "control", "last_at", "last_ok", "fail_streak", "fail_windows")


# Built once: these run for every batch.  The id lists are a batch's proxies (at most
# probe.batch.MAX_RESULTS), so plain expanding IN lists stay far below the drivers' caps.
_BATCH_DIGEST = select(_BATCHES.c.digest, _BATCHES.c.result_count).where(
    _BATCHES.c.batch_id == bindparam("batch_id")
)
_EVIDENCE_OF_PAIRS = select(
    _EVIDENCE.c.proxy_id,
    _EVIDENCE.c.probe_id,
    _EVIDENCE.c.country,
    _EVIDENCE.c.control,
    _EVIDENCE.c.last_at,
    _EVIDENCE.c.last_ok,
    _EVIDENCE.c.fail_streak,
    cast(_EVIDENCE.c.fail_windows, Text),  # decoded only when not empty: _evidence_views
).where(tuple_(_EVIDENCE.c.proxy_id, _EVIDENCE.c.probe_id).in_(bindparam("pairs", expanding=True)))
_ROLLUPS_OF = select(
    _ROLLUPS.c.proxy_id,
    _ROLLUPS.c.day,
    _ROLLUPS.c.attempts,
    _ROLLUPS.c.successes,
    _ROLLUPS.c.latency_hist,
    _ROLLUPS.c.throughput_hist,
).where(
    _ROLLUPS.c.proxy_id.in_(bindparam("ids", expanding=True)),
    _ROLLUPS.c.day.in_(bindparam("days", expanding=True)),
    _ROLLUPS.c.country == bindparam("country"),
    _ROLLUPS.c.control == bindparam("control"),
)
_PROXIES_OF = select(_table(Proxy)).where(_table(Proxy).c.id.in_(bindparam("ids", expanding=True)))
_VERDICTS_OF = select(_VERDICTS.c.proxy_id, _VERDICTS.c.verdict, _VERDICTS.c.blocked_in).where(
    _VERDICTS.c.proxy_id.in_(bindparam("ids", expanding=True))
)
_TOUCH_VERDICTS = (
    update(_VERDICTS)
    .where(_VERDICTS.c.proxy_id.in_(bindparam("ids", expanding=True)))
    .values(updated_at=bindparam("now"))
)


def _dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


@functools.cache
def _upsert(dialect: str, table: Any, key: tuple[str, ...], columns: tuple[str, ...]) -> Any:
    """``INSERT .. ON CONFLICT (key) DO UPDATE SET columns = excluded.columns``."""
    statement = (pg_insert if dialect == "postgresql" else sqlite_insert)(table)
    return statement.on_conflict_do_update(
        index_elements=list(key), set_={c: statement.excluded[c] for c in columns}
    )


async def batch_digest(session: AsyncSession, *, batch_id: str) -> tuple[str, int] | None:
    """A stored batch's digest and result count, or ``None``."""
    connection = await session.connection()
    row = (await connection.execute(_BATCH_DIGEST, {"batch_id": batch_id})).first()
    return None if row is None else (row[0], row[1])


async def insert_batch(
    session: AsyncSession, *, batch: Mapping[str, Any], results: Sequence[Mapping[str, Any]]
) -> None:
    """Store a batch's row and its results' rows (an existing batch id raises IntegrityError)."""
    connection = await session.connection()
    await connection.execute(insert(_BATCHES), [dict(batch)])
    if results:
        await connection.execute(insert(_RESULTS), list(results))


EvidenceView = tuple[int, int, str, bool, int, bool, int, tuple[int, ...]]


def _evidence_views(rows: Sequence[Any]) -> list[EvidenceView]:
    # ``fail_windows`` is read as text and decoded only when not empty (it is empty
    # whenever the last check worked).
    return [
        (proxy, probe, country, control, at, ok, streak, () if w == "[]" else tuple(json.loads(w)))
        for proxy, probe, country, control, at, ok, streak, w in rows
    ]


async def evidence_of_pairs(
    session: AsyncSession, *, pairs: Sequence[tuple[int, int]]
) -> list[EvidenceView]:
    """The evidence rows of these (proxy_id, probe_id) pairs that exist: ``(proxy_id,
    probe_id, country, control, last_at, last_ok, fail_streak, fail_windows)`` tuples.
    A batch reads only its proxies' current voters
    (about ``replicas`` per vantage network), not every probe that ever measured them."""
    if not pairs:
        return []
    connection = await session.connection()
    result = await connection.execute(_EVIDENCE_OF_PAIRS, {"pairs": sorted(set(pairs))})
    return _evidence_views(result.all())


async def save_evidence(
    session: AsyncSession,
    *,
    rows: Sequence[Mapping[str, Any]],
    with_mechanism: bool,
) -> None:
    """Insert or replace (proxy, probe) evidence rows; ``with_mechanism`` also replaces
    ``mechanism`` and ``transports`` (only a result newer than the row's sets those)."""
    if not rows:
        return
    columns = _EVIDENCE_STATE + (("mechanism", "transports") if with_mechanism else ())
    statement = _upsert(_dialect(session), _EVIDENCE, ("proxy_id", "probe_id"), columns)
    connection = await session.connection()
    await connection.execute(statement, list(rows))


async def rollup_counts(
    session: AsyncSession,
    *,
    proxy_ids: Sequence[int],
    days: Sequence[str],
    country: str,
    control: bool,
) -> list[tuple[Any, ...]]:
    """One vantage kind's rollups of these proxies on these days:
    ``(proxy_id, day, attempts, successes, latency_hist, throughput_hist)``."""
    connection = await session.connection()
    result = await connection.execute(
        _ROLLUPS_OF,
        {"ids": list(proxy_ids), "days": list(days), "country": country, "control": control},
    )
    return [tuple(row) for row in result.all()]


async def save_rollups(session: AsyncSession, *, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert or replace daily rollups by (proxy, day, country, control)."""
    if not rows:
        return
    columns = tuple(c for c in rows[0] if c not in _ROLLUP_KEY)
    statement = _upsert(_dialect(session), _ROLLUPS, _ROLLUP_KEY, columns)
    connection = await session.connection()
    await connection.execute(statement, list(rows))


async def verdict_states(
    session: AsyncSession, *, proxy_ids: Sequence[int]
) -> dict[int, tuple[str, list[str]]]:
    """These proxies' current verdicts, where they have one: ``{id: (verdict, blocked_in)}``."""
    connection = await session.connection()
    result = await connection.execute(_VERDICTS_OF, {"ids": list(proxy_ids)})
    return {proxy_id: (verdict, list(blocked)) for proxy_id, verdict, blocked in result.all()}


async def touch_verdicts(session: AsyncSession, *, proxy_ids: Sequence[int], now: int) -> None:
    """Mark unchanged verdicts as re-evaluated at ``now``."""
    if proxy_ids:
        connection = await session.connection()
        await connection.execute(_TOUCH_VERDICTS, {"ids": list(proxy_ids), "now": now})


async def save_verdicts(
    session: AsyncSession,
    *,
    verdicts: Sequence[Mapping[str, Any]],
    changes: Sequence[Mapping[str, Any]],
) -> None:
    """Insert or replace verdict rows; append the changes to their history."""
    connection = await session.connection()
    if verdicts:
        columns = ("verdict", "blocked_in", "since", "updated_at")
        statement = _upsert(_dialect(session), _VERDICTS, ("proxy_id",), columns)
        await connection.execute(statement, list(verdicts))
    if changes:
        await connection.execute(insert(_HISTORY), list(changes))


# --- one batch in three statements (PostgreSQL) -----------------------------------------
#
# The statements above are one round trip each: about 16 per batch, each a few hundred
# µs of SQLAlchemy and asyncpg CPU in the registry, were most of its ingest time after
# the evidence reads were cut (issue 25).  On PostgreSQL a batch is instead opened,
# read and written in three statements of fixed text (prepared once per connection):
# :func:`open_batch` takes the fold locks and reads the stored digest and the proxies,
# :func:`fold_state` reads evidence, rollups and verdicts (a statement of its own: its
# snapshot is taken after the locks were granted, so it sees what the batch that held
# them committed), and :func:`write_batch` stores the batch, its results and every
# change of the fold as data-modifying CTEs of one statement, rows passed as one JSON
# parameter per table.  SQLite keeps the statements above, one per step.


@dataclass(frozen=True, slots=True)
class BatchFold:
    """Everything a batch writes: its row, its results' rows, and its fold's changes."""

    batch: Mapping[str, Any]
    results: Sequence[Mapping[str, Any]]
    probe_id: int
    now: int
    #: Evidence rows that carry a newer result (``mechanism`` and ``transports`` too).
    evidence: Sequence[Mapping[str, Any]] = ()
    #: Evidence rows whose only change is the account's country or kind.
    evidence_kept: Sequence[Mapping[str, Any]] = ()
    rollups: Sequence[Mapping[str, Any]] = ()
    #: Proxies whose verdict was re-evaluated unchanged.
    unchanged: Sequence[int] = ()
    verdicts: Sequence[Mapping[str, Any]] = ()
    changes: Sequence[Mapping[str, Any]] = ()


def _proxy_columns() -> str:
    return ", ".join(f"p.{c.name}" for c in _table(Proxy).c)


_OPEN_BATCH = text(
    "WITH locked AS ("
    " SELECT count(pg_advisory_xact_lock(CAST(:kind AS integer), id)) AS n"
    " FROM unnest(CAST(:ids AS integer[])) WITH ORDINALITY AS t(id, n))"
    " SELECT locked.n,"
    " (SELECT digest FROM probe_batches WHERE batch_id = CAST(:batch_id AS text)),"
    " (SELECT result_count FROM probe_batches WHERE batch_id = CAST(:batch_id AS text)), "
    + _proxy_columns()
    + " FROM locked LEFT JOIN proxies p ON p.id = ANY(CAST(:ids AS integer[]))"
).columns(
    sa_column("locked_n", BigInteger),
    sa_column("stored_digest", String),
    sa_column("stored_count", Integer),
    *_table(Proxy).c,
)


async def open_batch(
    session: AsyncSession, *, batch_id: str, proxy_ids: Sequence[int]
) -> tuple[tuple[str, int] | None, list[Any]]:
    """A batch's stored digest and result count (``None`` when not stored) and its
    proxies as plain rows (:func:`proxy_rows_by_ids`).

    On PostgreSQL the same statement first takes the fold locks of ``proxy_ids`` (a
    transaction-scoped advisory lock of class ``LOCK_PROXY_FOLD`` per proxy, in
    ascending id order, so two batches sharing proxies queue up instead of
    deadlocking), held until the transaction ends; on SQLite nothing is locked here
    (the caller serializes its writers).  The digest is read with the statement's
    snapshot, taken before the locks were granted: a batch stored meanwhile by a
    concurrent upload of the same id is found by its unique key when this one is
    written (IntegrityError; ``probes.ingest_batch`` then reads the digest again)."""
    if _dialect(session) != "postgresql":
        stored = await batch_digest(session, batch_id=batch_id)
        return stored, list(await proxy_rows_by_ids(session, ids=proxy_ids))
    connection = await session.connection()
    rows = (
        await connection.execute(
            _OPEN_BATCH,
            {"kind": LOCK_PROXY_FOLD, "ids": sorted(set(proxy_ids)), "batch_id": batch_id},
        )
    ).all()
    first = rows[0]
    stored = None if first.stored_digest is None else (first.stored_digest, first.stored_count)
    return stored, [row for row in rows if row.id is not None]


_FOLD_STATE = text(
    "SELECT"
    " CAST((SELECT json_agg(json_build_array(e.proxy_id, e.probe_id, e.country, e.control,"
    "   e.last_at, e.last_ok, e.fail_streak, e.fail_windows))"
    "  FROM unnest(CAST(:pair_proxies AS integer[]), CAST(:pair_probes AS integer[]))"
    "   AS k(proxy_id, probe_id)"
    "  JOIN probe_evidence e ON e.proxy_id = k.proxy_id AND e.probe_id = k.probe_id)"
    " AS text),"
    " CAST((SELECT json_agg(json_build_array(r.proxy_id, r.day, r.attempts, r.successes,"
    "   r.latency_hist, r.throughput_hist))"
    "  FROM probe_rollups r WHERE r.proxy_id = ANY(CAST(:ids AS integer[]))"
    "   AND r.day = ANY(CAST(:days AS text[])) AND r.country = CAST(:country AS text)"
    "   AND r.control = CAST(:control AS boolean))"
    " AS text),"
    " CAST((SELECT json_agg(json_build_array(v.proxy_id, v.verdict, v.blocked_in))"
    "  FROM proxy_verdicts v WHERE v.proxy_id = ANY(CAST(:ids AS integer[])))"
    " AS text)"
)


async def fold_state(
    session: AsyncSession,
    *,
    pairs: Sequence[tuple[int, int]],
    proxy_ids: Sequence[int],
    days: Sequence[str],
    country: str,
    control: bool,
) -> tuple[list[EvidenceView], list[tuple[Any, ...]], dict[int, tuple[str, list[str]]]]:
    """What a batch folds into, once its fold locks are held: :func:`evidence_of_pairs`,
    :func:`rollup_counts` and :func:`verdict_states` (one statement on PostgreSQL)."""
    if _dialect(session) != "postgresql":
        return (
            await evidence_of_pairs(session, pairs=pairs),
            await rollup_counts(
                session, proxy_ids=proxy_ids, days=days, country=country, control=control
            ),
            await verdict_states(session, proxy_ids=proxy_ids),
        )
    keys = sorted(set(pairs))
    connection = await session.connection()
    evidence, rollups, verdicts = (
        await connection.execute(
            _FOLD_STATE,
            {
                "pair_proxies": [proxy for proxy, _ in keys],
                "pair_probes": [probe for _, probe in keys],
                "ids": list(proxy_ids),
                "days": list(days),
                "country": country,
                "control": control,
            },
        )
    ).one()
    return (
        [
            (proxy, probe, country_, control_, at, ok, streak, tuple(windows))
            for proxy, probe, country_, control_, at, ok, streak, windows in _rows(evidence)
        ],
        [tuple(row) for row in _rows(rollups)],
        {proxy: (verdict, blocked) for proxy, verdict, blocked in _rows(verdicts)},
    )


def _rows(encoded: str | None) -> list[list[Any]]:
    return json.loads(encoded) if encoded else []


_WRITE_BATCH = text(
    "WITH batch AS ("
    " INSERT INTO probe_batches (batch_id, probe_id, digest, created_at, received_at,"
    "  result_count, body)"
    " VALUES (CAST(:batch_id AS text), CAST(:probe_id AS integer), CAST(:digest AS text),"
    "  CAST(:created_at AS bigint), CAST(:received_at AS bigint),"
    "  CAST(:result_count AS integer), CAST(:body AS text))),"
    " results AS ("
    " INSERT INTO probe_results (batch_id, probe_id, proxy_id, measured_at, country, control,"
    "  ok, step, failure, detail, connect_us, ttfb_us, throughput_kbps, mechanism)"
    " SELECT x.batch_id, x.probe_id, x.proxy_id, x.measured_at, x.country, x.control,"
    "  x.ok, x.step, x.failure, x.detail, x.connect_us, x.ttfb_us, x.throughput_kbps,"
    "  x.mechanism"
    " FROM json_to_recordset(CAST(:results AS json)) AS x(batch_id text, probe_id integer,"
    "  proxy_id integer, measured_at bigint, country text, control boolean, ok boolean,"
    "  step text, failure text, detail text, connect_us bigint, ttfb_us bigint,"
    "  throughput_kbps bigint, mechanism text)),"
    " noted AS ("
    " UPDATE probe_accounts SET last_batch_at = CAST(:now AS bigint)"
    " WHERE id = CAST(:probe_id AS integer)),"
    " evidence AS ("
    " INSERT INTO probe_evidence (proxy_id, probe_id, country, control, last_at, last_ok,"
    "  fail_streak, fail_windows, mechanism, transports)"
    " SELECT x.proxy_id, x.probe_id, x.country, x.control, x.last_at, x.last_ok,"
    "  x.fail_streak, x.fail_windows, x.mechanism, x.transports"
    " FROM json_to_recordset(CAST(:evidence AS json)) AS x(proxy_id integer,"
    "  probe_id integer, country text, control boolean, last_at bigint, last_ok boolean,"
    "  fail_streak integer, fail_windows json, mechanism text, transports json)"
    " ON CONFLICT (proxy_id, probe_id) DO UPDATE SET country = excluded.country,"
    "  control = excluded.control, last_at = excluded.last_at, last_ok = excluded.last_ok,"
    "  fail_streak = excluded.fail_streak, fail_windows = excluded.fail_windows,"
    "  mechanism = excluded.mechanism, transports = excluded.transports),"
    " evidence_kept AS ("
    " INSERT INTO probe_evidence (proxy_id, probe_id, country, control, last_at, last_ok,"
    "  fail_streak, fail_windows)"
    " SELECT x.proxy_id, x.probe_id, x.country, x.control, x.last_at, x.last_ok,"
    "  x.fail_streak, x.fail_windows"
    " FROM json_to_recordset(CAST(:evidence_kept AS json)) AS x(proxy_id integer,"
    "  probe_id integer, country text, control boolean, last_at bigint, last_ok boolean,"
    "  fail_streak integer, fail_windows json)"
    " ON CONFLICT (proxy_id, probe_id) DO UPDATE SET country = excluded.country,"
    "  control = excluded.control, last_at = excluded.last_at, last_ok = excluded.last_ok,"
    "  fail_streak = excluded.fail_streak, fail_windows = excluded.fail_windows),"
    " rollups AS ("
    " INSERT INTO probe_rollups (proxy_id, day, country, control, attempts, successes,"
    "  latency_hist, latency_p50_ms, latency_p90_ms, throughput_hist, throughput_p50_kbps)"
    " SELECT x.proxy_id, x.day, x.country, x.control, x.attempts, x.successes,"
    "  x.latency_hist, x.latency_p50_ms, x.latency_p90_ms, x.throughput_hist,"
    "  x.throughput_p50_kbps"
    " FROM json_to_recordset(CAST(:rollups AS json)) AS x(proxy_id integer, day text,"
    "  country text, control boolean, attempts integer, successes integer,"
    "  latency_hist json, latency_p50_ms integer, latency_p90_ms integer,"
    "  throughput_hist json, throughput_p50_kbps bigint)"
    " ON CONFLICT (proxy_id, day, country, control) DO UPDATE SET"
    "  attempts = excluded.attempts, successes = excluded.successes,"
    "  latency_hist = excluded.latency_hist, latency_p50_ms = excluded.latency_p50_ms,"
    "  latency_p90_ms = excluded.latency_p90_ms, throughput_hist = excluded.throughput_hist,"
    "  throughput_p50_kbps = excluded.throughput_p50_kbps),"
    " touched AS ("
    " UPDATE proxy_verdicts SET updated_at = CAST(:now AS bigint)"
    " WHERE proxy_id = ANY(CAST(:unchanged AS integer[]))),"
    " verdicts AS ("
    " INSERT INTO proxy_verdicts (proxy_id, verdict, blocked_in, since, updated_at)"
    " SELECT x.proxy_id, x.verdict, x.blocked_in, x.since, x.updated_at"
    " FROM json_to_recordset(CAST(:verdicts AS json)) AS x(proxy_id integer, verdict text,"
    "  blocked_in json, since bigint, updated_at bigint)"
    " ON CONFLICT (proxy_id) DO UPDATE SET verdict = excluded.verdict,"
    "  blocked_in = excluded.blocked_in, since = excluded.since,"
    "  updated_at = excluded.updated_at),"
    " changes AS ("
    " INSERT INTO proxy_verdict_history (proxy_id, at, verdict, blocked_in, previous)"
    " SELECT x.proxy_id, x.at, x.verdict, x.blocked_in, x.previous"
    " FROM json_to_recordset(CAST(:changes AS json)) AS x(proxy_id integer, at bigint,"
    "  verdict text, blocked_in json, previous text))"
    " SELECT 1"
)


async def write_batch(session: AsyncSession, *, fold: BatchFold) -> None:
    """Store a batch, its results and its fold (an existing batch id raises IntegrityError):
    one statement on PostgreSQL, the statements above in turn on SQLite."""
    if _dialect(session) != "postgresql":
        await insert_batch(session, batch=fold.batch, results=fold.results)
        await note_probe_batch(session, probe_id=fold.probe_id, now=fold.now)
        await save_evidence(session, rows=fold.evidence, with_mechanism=True)
        await save_evidence(session, rows=fold.evidence_kept, with_mechanism=False)
        await save_rollups(session, rows=fold.rollups)
        await touch_verdicts(session, proxy_ids=fold.unchanged, now=fold.now)
        await save_verdicts(session, verdicts=fold.verdicts, changes=fold.changes)
        return
    connection = await session.connection()
    await connection.execute(
        _WRITE_BATCH,
        {
            **{key: fold.batch[key] for key in _BATCH_KEYS},
            "probe_id": fold.probe_id,
            "now": fold.now,
            "results": json.dumps(list(fold.results)),
            "evidence": json.dumps(list(fold.evidence)),
            "evidence_kept": json.dumps(list(fold.evidence_kept)),
            "rollups": json.dumps(list(fold.rollups)),
            "unchanged": list(fold.unchanged),
            "verdicts": json.dumps(list(fold.verdicts)),
            "changes": json.dumps(list(fold.changes)),
        },
    )


_BATCH_KEYS = ("batch_id", "digest", "created_at", "received_at", "result_count", "body")


# --- retention of raw results -----------------------------------------------------------


async def try_prune_lock(connection: AsyncConnection) -> bool:
    """Whether this connection now holds the registry-wide pruning lock (PostgreSQL: a
    session advisory lock, released by :func:`release_prune_lock`; SQLite: always)."""
    if connection.dialect.name != "postgresql":
        return True
    result = await connection.execute(
        text("SELECT pg_try_advisory_lock(:kind, 0)"), {"kind": LOCK_PRUNE}
    )
    return bool(result.scalar_one())


async def release_prune_lock(connection: AsyncConnection) -> None:
    if connection.dialect.name == "postgresql":
        await connection.execute(text("SELECT pg_advisory_unlock(:kind, 0)"), {"kind": LOCK_PRUNE})


async def prune_batches(connection: AsyncConnection, *, before: int, limit: int) -> tuple[int, int]:
    """Delete at most ``limit`` of the oldest batches received before ``before``, with their
    raw results; ``(batches, results)`` deleted.  Rollups, evidence and verdicts stay."""
    oldest = (
        select(ProbeBatch.batch_id)
        .where(ProbeBatch.received_at < before)
        .order_by(ProbeBatch.received_at)
        .limit(limit)
    )
    ids = list((await connection.execute(oldest)).scalars().all())
    if not ids:
        return 0, 0
    results = await connection.execute(
        delete(ProbeResult).where(ProbeResult.batch_id.in_(_each_on(connection, ids)))
    )
    batches = await connection.execute(
        delete(ProbeBatch).where(ProbeBatch.batch_id.in_(_each_on(connection, ids)))
    )
    return int(batches.rowcount), int(results.rowcount)
