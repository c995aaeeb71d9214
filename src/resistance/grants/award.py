"""The award rule: from daily rollups to integer-satoshi awards, as pure functions.

Theory of operation
-------------------
**Day weight.** For each proxy and day in the round's period, measured from
control vantages (outside the censored country) and from vantages inside the
round's target country::

    availability = control_successes / control_attempts
    reachability = target_successes / target_attempts
    performance  = (availability * reachability) ** performance_exponent
    capacity     = min(throughput_kbps, capacity_reference_kbps) / capacity_reference_kbps
                   (1 when capacity_reference_kbps is 0, i.e. the factor is off)
    day_weight   = floor(WEIGHT_SCALE * performance * capacity)

A day counts only when both sides made at least ``min_attempts`` attempts; a
proxy blocked in the target country (no successful attempt from inside) has
reachability 0 and earns nothing for that day. The exponent (20 by default, as
Nym uses) makes flaky service worth much less than steady service: 90 % is
worth 12 % of 100 %, 50 % is worth a millionth. The weight is computed from the
integer counts in exact integer arithmetic and floored once, to an integer in
units of 1/WEIGHT_SCALE: no float is ever involved.

**Probation.** A day with a positive weight is a day of verified service. The
first ``probation_days`` such days of a proxy (minus the days it already served
in earlier rounds, ``prior_service_days``) earn nothing. The proxy's weight is
the sum of its other day weights.

**Cascades.** A bridge that relays to an exit is one proxy with two
operators. Its earned weight ``w`` (after probation) is split before the pool
is shared: ``exit_w = floor(w * cascade_exit_bp / 10000)`` goes to the exit's
operator in the exit's network, ``w - exit_w`` to the bridge's operator in the
bridge's network. So the split never loses or makes weight, each operator's
cap and each network's cap apply to its own part, and the rounding below
makes the satoshi sum exactly. An exit serving several bridges gets one part
per bridge.

**Sharing the pool, with caps (water-filling).** The pool is the budget minus
the fee reserve. Each operator may get at most ``operator_cap_bp`` and each /24
(or /48) network at most ``network_cap_bp`` basis points of the pool (the cap in
satoshi is floored). The pool is shared by progressive filling: every proxy
receives ``level * weight`` while a common level rises; when an operator or a
network reaches its cap, the proxies in it stop at the level reached, and the
level keeps rising for everyone else, so the excess of a capped operator or
network goes to the others in proportion to their weight. Filling stops when
the pool is shared out or everyone is capped. Levels and shares are exact
fractions (``fractions.Fraction``).

**Rounding (largest remainder).** Each operator's exact share is the sum of its
proxies' shares. Everyone first gets the floor of their exact share; the
satoshi still to give (the floor of the total exact share minus the sum of
floors) go one each to the operators with the largest fractional remainders,
ties broken by operator id in ascending order. Only an operator with a
non-zero remainder can get one, so no integer share exceeds the operator cap.
Network caps hold exactly for the exact shares (rounding each operator's share
may move a network's total by less than one satoshi per operator in it). What
cannot be shared because everyone is capped, or because no proxy earned any
weight, is ``returned_sat``: it stays with the funder.

**Carried amounts and the minimum payout.** An operator is due its share plus
what was carried from its previous rounds. When that is at least
``min_payout_sat`` it is paid in full; otherwise all of it is carried to the
operator's next round, never lost. Hence, exactly::

    paid + carried_out + fee_reserve + returned == budget + carried_in

**Determinism.** Everything is integer or exact-fraction arithmetic, every
accumulation is a sum (independent of input order), and every order that
matters (rounding ties, output order) is by operator id. The same inputs in
any order give the same round.

Rollups are consumed as an iterable, keeping only a small tally per proxy, so a
round over 100,000 proxies and 30 days needs memory for the proxies, not the rows.
Inputs in format /2 are read from their per-proxy columns (:func:`tally_columns`):
a batch of entries at a time, their days as numpy columns, each distinct combination
of counts weighed once in exact integers as above (a day's weight is at most
``WEIGHT_SCALE``, so it and a proxy's sums fit in 64 bits), then summed per proxy,
and probation's earliest days picked, by vectorised passes. That path takes only
regular inputs (each proxy in one entry, days inside the period and distinct, counts
below 2**63, one payout address per operator); anything else, and any error, is
handed to the per-row reading (:func:`tally_groups`), which gives the same sums and
raises the same first error as /1 rows would. ``tests/grants/test_inputs2.py`` checks
that /1 and /2 give the same round, and ``tests/grants/test_award_columns.py`` that
both readings of /2 give the same tally or the same error, on random inputs.
"""

from __future__ import annotations

import bisect
import datetime as dt
import heapq
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from resistance.grants.columns import ProxyColumns
from resistance.grants.errors import InputError
from resistance.grants.model import (
    BASIS_POINTS,
    Award,
    CarriedAmount,
    DailyRollup,
    GrantSettings,
    ProxyDays,
    RoundInputs,
    RoundResult,
)

WEIGHT_SCALE = 10**12


def day_weight(settings: GrantSettings, r: DailyRollup) -> int:
    """The weight of one day of one proxy, an integer in units of 1/WEIGHT_SCALE."""
    return counts_weight(
        settings,
        r.control_attempts,
        r.control_successes,
        r.target_attempts,
        r.target_successes,
        r.throughput_kbps,
    )


def counts_weight(
    settings: GrantSettings, ca: int, cs: int, ta: int, ts: int, throughput_kbps: int
) -> int:
    """``day_weight`` of a day's counts: control and target attempts and successes."""
    if ca < settings.min_attempts or ta < settings.min_attempts:
        return 0
    e = settings.performance_exponent
    num = (cs * ts) ** e
    den = (ca * ta) ** e
    ref = settings.capacity_reference_kbps
    if ref:
        num *= min(throughput_kbps, ref)
        den *= ref
    weight: int = WEIGHT_SCALE * num // den
    return weight


class _ProxyTally:
    """What the rule keeps of one proxy while reading its rows."""

    __slots__ = (
        "days_seen", "early", "exit", "network", "operator_id", "probation", "service", "total",
    )  # fmt: skip

    def __init__(
        self, operator_id: str, network: str, probation: int, exit: tuple[str, str] | None
    ) -> None:
        self.operator_id = operator_id
        self.network = network
        self.exit = exit  # (operator, network) of a cascade's exit
        self.probation = probation
        self.days_seen = 0  # bit i set: day period_start + i has a row
        self.total = 0  # sum of all day weights
        self.service = 0  # days with a positive weight
        self.early: list[tuple[int, int]] = []  # the earliest `probation` service days

    def add(self, day: int, weight: int) -> None:
        if weight <= 0:
            return
        self.total += weight
        self.service += 1
        if self.probation == 0:
            return
        early = self.early
        if len(early) < self.probation:
            bisect.insort(early, (day, weight))
        elif day < early[-1][0]:
            early.pop()
            bisect.insort(early, (day, weight))

    @property
    def earned(self) -> int:
        return self.total - sum(w for _, w in self.early)


@dataclass(frozen=True, slots=True)
class ProxyTotal:
    """What the rule keeps of one proxy read from columns: its sums, probation applied."""

    operator_id: str
    network: str
    exit: tuple[str, str] | None
    service: int  # days with a positive weight
    earned: int  # the sum of its day weights less its probation days'


@dataclass(frozen=True, slots=True)
class Tally:
    """Per-proxy and per-operator facts gathered from the rows."""

    proxies: dict[str, _ProxyTally] | dict[str, ProxyTotal]
    addresses: dict[str, str]
    ignored_rollups: int


def _same_address(addresses: dict[str, str], operator_id: str, address: str) -> None:
    """Every row of one operator names the same payout address."""
    known = addresses.setdefault(operator_id, address)
    if known != address:
        raise InputError(
            f"operator {operator_id}: rows disagree on the payout address ({known} vs {address})"
        )


def _proxy_tally(
    proxies: dict[str, _ProxyTally],
    addresses: dict[str, str],
    row: DailyRollup | ProxyDays,
    probation_left: int,
) -> _ProxyTally:
    """``row``'s proxy's tally, made at its first row; later rows must agree on the
    operator, network and exit, and an exit's rows on its payout address."""
    exit = (row.exit_operator_id, row.exit_network) if row.exit_operator_id else None
    p = proxies.get(row.proxy_id)
    if p is None:
        p = proxies[row.proxy_id] = _ProxyTally(row.operator_id, row.network, probation_left, exit)
    elif p.operator_id != row.operator_id or p.network != row.network or p.exit != exit:
        raise InputError(
            f"proxy {row.proxy_id}: rows disagree on operator, network or exit "
            f"({p.operator_id} {p.network} {p.exit} vs {row.operator_id} {row.network} {exit})"
        )
    if exit is not None:
        _same_address(addresses, row.exit_operator_id, row.exit_payout_address)
    return p


def tally(
    settings: GrantSettings,
    rollups: Iterable[DailyRollup],
    prior_service_days: Mapping[str, int],
) -> Tally:
    """Read the rows once; refuse duplicates, rows outside the period and contradictions."""
    proxies: dict[str, _ProxyTally] = {}
    addresses: dict[str, str] = {}
    start = settings.period_start.toordinal()
    ndays = settings.days
    country = settings.target_country
    probation = settings.probation_days
    weights: dict[tuple[int, int, int, int, int], int] = {}
    ignored = 0
    for r in rollups:
        if r.country != country:
            ignored += 1
            continue
        offset = r.day.toordinal() - start
        if not 0 <= offset < ndays:
            raise InputError(
                f"rollup {r.proxy_id} {r.day}: outside the round's period "
                f"{settings.period_start}..{settings.period_end}"
            )
        left = max(0, probation - prior_service_days.get(r.proxy_id, 0))
        p = _proxy_tally(proxies, addresses, r, left)
        bit = 1 << offset
        if p.days_seen & bit:
            raise InputError(f"rollup {r.proxy_id} {r.day} {country}: duplicate row")
        p.days_seen |= bit
        _same_address(addresses, r.operator_id, r.payout_address)
        key = (
            r.control_attempts,
            r.control_successes,
            r.target_attempts,
            r.target_successes,
            r.throughput_kbps,
        )
        w = weights.get(key)
        if w is None:
            w = weights[key] = day_weight(settings, r)
        p.add(offset, w)
    return Tally(proxies, addresses, ignored)


def tally_groups(
    settings: GrantSettings,
    groups: Iterable[ProxyDays],
    prior_service_days: Mapping[str, int],
) -> Tally:
    """``tally`` over /2 inputs' per-proxy entries, a day at a time: the same checks and
    sums, the shared fields checked once per entry (no object per row; a day's weight
    computed once per distinct combination of counts). The reference that
    :func:`tally_columns` is tested against, and what it hands irregular inputs to."""
    proxies: dict[str, _ProxyTally] = {}
    addresses: dict[str, str] = {}
    start = settings.period_start.toordinal()
    ndays = settings.days
    country = settings.target_country
    probation = settings.probation_days
    weights: dict[tuple[int, int, int, int, int], int] = {}
    ignored = 0
    for g in groups:
        if g.country != country:
            ignored += len(g.day)
            continue
        base = g.first_day.toordinal() - start
        left = max(0, probation - prior_service_days.get(g.proxy_id, 0))
        p = _proxy_tally(proxies, addresses, g, left)
        _same_address(addresses, g.operator_id, g.payout_address)
        for d, ca, cs, ta, ts, tp in zip(
            g.day,
            g.control_attempts,
            g.control_successes,
            g.target_attempts,
            g.target_successes,
            g.throughput_kbps,
            strict=True,
        ):
            offset = base + d
            if not 0 <= offset < ndays:
                raise InputError(
                    f"rollup {g.proxy_id} {g.first_day + dt.timedelta(days=d)}: outside the "
                    f"round's period {settings.period_start}..{settings.period_end}"
                )
            bit = 1 << offset
            if p.days_seen & bit:
                day = g.first_day + dt.timedelta(days=d)
                raise InputError(f"rollup {g.proxy_id} {day} {country}: duplicate row")
            p.days_seen |= bit
            key = (ca, cs, ta, ts, tp)
            w = weights.get(key)
            if w is None:
                w = weights[key] = counts_weight(settings, ca, cs, ta, ts, tp)
            p.add(offset, w)
    return Tally(proxies, addresses, ignored)


#: Rows gathered before a batch of entries is summed in numpy (bounds the batch's arrays).
BATCH_ROWS = 65_536


#: Day weights kept between batches, by their counts (a cache of at most this many).
WEIGHTS_KEPT = 1 << 16


class _Irregular(Exception):
    """The inputs are not for the column path: the per-row reading decides."""


def tally_columns(
    settings: GrantSettings,
    groups: Callable[[], Iterable[ProxyDays]],
    prior_service_days: Mapping[str, int],
) -> Tally:
    """``tally_groups`` vectorised: the same tally from /2 entries (``groups()`` gives
    them, and again if the per-row reading must decide), a batch of entries at a time
    in numpy columns, with no Python work per row."""
    try:
        if isinstance(groups, ProxyColumns):  # the arrays themselves, no entry made
            return _tally_arrays(settings, groups, prior_service_days)
        return _tally_columns(settings, groups(), prior_service_days)
    except (_Irregular, InputError, OverflowError):
        # an error, or inputs only the per-row reading takes: it finds the first problem
        # in reading order and says it as /1 rows would (or gives the same tally)
        return tally_groups(settings, groups(), prior_service_days)


def _tally_columns(
    settings: GrantSettings,
    groups: Iterable[ProxyDays],
    prior_service_days: Mapping[str, int],
    batch_rows: int | None = None,
) -> Tally:
    start = settings.period_start.toordinal()
    country = settings.target_country
    probation = settings.probation_days
    proxies: dict[str, ProxyTotal] = {}
    addresses: dict[str, str] = {}
    weights: dict[tuple[int, ...], int] = {}
    ignored = 0
    batch = _Batch()
    limit = batch_rows or BATCH_ROWS
    for g in groups:
        if g.country != country:
            ignored += len(g.day)
            continue
        if g.proxy_id in proxies or g.proxy_id in batch.ids:
            raise _Irregular  # a proxy in several entries: the per-row reading merges them
        exit = (g.exit_operator_id, g.exit_network) if g.exit_operator_id else None
        if exit is not None:
            _same_payout(addresses, g.exit_operator_id, g.exit_payout_address)
        _same_payout(addresses, g.operator_id, g.payout_address)
        left = max(0, probation - prior_service_days.get(g.proxy_id, 0)) if probation else 0
        batch.add(g, exit, g.first_day.toordinal() - start, left)
        if len(batch.day) >= limit:
            batch.settle(settings, weights, proxies)
            batch = _Batch()
    batch.settle(settings, weights, proxies)
    return Tally(proxies, addresses, ignored)


def _tally_arrays(
    settings: GrantSettings,
    columns: ProxyColumns,
    prior_service_days: Mapping[str, int],
    batch_rows: int | None = None,
) -> Tally:
    """``_tally_columns`` over :class:`ProxyColumns`: the same checks and sums, a batch
    of entries' rows taken as slices of the arrays (no list per entry)."""
    country = settings.target_country
    probation = settings.probation_days
    proxies: dict[str, ProxyTotal] = {}
    addresses: dict[str, str] = {}
    weights: dict[tuple[int, ...], int] = {}
    base = columns.first_day.toordinal() - settings.period_start.toordinal()
    ignored = 0
    seen: set[str] = set()
    taken: list[int] = []  # entries of the target country, in order
    meta: list[tuple[str, str, str, tuple[str, str] | None]] = []
    lefts: list[int] = []
    bounds = columns.bounds.tolist()
    for k, f in enumerate(columns.fields):
        if f["country"] != country:
            a, b = bounds[k]
            ignored += b - a
            continue
        proxy_id = f["proxy_id"]
        if proxy_id in seen:
            raise _Irregular  # a proxy in several entries: the per-row reading merges them
        seen.add(proxy_id)
        exit_operator = f.get("exit_operator_id", "")
        exit = (exit_operator, f.get("exit_network", "")) if exit_operator else None
        if exit is not None:
            _same_payout(addresses, exit_operator, f.get("exit_payout_address", ""))
        _same_payout(addresses, f["operator_id"], f["payout_address"])
        taken.append(k)
        meta.append((proxy_id, f["operator_id"], f["network"], exit))
        lefts.append(max(0, probation - prior_service_days.get(proxy_id, 0)) if probation else 0)
    limit = batch_rows or BATCH_ROWS
    picked = columns.bounds[taken] if taken else np.zeros((0, 2), dtype=np.int64)
    lengths = picked[:, 1] - picked[:, 0]
    if len(lengths) and int(lengths.min()) < 1:
        raise _Irregular  # an entry without days: the per-row reading names it
    ends = np.cumsum(lengths)
    lo = 0
    while lo < len(taken):
        # the next entries up to about `limit` rows (at least one entry)
        hi = max(lo + 1, int(np.searchsorted(ends, (ends[lo - 1] if lo else 0) + limit)))
        part = picked[lo:hi]
        rows: Any
        if (part[1:, 0] == part[:-1, 1]).all():
            rows = slice(int(part[0, 0]), int(part[-1, 1]))  # consecutive entries
        else:
            rows = np.concatenate([np.arange(a, b) for a, b in part.tolist()])
        _settle(
            settings, weights, proxies, meta[lo:hi], np.full(hi - lo, base, dtype=np.int64),
            lefts[lo:hi], lengths[lo:hi], columns.columns[0][rows],
            np.stack([c[rows] for c in columns.columns[1:]]),
        )  # fmt: skip
        lo = hi
    return Tally(proxies, addresses, ignored)


def _distinct(counts: Any) -> tuple[Any, Any]:
    """The distinct columns of ``counts`` (5 x n, non-negative) and, for each column, the
    index of its distinct one: through one integer per column in mixed radix when they
    fit in 63 bits (a sort of n integers, not of n rows)."""
    # radices as Python integers: a count of 2**63 - 1 has a radix int64 cannot hold
    radix = [top + 1 for top in counts.max(axis=1).tolist()]
    if math.prod(radix) <= 2**62:
        key = np.zeros(counts.shape[1], dtype=np.int64)
        for row, base in zip(counts, radix, strict=True):
            key = key * base + row
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        return counts[:, first].T, inverse.reshape(-1)
    combos, inverse = np.unique(counts.T, axis=0, return_inverse=True)
    return combos, inverse.reshape(-1)


def _same_payout(addresses: dict[str, str], operator_id: str, address: str) -> None:
    if addresses.setdefault(operator_id, address) != address:
        raise _Irregular  # the per-row reading names the row that disagrees


class _Batch:
    """Entries gathered for one vectorised pass: their fields, and their days as flat
    columns (``len`` of each entry's days in ``lengths``)."""

    __slots__ = ("bases", "columns", "day", "ids", "lefts", "lengths", "meta")

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.meta: list[tuple[str, str, str, tuple[str, str] | None]] = []
        self.bases: list[int] = []
        self.lefts: list[int] = []
        self.lengths: list[int] = []
        self.day: list[int] = []
        self.columns: tuple[list[int], ...] = ([], [], [], [], [])

    def add(self, g: ProxyDays, exit: tuple[str, str] | None, base: int, left: int) -> None:
        self.ids.add(g.proxy_id)
        self.meta.append((g.proxy_id, g.operator_id, g.network, exit))
        self.bases.append(base)
        self.lefts.append(left)
        self.lengths.append(len(g.day))
        self.day.extend(g.day)
        ca, cs, ta, ts, tp = self.columns
        ca.extend(g.control_attempts)
        cs.extend(g.control_successes)
        ta.extend(g.target_attempts)
        ts.extend(g.target_successes)
        tp.extend(g.throughput_kbps)

    def settle(
        self,
        settings: GrantSettings,
        weights: dict[tuple[int, ...], int],
        proxies: dict[str, ProxyTotal],
    ) -> None:
        """Weigh the batch's days and add each entry's sums to ``proxies``."""
        if not self.meta:
            return
        _settle(
            settings, weights, proxies, self.meta, np.array(self.bases, dtype=np.int64),
            self.lefts, np.array(self.lengths, dtype=np.int64),
            np.array(self.day, dtype=np.int64),
            np.array(self.columns, dtype=np.int64),  # OverflowError: a count >= 2**63
        )  # fmt: skip


def _settle(
    settings: GrantSettings,
    weights: dict[tuple[int, ...], int],
    proxies: dict[str, ProxyTotal],
    meta: Sequence[tuple[str, str, str, tuple[str, str] | None]],
    bases: Any,
    lefts: Sequence[int],
    lengths: Any,
    day: Any,
    counts: Any,
) -> None:
    """Weigh a batch of entries' days (``day`` and the 5 x n ``counts``, ``lengths[k]``
    of them for entry ``k``, its days counted from ``bases[k]`` days after the period's
    start) and add each entry's sums to ``proxies``."""
    ndays = settings.days
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    entry = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    offset = day + bases[entry]
    if offset.min() < 0 or offset.max() >= ndays:
        raise _Irregular  # a day outside the period
    key = entry * ndays + offset
    step = np.diff(key)
    if (step > 0).all():
        order = None  # already by entry, then day (the registry writes them so)
    else:
        order = np.argsort(key, kind="stable")  # by entry, then day (entries stay in place)
        if (np.diff(key[order]) == 0).any():
            raise _Irregular  # a day twice
    counts = counts.copy()
    # the weight reads the throughput only up to the reference (not at all without one)
    ref = settings.capacity_reference_kbps
    counts[4] = np.minimum(counts[4], ref) if ref else 0
    if len(weights) > WEIGHTS_KEPT:
        weights.clear()  # a cache: bounded, whatever the spread of the counts
    combos, inverse = _distinct(counts)
    combo_weights = []
    for combo in combos.tolist():
        ident = tuple(combo)
        w = weights.get(ident)
        if w is None:
            w = weights[ident] = counts_weight(settings, *combo)
        combo_weights.append(w)
    # a weight is at most WEIGHT_SCALE, so a proxy's sum of days fits in 64 bits
    weight = np.array(combo_weights, dtype=np.int64)[inverse]
    served = weight > 0
    total = np.add.reduceat(weight, starts)
    service = np.add.reduceat(served.astype(np.int64), starts)
    if any(lefts):
        # probation: the first `left` days with a positive weight, in day order
        w_sorted = weight if order is None else weight[order]
        s_sorted = w_sorted > 0
        seen = np.cumsum(s_sorted, dtype=np.int64)
        before = seen[starts] - s_sorted[starts].astype(np.int64)
        rank = seen - 1 - before[entry]
        early = s_sorted & (rank < np.array(lefts, dtype=np.int64)[entry])
        total = total - np.add.reduceat(np.where(early, w_sorted, 0), starts)
    for (proxy_id, operator_id, network, exit), earned, days in zip(
        meta, total.tolist(), service.tolist(), strict=True
    ):
        proxies[proxy_id] = ProxyTotal(operator_id, network, exit, days, earned)


# --- water-filling -----------------------------------------------------------------------


def fill(
    pool: int,
    units: list[tuple[str, str, int]],
    operator_cap: int,
    network_cap: int,
) -> list[Fraction]:
    """Share ``pool`` over units (operator, network, weight > 0) by progressive filling.

    Returns each unit's exact share. Each operator's total is at most
    ``operator_cap`` and each network's at most ``network_cap``; the total is
    ``pool`` unless every unit ends capped.
    """
    return [
        level * w
        for level, (_, _, w) in zip(
            fill_levels(pool, units, operator_cap, network_cap), units, strict=True
        )
    ]


def fill_levels(
    pool: int,
    units: list[tuple[str, str, int]],
    operator_cap: int,
    network_cap: int,
) -> list[Fraction]:
    """:func:`fill`'s level of each unit (its share is ``level * weight``): units that
    stopped together share one ``Fraction`` object, so a caller can sum weights per
    level and multiply once (what :func:`_result` does: 70,000 units but a few levels)."""
    n = len(units)
    levels: list[Fraction | None] = [None] * n
    if n == 0 or pool == 0:
        return [Fraction(0)] * n
    members: dict[tuple[int, str], list[int]] = {}
    for i, (op, net, _) in enumerate(units):
        members.setdefault((0, op), []).append(i)
        members.setdefault((1, net), []).append(i)
    caps = (operator_cap, network_cap)
    active_w: dict[tuple[int, str], int] = {}
    frozen: dict[tuple[int, str], Fraction] = {}
    zero = Fraction(0)  # immutable: one object for every group's start
    version: dict[tuple[int, str], int] = {}
    heap: list[tuple[Fraction, int, str, int]] = []
    for g, idx in members.items():
        active_w[g] = sum(units[i][2] for i in idx)
        frozen[g] = zero
        version[g] = 0
        if caps[g[0]] < pool:
            heap.append((Fraction(caps[g[0]], active_w[g]), g[0], g[1], 0))
    heapq.heapify(heap)
    w_active = sum(u[2] for u in units)
    f_total = Fraction(0)
    while w_active > 0:
        t_pool = (pool - f_total) / w_active
        while heap:
            t, kind, name, ver = heap[0]
            g = (kind, name)
            if ver != version[g] or active_w[g] == 0:
                heapq.heappop(heap)
                continue
            break
        if not heap or heap[0][0] >= t_pool:
            for i in range(n):
                if levels[i] is None:
                    levels[i] = t_pool
            break
        t, kind, name, _ = heapq.heappop(heap)
        g = (kind, name)
        for i in members[g]:
            if levels[i] is not None:
                continue
            levels[i] = t
            op, net, w = units[i]
            share = t * w
            w_active -= w
            f_total += share
            for h in ((0, op), (1, net)):
                active_w[h] -= w
                frozen[h] += share
                if h != g and active_w[h] > 0 and caps[h[0]] < pool:
                    version[h] += 1
                    t_h = (caps[h[0]] - frozen[h]) / active_w[h]
                    heapq.heappush(heap, (t_h, h[0], h[1], version[h]))
    out: list[Fraction] = []
    for level in levels:
        assert level is not None
        out.append(level)
    return out


def largest_remainder(total: int, shares: list[tuple[str, Fraction]]) -> dict[str, int]:
    """Round exact shares to integers summing to ``total`` (Hamilton's method).

    ``total`` must lie between the sum of floors and the sum of the exact shares.
    Ties are broken by key in ascending order.
    """
    floors: dict[str, int] = {}
    remainders: list[tuple[str, Fraction]] = []
    for key, share in sorted(shares, key=lambda ks: ks[0]):
        f = share.numerator // share.denominator
        floors[key] = f
        rem = share - f
        if rem:
            remainders.append((key, rem))
    missing = total - sum(floors.values())
    if missing < 0 or missing > len(remainders):
        raise ValueError("total is outside what the shares can be rounded to")
    # A reverse sort is stable: equal remainders keep ascending key order.
    remainders.sort(key=lambda kr: kr[1], reverse=True)
    for key, _ in remainders[:missing]:
        floors[key] += 1
    return floors


def split_weight(
    settings: GrantSettings, p: _ProxyTally | ProxyTotal
) -> list[tuple[str, str, int]]:
    """(operator, network, weight) parts of one proxy's earned weight: one part, or a
    cascade's bridge part and exit part (the exit's floored, so they sum exactly)."""
    earned = p.earned
    if p.exit is None:
        return [(p.operator_id, p.network, earned)]
    exit_weight = earned * settings.cascade_exit_bp // BASIS_POINTS
    return [(p.operator_id, p.network, earned - exit_weight), (*p.exit, exit_weight)]


def compute_result(
    settings: GrantSettings,
    inputs: RoundInputs,
    *,
    groups: Callable[[], Iterable[ProxyDays]] | None = None,
) -> RoundResult:
    """Apply the award rule to a round's recorded inputs (/2: read from their columns).

    ``groups`` gives /2 inputs' entries when whoever made the chunks still holds them
    (the registry's round worker, from the arrays it wrote them from): they must be the
    entries of ``inputs.groups()``, which are read when it is None."""
    if inputs.chunks is not None:
        t = tally_columns(settings, groups or inputs.groups, inputs.prior_service_days)
        return _result(settings, t, inputs.carried_in)
    return compute_result_from(
        settings, inputs.rollups, inputs.carried_in, inputs.prior_service_days
    )


def compute_result_from(
    settings: GrantSettings,
    rollups: Iterable[DailyRollup],
    carried_in: Iterable[CarriedAmount],
    prior_service_days: Mapping[str, int],
) -> RoundResult:
    """The award rule over an iterable of rows (read once)."""
    return _result(settings, tally(settings, rollups, prior_service_days), carried_in)


def _result(settings: GrantSettings, t: Tally, carried_in: Iterable[CarriedAmount]) -> RoundResult:
    """The rule's sharing, caps, rounding and carries over the tallied proxies."""
    pool = settings.pool_sat
    unit_weight: dict[tuple[str, str], int] = {}
    op_weight: dict[str, int] = {}
    op_proxies: dict[str, int] = {}
    op_days: dict[str, int] = {}
    for p in t.proxies.values():
        for op, net, earned in split_weight(settings, p):
            op_weight[op] = op_weight.get(op, 0) + earned
            op_proxies[op] = op_proxies.get(op, 0) + 1
            op_days[op] = op_days.get(op, 0) + p.service
            if earned > 0:
                key = (op, net)
                unit_weight[key] = unit_weight.get(key, 0) + earned
    units = [(op, net, w) for (op, net), w in sorted(unit_weight.items())]
    levels = fill_levels(
        pool,
        units,
        pool * settings.operator_cap_bp // BASIS_POINTS,
        pool * settings.network_cap_bp // BASIS_POINTS,
    )
    # an operator's exact share is the sum of level * weight over its units: its weights
    # summed per level first (integers), then one product per level (exact either way)
    per_level: dict[tuple[str, int], int] = {}
    level_of: dict[int, Fraction] = {}
    for (op, _, w), level in zip(units, levels, strict=True):
        at = (op, id(level))
        level_of[id(level)] = level
        per_level[at] = per_level.get(at, 0) + w
    op_exact: dict[str, Fraction] = {}
    for (op, level_id), w in per_level.items():
        share = level_of[level_id] * w
        op_exact[op] = op_exact[op] + share if op in op_exact else share
    total_exact = sum(op_exact.values(), Fraction(0))
    distributed = total_exact.numerator // total_exact.denominator
    shares = largest_remainder(distributed, list(op_exact.items()))

    carried: dict[str, int] = {}
    addresses = dict(t.addresses)
    for c in carried_in:
        if c.operator_id in carried:
            raise InputError(f"carried_in: operator {c.operator_id} listed twice")
        carried[c.operator_id] = c.amount_sat
        known = addresses.setdefault(c.operator_id, c.payout_address)
        if known != c.payout_address:
            raise InputError(
                f"operator {c.operator_id}: carried amount names payout address "
                f"{c.payout_address}, rollups name {known}"
            )
    awards = []
    for op in sorted(addresses):
        share_sat = shares.get(op, 0)
        due = share_sat + carried.get(op, 0)
        paid = due if due >= settings.min_payout_sat else 0
        if not (due or op_weight.get(op, 0) or op_proxies.get(op, 0)):
            continue
        awards.append(
            Award(
                operator_id=op,
                payout_address=addresses[op],
                weight=op_weight.get(op, 0),
                proxies=op_proxies.get(op, 0),
                service_days=op_days.get(op, 0),
                share_sat=share_sat,
                carried_in_sat=carried.get(op, 0),
                amount_sat=paid,
                carried_out_sat=due - paid,
            )
        )
    return RoundResult(
        awards=tuple(awards),
        pool_sat=pool,
        distributed_sat=distributed,
        returned_sat=pool - distributed,
        ignored_rollups=t.ignored_rollups,
    )
