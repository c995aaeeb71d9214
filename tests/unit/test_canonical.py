"""Canonical bytes refuse what has no canonical form, wherever in the value it sits; a
directory signed and dumped at once is byte for byte the one signed then dumped."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from resistance.directory.canonical import CanonicalError, canonical_bytes, parse_strict
from resistance.directory.document import dump_signed, sign_and_dump, sign_document


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ({"a": [1, {"b": "x\ud800"}]}, "lone surrogate"),
        ({"a": {"\udfff": 1}}, "lone surrogate"),
        ({"a": [1.5]}, "floats"),
        ({"a": {1: "x"}}, "not a string"),
        ({"a": [2**63]}, "64-bit"),
        ({"a": {"b": object()}}, "no canonical JSON form"),
    ],
)
def test_refused_anywhere(value: Any, why: str) -> None:
    with pytest.raises(CanonicalError, match=why):
        canonical_bytes(value)


def test_parse_strict_refuses_an_escaped_lone_surrogate() -> None:
    with pytest.raises(CanonicalError, match="lone surrogate"):
        parse_strict(b'{"a": ["\\ud800"]}')


def test_tuples_and_text_as_themselves() -> None:
    assert canonical_bytes({"b": (1, True, None), "a": "é"}) == (
        '{"a":"é","b":[1,true,null]}'.encode()
    )


def test_sign_and_dump_is_sign_then_dump() -> None:
    keys = [Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()]
    document = {"serial": 7, "proxies": [{"host": "198.51.100.1", "note": "ü"}], "a": []}
    signed, body = sign_and_dump(document, keys)
    assert signed == sign_document(document, keys)
    assert body == dump_signed(sign_document(document, keys))
