"""Censor registries: Roskomnadzor's dump and plain prefix lists, and fast lookups.

Two formats are read:

* the registry dump as zapret-info publishes it (``dump.csv``): a first line
  ``Updated: <date>``, then one record per line, ``;``-separated:
  ``IP | IP | ...;domain;URL;body;decision;date`` where the first field holds
  IPv4/IPv6 addresses or prefixes separated by `` | `` (it may be empty for
  records that block only names).  It is published in windows-1251; UTF-8
  copies exist too, so the encoding is detected (UTF-8 if it decodes, else
  windows-1251).
* plain lists (antifilter style): one address or prefix per line; blank
  lines and ``#`` comments are ignored.

Parsing never stops at a bad line: each one is reported (line number and
why) and skipped, and everything else is kept.  :class:`PrefixSet` merges
all prefixes into disjoint ranges held in sorted arrays, so a lookup is
one binary search whatever the number of prefixes.  IPv4 and IPv6 stay apart: IPv4
addresses live above the whole IPv6 space (``2**128 + address``), so an IPv6
prefix such as ``::/0`` never covers an IPv4 address.
"""

from __future__ import annotations

import bisect
import socket
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

V4_OFFSET: Final = 1 << 128
HEX_DIGITS: Final = 33
MAX_REPORTED: Final = 1000


class PrefixError(ValueError):
    pass


@dataclass(slots=True)
class ParseReport:
    kind: str
    updated: str | None = None
    lines: int = 0
    prefixes: int = 0
    skipped: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)

    def problem(self, line: int, why: str) -> None:
        self.skipped += 1
        if len(self.problems) < MAX_REPORTED:
            self.problems.append((line, why))


def parse_prefix(text: str) -> tuple[int, int]:
    """``(first, last)`` of an IPv4/IPv6 address or prefix (IPv4 above ``2**128``).

    Host bits set under the mask are tolerated (the registry has such entries)
    and cleared.  Raises :class:`PrefixError`.
    """
    text = text.strip()
    addr, sep, length_text = text.partition("/")
    if ":" in addr:
        try:
            value = int.from_bytes(socket.inet_pton(socket.AF_INET6, addr), "big")
        except (OSError, ValueError):  # ValueError: NUL or a lone surrogate
            raise PrefixError(f"{addr[:50]!r} is not an IPv6 address") from None
        bits, offset = 128, 0
    else:
        if addr.count(".") != 3:
            raise PrefixError(f"{addr[:50]!r} is not an IPv4 address")
        try:
            value = int.from_bytes(socket.inet_pton(socket.AF_INET, addr), "big")
        except (OSError, ValueError):  # ValueError: NUL or a lone surrogate
            raise PrefixError(f"{addr[:50]!r} is not an IPv4 address") from None
        bits, offset = 32, V4_OFFSET
    if sep:
        if not length_text.isdigit() or len(length_text) > 3 or int(length_text) > bits:
            raise PrefixError(f"bad prefix length {length_text[:10]!r}")
        length = int(length_text)
    else:
        length = bits
    host = (1 << (bits - length)) - 1
    first = (value & ~host) | offset
    return first, first | host


def address_value(text: str) -> int:
    """One address (no prefix length) as a number; raises ``ValueError``."""
    if "/" in text:
        raise PrefixError("an address, not a prefix, is needed")
    first, _ = parse_prefix(text)
    return first


def address_hex(text: str) -> str:
    return f"{address_value(text):0{HEX_DIGITS}x}"


def decode(data: bytes) -> str:
    """UTF-8 if the bytes are UTF-8, else windows-1251 (the dump's own encoding)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1251", errors="replace")


def parse_dump(text: str, report: ParseReport) -> Iterator[tuple[int, int]]:
    """Ranges of a zapret-info ``dump.csv``; bad lines go to ``report``."""
    for number, line in enumerate(text.splitlines(), 1):
        report.lines += 1
        if number == 1 and line.startswith("Updated:"):
            report.updated = line.partition(":")[2].strip()[:64]
            continue
        if not line.strip():
            continue
        if ";" not in line:
            report.problem(number, "not a ';'-separated record")
            continue
        first = line.split(";", 1)[0]
        if not first.strip():
            continue  # a record that blocks only names or URLs
        parsed: list[tuple[int, int]] = []
        try:
            for item in first.split("|"):
                if item.strip():
                    parsed.append(parse_prefix(item))
        except PrefixError as exc:
            report.problem(number, str(exc))
            continue
        report.prefixes += len(parsed)
        yield from parsed


def parse_list(text: str, report: ParseReport) -> Iterator[tuple[int, int]]:
    """Ranges of a one-prefix-per-line list; bad lines go to ``report``."""
    for number, line in enumerate(text.splitlines(), 1):
        report.lines += 1
        item = line.split("#", 1)[0].strip()
        if not item:
            continue
        try:
            parsed = parse_prefix(item)
        except PrefixError as exc:
            report.problem(number, str(exc))
            continue
        report.prefixes += 1
        yield parsed


def parse_blocklist(data: bytes, source: str = "") -> tuple[list[tuple[int, int]], ParseReport]:
    """Detect the format (a dump starts with ``Updated:`` or has ``;`` records) and parse."""
    text = decode(data)
    head = text[:4096]
    is_dump = head.startswith("Updated:") or (";" in head.split("\n", 1)[0])
    report = ParseReport("rkn-dump" if is_dump else "prefix-list")
    ranges = list((parse_dump if is_dump else parse_list)(text, report))
    return ranges, report


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Disjoint, sorted ranges covering exactly the union of the given ones."""
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        same_family = merged and (first >= V4_OFFSET) == (merged[-1][0] >= V4_OFFSET)
        if same_family and first <= merged[-1][1] + 1:
            if last > merged[-1][1]:
                merged[-1] = (merged[-1][0], last)
        else:
            merged.append((first, last))
    return merged


class PrefixSet:
    """Membership of addresses in a set of prefixes: one binary search per lookup.

    IPv4 ranges live in ``array('I')`` (32-bit), IPv6 ranges in Python lists,
    so a million IPv4 prefixes take about 8 MB.
    """

    __slots__ = ("_v4_ends", "_v4_starts", "_v6_ends", "_v6_starts", "size")

    def __init__(self, ranges: Iterable[tuple[int, int]]) -> None:
        merged = merge_ranges(ranges)
        self.size = len(merged)
        self._v4_starts = array("I")
        self._v4_ends = array("I")
        self._v6_starts: list[int] = []
        self._v6_ends: list[int] = []
        for first, last in merged:
            if first >= V4_OFFSET:
                self._v4_starts.append(first - V4_OFFSET)
                self._v4_ends.append(last - V4_OFFSET)
            else:
                self._v6_starts.append(first)
                self._v6_ends.append(last)

    def contains_value(self, value: int) -> bool:
        if value >= V4_OFFSET:
            low = value - V4_OFFSET
            i = bisect.bisect_right(self._v4_starts, low) - 1
            return i >= 0 and self._v4_ends[i] >= low
        i = bisect.bisect_right(self._v6_starts, value) - 1
        return i >= 0 and self._v6_ends[i] >= value

    def __contains__(self, address: str) -> bool:
        try:
            return self.contains_value(address_value(address))
        except ValueError:
            return False

    def ranges(self) -> Iterator[tuple[int, int]]:
        for a, b in zip(self._v4_starts, self._v4_ends, strict=True):
            yield a + V4_OFFSET, b + V4_OFFSET
        yield from zip(self._v6_starts, self._v6_ends, strict=True)
