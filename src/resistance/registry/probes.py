"""What the registry does for probes: accounts, assignments, signed batch ingestion.

Theory of operation of :func:`ingest_batch`: check the batch's shape and its
signature by its own key; require that key, vantage name and country to be
those of the uploading probe's account; require its times to be plausible;
require every successful result to carry a canary proof that verifies with
the canary key and is bound to this probe, its proxy and its time
(:func:`resistance.probe.canary.verify_bound`; except WireGuard handshakes
and MTProto exchanges, which end elsewhere: see :mod:`.wireguard`,
:mod:`.mtproto`), and every result to use its proxy's protocol; then, in one
transaction, holding the fold locks of the proxies the batch names
(PostgreSQL advisory locks, taken in id order first thing, so registry
processes sharing the database never fold into one proxy at once; on SQLite
this process's one writer), either find the batch id already stored (same
digest: a harmless retry, nothing is stored; different digest: refused) or
store the batch verbatim, its raw results, and fold the results into
per-(proxy, probe) evidence, daily rollups and the verdicts of those
proxies, recording each change of verdict.  A refused batch changes
nothing.  Everything is read and written as plain rows (at 100 probes a
batch's verdicts weigh 5,000 evidence rows; ORM objects for them were most
of the ingest time, issue 25), and on PostgreSQL in three statements
(:func:`repo.open_batch`: the fold locks, the stored digest and the
proxies; :func:`repo.fold_state`: evidence, rollups and verdicts;
:func:`repo.write_batch`: every row written), not one per table: the round
trips were most of what was left.  The uploading probe's account
comes read with its token (``routes.deps.probe_account``).  Raw results and
bodies are pruned after ``retention_days`` (:mod:`.retention`).

Results for proxies outside the probe's assignment (outside its share of
the proxies, :func:`outside_share`; or :func:`in_assignment`: not active, or
a WireGuard server the operator did not add this probe's key to), and
results measured at an address the proxy was not proven at
(:func:`address_refusal`), are recorded but not counted: they stay in the
stored batch body, signed and verbatim, but get no result row and touch no
evidence, rollup or verdict; the receipt names their proxies
(``not_counted``) and says why (``why_not_counted``).  Refusing the whole
batch instead would throw away an honest probe's other results whenever a
proxy is retired between its assignment and its upload.

Who votes on a verdict (:func:`resistance.registry.shard.voters`): the
proxy's current replicas in each vantage network, ranked among the live
probes as the batch path last read them (:func:`fleet_now`, at most
:func:`shard.live_ttl` old), less the probes flagged as outvoted too often
(counted at most a round ago).
Evidence of any other probe (one that fell silent and was replaced, or a
flagged one) is kept and still folded forward, so a flagged probe's
disagreement keeps being measured and it votes again once it is no longer
flagged, but it does not vote; a batch reads only its voters' evidence
(about ``replicas`` rows per proxy and network), not every probe's that
ever measured the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy.exc import IntegrityError

from resistance.directory.keys import parse_public_key, public_key_text
from resistance.probe import rollup
from resistance.probe.batch import BatchError, ResultRecord, check_document, verify_canary
from resistance.probe.verdict import (
    Disagreement,
    ProbeEvidence,
    Rules,
    Status,
    Verdict,
    evaluate,
    observe,
    vantage_network,
)
from resistance.registry import mtproto, shard, wireguard
from resistance.registry import repositories as repo
from resistance.registry.errors import ApiError
from resistance.registry.models import ProbeAccount, Proxy
from resistance.registry.services import Registry, utc_day
from resistance.registry.tokens import new_token, token_hash


def rules(registry: Registry) -> Rules:
    s = registry.settings
    return Rules(
        window_seconds=s.verdict_window_seconds,
        min_probes=s.blocked_min_probes,
        min_windows=s.blocked_min_windows,
        down_after=s.down_after,
    )


def probe_view(probe: ProbeAccount) -> dict[str, Any]:
    return {
        "probe_id": probe.id,
        "name": probe.name,
        "country": probe.country,
        "control": probe.control,
        "public_key": probe.public_key,
        "created_at": probe.created_at,
    }


async def create_probe(
    registry: Registry, *, name: str, country: str, control: bool, public_key: str
) -> dict[str, Any]:
    try:
        parse_public_key(public_key)
    except ValueError as exc:
        raise ApiError(422, f"public_key is not an Ed25519 public key: {exc}") from None
    token = new_token()
    try:
        async with registry.sessions.begin() as session:
            if await repo.probe_by_name(session, name=name) is not None:
                raise ApiError(409, f"probe name {name!r} is taken")
            probe = await repo.add_probe(
                session,
                name=name,
                public_key=public_key,
                country=country,
                control=control,
                now=registry.now(),
            )
            await repo.add_token(
                session,
                role="probe",
                probe_id=probe.id,
                token_hash=token_hash(token),
                now=registry.now(),
            )
            view = probe_view(probe)
    except IntegrityError:
        raise ApiError(409, f"probe name {name!r} is taken") from None
    return {**view, "token": token}


async def list_probes(registry: Registry) -> list[dict[str, Any]]:
    async with registry.sessions() as session:
        return [probe_view(p) for p in await repo.all_probes(session)]


async def _account(registry: Registry, probe_id: int) -> ProbeAccount:
    async with registry.sessions() as session:
        probe = await repo.probe_by_id(session, probe_id=probe_id)
    if probe is None:
        raise ApiError(403, "this probe account no longer exists")
    return probe


def canary_info(registry: Registry) -> dict[str, Any] | None:
    if registry.canary_key is None or registry.canary_address is None:
        return None
    host, port = registry.canary_address
    return {
        "host": host,
        "port": port,
        "public_key": public_key_text(registry.canary_key.public_key()),
    }


async def assignment(registry: Registry, *, probe_id: int) -> dict[str, Any]:
    """This probe's share of the active proxies (:mod:`resistance.registry.shard`), each
    due at its own random offset inside the round.

    The offsets come from the operating system's CSPRNG, fresh on every pull,
    so neither a proxy nor anyone watching earlier rounds can tell when the
    next check of a proxy will come.
    """
    probe = await _account(registry, probe_id)
    now = registry.now()
    async with registry.sessions.begin() as session:
        await repo.note_probe_assignment(session, probe_id=probe.id, now=now)
    peers = await _live_peers(registry, probe, now)
    async with registry.sessions() as session:
        ids = await repo.active_proxy_ids(session)
        mine = _shards(registry, peers, ids).share(probe.id).tolist()
        proxies = await repo.active_proxies_in(session, ids=mine)
        outside = {} if probe.control else await repo.control_views(session, proxy_ids=mine)
    round_ms = registry.settings.probe_round_seconds * 1000
    targets = []
    for p in proxies:
        target: dict[str, Any] = {
            "proxy_id": p.id,
            "host": p.host,
            "port": p.port,
            "username": p.probe_user,
            "password": p.probe_password,
            "due_ms": secrets.randbelow(round_ms) if round_ms else 0,
        }
        if p.addresses:  # a name: the probe pins one of these (resistance.net.resolve)
            target["addresses"] = list(p.addresses)
        # For the controls of a failed check (resistance.probe.controls): the host's
        # other listener, and what the control vantages last saw.
        if p.tls_port is not None:
            target["control_ports"] = [p.tls_port]
        if p.id in outside:
            target["outside_ok"] = outside[p.id]
        extra = _kind_fields(p, probe)
        if extra is None:
            continue
        target.update(extra)
        targets.append(target)
    return {
        "vantage": probe.name,
        "country": probe.country,
        "control": probe.control,
        "issued_at": registry.now(),
        "round_seconds": registry.settings.probe_round_seconds,
        "canary": canary_info(registry),
        "proxies": targets,
        "control_proxy": registry.settings.probe_control,
    }


def _kind_fields(proxy: Proxy, probe: ProbeAccount) -> dict[str, Any] | None:
    """A proxy's protocol-specific assignment fields for this probe, or ``None`` when the
    probe is not to check it (a WireGuard server that does not know the probe's key would
    answer it with silence; an MTProto proxy without a stored secret cannot be checked)."""
    if wireguard.is_wireguard(proxy):
        return wireguard.probe_target(proxy, probe)
    if mtproto.is_mtproto(proxy):
        return mtproto.probe_target(proxy)
    return {}


def in_assignment(proxy: Proxy, probe: ProbeAccount) -> bool:
    """Whether :func:`assignment` would give ``proxy`` to ``probe`` if it is in the probe's
    share (:func:`outside_share` sorts those out first): only such results count."""
    return proxy.status == "active" and _kind_fields(proxy, probe) is not None


async def _live_peers(registry: Registry, probe: ProbeAccount, now: int) -> list[int]:
    """The live probes of ``probe``'s vantage network, ``probe`` itself always included,
    read from the database (batches use :func:`fleet_now`'s recent reading)."""
    mine = vantage_network(probe.country, probe.control)
    rounds = registry.settings.probe_round_seconds
    async with registry.sessions() as session:
        accounts = await repo.probe_liveness(session)
    live = {
        probe_id
        for probe_id, country, control, last_batch_at in accounts
        if vantage_network(country, control) == mine
        and shard.is_live(last_batch_at, now=now, round_seconds=rounds)
    }
    return sorted(live | {probe.id})


def _shards(registry: Registry, peers: Sequence[int], proxy_ids: Sequence[int]) -> shard.Shards:
    return registry.shards.get(
        shard.shard_key(registry.ring_key),
        proxy_ids=proxy_ids,
        probe_ids=peers,
        replicas=registry.settings.probe_replicas,
    )


async def fleet_now(registry: Registry, probe: ProbeAccount, now: int) -> shard.Fleet:
    """The fleet as a batch sees it (:class:`shard.Fleet`): the probe accounts read from
    the database at most every :func:`shard.live_ttl` seconds, the flagged probes counted
    at most every :func:`shard.flag_ttl`; ``probe`` itself always live in its network."""
    cache = registry.shards
    if cache.flags_due(now=now):  # counted again in the background, none waits for it
        cache.recount(functools.partial(_count_flags, registry, now))
    fleet = cache.fleet(now=now)
    if fleet is None:
        async with cache.refreshing:  # one reading for every waiting batch
            fleet = cache.fleet(now=now)
            if fleet is None:
                fleet = await _read_fleet(registry, now)
    return fleet.with_live(vantage_network(probe.country, probe.control), probe.id)


def count_flags_at_start(registry: Registry) -> None:
    """Begin the first count of flags in the background (a batch arriving before it ends
    waits for this one instead of starting its own)."""
    registry.shards.recount(functools.partial(_count_flags, registry, registry.now()))


async def _count_flags(registry: Registry, now: int) -> None:
    """Count the flagged probes over every fresh evidence row and remember them for
    :func:`shard.flag_ttl` (run as :meth:`shard.ShardCache.recount`: one at a time)."""
    settings = registry.settings
    async with registry.sessions() as session:
        votes = await repo.probe_disagreement(session, since=now - rules(registry).stale_seconds)
    flagged = frozenset(
        probe_id
        for probe_id, (compared, disagreed) in votes.items()
        if Disagreement(compared, disagreed).flagged(
            threshold=settings.probe_flag_rate, minimum=settings.probe_flag_min
        )
    )
    until = now + shard.flag_ttl(settings.probe_round_seconds)
    registry.shards.remember_flagged(flagged, until=until, at=now)


async def _read_fleet(registry: Registry, now: int) -> shard.Fleet:
    settings = registry.settings
    rounds = settings.probe_round_seconds
    flagged = registry.shards.flagged(now=now)
    if flagged is None:  # never counted, or expired before a recount ended: wait for one
        count = functools.partial(_count_flags, registry, now)
        await asyncio.shield(registry.shards.recount(count))
        flagged = registry.shards.flagged(now=now)
        if flagged is None:  # a recount begun long ago ended with a reading expired since
            await _count_flags(registry, now)
            flagged = registry.shards.flagged(now=now) or frozenset()
    async with registry.sessions() as session:
        accounts = await repo.probe_liveness(session)
    live: dict[str, set[int]] = {}
    everyone: dict[str, set[int]] = {}
    for probe_id, country, control, last_batch_at in accounts:
        network = vantage_network(country, control)
        everyone.setdefault(network, set()).add(probe_id)
        if shard.is_live(last_batch_at, now=now, round_seconds=rounds):
            live.setdefault(network, set()).add(probe_id)
    fleet = shard.Fleet(
        {n: frozenset(p) for n, p in live.items()},
        {n: frozenset(p) for n, p in everyone.items()},
        flagged,
    )
    registry.shards.remember_fleet(fleet, until=now + shard.live_ttl(rounds))
    return fleet


async def outside_share(
    registry: Registry,
    probe: ProbeAccount,
    proxy_ids: Sequence[int],
    fleet: shard.Fleet | None = None,
) -> set[int]:
    """Which of ``proxy_ids`` are not in ``probe``'s share now.  For a batch: rendezvous
    hashing ranks each proxy on its own, so this scores only the batch's proxies, against
    the live probes as recently read (:func:`fleet_now`); an honest probe's batch costs no
    query here."""
    if fleet is None:
        fleet = await fleet_now(registry, probe, registry.now())
    peers = fleet.live[vantage_network(probe.country, probe.control)]
    ids = sorted(set(proxy_ids))
    shards = shard.assign(
        shard.shard_key(registry.ring_key),
        proxy_ids=ids,
        probe_ids=sorted(peers),
        replicas=registry.settings.probe_replicas,
    )
    outside = set(ids) - set(shards.share(probe.id).tolist())
    if not outside:
        return outside
    # Unknown ids are left to _store, which refuses the batch for them.
    async with registry.sessions() as session:
        return await repo.existing_proxy_ids(session, ids=sorted(outside))


#: Why a proxy's results were not counted (the batch receipt's ``why_not_counted``).
OUTSIDE_SHARE = "outside this probe's share of the proxies"
NOT_ASSIGNED = "not in this probe's assignment (not active, or not a proxy it is sent to)"


def address_refusal(proxy: Proxy, result: ResultRecord) -> str | None:
    """Why ``result`` cannot count for ``proxy`` by the address it dialled, or ``None``.

    A proxy registered by DNS name is measured at one address its probe resolved and
    pinned (``address``): that must be one of the addresses its control was proven at,
    else the probe measured some other host.  A success must say which address it was;
    a failure may name none (the name resolved to no proven address: nothing was
    dialled, which is itself the finding).  An IP literal's results name it or nothing.
    """
    if proxy.addresses:
        proven = {str(a) for a in proxy.addresses}
        if result.address is None:
            if result.ok:
                return "a success for a proxy registered by name must say the address it dialled"
            return None
        if result.address not in proven:
            return f"address {result.address} is not one of the proxy's proven addresses"
        return None
    if result.address is not None and result.address != proxy.host:
        return f"address {result.address} is not the proxy's address {proxy.host}"
    return None


@dataclass(frozen=True, slots=True)
class Ingested:
    batch_id: str
    stored: bool
    results: int
    #: Proxy ids whose results were kept in the batch but not counted (not assigned).
    not_counted: tuple[int, ...] = ()
    #: Why, per proxy id of ``not_counted``.
    why_not_counted: dict[int, str] = field(default_factory=dict)


def _batch_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _check_times(registry: Registry, created_at: int, results: Sequence[ResultRecord]) -> None:
    now = registry.now()
    skew = registry.settings.statement_skew
    oldest = now - registry.settings.batch_max_age
    if created_at > now + skew:
        raise ApiError(422, "batch created_at is in the future by the registry's clock")
    if created_at < oldest:
        raise ApiError(422, "batch is older than the registry keeps accepting")
    for index, r in enumerate(results):
        if r.at > created_at + skew or r.at < oldest:
            raise ApiError(422, f"results[{index}].at is outside the batch's time")


async def ingest_batch(
    registry: Registry, *, probe: ProbeAccount, document: Any, signature: Any
) -> Ingested:
    """Check and store ``probe``'s batch (its account as read with its token)."""
    try:
        batch = check_document(document, signature)
        body = batch.file_bytes(signature)  # check_document made sure it is text
    except BatchError as exc:
        raise ApiError(422, f"batch refused: {exc}") from None
    if batch.probe_key != probe.public_key:
        raise ApiError(403, "batch is signed by a key that is not this probe account's")
    if batch.vantage != probe.name or batch.country != probe.country:
        raise ApiError(
            422, f"batch says vantage {batch.vantage} ({batch.country}); this account is "
            f"{probe.name} ({probe.country})"
        )  # fmt: skip
    _check_times(registry, batch.created_at, batch.results)
    canary = registry.canary_key.public_key() if registry.canary_key is not None else None
    for index, r in enumerate(batch.results):
        if (
            r.ok
            and r.protocol not in (*wireguard.KINDS, mtproto.PROTOCOL)
            and (canary is None or not verify_canary(r, canary, probe_key=probe.public_key))
        ):
            raise ApiError(422, f"results[{index}]: the canary proof does not verify")
    digest = _batch_digest(body)
    # Results for proxies outside the probe's share are kept in the stored body but not
    # counted, like those outside the rest of its assignment (see in_assignment).
    fleet = await fleet_now(registry, probe, registry.now())
    unshared = await outside_share(registry, probe, [r.proxy_id for r in batch.results], fleet)
    counted = [r for r in batch.results if r.proxy_id not in unshared]
    # PostgreSQL: per-proxy advisory locks inside the transaction (repositories.
    # open_batch), good across registry processes.  SQLite: one writer at a time,
    # and two of this process's transactions upgrading their read locks at once would fail.
    serial = registry.probe_lock if registry.engine.dialect.name == "sqlite" else _NO_LOCK
    async with serial:
        try:
            done = await _store(
                registry, probe, fleet, batch.batch_id, batch.created_at, counted, body, digest
            )
        except IntegrityError:
            async with registry.sessions() as session:
                found = await repo.batch_digest(session, batch_id=batch.batch_id)
            if found is None:  # not its id: a row it names changed meanwhile (a proxy gone)
                raise ApiError(
                    503, "the batch's proxies changed while it was stored; nothing was "
                    "stored, send it again", headers={"Retry-After": "5"},
                ) from None  # fmt: skip
            if found[0] != digest:
                raise ApiError(409, "batch id already stored with different content") from None
            done = Ingested(batch.batch_id, False, found[1])
    if not done.stored:  # a stored batch noted it in its own transaction
        async with registry.sessions.begin() as session:
            await repo.note_probe_batch(session, probe_id=probe.id, now=registry.now())
    registry.shards.mark_live(vantage_network(probe.country, probe.control), probe.id)
    if unshared and done.stored:
        done = replace(
            done,
            not_counted=tuple(sorted({*done.not_counted, *unshared})),
            why_not_counted={
                **dict.fromkeys(sorted(unshared), OUTSIDE_SHARE),
                **done.why_not_counted,
            },
        )
    return done


_NO_LOCK = contextlib.nullcontext()


async def _store(
    registry: Registry,
    probe: ProbeAccount,
    fleet: shard.Fleet,
    batch_id: str,
    created_at: int,
    results: Sequence[ResultRecord],
    body: bytes,
    digest: str,
) -> Ingested:
    now = registry.now()
    async with registry.sessions.begin() as session:
        # PostgreSQL: the fold locks of every proxy the batch names are taken here, first.
        existing, found = await repo.open_batch(
            session, batch_id=batch_id, proxy_ids=sorted({r.proxy_id for r in results})
        )
        if existing is not None:
            if existing[0] != digest:
                raise ApiError(409, "batch id already stored with different content")
            return Ingested(batch_id, False, existing[1])
        proxy_ids = sorted({r.proxy_id for r in results})
        proxies = {p.id: p for p in found}
        if unknown := [i for i in proxy_ids if i not in proxies]:
            raise ApiError(422, f"batch names unknown proxy ids {unknown[:5]}")
        known = {i: list(p.protocols) for i, p in proxies.items()}
        wireguard.check_result_protocols(results, known)
        mtproto.check_result_protocols(results, known)
        # Results for proxies outside the probe's assignment stay in the signed batch body
        # (kept verbatim) but are not counted: no result row, evidence, rollup or verdict.
        # So are results measured at an address the proxy was not proven at.
        why: dict[int, str] = {
            i: NOT_ASSIGNED for i in proxy_ids if not in_assignment(proxies[i], probe)
        }
        unassigned = set(why)
        kept = []
        for r in results:
            if r.proxy_id in unassigned:
                continue
            refused = address_refusal(proxies[r.proxy_id], r)
            if refused is None:
                kept.append(r)
            else:
                why.setdefault(r.proxy_id, refused)
        results = kept
        proxy_ids = sorted({r.proxy_id for r in results})
        rows = [
            {
                "batch_id": batch_id,
                "probe_id": probe.id,
                "proxy_id": r.proxy_id,
                "measured_at": r.at,
                "country": probe.country,
                "control": probe.control,
                "ok": r.ok,
                "step": r.step,
                "failure": r.failure,
                "detail": r.detail,
                "connect_us": r.connect_us,
                "ttfb_us": r.ttfb_us,
                "throughput_kbps": r.throughput_kbps,
                "mechanism": r.mechanism,
            }
            for r in results
        ]
        fold = repo.BatchFold(
            batch={
                "batch_id": batch_id,
                "probe_id": probe.id,
                "digest": digest,
                "created_at": created_at,
                "received_at": now,
                "result_count": len(results),
                "body": body.decode(),
            },
            results=rows,
            probe_id=probe.id,
            now=now,
        )
        if results:
            voting = shard.voters(
                shard.shard_key(registry.ring_key),
                fleet,
                proxy_ids=proxy_ids,
                replicas=registry.settings.probe_replicas,
            )
            fold = await _fold(registry, session, probe, voting, proxy_ids, results, fold)
        await repo.write_batch(session, fold=fold)
    return Ingested(batch_id, True, len(results), tuple(sorted(why)), why)


async def _fold(
    registry: Registry,
    session: Any,
    probe: ProbeAccount,
    voting: dict[int, frozenset[int]],
    proxy_ids: list[int],
    results: Sequence[ResultRecord],
    fold: repo.BatchFold,
) -> repo.BatchFold:
    """``fold`` with the changes of evidence, rollups and verdicts of the proxies in one
    batch (written with the batch by :func:`repo.write_batch`).

    Under the proxies' fold locks (taken by :func:`repo.open_batch`), the evidence of the
    probes that vote on them (``voting``: their current replicas, less flagged probes;
    :func:`shard.voters`) and this probe's own is read once, as tuples, with the rollups
    and verdicts (:func:`repo.fold_state`); this probe's is folded forward with the
    batch's results (also while it does not vote: its disagreement keeps being
    measured), and the verdicts are evaluated over the voters' evidence.
    """
    now = fold.now
    verdict_rules = rules(registry)
    days = {r.at: utc_day(r.at) for r in results}
    pairs = [(proxy_id, voter) for proxy_id in proxy_ids for voter in voting[proxy_id]]
    pairs += [(proxy_id, probe.id) for proxy_id in proxy_ids]
    seen_rows, rollup_rows, current = await repo.fold_state(
        session,
        pairs=pairs,
        proxy_ids=proxy_ids,
        days=sorted(set(days.values())),
        country=probe.country,
        control=probe.control,
    )
    others: dict[int, list[ProbeEvidence]] = {i: [] for i in proxy_ids}
    stored: dict[int, ProbeEvidence] = {}
    for proxy_id, probe_id, country, control, last_at, last_ok, streak, windows in seen_rows:
        seen = ProbeEvidence(probe_id, country, control, last_at, last_ok, streak, windows)
        if probe_id == probe.id:
            stored[proxy_id] = seen
        else:
            others[proxy_id].append(seen)
    # This probe's rows always carry its account's country and kind.
    mine = {
        proxy_id: replace(seen, country=probe.country, control=probe.control)
        for proxy_id, seen in stored.items()
    }
    newest: dict[int, ResultRecord] = {}
    for r in sorted(results, key=lambda r: r.at):
        before = mine.get(r.proxy_id)
        if before is None:
            before = ProbeEvidence(probe.id, probe.country, probe.control)
        after = observe(before, at=r.at, ok=r.ok, rules=verdict_rules)
        mine[r.proxy_id] = after
        if after is not before:  # this result is the latest one seen
            newest[r.proxy_id] = r
    evidence = [
        {
            **_evidence_row(mine[proxy_id], proxy_id),
            "mechanism": "ok" if r.ok else r.mechanism,
            "transports": dict(r.transports) or None,
        }
        for proxy_id, r in newest.items()
    ]
    evidence_kept = [  # rows whose only change is the account's country or kind
        _evidence_row(mine[proxy_id], proxy_id)
        for proxy_id in proxy_ids
        if proxy_id not in newest and stored[proxy_id] != mine[proxy_id]
    ]
    unchanged: list[int] = []
    verdicts: list[dict[str, Any]] = []
    changes: list[dict[str, Any]] = []
    for proxy_id in proxy_ids:
        found = current.get(proxy_id)
        previous = Status(Verdict(found[0]), tuple(found[1])) if found else Status(Verdict.UNTESTED)
        seen_by = others[proxy_id]
        if probe.id in voting[proxy_id]:
            seen_by = [*seen_by, mine[proxy_id]]
        status = evaluate(previous, seen_by, now=now, rules=verdict_rules)
        if found is not None and status == previous:
            unchanged.append(proxy_id)
            continue
        blocked_in = list(status.blocked_in)
        verdicts.append(
            {
                "proxy_id": proxy_id,
                "verdict": status.verdict.value,
                "blocked_in": blocked_in,
                "since": now,
                "updated_at": now,
            }
        )
        if status != previous:
            changes.append(
                {
                    "proxy_id": proxy_id,
                    "at": now,
                    "verdict": status.verdict.value,
                    "blocked_in": blocked_in,
                    "previous": str(previous),
                }
            )
    return replace(
        fold,
        evidence=evidence,
        evidence_kept=evidence_kept,
        rollups=_roll_up(probe, rollup_rows, days, results),
        unchanged=unchanged,
        verdicts=verdicts,
        changes=changes,
    )


def _evidence_row(evidence: ProbeEvidence, proxy_id: int) -> dict[str, Any]:
    return {
        "proxy_id": proxy_id,
        "probe_id": evidence.probe_id,
        "country": evidence.country,
        "control": evidence.control,
        "last_at": evidence.last_at,
        "last_ok": evidence.last_ok,
        "fail_streak": evidence.fail_streak,
        "fail_windows": list(evidence.fail_windows),
    }


def _roll_up(
    probe: ProbeAccount,
    stored: Sequence[tuple[Any, ...]],
    days: dict[int, str],
    results: Sequence[ResultRecord],
) -> list[dict[str, Any]]:
    """This vantage kind's daily rollups (``stored``: as read, see
    :func:`repo.rollup_counts`) with the results added: the rows to write back."""
    totals: dict[tuple[int, str], list[Any]] = {
        (proxy_id, day): [attempts, successes, list(latency), list(throughput)]
        for proxy_id, day, attempts, successes, latency, throughput in stored
    }
    touched: set[tuple[int, str]] = set()
    for r in results:
        key = (r.proxy_id, days[r.at])
        row = totals.get(key)
        if row is None:
            row = totals[key] = [
                0,
                0,
                rollup.empty(rollup.LATENCY_BOUNDS_MS),
                rollup.empty(rollup.THROUGHPUT_BOUNDS_KBPS),
            ]
        row[0] += 1
        if r.ok:
            row[1] += 1
            if r.connect_us is not None:
                rollup.add(row[2], rollup.LATENCY_BOUNDS_MS, math.ceil(r.connect_us / 1000))
            if r.throughput_kbps is not None:
                rollup.add(row[3], rollup.THROUGHPUT_BOUNDS_KBPS, r.throughput_kbps)
        touched.add(key)
    rows = []
    for proxy_id, day in sorted(touched):
        attempts, successes, latency, throughput = totals[(proxy_id, day)]
        rows.append(
            {
                "proxy_id": proxy_id,
                "day": day,
                "country": probe.country,
                "control": probe.control,
                "attempts": attempts,
                "successes": successes,
                "latency_hist": latency,
                "latency_p50_ms": rollup.percentile(latency, rollup.LATENCY_BOUNDS_MS, 0.5),
                "latency_p90_ms": rollup.percentile(latency, rollup.LATENCY_BOUNDS_MS, 0.9),
                "throughput_hist": throughput,
                "throughput_p50_kbps": rollup.percentile(
                    throughput, rollup.THROUGHPUT_BOUNDS_KBPS, 0.5
                ),
            }
        )
    return rows


async def proxy_status(registry: Registry, *, proxy_id: int) -> dict[str, Any]:
    """A proxy's verdict and its history (admin)."""
    async with registry.sessions() as session:
        verdicts = await repo.verdicts_for(session, proxy_ids=[proxy_id])
        history = await repo.verdict_history(session, proxy_id=proxy_id)
    current = verdicts[0] if verdicts else None
    return {
        "proxy_id": proxy_id,
        "status": current.verdict if current else "untested",
        "blocked_in": list(current.blocked_in) if current else [],
        "since": current.since if current else None,
        "history": [
            {
                "at": h.at,
                "status": h.verdict,
                "blocked_in": list(h.blocked_in),
                "previous": h.previous,
            }
            for h in history
        ],
    }


async def fleet_status(registry: Registry, *, offset: int = 0, limit: int = 100) -> dict[str, Any]:
    """Every probe (a page of them): live or silent, its share of the proxies now, its last
    batch and pull, and how often its peers outvoted it (admin; ``resist probe status``)."""
    now = registry.now()
    settings = registry.settings
    verdict_rules = rules(registry)
    async with registry.sessions() as session:
        accounts = list(await repo.all_probes(session))
        ids = await repo.active_proxy_ids(session)
        votes = await repo.probe_disagreement(session, since=now - verdict_rules.stale_seconds)
    rounds = settings.probe_round_seconds
    live = {p.id for p in accounts if shard.is_live(p.last_batch_at, now=now, round_seconds=rounds)}
    networks: dict[str, list[int]] = {}
    for p in accounts:
        if p.id in live:
            networks.setdefault(vantage_network(p.country, p.control), []).append(p.id)
    shares: dict[int, int] = {}
    for peers in networks.values():
        shares.update(_shards(registry, peers, ids).counts())
    page = []
    for p in accounts[offset : offset + limit]:
        compared, disagreed = votes.get(p.id, (0, 0))
        seen = Disagreement(compared, disagreed)
        page.append(
            {
                "probe_id": p.id,
                "name": p.name,
                "country": p.country,
                "control": p.control,
                "network": vantage_network(p.country, p.control),
                "live": p.id in live,
                "share": shares.get(p.id, 0),
                "last_batch_at": p.last_batch_at,
                "last_assignment_at": p.last_assignment_at,
                "compared": compared,
                "disagreed": disagreed,
                "disagreement": seen.rate,
                "flagged": seen.flagged(
                    threshold=settings.probe_flag_rate, minimum=settings.probe_flag_min
                ),
            }
        )
    return {
        "now": now,
        "round_seconds": rounds,
        "replicas": settings.probe_replicas,
        "active_proxies": len(ids),
        "total": len(accounts),
        "offset": offset,
        "limit": limit,
        "probes": page,
    }
