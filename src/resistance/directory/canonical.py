"""Canonical bytes: the one serialization that signatures cover.

Definition (``resist-canonical-json/1``):

* JSON (RFC 8259) encoded as UTF-8, no byte order mark;
* object keys sorted by their Unicode code points, no duplicate keys;
* no whitespace at all: separators are ``,`` and ``:``;
* non-ASCII characters written as themselves (UTF-8), never ``\\uXXXX``
  escapes, except the control characters JSON requires to be escaped;
* values are objects, arrays, strings, ``true``, ``false``, ``null`` and
  integers only; floats (and NaN, infinities) are refused, so no two
  implementations can disagree about a number's text;
* integers must fit in a signed 64-bit range, so every JSON parser agrees.

Two documents are the same iff their canonical bytes are the same, so a
signature over these bytes is a signature over the document's meaning.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from resistance.errors import ResistanceError

INT_MIN = -(2**63)
INT_MAX = 2**63 - 1
_MAX_DEPTH = 32


class CanonicalError(ResistanceError):
    """A value has no canonical form (a float, a huge integer, a bad key...)."""


def _check(value: Any, depth: int, numbers: bool = False, texts: bool = True) -> None:
    """Refuse what has no canonical form.  ``texts=False`` leaves strings to the caller
    (``canonical_bytes`` encodes its whole output once, which finds a lone surrogate
    anywhere): a directory of 100,000 proxies has millions of values, so the common
    types are tested first, by exact type."""
    if depth > _MAX_DEPTH:
        raise CanonicalError(f"nested deeper than {_MAX_DEPTH} levels")
    kind = type(value)
    if kind is str:
        if texts:
            _check_text(value)
        return
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise CanonicalError(f"object key {key!r} is not a string")
            if texts:
                _check_text(key)
            if type(item) is not str or texts:
                _check(item, depth + 1, numbers, texts)
        return
    if kind is list or kind is tuple:
        for item in value:
            _check(item, depth + 1, numbers, texts)
        return
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):  # a subclass of str
        if texts:
            _check_text(value)
        return
    if isinstance(value, int):
        if not numbers and not INT_MIN <= value <= INT_MAX:
            raise CanonicalError(f"integer {value} is outside the signed 64-bit range")
        return
    if isinstance(value, float):
        if numbers:
            return
        raise CanonicalError("floats have no canonical form: use integers")
    if isinstance(value, list | tuple | dict):
        _check(list(value) if not isinstance(value, dict) else dict(value), depth, numbers, texts)
        return
    raise CanonicalError(f"{type(value).__name__} has no canonical JSON form")


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise CanonicalError("string is not valid Unicode (lone surrogate)") from None


def check_value(value: Any) -> None:
    """Refuse a value with no canonical form, strings aside: the caller encodes its
    output to UTF-8 once, which refuses a lone surrogate anywhere (as
    :func:`canonical_bytes` does)."""
    _check(value, 0, texts=False)


def _text_encoder() -> Callable[[Any], str]:
    """``json.dumps`` with the canonical arguments, unchecked, as one encoder made once.

    ``json.dumps`` (and ``JSONEncoder.encode``) makes a new C encoder at every call,
    several microseconds: a directory of 100,000 proxies is written from hundreds of
    thousands of small values.  CPython's C encoder is made once here, without the
    circular-reference check (a value read from the database or decoded from JSON has
    no cycle; one would raise ``RecursionError`` instead of ``ValueError``), and kept
    only if it writes what the encoder it stands for writes; otherwise that encoder."""
    reference = json.JSONEncoder(
        sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython has it
        return reference.encode
    try:
        chunks = make(
            None, reference.default, json.encoder.encode_basestring, None, ":", ",",
            True, False, False,
        )  # fmt: skip
    except TypeError:  # pragma: no cover - another interpreter's signature
        return reference.encode

    def encode(value: Any) -> str:
        return "".join(chunks(value, 0))

    sample = {"b": [1, None, True, False, -(2**63), 'é\n"\\\x00'], "a": {"z": {}, "é": []}}
    return encode if encode(sample) == reference.encode(sample) else reference.encode


#: The canonical JSON text of a value, not checked (see :func:`check_value`): what
#: :func:`canonical_bytes` encodes to UTF-8 for a value it accepts.
canonical_text = _text_encoder()


def canonical_bytes(value: Any) -> bytes:
    """The canonical bytes of a JSON value (see the module docstring)."""
    check_value(value)
    text = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise CanonicalError("string is not valid Unicode (lone surrogate)") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise CanonicalError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_float(text: str) -> Any:
    raise CanonicalError(f"number {text} is not an integer")


def _no_constant(text: str) -> Any:
    raise CanonicalError(f"{text} is not JSON")


def parse_strict(data: bytes, *, numbers: bool = False) -> Any:
    """Parse JSON refusing floats, NaN and duplicate keys (what canonical bytes allow).

    ``numbers=True`` lets finite floats and integers of any size through (the
    registry's request guard leaves numbers to validation, which names the field).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CanonicalError("not UTF-8") from None
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_float=float if numbers else _no_float,
            parse_constant=_no_constant,
        )
    except json.JSONDecodeError as exc:
        raise CanonicalError(f"not JSON: {exc.msg} at line {exc.lineno}") from None
    except ValueError as exc:  # an integer of more digits than Python converts
        raise CanonicalError(f"not JSON: {exc}") from None
    except RecursionError:
        raise CanonicalError("nested too deeply") from None
    _check(value, 0, numbers)
    return value
