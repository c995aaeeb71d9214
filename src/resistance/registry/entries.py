"""The directory's entries kept from one publication to the next, rebuilt only when changed.

A directory of 70,000 public proxies is 39 MB of canonical JSON, and turning
each proxy's rows into its entry, checking it and encoding it was over half
of a publication's CPU.  An entry is a pure function of its inputs: the
proxy's row, its verdict row, its rollups' sums per vantage country, its
censor flag, each probe's latest view of it and the days summarized
(:func:`resistance.registry.measurements.proxy_measurements` and the
listing).  So each entry is kept with those inputs and its canonical bytes;
the next publication, which reads the same rows anyway, compares them and
builds, checks and encodes only the entries whose inputs differ.

Theory of operation:

* The key *is* the inputs, compared by value (``==`` on the rows read),
  never a version number or a timestamp, so nothing has to invalidate it:
  whatever wrote a row (this process, another registry process on the same
  database, an import, a migration) an entry whose rows changed is rebuilt,
  and one whose rows did not is the same entry by construction.  Each column
  holds one type (the JSON columns are written by the registry from typed
  models), so rows equal by value encode to the same bytes.
* The cache is per process, held by the :class:`~resistance.registry.services.Registry`.
  Several processes each keep the entries of the last publication they
  signed; one that has not signed for a while finds more entries changed
  and rebuilds them: slower, never wrong.  A table in the database would
  share the entries between processes, at the cost of writing them back (39 MB
  at 100,000 proxies) at each publication and of a migration: not tried.
* Bounded: after each publication only the entries of the proxies it listed
  are kept (a proxy gone from the directory is dropped with it), so the
  cache never holds more than one directory's entries.
* Off unless asked for (``resist registry serve --keep-entries``): what is
  kept is the inputs themselves, so the previous publication's rows stay in
  memory while the next one reads its own.  ``bench/scale.py`` at 100,000
  proxies measured it: the server's second publication went past 6 GB with
  entries kept, against 4.3 GB without.  And in a registry whose probes are
  measuring, most proxies' rollups change between two publications, so most
  entries are rebuilt anyway.  Without it each publication builds every
  entry here and keeps none (the canonical check and the document's assembly
  from the entries' bytes are the same).
* Only plain rows (``sqlalchemy`` ``Row``, or the frozen dataclasses the
  SQLite path returns) are compared; a proxy given as an ORM object (mutable,
  compared by identity) is built every time and not kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy.engine import Row

from resistance.directory.canonical import CanonicalError, canonical_text, check_value
from resistance.registry.measurements import (
    MeasurementRows,
    TextCache,
    measurement_inputs,
    measurements_text,
    medians,
)

#: The canonical encoding, unchecked (:func:`~resistance.directory.canonical.canonical_text`).
_encode = canonical_text

Listing = Callable[[Any], dict[str, Any]]


def entry_bytes(entry: dict[str, Any]) -> bytes:
    """``canonical_bytes(entry)`` for an entry (listing, status and
    :func:`~resistance.registry.measurements.proxy_measurements`), checking
    only what its types do not guarantee.

    :func:`~resistance.directory.canonical.canonical_bytes` walks every value of a
    generic JSON value (two million in a directory of 70,000 proxies).  An entry's
    values come from integer, boolean and text columns (64-bit integers, no floats:
    nothing without a canonical form), from sums and percentile bounds of those,
    from ``str()`` (a probe's transports) and from three JSON columns, which may hold
    anything JSON can: a proxy's ``protocols`` and ``credentials`` and a verdict's
    ``blocked_in``.  Those three are checked as ``canonical_bytes`` would; a lone
    surrogate anywhere is refused by the one encoding to UTF-8, as it is there.
    The tests compare the bytes with ``canonical_bytes`` of the same entries."""
    check_value(
        (
            entry.get("protocols"),
            entry.get("credentials"),
            entry.get("measurements", {}).get("blocked_in"),
        )
    )
    try:
        return _encode(entry).encode("utf-8")
    except UnicodeEncodeError:
        raise CanonicalError("string is not valid Unicode (lone surrogate)") from None


#: What an entry's ``measurements`` is encoded as before its text takes its place: a lone
#: surrogate, which no entry that can be encoded holds (UTF-8 refuses it), so it is
#: found where it was put; an entry holding it elsewhere is refused by the encoding.
_MEASUREMENTS = "\udc80measurements\udc80"


def written_entry(listing: dict[str, Any], status: str, measured: str) -> bytes:
    """``entry_bytes({**listing, "status": status, "measurements": m})`` where ``measured``
    is ``m``'s canonical text (:func:`~resistance.registry.measurements.measurements_text`):
    the entry encoded with a placeholder for ``measurements`` (the keys sorted as they
    are), then ``measured`` put in its place.  What the listing's JSON columns hold is
    checked as :func:`entry_bytes` checks it; a lone surrogate anywhere (and so the
    placeholder left anywhere) is refused by the one encoding to UTF-8."""
    check_value((listing.get("protocols"), listing.get("credentials")))
    text = _encode({**listing, "status": status, "measurements": _MEASUREMENTS})
    try:
        return text.replace(f'"{_MEASUREMENTS}"', measured, 1).encode("utf-8")
    except UnicodeEncodeError:
        raise CanonicalError("string is not valid Unicode (lone surrogate)") from None


@dataclass(slots=True)
class DirectoryEntries:
    """The last publication's entries, by proxy id: ``(inputs, canonical bytes)``."""

    _kept: dict[int, tuple[tuple[Any, ...], bytes]] = field(default_factory=dict)
    #: Whether a call keeps its entries for the next (``--keep-entries``); else none is.
    keep: bool = False
    #: Entries the last call reused and built (for the log and the benchmark).
    reused: int = 0
    built: int = 0

    def entries(
        self, proxies: Sequence[Any], rows: MeasurementRows, listing: Listing
    ) -> list[bytes]:
        """Each proxy's entry's canonical bytes, in order, reusing those whose inputs
        are what they were; then only these proxies' entries are kept (none unless
        :attr:`keep`).  Each is written from its rows (:func:`written_entry`), never
        built as an object (``{**listing(proxy), "status": ..., "measurements": ...}``
        from :func:`~resistance.registry.measurements.proxy_measurements` is the object
        it writes, as the tests check).

        Not safe to call from two threads at once (publications are serialized by
        :func:`~resistance.registry.services.publishing`)."""
        kept = self._kept
        fresh: dict[int, tuple[tuple[Any, ...], bytes]] = {}
        encoded: list[bytes | None] = []
        todo: list[tuple[int, Any, tuple[Any, ...]]] = []  # (position, proxy, inputs)
        for proxy in proxies:
            inputs = measurement_inputs(proxy, rows)
            known = kept.get(proxy.id) if isinstance(proxy, Row) else None
            if known is not None and known[0] == (proxy, *inputs):
                encoded.append(known[1])
                if self.keep:
                    fresh[proxy.id] = known
            else:  # an ORM object is mutable, equal only to itself: always written
                todo.append((len(encoded), proxy, inputs))
                encoded.append(None)
        texts = TextCache()
        known_medians = medians(row for _, _, inputs in todo for row in inputs[2])
        for position, proxy, inputs in todo:
            entry = written_entry(
                listing(proxy), *measurements_text(*inputs, texts=texts, known=known_medians)
            )
            encoded[position] = entry
            if self.keep and isinstance(proxy, Row):
                fresh[proxy.id] = ((proxy, *inputs), entry)
        self._kept = fresh
        self.reused, self.built = len(encoded) - len(todo), len(todo)
        return cast(list[bytes], encoded)

    def clear(self) -> None:
        self._kept = {}
