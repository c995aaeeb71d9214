"""Benchmark: a grant round over 100,000 proxies with 30 days of rollups.

Rows are generated on the fly and fed to the award rule as an iterable, the way
a registry export is streamed, so memory is bounded by the number of proxies,
not of rows. Reports wall time, rows per second and peak RSS in a rich table.

    .venv/bin/python bench/grants_round.py [--proxies 100000] [--days 30]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import random
import resource
import time
from collections.abc import Iterator

import bdkpython as bdk
from rich.console import Console
from rich.table import Table

from resistance.grants.award import compute_result_from
from resistance.grants.model import BASIS_POINTS, DailyRollup, GrantSettings

START = dt.date(2024, 5, 1)


def rows(proxies: int, days: int, seed: int = 7) -> Iterator[DailyRollup]:
    rnd = random.Random(seed)
    operators = max(1, proxies // 5)
    addresses = [
        str(
            bdk.Address.from_script(
                bdk.Script(b"\x00\x14" + hashlib.sha256(b"op%d" % o).digest()[:20]),
                bdk.Network.REGTEST,
            )
        )
        for o in range(operators)
    ]
    # A few big operators packing many proxies into one /24, most with one or two.
    layout = []
    for p in range(proxies):
        op = p % operators if p % 10 else p % 50
        net = f"10.{(p // 4) // 256 % 256}.{(p // 4) % 256}.0/24"
        quality = rnd.choice((24, 24, 24, 23, 22, 18, 12))
        blocked_from = rnd.choice((days, days, days, days // 2))
        layout.append((f"proxy-{p}", f"op-{op}", net, addresses[op], quality, blocked_from))
    for d in range(days):
        day = START + dt.timedelta(days=d)
        for proxy, op, net, addr, quality, blocked_from in layout:
            ok = quality if rnd.random() > 0.05 else quality // 2
            yield DailyRollup(
                proxy_id=proxy,
                operator_id=op,
                network=net,
                payout_address=addr,
                day=day,
                country="RU",
                control_attempts=24,
                control_successes=ok,
                target_attempts=24,
                target_successes=0 if d >= blocked_from else ok,
                throughput_kbps=rnd.randrange(0, 20_000, 500),
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxies", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args()
    settings = GrantSettings(
        round_id="bench",
        network="regtest",
        target_country="RU",
        period_start=START,
        period_end=START + dt.timedelta(days=args.days - 1),
        budget_sat=5 * 10**8,
        fee_reserve_sat=200_000,
        min_payout_sat=20_000,
        capacity_reference_kbps=10_000,
        probation_days=3,
        operator_cap_bp=BASIS_POINTS // 100,
        network_cap_bp=BASIS_POINTS // 200,
    )
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    for _ in rows(args.proxies, args.days):
        pass
    generation = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = compute_result_from(settings, rows(args.proxies, args.days), (), {})
    elapsed = time.perf_counter() - t0
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n_rows = args.proxies * args.days
    assert (
        result.paid_sat + result.carried_out_sat + settings.fee_reserve_sat + result.returned_sat
        == settings.budget_sat
    )
    table = Table(title="resist grants: one round (rows generated and consumed as a stream)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("proxies x days", f"{args.proxies:,} x {args.days}")
    table.add_row("rollup rows", f"{n_rows:,}")
    table.add_row("operators", f"{len(result.awards):,}")
    table.add_row("payouts", f"{len(result.payouts()):,}")
    table.add_row("time: generate + validate rows only", f"{generation:.1f} s")
    table.add_row("time: generate + validate + award rule", f"{elapsed:.1f} s")
    table.add_row("time: award rule alone (difference)", f"{elapsed - generation:.1f} s")
    table.add_row("rows per second", f"{n_rows / elapsed:,.0f}")
    table.add_row("peak RSS", f"{rss_peak / 1024:.0f} MiB (at start {rss_before / 1024:.0f} MiB)")
    table.add_row(
        "paid / carried / returned",
        f"{result.paid_sat:,} / {result.carried_out_sat:,} / {result.returned_sat:,} sat",
    )
    Console().print(table)


if __name__ == "__main__":
    main()
