"""The censor: an nftables interval set of blocked prefixes on the lab's router.

Roskomnadzor's 2018 block was an IP blocklist enforced by dropping packets,
so the censor drops (no reset, no ICMP): a client dialling a blocked proxy
sees a connect that hangs, which is the hard case for failover.  Traffic is
dropped in the forward hook in both directions, so a blocked host can
neither be reached nor answer.

Prefixes come from the same files ``resist registry import-blocklist`` reads
(Roskomnadzor's dump or a plain list), parsed by the registry's parser and
merged into disjoint ranges, so the set is loaded with ``nft -f`` in one
transaction whatever its size; later single blocks use ``auto-merge`` so they
may overlap what is there.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator

from resistance.lab import netns
from resistance.lab.errors import LabError
from resistance.registry.blocklist import V4_OFFSET, merge_ranges, parse_blocklist, parse_prefix

TABLE = "resist_censor"
#: Elements per ``add element`` statement when loading a large list.
CHUNK = 20_000


def ruleset() -> str:
    """The censor's table: two interval sets and a forward chain that drops both ways."""
    return f"""table inet {TABLE} {{
    set blocked4 {{ type ipv4_addr; flags interval; auto-merge; }}
    set blocked6 {{ type ipv6_addr; flags interval; auto-merge; }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        ip daddr @blocked4 counter drop
        ip saddr @blocked4 counter drop
        ip6 daddr @blocked6 counter drop
        ip6 saddr @blocked6 counter drop
    }}
}}
"""


def _element(first: int, last: int) -> tuple[str, str]:
    """``(set, element)`` for one merged range, in nft's syntax."""
    if first >= V4_OFFSET:
        a = ipaddress.IPv4Address(first - V4_OFFSET)
        b = ipaddress.IPv4Address(last - V4_OFFSET)
        name = "blocked4"
    else:
        a6, b6 = ipaddress.IPv6Address(first), ipaddress.IPv6Address(last)
        return "blocked6", (str(a6) if a6 == b6 else f"{a6}-{b6}")
    return name, (str(a) if a == b else f"{a}-{b}")


def element_statements(ranges: Iterable[tuple[int, int]]) -> Iterator[str]:
    """``add element`` statements for these ranges, merged, at most CHUNK per statement."""
    return _statements(merge_ranges(ranges))


def _statements(merged: Iterable[tuple[int, int]]) -> Iterator[str]:
    pending: dict[str, list[str]] = {"blocked4": [], "blocked6": []}
    for first, last in merged:
        name, element = _element(first, last)
        batch = pending[name]
        batch.append(element)
        if len(batch) >= CHUNK:
            yield f"add element inet {TABLE} {name} {{ {', '.join(batch)} }}\n"
            batch.clear()
    for name, batch in pending.items():
        if batch:
            yield f"add element inet {TABLE} {name} {{ {', '.join(batch)} }}\n"


def ranges_of(prefixes: Iterable[str]) -> list[tuple[int, int]]:
    """Parse addresses/prefixes given on the command line; one bad one is an error."""
    found = []
    for text in prefixes:
        try:
            found.append(parse_prefix(text))
        except ValueError as exc:
            raise LabError(f"cannot block {text[:60]!r}: {exc}") from None
    return found


def ranges_from_file(data: bytes, source: str) -> tuple[list[tuple[int, int]], int, int]:
    """(ranges, prefixes read, bad lines skipped) from a blocklist file's bytes."""
    ranges, report = parse_blocklist(data, source)
    if report.prefixes == 0:
        raise LabError(f"{source} holds no address or prefix ({report.skipped} bad lines)")
    return ranges, report.prefixes, report.skipped


def install(namespace: str) -> None:
    netns.in_ns(namespace, "nft", "-f", "-", input=ruleset())


def block(namespace: str, ranges: Iterable[tuple[int, int]]) -> int:
    """Add ranges to the blocklist in one nft transaction (all or nothing); returns
    how many ranges they merged into (a million-line dump is sorted once)."""
    merged = merge_ranges(ranges)
    script = "".join(_statements(merged))
    if script:
        netns.in_ns(namespace, "nft", "-f", "-", input=script, timeout=600)
    return len(merged)


def unblock(namespace: str, ranges: Iterable[tuple[int, int]]) -> None:
    script = "".join(
        s.replace("add element", "delete element", 1) for s in element_statements(ranges)
    )
    if script:
        netns.in_ns(namespace, "nft", "-f", "-", input=script)


def blocked(namespace: str, *, elements: bool = False) -> dict[str, int]:
    """Packets the censor dropped and, with ``elements``, how many ranges each set holds.

    Counting elements makes nft print every one of them (two minutes for a
    million), so by default the sets are listed tersely, without contents.
    """
    import json

    cmd = ["nft", "-j", "list", "table", "inet", TABLE]
    if not elements:
        cmd.insert(1, "-t")
    text = netns.in_ns(namespace, *cmd, timeout=600)
    counts = {"dropped_packets": 0}
    for item in json.loads(text).get("nftables", []):
        if "set" in item and elements:
            s = item["set"]
            counts[s["name"]] = len(s.get("elem", []))
        elif "rule" in item:
            for expr in item["rule"].get("expr", []):
                if "counter" in expr:
                    counts["dropped_packets"] += int(expr["counter"].get("packets", 0))
    return counts
