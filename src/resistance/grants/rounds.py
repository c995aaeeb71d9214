"""A grant round's life: draft -> approved -> paid(txid), as pure functions on plain data.

Theory of operation
-------------------
``compute_round`` applies the award rule to settings and inputs and returns a
*draft*. A draft may be recomputed with other settings or inputs (``amend``).
``approve`` freezes it: the approved state records the digest of settings,
inputs and result, and from then on ``amend`` refuses, and ``verify`` reports a
file whose content no longer matches its digest. ``mark_paid`` moves an
approved round to *paid* with the txid of the transaction that paid it, after
``payout.check_payment`` has checked that transaction; a paid round can never be
paid again, and nothing moves backwards. Each transition returns a new round
and refuses illegal moves with ``RoundStateError``.

``verify`` recomputes the result from the recorded settings and inputs and
lists every difference, so anyone holding the round file can check the awards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from resistance.grants.award import compute_result
from resistance.grants.errors import RoundStateError
from resistance.grants.model import (
    AWARD_FIELDS,
    GrantRound,
    GrantSettings,
    ProxyDays,
    RoundInputs,
    RoundState,
    RoundStatus,
)
from resistance.grants.payout import check_addresses, check_payment


def compute_round(
    settings: GrantSettings,
    inputs: RoundInputs,
    *,
    groups: Callable[[], Iterable[ProxyDays]] | None = None,
) -> GrantRound:
    """A draft round: the award rule applied, every payout address checked for the network
    (``groups``: see :func:`~resistance.grants.award.compute_result`)."""
    round_ = GrantRound(settings, inputs, compute_result(settings, inputs, groups=groups))
    check_addresses(round_)
    return round_


def amend(
    round_: GrantRound,
    *,
    settings: GrantSettings | None = None,
    inputs: RoundInputs | None = None,
) -> GrantRound:
    """Recompute a draft with new settings or inputs; an approved or paid round is final."""
    if round_.state.status is not RoundStatus.DRAFT:
        raise RoundStateError(
            f"round {round_.settings.round_id} is {round_.state.status.value} and cannot change"
        )
    return compute_round(settings or round_.settings, inputs or round_.inputs)


def approve(round_: GrantRound) -> GrantRound:
    if round_.state.status is not RoundStatus.DRAFT:
        raise RoundStateError(
            f"round {round_.settings.round_id} is already {round_.state.status.value}"
        )
    check_addresses(round_)
    return dataclasses.replace(round_, state=RoundState(RoundStatus.APPROVED, round_.digest()))


def mark_paid(round_: GrantRound, tx_hex: str, *, change_descriptor: str) -> GrantRound:
    """Record the transaction that paid an approved round, after checking it pays exactly."""
    status = round_.state.status
    if status is RoundStatus.PAID:
        raise RoundStateError(
            f"round {round_.settings.round_id} is already paid by {round_.state.txid}"
        )
    if status is not RoundStatus.APPROVED:
        raise RoundStateError(f"round {round_.settings.round_id} is a draft; approve it first")
    if round_.state.digest != round_.digest():
        raise RoundStateError("the round's content no longer matches its approved digest")
    checked = check_payment(round_, tx_hex, change_descriptor=change_descriptor)
    return dataclasses.replace(
        round_, state=RoundState(RoundStatus.PAID, round_.state.digest, checked.txid)
    )


@dataclass(frozen=True, slots=True)
class Difference:
    what: str  # operator id or "round"
    field: str
    recorded: str
    recomputed: str


def verify(round_: GrantRound) -> list[Difference]:
    """Recompute the awards from the recorded inputs; every difference, or none."""
    diffs: list[Difference] = []
    fresh = compute_result(round_.settings, round_.inputs)
    rec = round_.result
    for name in ("pool_sat", "distributed_sat", "returned_sat", "ignored_rollups"):
        a, b = getattr(rec, name), getattr(fresh, name)
        if a != b:
            diffs.append(Difference("round", name, str(a), str(b)))
    recorded = {a.operator_id: a for a in rec.awards}
    recomputed = {a.operator_id: a for a in fresh.awards}
    if len(recorded) != len(rec.awards):
        diffs.append(Difference("round", "awards", "duplicate operator", "one award per operator"))
    for op in sorted(set(recorded) | set(recomputed)):
        ra, fa = recorded.get(op), recomputed.get(op)
        if ra is None or fa is None:
            diffs.append(
                Difference(
                    op, "award", "present" if ra else "absent", "present" if fa else "absent"
                )
            )
            continue
        for f in AWARD_FIELDS:
            x, y = getattr(ra, f), getattr(fa, f)
            if x != y:
                diffs.append(Difference(op, f, str(x), str(y)))
    order = [a.operator_id for a in rec.awards]
    if not diffs and order != sorted(order):
        diffs.append(Difference("round", "award order", "unsorted", "by operator id"))
    if round_.state.status is not RoundStatus.DRAFT:
        digest = round_.digest()
        if round_.state.digest != digest:
            diffs.append(Difference("round", "digest", str(round_.state.digest), digest))
    if round_.state.status is RoundStatus.PAID and not round_.state.txid:
        diffs.append(Difference("round", "txid", "missing", "the paying txid"))
    return diffs
