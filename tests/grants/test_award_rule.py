"""Worked examples of the award rule: each clause of the module docstring, by hand."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import pytest

from resistance.grants.award import WEIGHT_SCALE, compute_result, day_weight, largest_remainder
from resistance.grants.errors import InputError, SettingsError
from resistance.grants.model import CarriedAmount, RoundInputs

from .helpers import address, rollup, settings


def result(rows: list, **kw: object):  # type: ignore[no-untyped-def]
    carried = kw.pop("carried", ())
    prior = kw.pop("prior", {})
    return compute_result(settings(**kw), RoundInputs(tuple(rows), tuple(carried), prior))


def by_op(r):  # type: ignore[no-untyped-def]
    return {a.operator_id: a for a in r.awards}


def test_day_weight_is_exact_and_steep() -> None:
    s = settings()
    assert day_weight(s, rollup("p", "o", ca=10, cs=10, ta=10, ts=10)) == WEIGHT_SCALE
    # 90 % x 100 % to the 20th power, floored once: 0.9**20 = 0.12157665459056928801
    assert day_weight(s, rollup("p", "o", ca=10, cs=9, ta=10, ts=10)) == 121576654590
    half = day_weight(s, rollup("p", "o", ca=2, cs=1, ta=1, ts=1))
    assert half == WEIGHT_SCALE // 2**20
    # capacity factor: half the reference throughput halves the weight
    cap = settings(capacity_reference_kbps=2000)
    assert day_weight(cap, rollup("p", "o", throughput=1000)) == WEIGHT_SCALE // 2
    assert day_weight(cap, rollup("p", "o", throughput=9000)) == WEIGHT_SCALE


def test_blocked_in_target_country_earns_nothing_for_those_days() -> None:
    rows = [rollup("a", "alice", d) for d in range(10)]
    rows += [rollup("b", "bob", d, network="198.51.100.0/24") for d in range(5)]
    # bob's proxy is reachable from control vantages but blocked inside on days 5..9
    rows += [rollup("b", "bob", d, network="198.51.100.0/24", ts=0) for d in range(5, 10)]
    r = by_op(result(rows, budget_sat=950_000, fee_reserve_sat=50_000))
    assert (r["alice"].share_sat, r["bob"].share_sat) == (600_000, 300_000)
    assert r["bob"].service_days == 5


def test_unmeasured_days_do_not_count() -> None:
    rows = [rollup("a", "alice", 0), rollup("a", "alice", 1, ta=0, ts=0)]
    rows.append(rollup("b", "bob", 0, network="198.51.100.0/24", ca=1, cs=1, ta=1, ts=1))
    r = by_op(result(rows, min_attempts=2, fee_reserve_sat=0))
    assert r["alice"].service_days == 1
    assert r["bob"].weight == 0 and r["bob"].share_sat == 0
    assert r["alice"].share_sat == 10_000_000


def test_probation_skips_the_first_days_of_service() -> None:
    rows = [rollup("a", "alice", d, cs=12) for d in range(3)] + [rollup("a", "alice", 3)]
    rows += [rollup("b", "bob", d, network="198.51.100.0/24") for d in range(4)]
    r = by_op(result(rows, probation_days=3, fee_reserve_sat=0))
    # each keeps one full day: the 4th; alice's flaky first days fall in probation
    assert r["alice"].weight == r["bob"].weight == WEIGHT_SCALE
    assert r["alice"].share_sat == r["bob"].share_sat == 5_000_000
    # a proxy that already served 3 days in earlier rounds earns from day one
    r2 = by_op(result(rows, probation_days=3, fee_reserve_sat=0, prior={"b": 3}))
    assert r2["bob"].weight == 4 * WEIGHT_SCALE


def test_one_operator_with_many_addresses_in_one_network_cannot_take_the_budget() -> None:
    rows = [rollup(f"big{i}", "mallory", 0) for i in range(500)]
    rows += [rollup(f"s{i}", f"small{i}", 0, network=f"198.51.{i}.0/24") for i in range(5)]
    r = result(rows, budget_sat=1_000_000, fee_reserve_sat=0, network_cap_bp=2000)
    a = by_op(r)
    assert a["mallory"].share_sat == 200_000
    # the excess went to the others by water-filling: 800000 / 5 each
    assert [a[f"small{i}"].share_sat for i in range(5)] == [160_000] * 5
    assert r.returned_sat == 0
    r2 = result(rows, budget_sat=1_000_000, fee_reserve_sat=0, operator_cap_bp=1000)
    # a 10 % cap binds everyone here: 6 x 100000 paid, the rest stays with the funder
    assert {a.share_sat for a in r2.awards} == {100_000}
    assert r2.returned_sat == 400_000


def test_everyone_capped_returns_the_rest_to_the_funder() -> None:
    rows = [rollup("a", "alice", 0), rollup("b", "bob", 0, network="198.51.100.0/24")]
    r = result(rows, budget_sat=1_000_000, fee_reserve_sat=0, operator_cap_bp=3000)
    assert [a.share_sat for a in r.awards] == [300_000, 300_000]
    assert r.returned_sat == 400_000


def test_nobody_earned_returns_the_pool() -> None:
    r = result([rollup("a", "alice", 0, ts=0)], budget_sat=100_000, fee_reserve_sat=1_000)
    assert r.returned_sat == 99_000 and r.paid_sat == 0


def test_largest_remainder_with_ties_broken_by_operator_id() -> None:
    rows = [rollup(p, p, 0, network=f"198.51.{n}.0/24") for n, p in enumerate("cab")]
    r = by_op(result(rows, budget_sat=100_001, fee_reserve_sat=0))
    # 100001 / 3 = 33333 + 2/3 each: the two spare satoshi go to a and b
    assert [r[k].share_sat for k in "abc"] == [33_334, 33_334, 33_333]
    shares = largest_remainder(
        10, [("c", Fraction(10, 3)), ("a", Fraction(10, 3)), ("b", Fraction(10, 3))]
    )
    assert shares == {"a": 4, "b": 3, "c": 3}
    shares = largest_remainder(11, [("x", Fraction(7, 2)), ("y", Fraction(15, 2))])
    assert shares == {"x": 4, "y": 7}  # tie on 1/2: x before y


def test_below_minimum_is_carried_and_never_lost() -> None:
    rows = [rollup("a", "alice", 0)] + [
        rollup(f"b{i}", "bob", 0, network="198.51.100.0/24") for i in range(99)
    ]
    carried = [
        CarriedAmount("alice", address("alice"), 3_000),
        CarriedAmount("carol", address("carol"), 7_000),
    ]
    r = result(rows, budget_sat=1_000_000, fee_reserve_sat=0, carried=carried)
    a = by_op(r)
    assert a["alice"].share_sat == 10_000 and a["alice"].amount_sat == 13_000
    assert a["carol"].amount_sat == 0 and a["carol"].carried_out_sat == 7_000
    r = result(rows, budget_sat=1_000_000, fee_reserve_sat=0, min_payout_sat=20_000)
    a = by_op(r)
    assert a["alice"].amount_sat == 0 and a["alice"].carried_out_sat == 10_000
    assert r.paid_sat + r.carried_out_sat == 1_000_000


def test_bad_rows_are_refused() -> None:
    with pytest.raises(InputError, match="more control successes"):
        rollup("a", "alice", ca=1, cs=2)
    with pytest.raises(InputError, match="/24"):
        rollup("a", "alice", network="203.0.113.0/25")
    with pytest.raises(InputError, match="duplicate"):
        result([rollup("a", "alice", 0), rollup("a", "alice", 0)])
    with pytest.raises(InputError, match="outside the round's period"):
        result([rollup("a", "alice", 30)])
    with pytest.raises(InputError, match="disagree on operator"):
        result([rollup("a", "alice", 0), rollup("a", "bob", 1)])
    with pytest.raises(InputError, match="payout address"):
        result([rollup("a", "alice", 0), rollup("b", "alice", 0, payout=address("x"))])
    with pytest.raises(SettingsError, match="fee reserve"):
        settings(budget_sat=1000, fee_reserve_sat=2000)
    with pytest.raises(SettingsError, match="dust"):
        settings(min_payout_sat=100)


def test_rows_of_other_countries_are_ignored_and_counted() -> None:
    rows = [rollup("a", "alice", 0), rollup("a", "alice", 0, country="IR", ts=0)]
    r = result(rows)
    assert r.ignored_rollups == 1
    assert dataclasses.replace(r, ignored_rollups=0) == result(rows[:1])
