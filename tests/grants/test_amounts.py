"""Budgets, periods and percentages as a funder types them: exact, or refused in one line."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from resistance.grants.amounts import (
    default_round_id,
    parse_amount,
    parse_percent_bp,
    parse_period,
)
from resistance.grants.errors import InputError
from resistance.grants.model import MAX_SAT
from resistance.grants.payout import sat_to_btc


@pytest.mark.parametrize(
    ("text", "sat"),
    [
        ("2.0BTC", 200_000_000),
        ("0.5 btc", 50_000_000),
        ("1btc", 100_000_000),
        ("0.1BTC", 10_000_000),
        ("0.00000001 BTC", 1),
        ("150000sat", 150_000),
        ("150000 sats", 150_000),
        ("150000", 150_000),
        ("  42  ", 42),
        ("0", 0),
        ("21000000BTC", MAX_SAT),
        ("20999999.99999999btc", MAX_SAT - 1),
    ],
)
def test_amounts_parse_exactly(text: str, sat: int) -> None:
    assert parse_amount(text) == sat


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("1.123456789BTC", "more than 8 decimals"),
        ("-1BTC", "negative"),
        ("-5", "negative"),
        ("21000000.00000001BTC", "21,000,000"),
        ("2100000000000001", "21,000,000"),
        ("1.5", "satoshi are whole"),
        ("1.5sat", "satoshi are whole"),
        ("1e3", "not an amount"),
        ("", "not an amount"),
        ("BTC", "not an amount"),
        ("2 BTC BTC", "not an amount"),
        ("1,000", "not an amount"),
        ("٣sat", "not an amount"),  # a non-ASCII digit
        ("0x10", "not an amount"),
        ("nan", "not an amount"),
        ("1" * 100, "not an amount"),
    ],
)
def test_bad_amounts_are_refused_in_one_line(text: str, fragment: str) -> None:
    with pytest.raises(InputError, match=fragment) as info:
        parse_amount(text, what="budget")
    assert "\n" not in str(info.value) and str(info.value).startswith("budget")


@given(st.integers(min_value=0, max_value=MAX_SAT))
@example(MAX_SAT)
@example(10_000_000)
def test_every_satoshi_amount_round_trips_in_btc_and_sat(sat: int) -> None:
    assert parse_amount(f"{sat_to_btc(sat)}BTC") == sat
    assert parse_amount(sat_to_btc(sat).rstrip("0").rstrip(".") + " btc") == sat
    assert parse_amount(f"{sat}sat") == sat
    assert parse_amount(str(sat)) == sat


@given(st.decimals(min_value=0, max_value=21_000_000, places=8, allow_nan=False))
def test_btc_decimals_convert_without_floats(amount: Decimal) -> None:
    assert parse_amount(f"{amount:f}BTC") == int(amount * 100_000_000)


@given(st.text(max_size=30))
@example("1.000000000BTC")
@example("99999999999999999999999999")
def test_any_text_is_an_amount_in_range_or_an_input_error(text: str) -> None:
    try:
        sat = parse_amount(text)
    except InputError as exc:
        assert "\n" not in str(exc)
        return
    assert type(sat) is int and 0 <= sat <= MAX_SAT


def test_periods() -> None:
    assert parse_period("2026-11") == (dt.date(2026, 11, 1), dt.date(2026, 11, 30))
    assert parse_period("2024-02") == (dt.date(2024, 2, 1), dt.date(2024, 2, 29))
    assert parse_period("2026-11-03") == (dt.date(2026, 11, 3), dt.date(2026, 11, 3))
    assert parse_period("2026-11-01..2026-11-15") == (dt.date(2026, 11, 1), dt.date(2026, 11, 15))
    assert parse_period("2026-09..2026-11") == (dt.date(2026, 9, 1), dt.date(2026, 11, 30))
    for bad, fragment in (
        ("2026-13", "not a month"),
        ("2026-02-30", "not a date"),
        ("2026-11-15..2026-11-01", "ends before"),
        ("2020-01..2026-01", "longer than"),
        ("November", "YYYY-MM"),
        ("2026-11..", "YYYY-MM"),
        ("x" * 100, "too long"),
    ):
        with pytest.raises(InputError, match=fragment):
            parse_period(bad)


def test_round_ids_and_percentages() -> None:
    assert default_round_id(*parse_period("2026-11"), "RU") == "2026-11-RU"
    assert default_round_id(*parse_period("2026-11-03"), "RU") == "2026-11-03-RU"
    assert default_round_id(*parse_period("2026-11-01..2026-11-15"), "IR") == (
        "2026-11-01..2026-11-15-IR"
    )
    assert parse_percent_bp("25") == 2500
    assert parse_percent_bp("12.5%") == 1250
    assert parse_percent_bp("0.01") == 1
    assert parse_percent_bp("100") == 10_000
    for bad in ("0", "100.01", "-5", "12.345", "lots"):
        with pytest.raises(InputError):
            parse_percent_bp(bad)
