"""Grant rounds kept by the registry: inputs built from its rollups, approved once, paid once.

Theory of operation
-------------------
**Inputs.** A round covers a period (UTC days, both ends included) and a
target country. For each proxy and day the registry sums its daily rollups
(``probe_rollups``): attempts and successes from *control* vantages (outside
any censorship) and from vantages *in the target country*, and takes the
median throughput of that day's measurements from both; that is one
``DailyRollup`` as the award rule reads it. Each proxy's network is its /24
(IPv4) or /48 (IPv6). Operators' payout addresses are copied into the inputs
when the draft is computed (an operator without one is left out and listed in
``skipped_operators``). With probation on, ``prior_service_days`` counts each
proxy's days before the period that earned a positive weight under the
round's own settings. Amounts below the minimum payout that earlier *paid*
rounds owe an operator (``grant_carries`` not yet taken in) become its
``carried_in``. The inputs are signed with every directory signing key of
the registry (:mod:`resistance.grants.signing`), so a funder who pins those
keys can check, from the round file alone, that the measurements are the
registry's. They are made in format /2 (:mod:`resistance.grants.model`): each
proxy's fields once with its days as integer columns, taken straight from the
day totals' arrays, in chunks of at most ``CHUNK_PROXIES`` proxies; the
signature covers the manifest of the chunks' SHA-256 digests, so signing costs
one hash over the chunks, not a canonical form of every row. The chunks are
stored as rows of ``grant_round_chunks`` (the round's ``inputs`` column keeps
the manifest and the rest) and streamed a few at a time on export. Rounds
stored in format /1 before still load, verify and export as they were.

**States.** A *draft* may be recomputed (fresh rollups, addresses and carried
amounts, other settings) or deleted. *Approve* freezes it: only after its
period is over, it records the digest of settings, inputs and result, and
claims the carried amounts its inputs took in (each can be claimed by one
round only; if another round claimed one meanwhile, approval is refused and
the draft must be recomputed). Nothing in an approved round changes again; a
payout address changed later is not seen. *Mark paid* accepts a signed
transaction only if it pays exactly the approved awards
(``payout.check_payment``), records it and its txid, and turns the round's
carried-out amounts into new ``grant_carries`` for later rounds. A round that
pays nobody (everyone below the minimum) has nothing to pay: its carried
amounts are recorded when it is approved.

Every transition is one transaction whose state change is conditional on the
state it starts from (``UPDATE … WHERE status = 'draft'``), so two concurrent
requests cannot both approve or both pay a round, and a refused request
changes nothing. A round is built, signed, computed and serialized in a worker
process (:func:`compute_job`, its own database connection), outside any
transaction, so the registry keeps answering while a round over 100,000
proxies is computed; decoding a transaction runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import json
import multiprocessing
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from resistance.grants import rounds as grant_rounds
from resistance.grants.amounts import MAX_PERIOD_DAYS, default_round_id
from resistance.grants.award import counts_weight
from resistance.grants.columns import ProxyColumns
from resistance.grants.errors import GrantsError, RoundStateError
from resistance.grants.model import (
    CHUNK_COLUMNS,
    CHUNK_PROXIES,
    FORMAT,
    INPUTS_FORMAT_2,
    CarriedAmount,
    GrantRound,
    GrantSettings,
    RoundInputs,
    canonical_json,
    result_to_json,
    round_from_json,
    settings_from_json,
    settings_to_json,
)
from resistance.grants.signing import sign_inputs_json
from resistance.registry import repositories as repo
from resistance.registry.db import make_engine, make_sessions
from resistance.registry.errors import ApiError
from resistance.registry.models import GrantRoundRow
from resistance.registry.round_days import DayTotals, day_offsets, day_totals
from resistance.registry.schemas import RoundCreateRequest, RoundRecomputeRequest
from resistance.registry.services import Registry, utc_day

#: The settings a request may give (the recompute request's fields, every one optional
#: there); the rest (id, network, country, period) are the round's.
TUNABLE: tuple[str, ...] = tuple(RoundRecomputeRequest.model_fields)


# --- building the inputs --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BuiltInputs:
    inputs: RoundInputs
    carry_ids: list[int]
    skipped_operators: list[str]
    #: :func:`per_proxy` of the inputs, summed from the columns as they were built
    #: (so the worker does not read its chunks back for them).
    per_proxy: list[dict[str, Any]]
    #: The chunks' entries as the arrays they were written from (the same integers,
    #: without parsing ~100 MB of JSON back): what the award rule reads; called, it
    #: gives them as ``ProxyDays``.
    groups: ProxyColumns


@dataclass(frozen=True, slots=True)
class _Operator:
    name: str
    payout_address: str | None


def _proxy_runs(t: DayTotals) -> npt.NDArray[np.int64]:
    """The ``[start, end)`` of each proxy's days in ``t`` (sorted by proxy, then day), as
    the rows of an (n, 2) array."""
    ids = t.proxy
    if not len(ids):
        return np.zeros((0, 2), dtype=np.int64)
    starts = np.flatnonzero(np.concatenate(([True], ids[1:] != ids[:-1])))
    ends = np.append(starts[1:], len(ids))
    return np.stack((starts, ends), axis=1).astype(np.int64)


def _service_days(settings: GrantSettings, t: DayTotals, wanted: set[int]) -> dict[str, int]:
    """Days of ``t`` with a positive weight under ``settings``, per proxy in ``wanted`` (a
    weight computed once per distinct combination of counts)."""
    keep = np.isin(t.proxy, np.fromiter(wanted, dtype=np.int64, count=len(wanted)))
    if not keep.any():
        return {}
    counts = np.stack([getattr(t, name)[keep] for name in CHUNK_COLUMNS], axis=1)
    combos, inverse = np.unique(counts, axis=0, return_inverse=True)
    positive = np.asarray([counts_weight(settings, *c) > 0 for c in combos.tolist()])
    served = t.proxy[keep][positive[inverse.reshape(-1)]]
    ids, days = np.unique(served, return_counts=True)
    return {str(p): d for p, d in zip(ids.tolist(), days.tolist(), strict=True)}


def _exit_of(
    proxy: Any, proxies: dict[int, Any], operators: dict[int, Any]
) -> tuple[str, str, str] | None:
    """A bridge's exit as the award rule needs it; None for an ordinary proxy, or when
    the exit is gone or its operator has no payout address (then the bridge's
    operator is paid the whole award, as for any one-hop proxy)."""
    if proxy.cascade_role != "bridge" or proxy.exit_id is None:
        return None
    exit_proxy = proxies.get(proxy.exit_id)
    operator = operators.get(exit_proxy.operator_id) if exit_proxy is not None else None
    if exit_proxy is None or operator is None or not operator.payout_address:
        return None
    return operator.name, exit_proxy.network, operator.payout_address


async def build_inputs(session: AsyncSession, *, settings: GrantSettings) -> BuiltInputs:
    """The round's inputs from the registry's rollups, addresses and open carried amounts,
    in format /2: chunks of per-proxy columns made straight from the day totals' arrays,
    one chunk's rows turned into Python integers at a time. The award rule then reads
    the same entries made again from those arrays (``groups``): the chunks' JSON holds
    exactly these integers, so what is signed is what is computed (a funder's verify
    recomputes the round from the chunks themselves)."""
    operators = {  # plain objects: an ORM attribute read per proxy was ~0.6 s at 100k
        o.id: _Operator(o.name, o.payout_address) for o in await repo.all_operators(session)
    }
    proxies = {p.id: p for p in await repo.round_proxies(session)}
    start = settings.period_start.isoformat()
    after = (settings.period_end + dt.timedelta(days=1)).isoformat()
    country = settings.target_country
    totals = await day_totals(session, country=country, since=start, before=after)
    skipped: set[str] = set()
    kept: list[tuple[int, int, dict[str, Any]]] = []  # rows [a, b) and the entry's fields
    sums: list[dict[str, Any]] = []
    runs = _proxy_runs(totals)
    # each proxy's sums (page rows), one numpy pass per column over all its days
    per_run = [
        np.add.reduceat(getattr(totals, name), runs[:, 0]).tolist() if len(runs) else []
        for name in _PER_PROXY[1:]
    ]
    for n, (a, b, proxy_id) in enumerate(
        zip(
            runs[:, 0].tolist(), runs[:, 1].tolist(), totals.proxy[runs[:, 0]].tolist(), strict=True
        )
    ):
        proxy = proxies.get(proxy_id)
        operator = operators.get(proxy.operator_id) if proxy is not None else None
        if proxy is None or operator is None or proxy.cascade_role == "exit":
            continue  # an exit is paid through its bridges only
        if not operator.payout_address:
            skipped.add(operator.name)
            continue
        fields: dict[str, Any] = {
            "proxy_id": str(proxy.id),
            "operator_id": operator.name,
            "network": proxy.network,
            "payout_address": operator.payout_address,
            "country": country,
        }
        exit = _exit_of(proxy, proxies, operators)
        if exit is not None:
            fields["exit_operator_id"], fields["exit_network"], fields["exit_payout_address"] = exit
        kept.append((a, b, fields))
        sums.append(
            {
                "proxy_id": fields["proxy_id"],
                "operator": operator.name,
                "network": proxy.network,
                "days": b - a,
                **{name: column[n] for name, column in zip(_PER_PROXY[1:], per_run, strict=True)},
            }
        )
    offsets = day_offsets(totals.day_code, settings.period_start)
    columns = (offsets, *(getattr(totals, name) for name in CHUNK_COLUMNS))
    entries = ProxyColumns(
        settings.period_start,
        [fields for _, _, fields in kept],
        np.asarray([(a, b) for a, b, _ in kept], dtype=np.int64).reshape(-1, 2),
        columns,
        CHUNK_PROXIES,
    )
    chunks = entries.chunk_texts()
    wanted = {a_fields[2]["proxy_id"] for a_fields in kept}
    del totals, offsets
    prior: dict[str, int] = {}
    if settings.probation_days > 0 and wanted:
        earlier = await day_totals(session, country=country, since=None, before=start)
        prior = _service_days(settings, earlier, {int(p) for p in wanted})
    carried: dict[int, int] = {}
    carry_ids: list[int] = []
    for carry in await repo.open_carries(session):
        operator = operators.get(carry.operator_id)
        if operator is None or not operator.payout_address:
            continue
        carried[carry.operator_id] = carried.get(carry.operator_id, 0) + carry.amount_sat
        carry_ids.append(carry.id)
    carried_in = tuple(
        CarriedAmount(
            operator_id=operators[op].name,
            payout_address=operators[op].payout_address or "",
            amount_sat=amount,
        )
        for op, amount in sorted(carried.items(), key=lambda kv: operators[kv[0]].name)
    )
    inputs = RoundInputs((), carried_in, dict(sorted(prior.items())), (), chunks)
    sums.sort(key=lambda p: (p["operator"], int(p["proxy_id"])))
    return BuiltInputs(inputs, carry_ids, sorted(skipped), sums, entries)


# --- views ----------------------------------------------------------------------------


def summary(row: GrantRoundRow) -> dict[str, Any]:
    return {
        "round_id": row.round_id,
        "status": row.status,
        "network": row.network,
        "target_country": row.target_country,
        "period_start": row.period_start,
        "period_end": row.period_end,
        "budget_sat": row.budget_sat,
        "paid_sat": row.paid_sat,
        "payouts": row.payouts,
        "digest": row.digest,
        "txid": row.txid,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "approved_at": row.approved_at,
        "paid_at": row.paid_at,
    }


def inputs_summary(row: GrantRoundRow) -> dict[str, Any]:
    """``rollups`` (a count), ``signatures`` (key ids) and ``carried_in`` of the round's
    inputs: stored beside them since migration 0015, read from them before."""
    if row.summary is not None:
        summary: dict[str, Any] = json.loads(row.summary)
        return summary
    inputs = json.loads(row.inputs)
    if inputs.get("format") == INPUTS_FORMAT_2:
        rows = sum(
            len(p["day"]) for chunk in inputs["chunks"] for p in json.loads(chunk)["proxies"]
        )
    else:
        rows = len(inputs["rollups"])
    return {
        "rollups": rows,
        "signatures": [s["key_id"] for s in inputs["signatures"]],
        "carried_in": inputs.get("carried_in", []),
    }


def view(row: GrantRoundRow) -> dict[str, Any]:
    settings = json.loads(row.settings)
    result = json.loads(row.result)
    inputs = inputs_summary(row)
    return {
        **summary(row),
        "settings": settings,
        "pool_sat": result["pool_sat"],
        "distributed_sat": result["distributed_sat"],
        "returned_sat": result["returned_sat"],
        "ignored_rollups": result["ignored_rollups"],
        "carried_in_sat": result["totals"]["carried_in_sat"],
        "carried_out_sat": result["totals"]["carried_out_sat"],
        "rollups": inputs["rollups"],
        "signatures": inputs["signatures"],
        "skipped_operators": list(row.skipped_operators),
        "awards": result["awards"],
    }


def load_round(row: GrantRoundRow, inputs: dict[str, Any] | None = None) -> GrantRound:
    """The stored round as the grants package knows it, from its row and its inputs'
    JSON whole (default: the ``inputs`` column, as for a round stored before migration
    0019); :func:`stored_round` adds a /2 round's chunks from their rows."""
    if inputs is None:
        inputs = json.loads(row.inputs)
    state: dict[str, Any] = {"status": row.status}
    if row.digest is not None:
        state["digest"] = row.digest
    if row.txid is not None:
        state["txid"] = row.txid
    return round_from_json(
        {
            "format": FORMAT,
            "settings": json.loads(row.settings),
            "inputs": inputs,
            "result": json.loads(row.result),
            "state": state,
        }
    )


async def stored_round(session: AsyncSession, row: GrantRoundRow) -> GrantRound:
    """The stored round with its inputs whole: /2 chunks read from their rows (a round
    stored before migration 0019, or downgraded past it, has them in ``inputs``)."""
    inputs = json.loads(row.inputs)
    if inputs.get("format") == INPUTS_FORMAT_2 and "chunks" not in inputs:
        inputs["chunks"] = await repo.round_chunks(session, round_pk=row.id)
    return load_round(row, inputs)


def _stored(round_: GrantRound, inputs_json: dict[str, Any], *, rows: int) -> dict[str, Any]:
    """The columns that hold a computed round (``inputs_json``: its inputs' JSON; a /2
    round's chunks are stored as rows, :func:`_store_chunks`, not in them)."""
    inputs_json = {k: v for k, v in inputs_json.items() if k != "chunks"}
    return {
        "budget_sat": round_.settings.budget_sat,
        "paid_sat": round_.result.paid_sat,
        "payouts": len(round_.result.payouts()),
        "settings": canonical_json(settings_to_json(round_.settings)),
        "inputs": canonical_json(inputs_json),
        "result": canonical_json(result_to_json(round_.result)),
        "summary": canonical_json(
            {
                "rollups": rows,
                "signatures": [s.key_id for s in round_.inputs.signatures],
                "carried_in": [
                    {
                        "operator_id": c.operator_id,
                        "payout_address": c.payout_address,
                        "amount_sat": c.amount_sat,
                    }
                    for c in round_.inputs.carried_in
                ],
            }
        ),
    }


# --- use cases ------------------------------------------------------------------------


def _date(text: str, what: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ApiError(422, f"{what} {text!r} is not a date (YYYY-MM-DD)") from None


def _settings(**values: Any) -> GrantSettings:
    try:
        return GrantSettings(**values)
    except GrantsError as exc:
        raise ApiError(422, f"settings refused: {exc}") from None


@dataclass(frozen=True, slots=True, repr=False)
class Computed:
    """A round computed by a worker: the columns to store, and what the view reads."""

    stored: dict[str, Any]
    carry_ids: list[int]
    skipped_operators: list[str]
    #: The inputs summed per proxy, in page order (:func:`per_proxy`).
    per_proxy: list[dict[str, Any]]
    #: The /2 inputs' chunks, stored as rows of ``grant_round_chunks``.
    chunks: tuple[str, ...]

    def __repr__(self) -> str:
        # short: asyncio.run formats its task's repr, result included, when it restores
        # the SIGINT handler (Python 3.11), which took 1.4 s at 100,000 proxies
        return f"Computed({len(self.per_proxy)} proxies, {len(self.chunks)} chunks)"


def compute_job(
    database_url: str, settings_json: str, keys: list[bytes]
) -> Computed | tuple[str, str]:
    """Build, sign and compute a round, and serialize it: the whole CPU-heavy part of a
    round, as a plain function of picklable arguments run in a worker process (its
    own event loop and database connection), so the registry's event loop never
    waits on it.  Returns the computed round, or ``("refused", why)``."""
    settings = settings_from_json(json.loads(settings_json))
    signing = [Ed25519PrivateKey.from_private_bytes(k) for k in keys]
    # The job makes millions of short-lived, acyclic objects (rows' texts, entries'
    # integers): the cyclic collector's passes over everything alive cost ~10 % of its
    # CPU at 100,000 proxies and find next to nothing. Off for the job, on afterwards
    # (the worker process is reused), and what cycles it left are collected then.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return asyncio.run(_compute_in_worker(database_url, settings, signing))
    finally:
        if was_enabled:
            gc.enable()
            gc.collect()


async def _compute_in_worker(
    database_url: str, settings: GrantSettings, keys: list[Ed25519PrivateKey]
) -> Computed | tuple[str, str]:
    engine = make_engine(database_url)
    try:
        async with make_sessions(engine)() as session:
            built = await build_inputs(session, settings=settings)
    finally:
        await engine.dispose()
    inputs, inputs_json = sign_inputs_json(settings, built.inputs, keys)
    try:
        # what a funder's verify refuses in the chunks is refused here, before it is signed
        # into a round (the award rule reads the arrays, not the chunks)
        built.groups.check()
        round_ = grant_rounds.compute_round(settings, inputs, groups=built.groups)
    except GrantsError as exc:
        return ("refused", str(exc))
    sums = built.per_proxy  # also counts the rows
    chunks = round_.inputs.chunks
    assert isinstance(chunks, tuple)  # built in memory here
    return Computed(
        _stored(round_, inputs_json, rows=sum(p["days"] for p in sums)),
        built.carry_ids,
        built.skipped_operators,
        sums,
        chunks,
    )


def per_proxy(inputs: RoundInputs) -> list[dict[str, Any]]:
    """The inputs summed per proxy (days, control and target checks), sorted by operator
    and proxy: the rows of ``grant_round_proxies`` without their round and position."""
    out: dict[str, dict[str, Any]] = {}

    def add(proxy_id: str, operator: str, network: str, counts: tuple[int, ...]) -> None:
        p = out.get(proxy_id)
        if p is None:
            p = out[proxy_id] = {
                "proxy_id": proxy_id,
                "operator": operator,
                "network": network,
                "days": 0,
                "control_attempts": 0,
                "control_successes": 0,
                "target_attempts": 0,
                "target_successes": 0,
            }
        for name, value in zip(_PER_PROXY, counts, strict=True):
            p[name] += value

    if inputs.chunks is None:
        for r in inputs.rollups:
            counts = (
                1, r.control_attempts, r.control_successes, r.target_attempts,
                r.target_successes,
            )  # fmt: skip
            add(r.proxy_id, r.operator_id, r.network, counts)
    else:  # /2: a proxy's sums are sums of its columns
        for g in inputs.groups():
            counts = (
                len(g.day), sum(g.control_attempts), sum(g.control_successes),
                sum(g.target_attempts), sum(g.target_successes),
            )  # fmt: skip
            add(g.proxy_id, g.operator_id, g.network, counts)
    return sorted(out.values(), key=lambda p: (p["operator"], int(p["proxy_id"])))


_PER_PROXY = ("days", "control_attempts", "control_successes", "target_attempts",
              "target_successes")  # fmt: skip


async def _store_per_proxy(session: AsyncSession, round_pk: int, computed: Computed) -> None:
    """What is stored beside a computed round's row: its per-proxy sums and its chunks."""
    await repo.replace_round_proxies(session, round_pk=round_pk, rows=computed.per_proxy)
    await repo.replace_round_chunks(session, round_pk=round_pk, chunks=computed.chunks)


def _workers(registry: Registry) -> Executor:
    """The registry's round worker (one process, started at the first round)."""
    if registry.round_workers is None:
        registry.round_workers = ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn")
        )
    return registry.round_workers


async def _compute(registry: Registry, settings: GrantSettings) -> Computed:
    keys = [
        k.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        for k in registry.signing_keys
    ]
    url = registry.engine.url.render_as_string(hide_password=False)
    settings_json = canonical_json(settings_to_json(settings))
    workers = _workers(registry)
    try:
        done = await asyncio.get_running_loop().run_in_executor(
            workers, compute_job, url, settings_json, keys
        )
    except BrokenProcessPool:
        # the worker died (killed, out of memory): the next round starts a new one
        if registry.round_workers is workers:
            registry.round_workers = None
        workers.shutdown(wait=False)
        raise ApiError(503, "the round's worker process died; try again") from None
    if isinstance(done, tuple):
        raise ApiError(422, f"round refused: {done[1]}")
    return done


async def _refuse_clash(
    session: AsyncSession, round_id: str, country: str, start: dt.date, end: dt.date
) -> None:
    if await repo.round_by_id(session, round_id=round_id) is not None:
        raise ApiError(409, f"round {round_id} exists already")
    clash = await repo.overlapping_round(
        session, country=country, start=start.isoformat(), end=end.isoformat()
    )
    if clash is not None:
        raise ApiError(
            409,
            f"round {clash.round_id} ({clash.status}) already covers "
            f"{clash.period_start}..{clash.period_end} for {country}; a day is paid once",
        )


async def create_round(registry: Registry, *, request: RoundCreateRequest) -> dict[str, Any]:
    start = _date(request.period_start, "period_start")
    end = _date(request.period_end, "period_end")
    if end < start:
        raise ApiError(422, "period_end is before period_start")
    if (end - start).days + 1 > MAX_PERIOD_DAYS:
        raise ApiError(422, f"a round covers at most {MAX_PERIOD_DAYS} days")
    country = request.target_country
    round_id = request.round_id or default_round_id(start, end, country)
    settings = _settings(
        round_id=round_id,
        network=registry.settings.network,
        target_country=country,
        period_start=start,
        period_end=end,
        **{name: getattr(request, name) for name in TUNABLE},
    )
    # Refused early if it clashes (no work for nothing), computed outside any transaction
    # (minutes at 100,000 proxies), then checked again as it is stored.
    async with registry.sessions() as session:
        await _refuse_clash(session, round_id, country, start, end)
    computed = await _compute(registry, settings)
    now = registry.now()
    try:
        async with registry.sessions.begin() as session:
            await _refuse_clash(session, round_id, country, start, end)
            row = await repo.add_round(
                session,
                fields={
                    "round_id": round_id,
                    "status": "draft",
                    "network": settings.network,
                    "target_country": country,
                    "period_start": start.isoformat(),
                    "period_end": end.isoformat(),
                    "carry_ids": computed.carry_ids,
                    "skipped_operators": computed.skipped_operators,
                    "digest": None,
                    "txid": None,
                    "tx_hex": None,
                    "created_at": now,
                    "updated_at": now,
                    "approved_at": None,
                    "paid_at": None,
                    **computed.stored,
                },
            )
            await _store_per_proxy(session, row.id, computed)
            return view(row)
    except IntegrityError:
        raise ApiError(409, f"round {round_id} exists already") from None


async def list_rounds(registry: Registry) -> list[dict[str, Any]]:
    async with registry.sessions() as session:
        return [summary(r) for r in await repo.all_rounds(session)]


async def _row(session: AsyncSession, round_id: str) -> GrantRoundRow:
    row = await repo.round_by_id(session, round_id=round_id)
    if row is None:
        raise ApiError(404, f"no round {round_id!r}")
    return row


async def show_round(registry: Registry, *, round_id: str) -> dict[str, Any]:
    async with registry.sessions() as session:
        return view(await _row(session, round_id))


#: Chunks read per query while a round file is streamed (a chunk of 30 days is ~1 MB).
EXPORT_CHUNKS_PER_READ = 16


async def export_round_stream(registry: Registry, *, round_id: str) -> AsyncIterator[bytes]:
    """The round file (``resistance.grants.round/1``, its inputs signed by the registry)
    as parts, a few chunks read at a time: exporting a round over 100,000 proxies
    holds a few chunks, not the whole file. The round is looked up first (a missing
    round is a 404 before anything is sent)."""
    async with registry.sessions() as session:
        row = await _row(session, round_id)
    state: dict[str, Any] = {"status": row.status}
    if row.digest is not None:
        state["digest"] = row.digest
    if row.txid is not None:
        state["txid"] = row.txid
    inputs = json.loads(row.inputs)
    streamed = inputs.get("format") == INPUTS_FORMAT_2 and "chunks" not in inputs
    if streamed:
        inputs["chunks"] = []
    head = json.dumps(
        {
            "format": FORMAT,
            "settings": json.loads(row.settings),
            "inputs": inputs,
            "result": json.loads(row.result),
            "state": state,
        }
    )
    return _round_file_parts(registry, row.id, head, streamed)


async def _round_file_parts(
    registry: Registry, round_pk: int, head: str, streamed: bool
) -> AsyncIterator[bytes]:
    if not streamed:
        yield head.encode()
        return
    before, after = head.split('"chunks": []', 1)
    yield (before + '"chunks": [').encode()
    position, first = -1, True
    while True:
        async with registry.sessions() as session:
            page = await repo.round_chunks_page(
                session, round_pk=round_pk, after=position, limit=EXPORT_CHUNKS_PER_READ
            )
        for _, body in page:
            yield (("" if first else ", ") + json.dumps(body)).encode()
            first = False
        if len(page) < EXPORT_CHUNKS_PER_READ:
            break
        position = page[-1][0]
    yield ("]" + after).encode()


def _refuse_unless_draft(row: GrantRoundRow, doing: str) -> None:
    if row.status == "approved":
        raise ApiError(409, f"round {row.round_id} is approved and frozen; it cannot be {doing}")
    if row.status == "paid":
        raise ApiError(409, f"round {row.round_id} is paid by {row.txid}; it cannot be {doing}")


async def recompute_round(
    registry: Registry, *, round_id: str, request: RoundRecomputeRequest
) -> dict[str, Any]:
    """A draft again from fresh rollups, addresses and carried amounts, and any new settings."""
    async with registry.sessions() as session:
        row = await _row(session, round_id)
        _refuse_unless_draft(row, "recomputed")
        recorded = settings_from_json(json.loads(row.settings))
    values = {name: getattr(recorded, name) for name in GrantSettings.__dataclass_fields__}
    values.update(request.model_dump(exclude_none=True))
    settings = _settings(**values)
    computed = await _compute(registry, settings)
    async with registry.sessions.begin() as session:
        changed = await repo.move_round(
            session,
            round_pk=row.id,
            from_status="draft",
            values={
                **computed.stored,
                "carry_ids": computed.carry_ids,
                "skipped_operators": computed.skipped_operators,
                "updated_at": registry.now(),
            },
        )
        if not changed:
            raise ApiError(409, f"round {round_id} was approved meanwhile")
        await _store_per_proxy(session, row.id, computed)
        return view(await _row(session, round_id))


async def approve_round(registry: Registry, *, round_id: str) -> dict[str, Any]:
    """Freeze a draft whose period is over, and claim the carried amounts it takes in."""
    now = registry.now()
    async with registry.sessions.begin() as session:
        row = await _row(session, round_id)
        if row.status != "draft":
            raise ApiError(409, f"round {round_id} is already {row.status}")
        today = utc_day(now)
        if row.period_end >= today and not registry.settings.approve_open_periods:
            raise ApiError(
                409,
                f"round {round_id} covers days until {row.period_end}; approve it after they "
                f"are over (today is {today} UTC), recomputing it first",
            )
        try:
            approved = grant_rounds.approve(await stored_round(session, row))
        except RoundStateError as exc:
            raise ApiError(409, str(exc)) from None
        except GrantsError as exc:
            raise ApiError(422, f"round refused: {exc}") from None
        values: dict[str, Any] = {
            "status": "approved",
            "digest": approved.state.digest,
            "approved_at": now,
            "updated_at": now,
        }
        if not await repo.move_round(session, round_pk=row.id, from_status="draft", values=values):
            raise ApiError(409, f"round {round_id} was approved meanwhile")
        ids = list(row.carry_ids)
        if await repo.claim_carries(session, ids=ids, round_pk=row.id) != len(ids):
            raise ApiError(
                409,
                "amounts this draft carries in were taken in by another round since it was "
                "computed; recompute it, then approve",
            )
        if not approved.result.payouts():
            # Nothing to pay, so nothing will mark it paid: settle its carried amounts now.
            await _add_carries(session, round_pk=row.id, amounts=_carried_out(approved), now=now)
        await session.refresh(row)
        return view(row)


def _carried_out(round_: GrantRound) -> dict[str, int]:
    return {a.operator_id: a.carried_out_sat for a in round_.result.awards if a.carried_out_sat}


async def _add_carries(
    session: AsyncSession, *, round_pk: int, amounts: Mapping[str, int], now: int
) -> None:
    """Record what a round carries out, by operator name (the round file's operator ids)."""
    if not amounts:
        return
    ids = await repo.operator_ids(session, names=list(amounts))
    missing = sorted(set(amounts) - set(ids))
    if missing:
        raise ApiError(409, f"operators {missing} no longer exist to carry amounts to")
    by_id = {ids[name]: amount for name, amount in sorted(amounts.items())}
    await repo.add_carries(session, round_pk=round_pk, amounts=by_id, now=now)


async def mark_round_paid(
    registry: Registry, *, round_id: str, tx_hex: str, change_descriptor: str
) -> dict[str, Any]:
    """Record the signed transaction paying an approved round, if it pays exactly."""
    async with registry.sessions() as session:
        row = await _row(session, round_id)
        stored = await stored_round(session, row)
    try:  # grants' mark_paid refuses a draft or a paid round itself (409 below)
        paid = await asyncio.to_thread(
            grant_rounds.mark_paid,
            stored,
            tx_hex,
            change_descriptor=change_descriptor,
        )
    except RoundStateError as exc:
        raise ApiError(409, str(exc)) from None
    except GrantsError as exc:
        raise ApiError(422, f"transaction refused: {exc}") from None
    now = registry.now()
    try:
        async with registry.sessions.begin() as session:
            values = {
                "status": "paid",
                "txid": paid.state.txid,
                "tx_hex": tx_hex.strip().lower(),
                "paid_at": now,
                "updated_at": now,
            }
            if not await repo.move_round(
                session, round_pk=row.id, from_status="approved", values=values
            ):
                raise ApiError(409, f"round {round_id} was paid meanwhile")
            await _add_carries(session, round_pk=row.id, amounts=_carried_out(paid), now=now)
            return view(await _row(session, round_id))
    except IntegrityError:
        raise ApiError(409, f"transaction {paid.state.txid} already paid another round") from None


async def delete_draft(registry: Registry, *, round_id: str) -> None:
    async with registry.sessions.begin() as session:
        row = await _row(session, round_id)
        _refuse_unless_draft(row, "deleted")
        if not await repo.delete_round(session, round_pk=row.id, status="draft"):
            raise ApiError(409, f"round {round_id} was approved meanwhile")
