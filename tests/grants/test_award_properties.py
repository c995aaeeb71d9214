"""Property tests of the award rule: exact totals, caps, monotonicity, determinism."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
from fractions import Fraction
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resistance.grants.award import compute_result, fill
from resistance.grants.model import (
    BASIS_POINTS,
    CarriedAmount,
    DailyRollup,
    GrantSettings,
    RoundInputs,
    RoundResult,
)

from .helpers import address, rollup
from .helpers import settings as make_settings

DAYS = 5
NETS = ["198.51.100.0/24", "203.0.113.0/24", "2001:db8:1::/48"]
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def worlds(draw: Any) -> tuple[GrantSettings, RoundInputs]:
    n_ops = draw(st.integers(1, 5))
    n_proxies = draw(st.integers(1, 8))
    proxies = [
        (f"p{j}", f"op{draw(st.integers(0, n_ops - 1))}", draw(st.sampled_from(NETS)))
        for j in range(n_proxies)
    ]
    rows = []
    for proxy, op, net in proxies:
        for day in draw(st.sets(st.integers(0, DAYS - 1), max_size=DAYS)):
            ca = draw(st.integers(0, 6))
            ta = draw(st.integers(0, 6))
            rows.append(
                rollup(
                    proxy,
                    op,
                    day,
                    network=net,
                    ca=ca,
                    cs=draw(st.integers(0, ca)),
                    ta=ta,
                    ts=draw(st.integers(0, ta)),
                    throughput=draw(st.integers(0, 3000)),
                )
            )
    if draw(st.booleans()):
        rows.append(rollup("p0", proxies[0][1], 0, network=proxies[0][2], country="IR"))
    carried = tuple(
        CarriedAmount(f"op{k}", address(f"op{k}"), draw(st.integers(0, 50_000)))
        for k in sorted(draw(st.sets(st.integers(0, n_ops + 1), max_size=3)))
    )
    budget = draw(st.integers(0, 5_000_000))
    s = make_settings(
        period_end=make_settings().period_start + dt.timedelta(days=DAYS - 1),
        budget_sat=budget,
        fee_reserve_sat=draw(st.integers(0, budget)),
        min_payout_sat=draw(st.integers(546, 60_000)),
        performance_exponent=draw(st.sampled_from([1, 2, 5, 20])),
        min_attempts=draw(st.integers(1, 3)),
        capacity_reference_kbps=draw(st.sampled_from([0, 1000])),
        probation_days=draw(st.integers(0, 3)),
        operator_cap_bp=draw(st.sampled_from([BASIS_POINTS, 5000, 3000, 1500])),
        network_cap_bp=draw(st.sampled_from([BASIS_POINTS, 6000, 2500])),
    )
    prior = {p: draw(st.integers(0, 3)) for p, _, _ in proxies if draw(st.booleans())}
    return s, RoundInputs(tuple(rows), carried, prior)


def operator_due(result: RoundResult, op: str) -> int:
    for a in result.awards:
        if a.operator_id == op:
            return a.share_sat + a.carried_in_sat
    return 0


@PROPS
@given(worlds())
def test_totals_add_up_exactly(world: tuple[GrantSettings, RoundInputs]) -> None:
    s, inputs = world
    r = compute_result(s, inputs)
    carried_in = sum(c.amount_sat for c in inputs.carried_in)
    assert r.carried_in_sat == carried_in
    assert r.paid_sat + r.carried_out_sat + s.fee_reserve_sat + r.returned_sat == (
        s.budget_sat + carried_in
    )
    assert sum(a.share_sat for a in r.awards) == r.distributed_sat
    assert r.distributed_sat + r.returned_sat == s.budget_sat - s.fee_reserve_sat
    for a in r.awards:
        assert a.share_sat >= 0 and a.carried_out_sat >= 0
        assert a.amount_sat == 0 or a.amount_sat >= s.min_payout_sat
        assert a.carried_out_sat == 0 or a.carried_out_sat < s.min_payout_sat
        assert a.amount_sat + a.carried_out_sat == a.share_sat + a.carried_in_sat
    # Without caps, all the pool goes out as soon as anyone earned anything.
    uncapped = s.operator_cap_bp == s.network_cap_bp == BASIS_POINTS
    if uncapped and any(a.weight > 0 for a in r.awards):
        assert r.returned_sat == 0


@PROPS
@given(worlds())
def test_without_carried_amounts_the_budget_is_exact(
    world: tuple[GrantSettings, RoundInputs],
) -> None:
    s, inputs = world
    r = compute_result(s, dataclasses.replace(inputs, carried_in=()))
    assert r.paid_sat + r.carried_out_sat + s.fee_reserve_sat + r.returned_sat == s.budget_sat


@PROPS
@given(worlds())
def test_caps_hold(world: tuple[GrantSettings, RoundInputs]) -> None:
    s, inputs = world
    r = compute_result(s, inputs)
    op_cap = s.pool_sat * s.operator_cap_bp // BASIS_POINTS
    net_cap = s.pool_sat * s.network_cap_bp // BASIS_POINTS
    nets_of: dict[str, set[str]] = {}
    for row in inputs.rollups:
        nets_of.setdefault(row.operator_id, set()).add(row.network)
    for a in r.awards:
        assert a.share_sat <= op_cap
        if len(nets_of.get(a.operator_id, ())) == 1:
            assert a.share_sat <= net_cap


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 4), st.integers(0, 3), st.integers(1, 10**6)),
        min_size=1,
        max_size=12,
    ),
    st.integers(0, 10**7),
    st.integers(1, BASIS_POINTS),
    st.integers(1, BASIS_POINTS),
)
def test_water_filling_respects_both_caps_exactly(
    raw: list[tuple[int, int, int]], pool: int, op_bp: int, net_bp: int
) -> None:
    units = sorted({(f"o{o}", f"n{n}"): w for o, n, w in raw}.items())
    flat = [(o, n, w) for (o, n), w in units]
    op_cap, net_cap = pool * op_bp // BASIS_POINTS, pool * net_bp // BASIS_POINTS
    shares = fill(pool, flat, op_cap, net_cap)
    assert all(x >= 0 for x in shares)
    total = sum(shares, Fraction(0))
    assert total <= pool
    per_op: dict[str, Fraction] = {}
    per_net: dict[str, Fraction] = {}
    for (o, n, _), x in zip(flat, shares, strict=True):
        per_op[o] = per_op.get(o, Fraction(0)) + x
        per_net[n] = per_net.get(n, Fraction(0)) + x
    assert all(v <= op_cap for v in per_op.values())
    assert all(v <= net_cap for v in per_net.values())
    if total < pool:
        # Nothing left uncapped: every unit sits in a group at its cap.
        for o, n, _ in flat:
            assert per_op[o] == op_cap or per_net[n] == net_cap


def _improve(row: DailyRollup, how: int) -> DailyRollup:
    if how == 0:
        return dataclasses.replace(row, target_successes=row.target_attempts)
    if how == 1:
        return dataclasses.replace(row, control_successes=row.control_attempts)
    if how == 2:
        return dataclasses.replace(row, throughput_kbps=row.throughput_kbps + 500)
    return dataclasses.replace(
        row,
        control_attempts=row.control_attempts + 3,
        control_successes=row.control_successes + 3,
        target_attempts=row.target_attempts + 3,
        target_successes=row.target_successes + 3,
    )


@PROPS
@given(worlds(), st.data())
def test_more_verified_service_never_earns_less(
    world: tuple[GrantSettings, RoundInputs], data: Any
) -> None:
    s, inputs = world
    rows = [r for r in inputs.rollups if r.country == s.target_country]
    before = compute_result(s, inputs)
    if rows and data.draw(st.booleans()):
        k = data.draw(st.integers(0, len(rows) - 1))
        better = _improve(rows[k], data.draw(st.integers(0, 3)))
        op = rows[k].operator_id
        new_rows = [better if r is rows[k] else r for r in inputs.rollups]
    else:
        # A new day of perfect service for an existing or a new proxy.
        proxies = {r.proxy_id: r for r in rows}
        pid = data.draw(st.sampled_from([*sorted(proxies), "new-proxy"]))
        taken = {r.day for r in rows if r.proxy_id == pid}
        free = [d for d in range(DAYS) if s.period_start + dt.timedelta(days=d) not in taken]
        if not free:
            return
        day = data.draw(st.sampled_from(free))
        if pid in proxies:
            base = proxies[pid]
            op, net = base.operator_id, base.network
        else:
            op, net = data.draw(st.sampled_from(["op0", "op1", "op9"])), NETS[0]
        new_rows = [*inputs.rollups, rollup(pid, op, day, network=net)]
    after = compute_result(s, dataclasses.replace(inputs, rollups=tuple(new_rows)))
    assert operator_due(after, op) >= operator_due(before, op)
    paid_before = {a.operator_id: a.amount_sat for a in before.awards}
    paid_after = {a.operator_id: a.amount_sat for a in after.awards}
    assert paid_after.get(op, 0) >= paid_before.get(op, 0)


@PROPS
@given(worlds(), st.randoms(use_true_random=False))
def test_same_inputs_same_round_in_any_order(
    world: tuple[GrantSettings, RoundInputs], rnd: random.Random
) -> None:
    s, inputs = world
    rows = list(inputs.rollups)
    rnd.shuffle(rows)
    carried = list(inputs.carried_in)
    rnd.shuffle(carried)
    prior = dict(sorted(inputs.prior_service_days.items(), reverse=True))
    shuffled = RoundInputs(tuple(rows), tuple(carried), prior)
    assert compute_result(s, shuffled) == compute_result(s, inputs)
    assert compute_result(s, inputs) == compute_result(s, inputs)
