"""Signed directories: canonical bytes, signatures, threshold, expiry, rollback, co-signing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from resistance.cli import main
from resistance.client import directory as client_directory
from resistance.directory.canonical import CanonicalError, canonical_bytes, parse_strict
from resistance.directory.document import (
    DirectoryError,
    build_document,
    cosign,
    dump_signed,
    sign_document,
    verify_directory,
)
from resistance.directory.keys import create_private_key, private_pem, public_key_text

NOW = 1_700_000_000
PROXY = {
    "endpoint": {"host": "203.0.113.7", "port": 1080},
    "protocols": ["socks5"],
    "credentials": [{"username": "u", "password": "p"}],
    "node_key": "k",
    "status": "active",
    "measurements": {},
}


def document(serial: int = 10, **times: int) -> dict[str, Any]:
    return build_document(
        serial=serial,
        valid_after=times.get("valid_after", NOW - 10),
        fresh_until=times.get("fresh_until", NOW + 100),
        valid_until=times.get("valid_until", NOW + 1000),
        proxies=[PROXY],
        network="regtest",
    )


@pytest.fixture
def keys() -> list[Ed25519PrivateKey]:
    return [Ed25519PrivateKey.generate() for _ in range(3)]


def signed(doc: dict[str, Any], *signers: Ed25519PrivateKey) -> bytes:
    return dump_signed(sign_document(doc, list(signers)))


def verify(data: bytes, trusted: list[Ed25519PrivateKey], **kw: Any) -> Any:
    kw.setdefault("threshold", 1)
    kw.setdefault("now", NOW)
    return verify_directory(data, trusted=[k.public_key() for k in trusted], **kw)


def test_canonical_bytes_are_sorted_compact_utf8() -> None:
    assert (
        canonical_bytes({"b": 1, "a": [True, None, "é"]}) == '{"a":[true,null,"é"],"b":1}'.encode()
    )


@pytest.mark.parametrize("bad", [1.5, {"x": float("nan")}, 2**64, {1: "a"}, "\udc80", b"x"])
def test_canonical_refuses(bad: Any) -> None:
    with pytest.raises(CanonicalError):
        canonical_bytes(bad)


@pytest.mark.parametrize("text", [b'{"a":1.0}', b'{"a":1,"a":2}', b'{"a":NaN}', b"\xff", b"[1,"])
def test_strict_parse_refuses(text: bytes) -> None:
    with pytest.raises(CanonicalError):
        parse_strict(text)


def test_good_directory_verifies(keys: list[Ed25519PrivateKey]) -> None:
    result = verify(signed(document(), keys[0]), [keys[0]])
    assert result.serial == 10 and result.document["proxies"] == [PROXY]


def test_whitespace_of_the_file_does_not_matter(keys: list[Ed25519PrivateKey]) -> None:
    pretty = json.dumps(json.loads(signed(document(), keys[0])), indent=2).encode()
    assert verify(pretty, [keys[0]]).serial == 10


def test_untrusted_signer_refused(keys: list[Ed25519PrivateKey]) -> None:
    with pytest.raises(DirectoryError, match="0 trusted key"):
        verify(signed(document(), keys[1]), [keys[0]])


@pytest.mark.parametrize(
    ("old", "new"),
    [(b'"port":1080', b'"port":1081'), (b'"serial":10', b'"serial":11'), (b'"u"', b'"v"')],
)
def test_tampered_document_refused(keys: list[Ed25519PrivateKey], old: bytes, new: bytes) -> None:
    data = signed(document(), keys[0])
    assert old in data
    with pytest.raises(DirectoryError, match="0 trusted key"):
        verify(data.replace(old, new), [keys[0]])


def test_tampered_signature_refused(keys: list[Ed25519PrivateKey]) -> None:
    parsed = json.loads(signed(document(), keys[0]))
    sig = parsed["signatures"][0]["signature"]
    parsed["signatures"][0]["signature"] = ("A" if sig[0] != "A" else "B") + sig[1:]
    with pytest.raises(DirectoryError):
        verify(json.dumps(parsed).encode(), [keys[0]])


def test_threshold_counts_distinct_keys(keys: list[Ed25519PrivateKey]) -> None:
    data = signed(document(), keys[0], keys[1])
    assert verify(data, keys, threshold=2).signers
    with pytest.raises(DirectoryError, match="2 trusted key"):
        verify(data, keys, threshold=3)


def test_duplicate_signatures_of_one_key_count_once(keys: list[Ed25519PrivateKey]) -> None:
    parsed = json.loads(signed(document(), keys[0]))
    parsed["signatures"] = parsed["signatures"] * 3
    with pytest.raises(DirectoryError, match="1 trusted key"):
        verify(json.dumps(parsed).encode(), keys, threshold=2)
    # the same key pinned twice does not count twice either
    with pytest.raises(DirectoryError, match="distinct trusted keys"):
        verify(json.dumps(parsed).encode(), [keys[0], keys[0]], threshold=2)


@pytest.mark.parametrize(
    ("now", "match"),
    [(NOW + 1000, "expired"), (NOW + 5000, "expired"), (NOW - 11, "not valid yet")],
)
def test_validity_window(keys: list[Ed25519PrivateKey], now: int, match: str) -> None:
    with pytest.raises(DirectoryError, match=match):
        verify(signed(document(), keys[0]), [keys[0]], now=now)


def test_skew_forgives_only_the_start_of_the_window(keys: list[Ed25519PrivateKey]) -> None:
    data = signed(document(), keys[0])
    assert verify(data, [keys[0]], now=NOW - 70, skew=60).serial == 10
    with pytest.raises(DirectoryError, match="not valid yet"):
        verify(data, [keys[0]], now=NOW - 71, skew=60)
    with pytest.raises(DirectoryError, match="expired"):
        verify(data, [keys[0]], now=NOW + 1000, skew=60)


def test_client_reads_the_clock_after_the_fetch(
    keys: list[Ed25519PrivateKey], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory published during the fetch is accepted: the clock is read after it.

    The fetch here takes 'an hour' (the clock moves while it runs) and returns a
    directory that starts after the moment refresh() was called; reading the
    clock before the fetch refused it as not valid yet (seen in CI).
    """
    clock = [NOW - 3600]
    late = signed(document(valid_after=NOW - 5), keys[0])

    def slow_fetch(source: str, *, seconds: float) -> bytes:
        clock[0] = NOW
        return late

    monkeypatch.setattr(client_directory, "fetch", slow_fetch)
    monkeypatch.setattr(client_directory.time, "time", lambda: float(clock[0]))
    config = client_directory.DirectoryConfig(
        sources=("http://127.0.0.1:9/directory",),
        trusted=(keys[0].public_key(),),
        threshold=1,
        state_dir=tmp_path,
    )
    assert client_directory.DirectoryClient(config).refresh().serial == 10


def test_rollback_refused(keys: list[Ed25519PrivateKey]) -> None:
    accepted = verify(signed(document(serial=10), keys[0]), [keys[0]])
    with pytest.raises(DirectoryError, match="rollback"):
        verify(signed(document(serial=9), keys[0]), [keys[0]], last_serial=10)
    same = verify(
        signed(document(serial=10), keys[0]), [keys[0]], last_serial=10, last_digest=accepted.digest
    )
    assert same.serial == 10
    other = document(serial=10)
    other["proxies"] = []
    with pytest.raises(DirectoryError, match="different content"):
        verify(signed(other, keys[0]), [keys[0]], last_serial=10, last_digest=accepted.digest)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: d.pop("document"),
        lambda d: d.update(format="other/1"),
        lambda d: d["document"].update(version=2),
        lambda d: d["document"].update(serial="10"),
        lambda d: d["document"].update(valid_until=1),
        lambda d: d.update(signatures=[{"key_id": 1}] * 65),
    ],
)
def test_malformed_files_refused(keys: list[Ed25519PrivateKey], mangle: Any) -> None:
    parsed = json.loads(signed(document(), keys[0]))
    mangle(parsed)
    with pytest.raises(DirectoryError):
        verify(json.dumps(parsed).encode(), [keys[0]])


def test_cosign_adds_a_second_authority(keys: list[Ed25519PrivateKey]) -> None:
    data = cosign(signed(document(), keys[0]), keys[1])
    assert len(verify(data, keys[:2], threshold=2).signers) == 2
    again = cosign(data, keys[1])
    assert len(json.loads(again)["signatures"]) == 2


def test_cli_verify_cosign_and_rollback(tmp_path: Path) -> None:
    runner = CliRunner()
    a = create_private_key(tmp_path / "a.pem")
    b_path = tmp_path / "b.pem"
    result = runner.invoke(main, ["directory", "keygen", str(b_path)])
    assert result.exit_code == 0, result.output
    b_public = result.output.strip()
    import time

    now = int(time.time())
    doc = build_document(
        serial=5, valid_after=now - 5, fresh_until=now + 50, valid_until=now + 500,
        proxies=[], network="regtest",
    )  # fmt: skip
    file = tmp_path / "dir.json"
    file.write_bytes(signed(doc, a))
    state = tmp_path / "client"
    trust = ["--trust", public_key_text(a.public_key()), "--trust", b_public]
    args = ["directory", "verify", str(file), *trust, "--state-dir", str(state)]

    result = runner.invoke(main, [*args, "--threshold", "2"])
    assert result.exit_code == 1 and "1 trusted key(s), 2 required" in result.output

    result = runner.invoke(main, ["directory", "cosign", str(file), "--key", str(b_path)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, [*args, "--threshold", "2"])
    assert result.exit_code == 0 and "serial 5" in result.output, result.output

    older = dict(doc, serial=4)
    file.write_bytes(signed(older, a))
    result = runner.invoke(main, args)
    assert result.exit_code == 1 and "rollback" in result.output

    (tmp_path / "loose.pem").write_text(private_pem(a))
    (tmp_path / "loose.pem").chmod(0o644)
    result = runner.invoke(
        main, ["directory", "cosign", str(file), "--key", str(tmp_path / "loose.pem")]
    )
    assert result.exit_code == 2 and "readable by others" in result.output


def test_cli_trust_key_from_pem_file(tmp_path: Path) -> None:
    import time

    a = create_private_key(tmp_path / "a.pem")
    now = int(time.time())
    doc = build_document(
        serial=1, valid_after=now - 5, fresh_until=now, valid_until=now + 5, proxies=[],
        network="regtest",
    )  # fmt: skip
    (tmp_path / "d.json").write_bytes(signed(doc, a))
    result = CliRunner().invoke(
        main,
        ["directory", "verify", str(tmp_path / "d.json"), "--trust", str(tmp_path / "a.pem"),
         "--state-dir", str(tmp_path / "s")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(
        main, ["directory", "verify", str(tmp_path / "d.json"), "--trust", "nonsense"]
    )
    assert result.exit_code == 2 and "bad trusted key" in result.output
