"""/2 inputs held as numpy columns (``grants.columns``) against the reference forms.

A chunk written from the columns must be byte for byte ``chunk_text`` of the same
entries (``canonical_json``); the entries read back from those chunks must be the
columns' own entries; the column check must refuse exactly what ``ProxyDays.check``
refuses (reading the chunks), with the same message; and the award rule reading the
arrays must give the per-row reading's tally or its first error.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resistance.grants import columns as cols
from resistance.grants.award import tally_columns, tally_groups
from resistance.grants.columns import ProxyColumns, decimal_texts
from resistance.grants.errors import InputError
from resistance.grants.model import (
    CHUNK_COLUMNS,
    CarriedAmount,
    GrantSettings,
    ProxyDays,
    canonical_json,
    chunk_text,
    proxy_days_from_chunk,
)

from .helpers import START
from .test_award_columns import entries, outcome, rules

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TEXTS = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=0, max_size=6
) | st.sampled_from(['a"b', "c\\d", "e\nf", "\x7f", "é", "😀", "op1"])


def as_columns(groups: list[ProxyDays], max_proxies: int, gap: bool = False) -> ProxyColumns:
    """The entries as ``ProxyColumns`` over one first day (the earliest), days shifted to
    it; ``gap``: a row no entry holds between entries (the registry's skipped proxies)."""
    first = min(g.first_day for g in groups)
    fields: list[dict[str, str]] = []
    rows: list[list[int]] = [[] for _ in range(6)]
    bounds = []
    for g in groups:
        f = {
            "proxy_id": g.proxy_id, "operator_id": g.operator_id, "network": g.network,
            "payout_address": g.payout_address, "country": g.country,
        }  # fmt: skip
        if g.exit_operator_id:
            f |= {
                "exit_operator_id": g.exit_operator_id, "exit_network": g.exit_network,
                "exit_payout_address": g.exit_payout_address,
            }  # fmt: skip
        fields.append(f)
        shift = (g.first_day - first).days
        if gap:
            for column in rows:
                column.append(7)
        a = len(rows[0])
        rows[0].extend(d + shift for d in g.day)
        for column, name in zip(rows[1:], CHUNK_COLUMNS, strict=True):
            column.extend(getattr(g, name))
        bounds.append((a, len(rows[0])))
    arrays = tuple(np.asarray(r, dtype=np.int64) for r in rows)
    return ProxyColumns(
        first, fields, np.asarray(bounds, dtype=np.int64).reshape(-1, 2), arrays, max_proxies
    )


def reference_chunks(c: ProxyColumns) -> list[str]:
    """The chunks as the registry wrote them before: dicts of Python integers through
    ``chunk_text`` (``canonical_json``)."""
    out = []
    items = []
    for f, g in zip(c.fields, c.entries(), strict=True):
        entry: dict[str, Any] = dict(f)
        entry["day"] = g.day
        for name in CHUNK_COLUMNS:
            entry[name] = getattr(g, name)
        items.append(entry)
    for lo in range(0, len(items), c.max_proxies):
        out.append(chunk_text(c.first_day, items[lo : lo + c.max_proxies]))
    return out


@PROPS
@given(values=st.lists(st.integers(0, 2**63 - 1) | st.integers(0, 12), max_size=40))
def test_decimal_texts_are_each_values_text(values: list[int]) -> None:
    text, ends = decimal_texts(np.asarray(values, dtype=np.int64))
    assert text == "".join(f"{v}," for v in values)
    assert ends.tolist() == [
        len("".join(f"{v}," for v in values[: n + 1])) for n in range(len(values))
    ]


def test_decimal_texts_refuse_negative_values() -> None:
    with pytest.raises(ValueError):
        decimal_texts(np.asarray([1, -1], dtype=np.int64))


@st.composite
def odd_texts(draw: Any, groups: list[ProxyDays]) -> list[ProxyDays]:
    """The entries with text fields that need JSON escapes, repeated or not."""
    out = []
    for g in groups:
        out.append(
            ProxyDays(
                draw(TEXTS),
                draw(TEXTS),
                draw(TEXTS),
                draw(TEXTS),
                draw(TEXTS),
                g.exit_operator_id and draw(TEXTS),
                g.exit_network,
                g.exit_payout_address,
                g.first_day,
                g.day,
                g.control_attempts,
                g.control_successes,
                g.target_attempts,
                g.target_successes,
                g.throughput_kbps,
            )
        )
    return out


@PROPS
@given(
    data=st.data(),
    groups=entries(regular=True),
    max_proxies=st.integers(1, 4),
    text_chunks=st.integers(1, 3),
    gap=st.booleans(),
    odd=st.booleans(),
)
def test_chunks_from_columns_are_the_canonical_chunks(
    data: st.DataObject,
    groups: list[ProxyDays],
    max_proxies: int,
    text_chunks: int,
    gap: bool,
    odd: bool,
) -> None:
    if odd:
        groups = data.draw(odd_texts(groups))
    c = as_columns(groups, max_proxies, gap)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cols, "TEXT_CHUNKS", text_chunks)
        chunks = c.chunk_texts()
    assert list(chunks) == reference_chunks(c)
    for text in chunks:
        assert canonical_json(json.loads(text)) == text
    # read back as a funder's verify reads them: the columns' own entries
    if not odd:
        back = [g for n, text in enumerate(chunks) for g in proxy_days_from_chunk(text, n)]
        assert back == list(c.entries())


def test_a_negative_value_is_written_as_canonical_json_writes_it() -> None:
    c = as_columns(
        [
            ProxyDays(
                "1", "op", "198.51.100.0/24", "addr", "RU", "", "", "", START,
                [0, 1], [-3, 2], [1, 1], [4, 10**12], [0, 5], [-1, 7],
            )
        ],
        2,
    )  # fmt: skip
    assert c.chunk_texts() == tuple(reference_chunks(c))
    assert '"control_attempts":[-3,2]' in c.chunk_texts()[0]


@st.composite
def broken(draw: Any, groups: list[ProxyDays]) -> list[ProxyDays]:
    """The entries with one value or field a check refuses (or none)."""
    k = draw(st.integers(0, len(groups) - 1))
    g = groups[k]
    n = draw(st.integers(0, len(g.day) - 1))
    what = draw(
        st.sampled_from(["none", "cs", "ts", "tp", "day", "network", "operator", "payout", "exit"])
    )
    cols_: dict[str, Any] = {name: list(getattr(g, name)) for name in ("day", *CHUNK_COLUMNS)}
    fields = {
        "proxy_id": g.proxy_id, "operator_id": g.operator_id, "network": g.network,
        "payout_address": g.payout_address, "country": g.country,
        "exit_operator_id": g.exit_operator_id, "exit_network": g.exit_network,
        "exit_payout_address": g.exit_payout_address,
    }  # fmt: skip
    if what == "cs":
        cols_["control_successes"][n] = cols_["control_attempts"][n] + 1
    elif what == "ts":
        cols_["target_successes"][n] = -1
    elif what == "tp":
        cols_["throughput_kbps"][n] = -5
    elif what == "day":
        cols_["day"][n] = 366_001
    elif what == "network":
        fields["network"] = "198.51.100.7/24"
    elif what == "operator":
        fields["operator_id"] = ""
    elif what == "payout":
        fields["payout_address"] = ""
    elif what == "exit":
        fields |= {
            "exit_operator_id": "x",
            "exit_network": "10.0.0.0/8",
            "exit_payout_address": "a",
        }
    out = list(groups)
    out[k] = ProxyDays(**fields, first_day=g.first_day, **cols_)
    return out


def check_outcome(read: Any) -> str:
    try:
        read()
    except InputError as exc:
        return str(exc)
    return "ok"


@PROPS
@given(data=st.data(), groups=entries(regular=True), max_proxies=st.integers(1, 4))
def test_the_column_check_refuses_what_reading_the_chunks_refuses(
    data: st.DataObject, groups: list[ProxyDays], max_proxies: int
) -> None:
    # every entry on one first day, as the registry makes them (the offsets then match)
    groups = [
        ProxyDays(**{**{f: getattr(g, f) for f in ProxyDays.__slots__}, "first_day": START})
        for g in groups
    ]
    c = as_columns(data.draw(broken(groups)), max_proxies)
    chunks = reference_chunks(c)

    def read_chunks() -> None:
        for n, text in enumerate(chunks):
            proxy_days_from_chunk(text, n)

    assert check_outcome(c.check) == check_outcome(read_chunks)


@PROPS
@given(rule=rules(), groups=entries(regular=True), batch=st.integers(1, 12), gap=st.booleans())
def test_the_award_rule_reads_the_arrays_as_the_entries(
    rule: tuple[GrantSettings, dict[str, int], tuple[CarriedAmount, ...]],
    groups: list[ProxyDays],
    batch: int,
    gap: bool,
) -> None:
    s, prior, _ = rule
    c = as_columns(groups, 3, gap)
    with pytest.MonkeyPatch.context() as mp:
        from resistance.grants import award

        mp.setattr(award, "BATCH_ROWS", batch)
        fast = outcome(lambda: tally_columns(s, c, prior))
    assert fast == outcome(lambda: tally_groups(s, c.entries(), prior))


@PROPS
@given(rule=rules(), groups=entries(regular=False))
def test_irregular_arrays_are_handed_to_the_per_row_reading(
    rule: tuple[GrantSettings, dict[str, int], tuple[CarriedAmount, ...]],
    groups: list[ProxyDays],
) -> None:
    s, prior, _ = rule
    groups = [g for g in groups if max(g.control_attempts) < 2**63]  # int64 columns
    if not groups:
        return
    c = as_columns(groups, 2)
    assert outcome(lambda: tally_columns(s, c, prior)) == outcome(
        lambda: tally_groups(s, c.entries(), prior)
    )
