"""/2 inputs held as numpy columns: chunk texts written, and entries checked and read by
the award rule, without a Python object or a ``json.dumps`` call per day.

Why
---
The registry's round worker has every proxy-day of a round as integer columns (the
day totals). Writing its chunks through ``canonical_json`` made 18,000,000 Python
integers and formatted each (2.9 s at 100,000 proxies x 30 days), and the award rule
read entries made again from the same arrays, a Python list per column per proxy
(0.8 s), only to turn them back into arrays.

Theory of operation
-------------------
:class:`ProxyColumns` is the round's entries as the chunks will hold them: each kept
proxy's fields (the texts of a chunk entry), its rows ``[a, b)`` of the columns, and the
columns (day offsets from ``first_day``, then ``CHUNK_COLUMNS``).

* **Chunk text.** Each column is formatted once, whole: its decimal digits computed a
  place at a time into an (n, width + 1) byte matrix (the last byte a comma), the
  leading zeros made NUL bytes and dropped, so the result is ``"12,3,45,"``; the comma
  positions give each value's end. An entry's column is then one slice of that text.
  The entry's text is put together in the order ``canonical_json`` writes it (keys
  sorted, no spaces, each text field through ``json.dumps`` with ``ensure_ascii``), so
  a chunk is the same string, byte for byte, as
  ``chunk_text(first_day, entries)`` of the same entries; a column with a negative
  value (which no check lets through, but the text must still be right) is written
  by ``chunk_text`` itself. ``tests/grants/test_columns.py`` holds the two equal on
  random entries.
* **Check.** :meth:`ProxyColumns.check` refuses what ``ProxyDays.check`` would refuse
  for any entry, a pass per column over all of them (day offsets in range, successes
  not negative nor above attempts, throughput not negative), the texts and network
  once per proxy; when any entry fails, ``ProxyDays.check`` of the entries in order
  names the first one as reading the chunks would.
* **Entries** (:meth:`ProxyColumns.entries`) are the ``ProxyDays`` of the chunks, in
  order, made a chunk at a time, for whoever reads entries (the award rule's per-row
  path); the award rule's column path reads the arrays themselves.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from resistance.grants.errors import InputError
from resistance.grants.model import (
    _MAX_DAY_OFFSET,
    CHUNK_COLUMNS,
    CHUNK_PROXIES,
    ProxyDays,
    check_network,
    chunk_text,
)

Ints = npt.NDArray[np.int64]

_COMMA = ord(",")
_ZERO = ord("0")


def decimal_texts(values: Ints) -> tuple[str, Ints]:
    """``"".join(f"{v}," for v in values)`` and the position just after each value's
    comma in it, for non-negative int64 values, without a Python integer per value."""
    n = len(values)
    if n == 0:
        return "", np.zeros(0, dtype=np.int64)
    if int(values.min()) < 0:
        raise ValueError("decimal_texts takes non-negative values")
    width = len(str(int(values.max())))
    matrix = np.empty((n, width + 1), dtype=np.uint8)
    matrix[:, width] = _COMMA
    rest = values
    place = 1
    for j in range(width - 1, -1, -1):
        rest, digit = np.divmod(rest, 10)
        if j == width - 1:
            matrix[:, j] = digit + _ZERO
        else:  # a leading zero becomes a NUL byte, dropped below
            matrix[:, j] = (digit + _ZERO) * (values >= place)
        place *= 10
    flat = matrix.reshape(-1)
    flat = flat[flat != 0]
    ends = np.flatnonzero(flat == _COMMA) + 1
    return flat.tobytes().decode("ascii"), ends


#: Chunks whose columns' text is made at once (bounds the text held: ~1 MB a chunk).
TEXT_CHUNKS = 8


def _quoted(text: str, seen: dict[str, str] | None) -> str:
    """``json.dumps(text)`` (``ensure_ascii``), for texts that repeat (``seen``) once."""
    if seen is not None:
        known = seen.get(text)
        if known is not None:
            return known
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        out = f'"{text}"'  # what json.dumps writes for printable ASCII without " or \\
    else:
        out = json.dumps(text)
    if seen is not None:
        seen[text] = out
    return out


#: The order ``canonical_json`` writes an entry's keys in (sorted), split where the
#: columns and the optional exit fields go.
_COLUMN_KEYS = ("day", *CHUNK_COLUMNS)
_EXIT_KEYS = ("exit_network", "exit_operator_id", "exit_payout_address")


@dataclass(frozen=True, slots=True)
class ProxyColumns:
    """A round's /2 entries as columns: ``fields[k]`` (a chunk entry's text fields) has
    its days in rows ``bounds[k, 0]`` to ``bounds[k, 1]`` (excluded) of ``columns`` (day
    offsets from ``first_day``, then ``CHUNK_COLUMNS``), entries in chunk order."""

    first_day: dt.date
    fields: Sequence[Mapping[str, str]]
    bounds: Ints
    columns: tuple[Ints, ...]
    max_proxies: int = CHUNK_PROXIES

    def __len__(self) -> int:
        return len(self.fields)

    def __call__(self) -> Iterator[ProxyDays]:
        return self.entries()

    # --- the chunks' text ---------------------------------------------------------------

    def chunk_texts(self) -> tuple[str, ...]:
        """The chunks, each exactly ``chunk_text(first_day, <its entries as dicts>)``."""
        if not self.fields:
            return ()
        if any(len(c) and int(c.min()) < 0 for c in self.columns):
            return tuple(self._reference_chunks())
        out: list[str] = []
        # the columns' text made for a few chunks at a time (memory: their text only)
        step = self.max_proxies * TEXT_CHUNKS
        for lo in range(0, len(self.fields), step):
            out.extend(self._chunk_texts(lo, min(lo + step, len(self.fields))))
        return tuple(out)

    def _chunk_texts(self, lo: int, hi: int) -> Iterator[str]:
        """The chunks of entries ``lo`` to ``hi`` (a multiple of ``max_proxies`` apart,
        or the last ones)."""
        base, top = int(self.bounds[lo, 0]), int(self.bounds[hi - 1, 1])
        bounds = self.bounds[lo:hi] - base
        texts, starts, ends = [], [], []
        for column in self.columns:
            text, after = decimal_texts(column[base:top])
            before = np.concatenate(([0], after))
            texts.append(text)
            starts.append(before[bounds[:, 0]].tolist())
            ends.append((after[bounds[:, 1] - 1] - 1).tolist())  # the last comma left out
        day, ca, cs, ta, ts, tp = texts
        head = '{"first_day":' + json.dumps(self.first_day.isoformat()) + ',"proxies":['
        quoted: dict[str, str] = {}
        for first in range(lo, hi, self.max_proxies):
            entries = []
            for k in range(first, min(first + self.max_proxies, hi)):
                f = self.fields[k]
                i = k - lo
                s = [starts[c][i] for c in range(6)]
                e = [ends[c][i] for c in range(6)]
                exit = (
                    "".join(f',"{key}":' + _quoted(f[key], quoted) for key in _EXIT_KEYS)
                    if "exit_operator_id" in f
                    else ""
                )
                entries.append(
                    f'{{"control_attempts":[{ca[s[1] : e[1]]}],'
                    f'"control_successes":[{cs[s[2] : e[2]]}],'
                    f'"country":{_quoted(f["country"], quoted)},"day":[{day[s[0] : e[0]]}]'
                    f'{exit},"network":{_quoted(f["network"], quoted)},'
                    f'"operator_id":{_quoted(f["operator_id"], quoted)},'
                    f'"payout_address":{_quoted(f["payout_address"], quoted)},'
                    f'"proxy_id":{_quoted(f["proxy_id"], None)},'
                    f'"target_attempts":[{ta[s[3] : e[3]]}],'
                    f'"target_successes":[{ts[s[4] : e[4]]}],'
                    f'"throughput_kbps":[{tp[s[5] : e[5]]}]}}'
                )
            yield head + ",".join(entries) + "]}"

    def _reference_chunks(self) -> Iterator[str]:
        """The chunks through ``canonical_json`` (dicts of Python integers)."""
        for lo in range(0, len(self.fields), self.max_proxies):
            entries: list[dict[str, Any]] = []
            for g in self._entries(lo, min(lo + self.max_proxies, len(self.fields))):
                entry: dict[str, Any] = dict(self.fields[len(entries) + lo])
                for key in _COLUMN_KEYS:
                    entry[key] = getattr(g, key)
                entries.append(entry)
            yield chunk_text(self.first_day, entries)

    # --- entries ------------------------------------------------------------------------

    def entries(self) -> Iterator[ProxyDays]:
        """The chunks' entries, in order, made a chunk at a time."""
        for lo in range(0, len(self.fields), self.max_proxies):
            yield from self._entries(lo, min(lo + self.max_proxies, len(self.fields)))

    def _entries(self, lo: int, hi: int) -> Iterator[ProxyDays]:
        if lo >= hi:
            return
        base = int(self.bounds[lo, 0])
        top = int(self.bounds[hi - 1, 1])
        day, ca, cs, ta, ts, tp = (c[base:top].tolist() for c in self.columns)
        first = self.first_day
        for k in range(lo, hi):
            f = self.fields[k]
            i, j = int(self.bounds[k, 0]) - base, int(self.bounds[k, 1]) - base
            yield ProxyDays(
                f["proxy_id"], f["operator_id"], f["network"], f["payout_address"],
                f["country"], f.get("exit_operator_id", ""), f.get("exit_network", ""),
                f.get("exit_payout_address", ""), first, day[i:j], ca[i:j], cs[i:j],
                ta[i:j], ts[i:j], tp[i:j],
            )  # fmt: skip

    # --- the check ----------------------------------------------------------------------

    def check(self) -> None:
        """Refuse what ``ProxyDays.check`` refuses for any entry, with its error for the
        first one (``chunks[i].proxies[j]`` as reading the chunks names it)."""
        if not self._regular():
            for n, g in enumerate(self.entries()):
                g.check(f"chunks[{n // self.max_proxies}].proxies[{n % self.max_proxies}]")
            raise AssertionError("the column check refused entries each found valid")
        for n, f in enumerate(self.fields):
            if "exit_operator_id" in f:  # a cascade's exit fields, checked as a row's
                g = next(self._entries(n, n + 1))
                g.check(f"chunks[{n // self.max_proxies}].proxies[{n % self.max_proxies}]")

    def _regular(self) -> bool:
        """Every entry passes the checks of ``ProxyDays.check`` but a cascade's exit."""
        lengths = self.bounds[:, 1] - self.bounds[:, 0]
        if len(lengths) and int(lengths.min()) < 1:
            return False
        covered = np.zeros(len(self.columns[0]), dtype=np.bool_)
        for a, b in self.bounds.tolist():
            covered[a:b] = True  # only the entries' own rows are checked
        day, ca, cs, ta, ts, tp = (c if covered.all() else c[covered] for c in self.columns)
        if len(day) and not (
            int(day.min()) >= 0
            and int(day.max()) <= _MAX_DAY_OFFSET
            and int(cs.min()) >= 0
            and int(ts.min()) >= 0
            and int(tp.min()) >= 0
            and bool((cs <= ca).all())
            and bool((ts <= ta).all())
        ):
            return False
        try:
            for f in self.fields:
                if not (f["proxy_id"] and f["operator_id"] and f["payout_address"]):
                    return False
                check_network(f["network"], "")
        except InputError:
            return False
        return True
