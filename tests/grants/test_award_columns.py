"""The award rule's column reading of /2 inputs against its per-row reading.

``award.tally_columns`` sums a batch of entries at a time in numpy; ``tally_groups``
reads them a day at a time and is the reference. On any inputs both must give the
same tally (so the same awards, to the satoshi) or the same first error; on regular
inputs the column path must decide by itself, without handing them over.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resistance.grants import award, model
from resistance.grants.award import _result, _tally_columns, tally_columns, tally_groups
from resistance.grants.errors import InputError
from resistance.grants.model import BASIS_POINTS, CarriedAmount, GrantSettings, ProxyDays

from .helpers import START, address
from .helpers import settings as make_settings

DAYS = 6
NETS = ["198.51.100.0/24", "203.0.113.0/24", "2001:db8:1::/48"]
PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BIG = 2**63  # a count numpy's int64 cannot hold: the per-row reading takes it


@st.composite
def day_counts(draw: Any, big: bool) -> tuple[int, int, int, int, int]:
    ca = draw(st.integers(0, 6))
    ta = draw(st.integers(0, 6))
    if big and draw(st.integers(0, 9)) == 0:
        ca += BIG
    elif draw(st.integers(0, 9)) == 0:  # fits 64 bits, not a mixed-radix key of 63
        ca, ta = ca + 2**40, ta + 2**30
    cs = draw(st.one_of(st.integers(0, ca), st.just(ca)))  # ties at 100 % are common
    ts = draw(st.one_of(st.integers(0, ta), st.just(ta)))
    return ca, cs, ta, ts, draw(st.sampled_from([0, 1, 999, 1000, 3000]))


@st.composite
def entries(draw: Any, regular: bool) -> list[ProxyDays]:
    """Per-proxy entries; ``regular``: each proxy once, days distinct and in the period,
    one address per operator, counts below 2**63 (what a registry makes)."""
    n = draw(st.integers(1, 10))
    out = []
    for j in range(n):
        proxy = f"p{j}" if regular else f"p{draw(st.integers(0, 5))}"
        op = f"op{draw(st.integers(0, 3))}"
        payout = address(op) if regular or draw(st.integers(0, 9)) else address("other")
        if regular:
            first = draw(st.integers(0, 2))
            days = sorted(draw(st.sets(st.integers(0, DAYS - 1 - first), min_size=1)))
            days = draw(st.permutations(days))
        else:
            first = draw(st.integers(-1, 2))
            days = draw(st.lists(st.integers(0, DAYS), min_size=1, max_size=DAYS + 1))
        counts = [draw(day_counts(big=not regular)) for _ in days]
        cascade = draw(st.integers(0, 4)) == 0
        exit_op = f"op{draw(st.integers(0, 3))}" if cascade else ""
        out.append(
            ProxyDays(
                proxy_id=proxy,
                operator_id=op,
                network=draw(st.sampled_from(NETS)),
                payout_address=payout,
                country="RU" if draw(st.integers(0, 7)) else "IR",
                exit_operator_id=exit_op,
                exit_network="192.0.2.0/24" if cascade else "",
                exit_payout_address=address(exit_op) if cascade else "",
                first_day=START + dt.timedelta(days=first),
                day=list(days),
                control_attempts=[c[0] for c in counts],
                control_successes=[c[1] for c in counts],
                target_attempts=[c[2] for c in counts],
                target_successes=[c[3] for c in counts],
                throughput_kbps=[c[4] for c in counts],
            )
        )
    return out


@st.composite
def rules(draw: Any) -> tuple[GrantSettings, dict[str, int], tuple[CarriedAmount, ...]]:
    budget = draw(st.integers(0, 5_000_000))
    s = make_settings(
        period_end=START + dt.timedelta(days=DAYS - 1),
        budget_sat=budget,
        fee_reserve_sat=draw(st.integers(0, budget)),
        min_payout_sat=draw(st.integers(546, 60_000)),
        performance_exponent=draw(st.sampled_from([1, 2, 5, 20])),
        min_attempts=draw(st.integers(1, 3)),
        capacity_reference_kbps=draw(st.sampled_from([0, 1000])),
        probation_days=draw(st.integers(0, 4)),
        operator_cap_bp=draw(st.sampled_from([BASIS_POINTS, 5000, 3000, 1500, 1])),
        network_cap_bp=draw(st.sampled_from([BASIS_POINTS, 6000, 2500])),
        cascade_exit_bp=draw(st.sampled_from([1000, 4000, 9000])),
    )
    prior = {f"p{j}": draw(st.integers(0, 5)) for j in range(6) if draw(st.booleans())}
    carried = tuple(
        CarriedAmount(f"op{k}", address(f"op{k}"), draw(st.integers(0, 50_000)))
        for k in sorted(draw(st.sets(st.integers(0, 4), max_size=3)))
    )
    return s, prior, carried


def facts(t: award.Tally) -> tuple[Any, ...]:
    """A tally as plain values: per proxy its fields and sums, the addresses, ignored."""
    proxies = {
        pid: (p.operator_id, p.network, p.exit, p.service, p.earned) for pid, p in t.proxies.items()
    }
    return proxies, dict(sorted(t.addresses.items())), t.ignored_rollups


def outcome(read: Any) -> tuple[str, Any]:
    try:
        return "tally", facts(read())
    except InputError as exc:
        return "refused", str(exc)


@PROPS
@given(rule=rules(), groups=entries(regular=True), batch=st.integers(1, 12))
def test_regular_inputs_are_summed_in_columns_as_row_by_row(
    rule: tuple[GrantSettings, dict[str, int], tuple[CarriedAmount, ...]],
    groups: list[ProxyDays],
    batch: int,
) -> None:
    s, prior, carried = rule
    fast = _tally_columns(s, groups, prior, batch_rows=batch)  # never handed over
    slow = tally_groups(s, groups, prior)
    assert facts(fast) == facts(slow)
    # hence the same awards, to the satoshi: caps, ties, remainders, carries
    assert _result(s, fast, carried) == _result(s, slow, carried)


@PROPS
@given(rule=rules(), groups=entries(regular=False), batch=st.integers(1, 12))
def test_any_inputs_give_the_same_tally_or_the_same_error(
    rule: tuple[GrantSettings, dict[str, int], tuple[CarriedAmount, ...]],
    groups: list[ProxyDays],
    batch: int,
) -> None:
    s, prior, _ = rule
    slow = outcome(lambda: tally_groups(s, groups, prior))
    assert outcome(lambda: tally_columns(s, lambda: groups, prior)) == slow
    try:  # the column path alone either hands the inputs over or agrees
        fast = _tally_columns(s, groups, prior, batch_rows=batch)
    except (award._Irregular, InputError, OverflowError):
        return
    assert ("tally", facts(fast)) == slow


def entry(proxy: str, days: list[int], **kw: Any) -> ProxyDays:
    fields: dict[str, Any] = {
        "proxy_id": proxy, "operator_id": "a", "network": NETS[0], "payout_address": address("a"),
        "country": "RU", "exit_operator_id": "", "exit_network": "", "exit_payout_address": "",
        "first_day": START, "day": days, "control_attempts": [24] * len(days),
        "control_successes": [24] * len(days), "target_attempts": [24] * len(days),
        "target_successes": [24] * len(days), "throughput_kbps": [0] * len(days),
    }  # fmt: skip
    return ProxyDays(**(fields | kw))


@pytest.mark.parametrize(
    ("groups", "says"),
    [
        ([entry("p", [0, 0])], "rollup p 2024-05-01 RU: duplicate row"),
        ([entry("p", [0]), entry("p", [0])], "rollup p 2024-05-01 RU: duplicate row"),
        ([entry("p", [DAYS])], "outside the round's period"),
        ([entry("p", [0]), entry("p", [1], operator_id="b")], "rows disagree on operator"),
        (
            [entry("p", [0]), entry("q", [1], payout_address=address("z"))],
            "operator a: rows disagree on the payout address",
        ),
    ],
)
def test_irregular_inputs_are_refused_as_row_by_row(groups: list[ProxyDays], says: str) -> None:
    s = make_settings(period_end=START + dt.timedelta(days=DAYS - 1))
    with pytest.raises(InputError, match=says):
        tally_columns(s, lambda: groups, {})


def test_a_proxy_in_two_entries_is_merged_by_the_row_reading() -> None:
    s = make_settings(period_end=START + dt.timedelta(days=DAYS - 1), probation_days=1)
    groups = [entry("p", [3]), entry("q", [0]), entry("p", [1, 2])]
    with pytest.raises(award._Irregular):
        _tally_columns(s, groups, {})
    t = tally_columns(s, lambda: groups, {})
    assert facts(t) == facts(tally_groups(s, groups, {}))
    p = t.proxies["p"]
    assert (p.service, p.earned) == (3, 2 * award.WEIGHT_SCALE)  # day 1 was probation


def test_counts_beyond_64_bits_are_weighed_exactly() -> None:
    s = make_settings(period_end=START + dt.timedelta(days=DAYS - 1), performance_exponent=1)
    big = entry("p", [0], control_attempts=[2 * BIG], control_successes=[BIG])
    t = tally_columns(s, lambda: [big], {})
    assert t.proxies["p"].earned == award.WEIGHT_SCALE // 2


def test_counts_just_below_2_63_are_told_apart() -> None:
    """Counts of 2**63 - 1 fit numpy's int64, but one more (a column's radix in the
    mixed-radix key of :func:`award._distinct`) does not: days (2, 1) and (4, 1) must
    still weigh 1/2 and 1/4, not share one weight."""
    s = make_settings(
        period_end=START + dt.timedelta(days=DAYS - 1), performance_exponent=1,
        min_attempts=1, probation_days=0,
    )  # fmt: skip
    top = BIG - 1
    g = entry(
        "p", [0, 1, 2],
        control_attempts=[top, 2, 4], control_successes=[top, 1, 1],
        target_attempts=[top, 10, 10], target_successes=[0, 10, 10],
    )  # fmt: skip
    g.check("p")  # regular inputs: the column path decides them by itself
    fast = _tally_columns(s, [g], {})
    assert facts(fast) == facts(tally_groups(s, [g], {}))
    assert fast.proxies["p"].earned == award.WEIGHT_SCALE * 3 // 4


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 30)
    | st.floats(allow_nan=False)
    | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=6,
)


@st.composite
def chunk_texts(draw: Any) -> str:
    """A chunk of one proxy's entry, some of its fields dropped, added or replaced."""
    days = draw(st.integers(1, 3))
    p: dict[str, Any] = {
        "proxy_id": "p", "operator_id": "a", "network": NETS[0], "payout_address": address("a"),
        "country": "RU", "day": list(range(days)), "control_attempts": [24] * days,
        "control_successes": [24] * days, "target_attempts": [24] * days,
        "target_successes": [20] * days, "throughput_kbps": [0] * days,
    }  # fmt: skip
    if draw(st.booleans()):
        p |= {"exit_operator_id": "x", "exit_network": NETS[1], "exit_payout_address": address("x")}
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from([*p, "exit_network", "extra"]))
        if draw(st.booleans()):
            p.pop(key, None)
        else:
            p[key] = draw(JSON_VALUES)
    entries: Any = [p] if draw(st.integers(0, 9)) else p
    return json.dumps({"first_day": START.isoformat(), "proxies": entries})


def read_chunk(text: str) -> tuple[str, Any]:
    try:
        return "entries", model.proxy_days_from_chunk(text, 0)
    except InputError as exc:
        return "refused", str(exc)


@PROPS
@given(text=chunk_texts())
def test_a_chunk_is_read_as_field_by_field(text: str) -> None:
    """Entries of the usual shape are taken whole; anything else as before, each field
    checked: both give the same entries or the same error."""
    fast = read_chunk(text)
    plain = model._plain_entry
    try:
        model._plain_entry = lambda p, first: None  # type: ignore[assignment]
        slow = read_chunk(text)
    finally:
        model._plain_entry = plain  # type: ignore[assignment]
    assert fast == slow
