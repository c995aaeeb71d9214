"""A cascade's award split between its bridge's and its exit's operators (issue 24)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resistance.grants.award import compute_result
from resistance.grants.errors import InputError, SettingsError
from resistance.grants.model import (
    BASIS_POINTS,
    CASCADE_EXIT_DEFAULT_BP,
    CASCADE_EXIT_MAX_BP,
    CASCADE_EXIT_MIN_BP,
    DailyRollup,
    GrantSettings,
    RoundInputs,
    RoundResult,
    rollup_from_json,
    rollup_to_json,
    settings_from_json,
    settings_to_json,
)

from .helpers import address, rollup
from .helpers import settings as make_settings

BRIDGE_NET, EXIT_NET, OTHER_NET = "198.51.100.0/24", "203.0.113.0/24", "192.0.2.0/24"
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def cascade(proxy: str, bridge_op: str, exit_op: str, day: int = 0, **kw: Any) -> DailyRollup:
    row = rollup(proxy, bridge_op, day, network=kw.pop("network", BRIDGE_NET), **kw)
    return dataclasses.replace(
        row,
        exit_operator_id=exit_op,
        exit_network=EXIT_NET,
        exit_payout_address=address(exit_op),
    )


def shares(result: RoundResult) -> dict[str, int]:
    return {a.operator_id: a.share_sat for a in result.awards}


def test_the_default_split_pays_the_bridge_60_and_the_exit_40_percent() -> None:
    s = make_settings(budget_sat=1_000_001, fee_reserve_sat=0)
    r = compute_result(s, RoundInputs((cascade("b1", "dom", "abroad"),)))
    got = shares(r)
    assert got == {"dom": 600_001, "abroad": 400_000}  # floored exit weight: 1 sat to the bridge
    assert sum(got.values()) == r.distributed_sat == s.pool_sat
    assert CASCADE_EXIT_DEFAULT_BP == 4_000


def test_the_funder_sets_the_split_within_bounds() -> None:
    s = make_settings(budget_sat=1_000_000, fee_reserve_sat=0, cascade_exit_bp=7_500)
    got = shares(compute_result(s, RoundInputs((cascade("b1", "dom", "abroad"),))))
    assert got == {"dom": 250_000, "abroad": 750_000}
    for bad in (CASCADE_EXIT_MIN_BP - 1, CASCADE_EXIT_MAX_BP + 1, 0, BASIS_POINTS):
        with pytest.raises(SettingsError, match="cascade_exit_bp"):
            make_settings(cascade_exit_bp=bad)


def test_an_exit_serving_two_bridges_is_paid_per_bridge() -> None:
    s = make_settings(budget_sat=1_000_000, fee_reserve_sat=0)
    rows = (
        cascade("b1", "dom1", "abroad"),
        cascade("b2", "dom2", "abroad", network=OTHER_NET),
        rollup("solo", "alone", network="192.0.2.0/24"),
    )
    r = compute_result(s, RoundInputs(rows))
    third = Fraction(1_000_000, 3)
    assert shares(r)["abroad"] == pytest.approx(float(2 * third * 4 / 10), abs=1)
    assert shares(r)["dom1"] == shares(r)["dom2"] == pytest.approx(float(third * 6 / 10), abs=1)
    assert sum(shares(r).values()) == r.distributed_sat == 1_000_000
    (exit_award,) = [a for a in r.awards if a.operator_id == "abroad"]
    assert exit_award.proxies == 2 and exit_award.payout_address == address("abroad")


def test_an_operator_cap_holds_for_the_exits_part() -> None:
    s = make_settings(budget_sat=1_000_000, fee_reserve_sat=0, operator_cap_bp=3_000)
    rows = tuple(cascade(f"b{i}", f"dom{i}", "abroad", network=f"10.{i}.0.0/24") for i in range(3))
    got = shares(compute_result(s, RoundInputs(rows)))
    assert got["abroad"] <= 300_000  # 40 % of everything, capped at 30 %
    assert sum(got.values()) == 1_000_000


def test_bad_cascade_rows_are_refused() -> None:
    with pytest.raises(InputError, match="a cascade needs"):
        dataclasses.replace(rollup("b1", "dom"), exit_operator_id="abroad")
    with pytest.raises(InputError):
        dataclasses.replace(
            rollup("b1", "dom"), exit_operator_id="x", exit_network="10.0.0.1/32",
            exit_payout_address=address("x"),
        )  # fmt: skip
    s = make_settings()
    with pytest.raises(InputError, match="disagree on operator, network or exit"):
        one_hop = rollup("b1", "dom", 1, network=BRIDGE_NET)
        compute_result(s, RoundInputs((cascade("b1", "dom", "abroad"), one_hop)))
    with pytest.raises(InputError, match="payout address"):
        other = dataclasses.replace(cascade("b2", "dom2", "abroad"), exit_payout_address=address(9))
        compute_result(s, RoundInputs((cascade("b1", "dom", "abroad"), other)))


def test_files_round_trip_and_one_hop_rows_read_as_before() -> None:
    row = cascade("b1", "dom", "abroad")
    assert rollup_from_json(rollup_to_json(row), 0) == row
    plain = rollup("p1", "op")
    assert not any(k.startswith("exit_") for k in rollup_to_json(plain))
    assert "cascade_exit_bp" not in settings_to_json(make_settings())
    s = make_settings(cascade_exit_bp=5_000)
    assert settings_from_json(settings_to_json(s)) == s


@st.composite
def worlds(draw: Any) -> tuple[GrantSettings, RoundInputs]:
    nets = ["198.51.100.0/24", "203.0.113.0/24", "2001:db8:1::/48", "192.0.2.0/24"]
    rows: list[DailyRollup] = []
    for j in range(draw(st.integers(1, 6))):
        op = f"op{draw(st.integers(0, 3))}"
        exit_op = draw(st.one_of(st.none(), st.sampled_from(["op0", "x1", "x2"])))
        net = draw(st.sampled_from(nets))
        for day in draw(st.sets(st.integers(0, 3), min_size=1, max_size=4)):
            ta = draw(st.integers(1, 6))
            row = rollup(f"p{j}", op, day, network=net, ta=ta, ts=draw(st.integers(0, ta)))
            if exit_op is not None:
                row = dataclasses.replace(
                    row, exit_operator_id=exit_op, exit_network=nets[0],
                    exit_payout_address=address(exit_op),
                )  # fmt: skip
            rows.append(row)
    budget = draw(st.integers(0, 5_000_000))
    s = make_settings(
        period_end=make_settings().period_start + dt.timedelta(days=3),
        budget_sat=budget,
        fee_reserve_sat=draw(st.integers(0, budget)),
        performance_exponent=draw(st.sampled_from([1, 2, 20])),
        operator_cap_bp=draw(st.sampled_from([BASIS_POINTS, 4000])),
        cascade_exit_bp=draw(st.integers(CASCADE_EXIT_MIN_BP, CASCADE_EXIT_MAX_BP)),
    )
    return s, RoundInputs(tuple(rows))


@PROPS
@given(worlds(), st.randoms(use_true_random=False))
def test_split_awards_sum_exactly_are_never_negative_and_reproducible(
    world: tuple[GrantSettings, RoundInputs], rnd: random.Random
) -> None:
    s, inputs = world
    r = compute_result(s, inputs)
    assert sum(a.share_sat for a in r.awards) == r.distributed_sat
    assert r.distributed_sat + r.returned_sat == s.pool_sat
    assert all(a.share_sat >= 0 and a.amount_sat >= 0 for a in r.awards)
    shuffled = list(inputs.rollups)
    rnd.shuffle(shuffled)
    assert compute_result(s, dataclasses.replace(inputs, rollups=tuple(shuffled))) == r


@PROPS
@given(worlds())
def test_without_caps_each_operator_gets_its_exact_part_to_within_a_satoshi(
    world: tuple[GrantSettings, RoundInputs],
) -> None:
    s, inputs = world
    s = dataclasses.replace(s, operator_cap_bp=BASIS_POINTS)
    r = compute_result(s, inputs)
    weights: dict[str, int] = {}
    for a in r.awards:
        weights[a.operator_id] = a.weight
    total = sum(weights.values())
    for a in r.awards:
        exact = Fraction(s.pool_sat * a.weight, total) if total else Fraction(0)
        assert abs(a.share_sat - exact) < 1
