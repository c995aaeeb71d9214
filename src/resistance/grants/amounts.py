"""What a funder types: budgets in BTC or satoshi, periods, percentages; parsed exactly.

Every parser returns integers (satoshi, basis points) or dates and raises
``InputError`` with one line saying what was expected. Amounts go through
``decimal.Decimal`` from the text itself, never through a float:
``"0.1BTC"`` is 10,000,000 sat, not 9,999,999.

Accepted budget forms::

    2.0BTC   0.5 btc   1btc        (BTC: at most 8 decimals)
    150000sat  150000 sats  150000  (satoshi: an integer; no unit means satoshi)

Periods: ``2026-11`` (a calendar month), ``2026-11-03`` (one day),
``2026-11-01..2026-11-15`` (both days included; either end may be a month,
meaning its first or last day).
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from decimal import Decimal, InvalidOperation

from resistance.grants.errors import InputError
from resistance.grants.model import BASIS_POINTS, MAX_SAT

SAT_PER_BTC = 100_000_000
MAX_PERIOD_DAYS = 366

_AMOUNT = re.compile(r"([0-9]+)(?:\.([0-9]+))?[ ]?(btc|sats?)?", re.IGNORECASE)
_MONTH = re.compile(r"([0-9]{4})-([0-9]{2})")
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_PERCENT = re.compile(r"([0-9]+)(?:\.([0-9]{1,2}))? ?%?")


def parse_amount(text: str, *, what: str = "amount") -> int:
    """Satoshi from ``'2.0BTC'``, ``'0.5 btc'``, ``'150000sat'`` or ``'150000'``."""
    shown = text if len(text) <= 40 else text[:40] + "…"
    if text.strip().startswith("-"):
        raise InputError(f"{what} {shown!r} is negative")
    m = _AMOUNT.fullmatch(text.strip())
    if m is None or len(text) > 64:
        raise InputError(
            f"{what} {shown!r} is not an amount: write e.g. 2.0BTC, 0.5 btc, 150000sat or 150000"
        )
    whole, frac, unit = m.group(1), m.group(2), (m.group(3) or "sat").lower()
    if unit == "btc":
        if frac is not None and len(frac) > 8:
            raise InputError(f"{what} {shown!r} has more than 8 decimals (1 sat = 0.00000001 BTC)")
        try:
            sat_exact = Decimal(f"{whole}.{frac or '0'}") * SAT_PER_BTC
        except InvalidOperation:  # pragma: no cover - the pattern admits only digits
            raise InputError(f"{what} {shown!r} is not a number") from None
        sat = int(sat_exact)
    else:
        if frac is not None:
            raise InputError(
                f"{what} {shown!r}: satoshi are whole; write the BTC amount as e.g. "
                f"{whole}.{frac}BTC"
            )
        sat = int(whole)
    if sat > MAX_SAT:
        raise InputError(f"{what} {shown!r} is more than 21,000,000 BTC")
    return sat


def parse_percent_bp(text: str, *, what: str = "percentage") -> int:
    """Basis points from a percentage: ``'25'``, ``'25%'``, ``'12.5'`` (at most 2 decimals)."""
    m = _PERCENT.fullmatch(text.strip())
    if m is None:
        raise InputError(f"{what} {text[:40]!r} is not a percentage such as 25 or 12.5%")
    bp = int(m.group(1)) * 100 + int((m.group(2) or "0").ljust(2, "0"))
    if not 1 <= bp <= BASIS_POINTS:
        raise InputError(f"{what} must be more than 0 and at most 100 %: {text!r}")
    return bp


def _month(text: str, *, last: bool) -> dt.date:
    m = _MONTH.fullmatch(text)
    assert m is not None
    year, month = int(m.group(1)), int(m.group(2))
    if not 1 <= month <= 12 or year < 1:
        raise InputError(f"period: {text!r} is not a month (YYYY-MM)")
    day = calendar.monthrange(year, month)[1] if last else 1
    return dt.date(year, month, day)


def _end(text: str, *, last: bool) -> dt.date:
    text = text.strip()
    if _MONTH.fullmatch(text):
        return _month(text, last=last)
    if _DAY.fullmatch(text):
        try:
            return dt.date.fromisoformat(text)
        except ValueError:
            raise InputError(f"period: {text!r} is not a date") from None
    raise InputError(f"period: {text[:40]!r} is not YYYY-MM or YYYY-MM-DD")


def parse_period(text: str) -> tuple[dt.date, dt.date]:
    """``(start, end)``, both included, from ``YYYY-MM``, ``YYYY-MM-DD`` or ``START..END``."""
    if len(text) > 64:
        raise InputError("period is too long: write YYYY-MM, YYYY-MM-DD or START..END")
    if ".." in text:
        first, _, second = text.partition("..")
        start, end = _end(first, last=False), _end(second, last=True)
    else:
        start, end = _end(text, last=False), _end(text, last=True)
    if end < start:
        raise InputError(f"period {text!r} ends before it starts")
    if (end - start).days + 1 > MAX_PERIOD_DAYS:
        raise InputError(f"period {text!r} is longer than {MAX_PERIOD_DAYS} days")
    return start, end


def default_round_id(start: dt.date, end: dt.date, country: str) -> str:
    """``2026-11-RU`` for a calendar month, ``2026-11-01..2026-11-15-RU`` otherwise."""
    whole_month = (
        start.day == 1
        and end.year == start.year
        and end.month == start.month
        and end.day == calendar.monthrange(end.year, end.month)[1]
    )
    if whole_month:
        return f"{start:%Y-%m}-{country}"
    if start == end:
        return f"{start.isoformat()}-{country}"
    return f"{start.isoformat()}..{end.isoformat()}-{country}"
