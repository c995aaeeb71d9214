"""Looking addresses up in a censor registry of a million prefixes.

Builds a plain prefix list of ``--prefixes`` random IPv4 prefixes (/16 to
/32, as Roskomnadzor's registry mixes them) plus some IPv6 ones, then times
what ``resist registry import-blocklist`` does before touching the database:
parse the file, merge into disjoint ranges, build the lookup structure; then
random lookups.  Reports load time, lookups/s and peak RSS.

    .venv/bin/python bench/blocklist_lookup.py --prefixes 1000000
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import time

from rich.console import Console
from rich.table import Table

from resistance.registry.blocklist import PrefixSet, parse_blocklist


def _v4(rng: random.Random) -> str:
    return ".".join(str(x) for x in (rng.randrange(1, 224), *rng.randbytes(3)))


def make_list(count: int, rng: random.Random) -> bytes:
    """Mostly single addresses, as in Roskomnadzor's registry; a few wide prefixes."""
    lengths = [32] * 85 + [24] * 10 + [22, 20, 20] + [16] * 2
    lines = []
    for _ in range(count):
        if rng.random() < 0.02:
            lines.append(f"2a{rng.randrange(256):02x}:{rng.randrange(65536):x}::/48")
        else:
            lines.append(f"{_v4(rng)}/{rng.choice(lengths)}")
    return ("\n".join(lines) + "\n").encode()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prefixes", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    data = make_list(args.prefixes, rng)
    t0 = time.perf_counter()
    ranges, report = parse_blocklist(data)
    t1 = time.perf_counter()
    blocked = PrefixSet(ranges)
    t2 = time.perf_counter()
    del ranges
    addresses = [
        f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"
        for _ in range(args.lookups)
    ]
    t3 = time.perf_counter()
    hits = sum(1 for a in addresses if a in blocked)
    t4 = time.perf_counter()
    table = Table(title=f"censor registry: {report.prefixes} prefixes, {args.lookups} lookups")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in (
        ("file size", f"{len(data) / 1e6:.1f} MB"),
        ("parse", f"{t1 - t0:.2f} s"),
        ("merge + build lookup", f"{t2 - t1:.2f} s"),
        ("load time (parse + build)", f"{t2 - t0:.2f} s"),
        ("disjoint ranges", f"{blocked.size}"),
        ("lookups/s (text address in)", f"{args.lookups / (t4 - t3):,.0f}"),
        ("hits", f"{hits} ({hits / args.lookups:.1%})"),
        ("peak RSS", f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"),
    ):
        table.add_row(name, value)
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
