"""How much of the non-public proxy pool a censor enumerates through /proxies/assign.

The censor asks from S distinct /16 networks on one day; each ask returns the k
proxies after the requester's point on the registry's keyed hash ring
(:mod:`resistance.registry.ring`, the code the registry runs).  The share of
M proxies it learns is compared with the analytic 1 - (1 - k/M)^S.

    python bench/enumeration.py --proxies 1000 --per-request 3 --trials 5
"""

from __future__ import annotations

import os
import statistics

import click
from rich.console import Console
from rich.table import Table

from resistance.registry.ring import HashRing, requester_key


def enumerated_share(proxies: int, networks: int, k: int, seed: bytes, days: int = 1) -> float:
    ring = HashRing(seed, [f"proxy-{i}" for i in range(proxies)])
    seen: set[str] = set()
    for day in range(days):
        for n in range(networks):
            host = f"{(n >> 8) % 224 + 1}.{n % 256}.0.1"  # one address in each distinct /16
            seen.update(ring.pick(requester_key(host, f"day-{day}"), k))
    return len(seen) / proxies


@click.command()
@click.option("--proxies", "-m", default=1000, show_default=True, help="Non-public proxies (M).")
@click.option("--per-request", "-k", default=3, show_default=True, help="Proxies per answer (k).")
@click.option(
    "--networks",
    "-s",
    default="10,50,100,300,1000,3000",
    show_default=True,
    help="Comma-separated censor network counts (S).",
)
@click.option("--days", default=1, show_default=True, help="Days the censor keeps asking.")
@click.option("--trials", default=5, show_default=True, help="Ring keys tried per row.")
def main(proxies: int, per_request: int, networks: str, days: int, trials: int) -> None:
    """Simulate a censor enumerating proxies from S networks; print a rich table."""
    counts = [int(x) for x in networks.split(",") if x.strip()]
    table = Table(title=f"Enumeration of M={proxies} proxies, k={per_request}, days={days}")
    for column in ("S networks", "requests", "enumerated (mean)", "min-max", "analytic"):
        table.add_column(column, justify="right")
    for s in counts:
        shares = [
            enumerated_share(proxies, s, per_request, os.urandom(32), days) for _ in range(trials)
        ]
        analytic = 1 - (1 - per_request / proxies) ** (s * days)
        table.add_row(
            str(s),
            str(s * days),
            f"{statistics.fmean(shares):.1%}",
            f"{min(shares):.1%}-{max(shares):.1%}",
            f"{analytic:.1%}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
