"""Directory entries written as text (issue 25): byte for byte the canonical encoding of the
objects they stand for, over random rows.

A publication at 100,000 proxies writes each entry's ``measurements`` field by field
(:func:`~resistance.registry.measurements.measurements_text`) and puts the listing
around it (:func:`~resistance.registry.entries.written_entry`), never building the
objects; the objects (:func:`~resistance.registry.measurements.proxy_measurements`)
stay the definition, and ``canonical_bytes`` of them the reference here: any names,
countries, mechanisms and transports (non-ASCII, quotes, backslashes, control
characters), ties, duplicated names and countries, histograms of any counts and
shapes, and what has no canonical form refused by both."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resistance.directory.canonical import CanonicalError, canonical_bytes
from resistance.directory.document import EncodedEntries
from resistance.probe import rollup
from resistance.registry.entries import entry_bytes, written_entry
from resistance.registry.measurements import (
    LATENCY_BUCKETS,
    MAX_REACH_NETWORKS,
    THROUGHPUT_BUCKETS,
    TextCache,
    measurements_text,
    medians,
    proxy_measurements,
)
from resistance.registry.repositories import ProbeViews

#: Text with what JSON escapes (quotes, backslashes, control characters) and non-ASCII.
_text = st.text(
    st.characters(codec="utf-8") | st.sampled_from(['"', "\\", "\n", "\x00", "\x1f", "é", "中"]),
    max_size=8,
)
_int = st.integers(-(2**63), 2**63 - 1)
#: A 64-bit column's value, whose sums over a few rows stay 64-bit (the database's sums).
_column = st.integers(-(2**60), 2**60)
_json = st.recursive(
    st.none() | st.booleans() | _int | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)


def _histogram(buckets: int) -> st.SearchStrategy[list[int]]:
    counts = st.integers(0, 5) | st.integers(-3, 3) | st.integers(0, 2**40)
    shaped = st.lists(counts, min_size=buckets, max_size=buckets)
    # mostly the right length, as the database's sums are; rarely not (refused by both)
    return st.one_of(shaped, shaped, shaped, shaped, st.lists(counts, max_size=buckets + 2))


_rollup = st.builds(
    SimpleNamespace,
    country=st.sampled_from(["RU", "DE", "NL", "ÄÖ", 'c"\\']) | _text,
    attempts=_column,
    successes=_column,
    latency_hist=_histogram(LATENCY_BUCKETS),
    throughput_hist=_histogram(THROUGHPUT_BUCKETS),
)


@st.composite
def _views(draw: st.DrawFn) -> ProbeViews:
    names = draw(st.lists(_text | st.sampled_from(["a", "B", "ä", "中"]), max_size=24))
    if names and draw(st.booleans()):
        names = list(dict.fromkeys(names))  # names are unique in the database
    count = len(names)
    transports = st.none() | st.just({}) | st.dictionaries(_text, _json, max_size=6)
    return ProbeViews(
        names,
        draw(st.lists(st.integers(0, 4), min_size=count, max_size=count)),  # many ties
        draw(st.lists(st.booleans(), min_size=count, max_size=count)),
        draw(st.lists(st.none() | st.just("") | _text, min_size=count, max_size=count)),
        draw(st.lists(transports, min_size=count, max_size=count)),
    )


_verdict = st.none() | st.builds(
    SimpleNamespace,
    verdict=st.sampled_from(["blocked", "functional", "down", "untested"]) | _text,
    blocked_in=st.lists(_text, max_size=3),
    since=st.none() | _column,
)
_flag = st.none() | st.tuples(st.booleans(), st.none() | _column)
_transport = st.sampled_from(["socks5", "wireguard", "mtproto", "amneziawg"]) | _text


def _outcome(make: Any) -> Any:
    """What ``make()`` returns, or the type of what it raised."""
    try:
        return make()
    except (CanonicalError, TypeError, ValueError) as exc:
        return type(exc)


@given(
    hists=st.lists(
        st.tuples(_histogram(LATENCY_BUCKETS), _histogram(THROUGHPUT_BUCKETS)), max_size=6
    ),
    odd=st.sampled_from([None, 2**63, 2**58, -(2**58), 1.0, True, "1"]),
)
@settings(max_examples=500)
def test_the_medians_of_all_rows_at_once_are_each_row_s_percentile_at_a_half(
    hists: list[tuple[list[int], list[int]]], odd: Any
) -> None:
    rows = [SimpleNamespace(latency_hist=lat, throughput_hist=thr) for lat, thr in hists]
    found = medians(rows)
    for row in rows:
        expected = (
            rollup.percentile(row.latency_hist, rollup.LATENCY_BOUNDS_MS, 0.5),
            rollup.percentile(row.throughput_hist, rollup.THROUGHPUT_BOUNDS_KBPS, 0.5),
        )
        shaped = len(row.latency_hist) == LATENCY_BUCKETS
        if shaped and len(row.throughput_hist) == THROUGHPUT_BUCKETS:
            assert found[id(row)] == expected
        else:
            assert id(row) not in found  # left to the caller, which refuses it
    if rows and id(rows[0]) in found:
        # a count numpy would not hold as a 64-bit integer: every row left to the caller
        rows[0].latency_hist = [odd, *rows[0].latency_hist[1:]]
        odd_found = medians(rows)
        if odd is True:  # a boolean counts as 1, in Python's sums as here
            assert odd_found[id(rows[0])][0] == rollup.percentile(
                rows[0].latency_hist, rollup.LATENCY_BOUNDS_MS, 0.5
            )
        else:
            assert odd_found == {}


@given(
    transport=_transport,
    verdict=_verdict,
    rollups=st.lists(_rollup, max_size=4),
    flag=_flag,
    seen=_views(),
    days=st.lists(_text, max_size=3),
)
@settings(max_examples=400, deadline=None)
def test_measurements_written_are_the_canonical_bytes_of_the_object(
    transport: str, verdict: Any, rollups: list[Any], flag: Any, seen: ProbeViews, days: list[str]
) -> None:
    inputs = (transport, verdict, rollups, flag, seen, days)

    def reference() -> tuple[str, bytes]:
        status, measured = proxy_measurements(*inputs)
        return status, canonical_bytes(measured)

    def written(known: Any) -> tuple[str, bytes]:
        status, text = measurements_text(*inputs, texts=TextCache(), known=known)
        return status, text.encode("utf-8")

    expected = _outcome(reference)
    assert _outcome(lambda: written(medians(rollups))) == expected
    assert _outcome(lambda: written({})) == expected  # each row's medians computed alone
    names = seen.names
    if isinstance(expected, tuple) and len(set(names)) == len(names) > MAX_REACH_NETWORKS:
        assert len(json.loads(expected[1])["reach"]) == MAX_REACH_NETWORKS


_listing = st.dictionaries(
    st.sampled_from(
        ["measurements", "status", "a", "bridge", "credentials", "endpoint", "measurement",
         "measurements ", "mtproto", "protocols", "tls", "wg_public_key", "é", ""]
    ) | _text,
    _json,
    max_size=7,
)  # fmt: skip


@given(listing=_listing, status=_text, measured=st.dictionaries(_text, _json, max_size=3))
@settings(max_examples=400)
def test_an_entry_written_around_its_measurements_is_the_canonical_bytes_of_it(
    listing: dict[str, Any], status: str, measured: dict[str, Any]
) -> None:
    entry = {**listing, "status": status, "measurements": measured}
    text = json.dumps(measured, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert _outcome(lambda: written_entry(listing, status, text)) == _outcome(
        lambda: canonical_bytes(entry)
    )
    assert _outcome(lambda: written_entry(listing, status, text)) == _outcome(
        lambda: entry_bytes(entry)
    )


def test_what_has_no_canonical_form_is_refused_when_written() -> None:
    views = ProbeViews(["ru-1"], [1], [True], [None], [None])
    blocked = SimpleNamespace(verdict="down", blocked_in=[1.5], since=1)
    with pytest.raises(CanonicalError):
        canonical_bytes(proxy_measurements("socks5", blocked, [], None, views, [])[1])
    with pytest.raises(CanonicalError):
        measurements_text("socks5", blocked, [], None, views, [], texts=TextCache(), known={})
    lone = ProbeViews(["ru-\ud800"], [1], [True], [None], [None])
    status, text = measurements_text(
        "socks5", None, [], None, lone, [], texts=TextCache(), known={}
    )
    with pytest.raises(CanonicalError):
        written_entry({}, status, text)
    for listing in ({"credentials": [{"password": 2.5}]}, {"protocols": [2**63]}):
        with pytest.raises(CanonicalError):
            written_entry(listing, "functional", "{}")
    with pytest.raises(CanonicalError):
        written_entry({"endpoint": {"host": "\udfff"}}, "functional", "{}")
    # the placeholder the measurements' text replaces, held by the listing: refused (a
    # lone surrogate), wherever it is, as canonical_bytes refuses it
    placeholder = "\udc80measurements\udc80"
    for listing in (
        {"a": placeholder},
        {"endpoint": {"measurements": placeholder}},
        {"tls": [placeholder]},
        {"credentials": [{"x": placeholder}]},
    ):
        with pytest.raises(CanonicalError):
            canonical_bytes({**listing, "status": "s", "measurements": {}})
        with pytest.raises(CanonicalError):
            written_entry(listing, "functional", "{}")
    with pytest.raises(CanonicalError):
        written_entry({}, placeholder, "{}")


def test_entries_kept_as_bytes_read_as_the_entries() -> None:
    entries = [{"a": 1, "é": ["中", None]}, {}, {"b": {"c": True}}]
    held = EncodedEntries([canonical_bytes(e) for e in entries])
    assert len(held) == 3 and bool(held) and not EncodedEntries([])
    assert held[0] == entries[0] and held[-1] == entries[-1] and held[1:] == entries[1:]
    assert list(held) == entries and held == entries and held != entries[:2]
    assert held == EncodedEntries([canonical_bytes(e) for e in entries])
    (first, *_) = held
    assert first == entries[0]
    with pytest.raises(IndexError):
        held[3]
