"""Measurements as the directory shows them: status, censor listing, per-country reachability.

Reads only verdicts, daily rollups (summed per proxy and country by the
database on PostgreSQL), blocklist flags and the probes' latest views that
``reach`` may name (ranked by the database: 16 a proxy, however many probes
see it), never raw results, so publishing stays cheap however many results
are stored.  A proxy whose flag predates the
current blocklist import is looked up again here (one indexed query each, or
one walk of the ranges for many), so new proxies are flagged at their first
publication; the import that blocked every listed one is then followed back
through the versions for all of them at once
(:func:`~resistance.registry.repositories.listed_since_many`).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.ext.asyncio import AsyncSession

from resistance.directory.canonical import canonical_text, check_value
from resistance.probe import rollup
from resistance.registry import repositories as repo
from resistance.registry.blocklist import address_hex
from resistance.registry.models import Proxy, proven_address

#: Days of rollups the directory summarizes (today and the days before).
DAYS = 2
#: Proxies whose censor flag is looked up one query each; above that many (after a new
#: blocklist import every proxy's is stale) the stored ranges are walked once instead.
LOOKUPS_AT_MOST = 1000
#: Networks (probe vantages) a proxy's ``reach`` names at most, the most recent first.
MAX_REACH_NETWORKS = 16


def reach(views: repo.ProbeViews, transport: str) -> dict[str, Any]:
    """Per network (probe vantage): whether ``transport`` got through, or the mechanism
    that stopped it (``failed`` when the probe named none), and the same for the
    node's other transports the probe measured beside it (``tls``).  ``views`` are one
    proxy's probes' (all of them, or
    :func:`~resistance.registry.repositories.latest_views`' most recent, which are the
    ones named here either way): the :data:`MAX_REACH_NETWORKS` most recent by
    ``last_at``, then by name."""
    names, times, oks, mechanisms, transports = views
    named: Sequence[int] = range(len(names))
    if len(names) > MAX_REACH_NETWORKS:  # else every view is named: no need to rank them
        named = sorted(named, key=lambda i: (-times[i], names[i]))[:MAX_REACH_NETWORKS]
    out: dict[str, Any] = {}
    for i in sorted(named, key=names.__getitem__):
        entry = {transport: "ok" if oks[i] else (mechanisms[i] or "failed")}
        seen = transports[i]
        if seen:  # most views have none (70,000 proxies x probes of them)
            for t, m in sorted(seen.items())[:4]:
                entry[t] = str(m)
        out[names[i]] = entry
    return out


NO_VIEWS = repo.ProbeViews((), (), (), (), ())


def recent_days(now: int, count: int = DAYS) -> list[str]:
    today = datetime.datetime.fromtimestamp(now, datetime.UTC).date()
    return [(today - datetime.timedelta(days=i)).isoformat() for i in range(count)]


LATENCY_BUCKETS = len(rollup.empty(rollup.LATENCY_BOUNDS_MS))
THROUGHPUT_BUCKETS = len(rollup.empty(rollup.THROUGHPUT_BOUNDS_KBPS))


def _shaped(histogram: list[int], buckets: int) -> list[int]:
    """A stored histogram as it is if it has the right number of buckets (else merging
    it with an empty one refuses it, as any merge of it would)."""
    if len(histogram) == buckets:
        return histogram
    return rollup.merge([0] * buckets, histogram)


def reachability(rows: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """Per vantage country: attempts, successes, median latency and throughput (``rows``
    have a rollup's ``country, attempts, successes, latency_hist, throughput_hist``)."""
    merged: dict[str, tuple[int, int, list[int], list[int]]] = {}
    for row in rows:
        known = merged.get(row.country)
        if known is None:  # the first row of a country is taken as it is (one merge less)
            merged[row.country] = (
                row.attempts,
                row.successes,
                _shaped(row.latency_hist, LATENCY_BUCKETS),
                _shaped(row.throughput_hist, THROUGHPUT_BUCKETS),
            )
            continue
        attempts, successes, lat, thr = known
        merged[row.country] = (
            attempts + row.attempts,
            successes + row.successes,
            rollup.merge(lat, row.latency_hist),
            rollup.merge(thr, row.throughput_hist),
        )
    return {
        country: {
            "attempts": attempts,
            "successes": successes,
            "latency_p50_ms": rollup.percentile(lat, rollup.LATENCY_BOUNDS_MS, 0.5),
            "throughput_kbps": rollup.percentile(thr, rollup.THROUGHPUT_BOUNDS_KBPS, 0.5),
        }
        for country, (attempts, successes, lat, thr) in sorted(merged.items())
    }


async def refresh_flags(
    session: AsyncSession, proxies: Sequence[Proxy], now: int
) -> dict[int, tuple[bool, int | None]]:
    """Whether each proxy is in the current censor registry, and the import that
    blocked it (``{}`` if none imported)."""
    current = await repo.last_blocklist(session)
    if current is None or not proxies:
        return {}
    flags = await repo.flag_rows(session, proxy_ids=[p.id for p in proxies])
    listed: dict[int, tuple[bool, int | None]] = {}
    stale: dict[int, str] = {}
    for proxy in proxies:
        flag = flags.get(proxy.id)
        if flag is not None and flag[0] == current.id:
            listed[proxy.id] = (flag[1], flag[2] if flag[1] else None)
            continue
        try:
            stale[proxy.id] = address_hex(proven_address(proxy))  # a row: no properties
        except ValueError:
            continue
    found = {
        p: (since is not None, since) for p, since in (await blocked_since(session, stale)).items()
    }
    listed.update(found)
    new = {p: v for p, v in found.items() if p not in flags}
    changed = {p: v for p, v in found.items() if p in flags}
    await repo.save_flags(session, import_id=current.id, now=now, new=new, changed=changed)
    return listed


async def blocked_since(
    session: AsyncSession, addresses: Mapping[int, str]
) -> dict[int, int | None]:
    """Per proxy id, the import that blocked its address (hex), ``None`` when the current
    blocklist does not hold it: the current range holding each (one indexed query each
    for a few, one walk of the ranges for more), then the run of versions followed back
    for every listed address at once
    (:func:`~resistance.registry.repositories.listed_since_many`)."""
    if len(addresses) > LOOKUPS_AT_MOST:
        holding = await _walk_ranges(session, addresses)
    else:
        holding = {}
        for proxy_id, hexed in addresses.items():
            span = await repo.range_containing(session, address_hex=hexed)
            holding[proxy_id] = span.first_import if span is not None else None
    since = await repo.listed_since_many(
        session,
        current={addresses[p]: first for p, first in holding.items() if first is not None},
    )
    return {
        proxy_id: since[addresses[proxy_id]] if first is not None else None
        for proxy_id, first in holding.items()
    }


async def _walk_ranges(
    session: AsyncSession, addresses: Mapping[int, str]
) -> dict[int, int | None]:
    """Per address, the ``first_import`` of the current range holding it (``None`` if
    none does), by one walk of the ranges in order beside the addresses in order (the
    ranges are disjoint and sorted by start)."""
    order = sorted(addresses.items(), key=lambda item: item[1])
    hits: dict[int, int | None] = {}
    i = 0
    async for start, end, first in repo.ranges_in_order(session):
        while i < len(order) and order[i][1] < start:
            hits[order[i][0]] = None
            i += 1
        while i < len(order) and order[i][1] <= end:
            hits[order[i][0]] = first
            i += 1
        if i == len(order):
            break
    for proxy_id, _ in order[i:]:
        hits[proxy_id] = None
    return hits


@dataclass(frozen=True, slots=True)
class MeasurementRows:
    """What the directory's measurements are made of, read from the database."""

    days: list[str]
    verdicts: dict[int, Any]
    rollups: dict[int, list[Any]]
    listed: dict[int, tuple[bool, int | None]]
    #: Per proxy, the probes' latest views ``reach`` may name: the database ranks them,
    #: so only the :data:`MAX_REACH_NETWORKS` most recent (and any tied with the last
    #: of those) are read.
    seen: Mapping[int, repo.ProbeViews]


async def measurement_rows(
    session: AsyncSession, proxies: Sequence[Proxy], now: int
) -> MeasurementRows:
    """The verdicts, recent rollups, censor flags and probes' views of these proxies.

    Each query binds the proxies' ids as one parameter (a directory may list more
    proxies than a statement may have parameters) and returns plain rows: no ORM
    object per verdict, rollup or probe's view."""
    days = recent_days(now)
    ids = [p.id for p in proxies]
    if not ids:
        return MeasurementRows(days, {}, {}, {}, {})
    verdicts = {row.proxy_id: row for row in await repo.verdict_rows(session, proxy_ids=ids)}
    by_proxy: dict[int, list[Any]] = {}
    totals = await repo.day_rollup_totals(
        session, proxy_ids=ids, days=days, buckets=(LATENCY_BUCKETS, THROUGHPUT_BUCKETS)
    )
    for row in totals:  # one per vantage country, its histograms summed
        by_proxy.setdefault(row.proxy_id, []).append(row)
    listed = await refresh_flags(session, proxies, now)
    seen = await repo.latest_views(
        session, proxy_ids=ids, since=now - DAYS * 86400, most=MAX_REACH_NETWORKS
    )
    return MeasurementRows(days, verdicts, by_proxy, listed, seen)


def directory_measurements(
    proxies: Sequence[Proxy], rows: MeasurementRows
) -> dict[int, tuple[str, dict[str, Any]]]:
    """For each proxy: its status text and its ``measurements`` object (no I/O)."""
    return {proxy.id: proxy_measurements(*measurement_inputs(proxy, rows)) for proxy in proxies}


def measurement_inputs(proxy: Any, rows: MeasurementRows) -> tuple[Any, ...]:
    """:func:`proxy_measurements`' arguments for this proxy: everything its measurements
    are made of (a kept directory entry is reused while they are equal)."""
    return (
        transport_of(proxy),
        rows.verdicts.get(proxy.id),
        rows.rollups.get(proxy.id, []),
        rows.listed.get(proxy.id),
        rows.seen.get(proxy.id, NO_VIEWS),
        rows.days,
    )


def proxy_measurements(
    transport: str,
    verdict: Any,
    rollups: Sequence[Any],
    flag: tuple[bool, int | None] | None,
    seen: repo.ProbeViews,
    days: list[str],
) -> tuple[str, dict[str, Any]]:
    """One proxy's status text and ``measurements`` object, from its rows alone (so equal
    rows give an equal entry: :class:`~resistance.registry.entries.DirectoryEntries`
    keeps entries by these arguments)."""
    name = verdict.verdict if verdict else "untested"
    blocked_in = sorted(verdict.blocked_in) if verdict else []
    status = f"blocked:{','.join(blocked_in)}" if name == "blocked" else name
    return (
        status,
        {
            "status": name,
            "blocked_in": blocked_in,
            "since": verdict.since if verdict else None,
            "censor_listed": flag[0] if flag else None,
            "censor_listed_since": flag[1] if flag else None,
            "days": days,
            "reachability": reachability(rollups),
            "reach": reach(seen, transport),
        },
    )


# --- the same measurements written as their canonical text -------------------------------

#: Per rollup-sums row (by ``id``): its latency and throughput medians.
Medians = Mapping[int, tuple[int | None, int | None]]
#: Counts above this (in magnitude) are left to ``rollup.percentile``: no running count
#: of a histogram's 32 buckets at most can pass 64 bits.
_COUNTS_BELOW = 2**58


def medians(rows: Iterable[Any]) -> dict[int, tuple[int | None, int | None]]:
    """``rollup.percentile(h, bounds, 0.5)`` of each row's latency and throughput
    histograms, by the row's ``id``, for every row at once (numpy: a publication at
    100,000 proxies takes 280,000 medians, in Python a loop over the buckets each).

    Rows whose histograms are not of the right lengths, or not all integers of 64
    bits, are left out: the caller takes those one by one."""
    shaped = [
        row
        for row in rows
        if len(row.latency_hist) == LATENCY_BUCKETS
        and len(row.throughput_hist) == THROUGHPUT_BUCKETS
    ]
    if not shaped:
        return {}
    columns = []
    for hists, bounds in (
        ([row.latency_hist for row in shaped], rollup.LATENCY_BOUNDS_MS),
        ([row.throughput_hist for row in shaped], rollup.THROUGHPUT_BOUNDS_KBPS),
    ):
        try:  # booleans are integers here as in Python's sums; anything else is not
            counts = np.array(hists)
        except (OverflowError, ValueError):
            return {}
        if (
            counts.dtype not in (np.int64, np.bool_)
            or counts.max() >= _COUNTS_BELOW
            or counts.min() <= -_COUNTS_BELOW
        ):
            return {}
        columns.append(_medians(counts.astype(np.int64), bounds))
    return dict(zip(map(id, shaped), zip(*columns, strict=True), strict=True))


def _medians(counts: Any, bounds: Sequence[int]) -> list[int | None]:
    """``rollup.percentile(row, bounds, 0.5)`` of each row of ``counts``: the first bucket
    whose running count reaches ``max(1, ceil(total / 2))`` (the rank ``percentile``
    computes at 0.5), the last bound when none does, ``None`` when the total is 0."""
    running = counts.cumsum(axis=1)
    total = running[:, -1]
    reached = running >= np.maximum(1, -(-total // 2))[:, None]
    at = np.array([*bounds, bounds[-1]])[reached.argmax(axis=1)]
    found: list[int] = np.where(reached.any(axis=1), at, bounds[-1]).tolist()
    return [None if t == 0 else m for t, m in zip(total.tolist(), found, strict=True)]


def reachability_text(rows: Sequence[Any], known: Medians) -> str:
    """``canonical_text(reachability(rows))`` without the objects, for one vantage country
    a row with integer sums, as the database's sums give them (anything else is
    written from :func:`reachability` itself); the medians from ``known`` (else
    computed here)."""
    if not rows:
        return "{}"
    countries = [row.country for row in rows]
    if len(set(countries)) != len(rows) or not all(type(c) is str for c in countries):
        return canonical_text(reachability(rows))
    parts = []
    for row in sorted(rows, key=lambda row: row.country):
        attempts, successes = row.attempts, row.successes
        medians = known.get(id(row))
        if type(attempts) is not int or type(successes) is not int or medians is None:
            if len(row.latency_hist) != LATENCY_BUCKETS:  # refused as reachability does
                return canonical_text(reachability(rows))
            if len(row.throughput_hist) != THROUGHPUT_BUCKETS:
                return canonical_text(reachability(rows))
            if type(attempts) is not int or type(successes) is not int:
                return canonical_text(reachability(rows))
            medians = (
                rollup.percentile(row.latency_hist, rollup.LATENCY_BOUNDS_MS, 0.5),
                rollup.percentile(row.throughput_hist, rollup.THROUGHPUT_BOUNDS_KBPS, 0.5),
            )
        latency, throughput = medians
        parts.append(
            f'{canonical_text(row.country)}:{{"attempts":{attempts},"latency_p50_ms":'
            f'{"null" if latency is None else latency},"successes":{successes},'
            f'"throughput_kbps":{"null" if throughput is None else throughput}}}'
        )
    return "{" + ",".join(parts) + "}"


class TextCache(dict[Any, str]):
    """Each distinct value's canonical text, encoded once (probes' names and the status
    a view shows repeat across every proxy of a directory).  For texts (and tuples of
    them) only: ``True``, ``1`` and ``1.0`` are one key of a dict."""

    __slots__ = ("views",)

    def __init__(self) -> None:
        super().__init__()
        #: A view's ``"name":{...}`` by ``(name, transport, status, id(transports))``,
        #: with the ``transports`` it was written from (a hit only if it is that very
        #: object: an id is reused once its object is freed).  A probe's name, four
        #: transports, a few statuses and the few distinct ``transports`` values (each
        #: decoded once per distinct text by ``latest_views``).
        self.views: dict[tuple[Any, Any, Any, int], tuple[str, Any]] = {}

    def __missing__(self, value: Any) -> str:
        text = self[value] = canonical_text(value)
        return text


def reach_text(views: repo.ProbeViews, transport: str, texts: TextCache) -> str:
    """``canonical_text(reach(views, transport))`` without a dict per view: each named view
    is ``"name":{"transport":"status"}`` unless the probe measured other transports
    beside it (a few views), whose object is built and encoded as :func:`reach` builds
    it."""
    names, times, oks, mechanisms, transports = views
    if len(set(names)) != len(names):  # names are unique: a dict would keep one
        return canonical_text(reach(views, transport))
    named: Iterable[tuple[Any, ...]] = zip(names, oks, mechanisms, transports, strict=True)
    if len(names) > MAX_REACH_NETWORKS:  # as reach ranks them
        ranked = sorted(range(len(names)), key=lambda i: (-times[i], names[i]))
        named = [
            (names[i], oks[i], mechanisms[i], transports[i]) for i in ranked[:MAX_REACH_NETWORKS]
        ]
    parts = []
    shown = texts.views
    for name, ok, mechanism, seen in sorted(named):  # by name alone: names are unique
        status = "ok" if ok else (mechanism or "failed")
        key = (name, transport, status, id(seen))
        known = shown.get(key)
        if known is None or known[1] is not seen:
            known = shown[key] = (_view_text(name, transport, status, seen, texts), seen)
        parts.append(known[0])
    return "{" + ",".join(parts) + "}"


def _view_text(name: str, transport: str, status: str, seen: Any, texts: TextCache) -> str:
    """One named view's ``"name":{...}`` as :func:`reach` builds its object."""
    if not seen:
        return f"{texts[name]}:{{{texts[transport]}:{texts[status]}}}"
    entry = {transport: status}
    for t, m in sorted(seen.items())[:4]:
        entry[t] = str(m)
    return f"{texts[name]}:{canonical_text(entry)}"


def measurements_text(
    transport: str,
    verdict: Any,
    rollups: Sequence[Any],
    flag: tuple[bool, int | None] | None,
    seen: repo.ProbeViews,
    days: list[str],
    *,
    texts: TextCache,
    known: Medians,
) -> tuple[str, str]:
    """:func:`proxy_measurements`' status and the canonical text of its ``measurements``
    object (``blocked_in``, the one value from a JSON column, checked as
    :func:`~resistance.directory.canonical.canonical_bytes` checks it; the caller
    encodes the text to UTF-8, which refuses a lone surrogate anywhere), written field
    by field in the order of the sorted keys, without the object; the medians of the
    rollups' sums from ``known`` (:func:`medians`), else computed here."""
    name = verdict.verdict if verdict else "untested"
    blocked_in = sorted(verdict.blocked_in) if verdict else []
    check_value(blocked_in)
    status = f"blocked:{','.join(blocked_in)}" if name == "blocked" else name
    listed, listed_since = (flag[0], flag[1]) if flag else (None, None)
    since = verdict.since if verdict else None
    return status, (
        f'{{"blocked_in":{canonical_text(blocked_in)},'
        f'"censor_listed":{_scalar(listed)},"censor_listed_since":{_scalar(listed_since)},'
        f'"days":{texts[tuple(days)]},"reach":{reach_text(seen, transport, texts)},'
        f'"reachability":{reachability_text(rollups, known)},'
        f'"since":{_scalar(since)},"status":{texts[name]}}}'
    )


def _scalar(value: Any) -> str:
    """An integer's, a boolean's or null's canonical text (anything else encoded)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value) if type(value) is int else canonical_text(value)


def transport_of(proxy: Proxy) -> str:
    """The transport a probe's check of this proxy row measures."""
    for protocol in ("wireguard", "amneziawg", "mtproto"):
        if protocol in proxy.protocols:
            return protocol
    return "socks5"
