"""TLS listeners without I/O: directory entries, the upstreams they give, pins, certificates."""

from __future__ import annotations

import hashlib
import re
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from resistance.client.directory import entry_upstreams, upstreams_from
from resistance.client.upstreams import Upstream, UpstreamPool
from resistance.config import Endpoint, node_settings
from resistance.directory.canonical import canonical_bytes
from resistance.directory.entry import (
    DirectoryEntry,
    TlsListener,
    parse_entry,
    parse_tls_listener,
)
from resistance.errors import ConfigError
from resistance.node import identity
from resistance.node.service import with_certificate
from resistance.node.tlscert import (
    CERT_FILE,
    KEY_FILE,
    certificate_sha256,
    ensure_certificate,
    leaf_der,
    make_self_signed,
)
from resistance.registry import statement
from resistance.registry.schemas import NodeStatement

PIN = "0123456789abcdef" * 4
ENTRY: dict[str, Any] = {
    "endpoint": {"host": "203.0.113.7", "port": 1080},
    "protocols": ["socks5"],
    "credentials": [{"username": "u", "password": "p"}],
    "node_key": "k",
    "status": "functional",
    "measurements": {},
}


def with_tls(port: Any = 443, sha256: Any = PIN) -> dict[str, Any]:
    return {**ENTRY, "tls": {"port": port, "sha256": sha256}}


# -- parsing entries ---------------------------------------------------------------------


def test_entry_with_and_without_tls() -> None:
    old = parse_entry(ENTRY)  # written before TLS listeners existed
    assert old == DirectoryEntry(
        "203.0.113.7", 1080, ("socks5",), "u", "p", "k", "functional", None
    )
    assert parse_entry(with_tls()) == DirectoryEntry(
        "203.0.113.7", 1080, ("socks5",), "u", "p", "k", "functional", TlsListener(443, PIN)
    )
    assert TlsListener(443, PIN).to_json() == {"port": 443, "sha256": PIN}


@pytest.mark.parametrize(
    "tls",
    [
        None,
        [],
        "443",
        {"port": 443},
        {"sha256": PIN},
        {"port": 0, "sha256": PIN},
        {"port": 65536, "sha256": PIN},
        {"port": True, "sha256": PIN},
        {"port": "443", "sha256": PIN},
        {"port": 443, "sha256": PIN.upper()},
        {"port": 443, "sha256": PIN[:-1]},
        {"port": 443, "sha256": PIN + "0"},
        {"port": 443, "sha256": "g" * 64},
        {"port": 1080, "sha256": PIN},  # the plain port itself
    ],
)
def test_a_bad_tls_object_costs_only_the_tls_listener(tls: Any) -> None:
    entry = parse_entry({**ENTRY, "tls": tls})
    assert entry is not None and entry.tls is None and entry.port == 1080


@pytest.mark.parametrize(
    "entry",
    [
        {**ENTRY, "credentials": {"username": "u"}},
        {**ENTRY, "credentials": 5},
        {**ENTRY, "credentials": [5]},
        {**ENTRY, "credentials": [{"username": 1, "password": "p"}]},
        {**ENTRY, "credentials": [{"username": "u"}]},
        {**ENTRY, "credentials": [{"username": "u" * 256, "password": "p"}]},
    ],
)
def test_unusable_credentials_mean_none(entry: dict[str, Any]) -> None:
    parsed = parse_entry(entry)
    assert parsed is not None and parsed.username is None and parsed.password is None


@pytest.mark.parametrize(
    "entry",
    [
        None,
        [],
        {},
        {**ENTRY, "endpoint": None},
        {**ENTRY, "endpoint": {"host": "", "port": 1}},
        {**ENTRY, "endpoint": {"host": "h", "port": 0}},
        {**ENTRY, "endpoint": {"host": "h", "port": False}},
        {**ENTRY, "protocols": "socks5"},
        {**ENTRY, "protocols": 5},
    ],
)
def test_unusable_entries(entry: Any) -> None:
    assert parse_entry(entry) is None


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = st.sampled_from(
    ["endpoint", "protocols", "credentials", "node_key", "status", "tls", "host", "port", "sha256"]
)
# TLS listeners that often parse, so the fuzz reaches the TLS branches too.
TLS_LISTENERS = st.dictionaries(FIELDS, JSON) | st.fixed_dictionaries(
    {
        "port": JSON | st.integers(1, 65535),
        "sha256": JSON | st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
    }
)


def _check(parsed: DirectoryEntry | None) -> None:
    if parsed is None:
        return
    assert isinstance(parsed.host, str) and parsed.host
    assert 1 <= parsed.port <= 65535 and not isinstance(parsed.port, bool)
    assert all(isinstance(p, str) for p in parsed.protocols)
    assert (parsed.username is None) == (parsed.password is None)
    if parsed.tls is not None:
        assert 1 <= parsed.tls.port <= 65535 and parsed.tls.port != parsed.port
        assert len(parsed.tls.sha256) == 64 and int(parsed.tls.sha256, 16) >= 0


@given(JSON)
def test_fuzz_any_json_parses_or_is_none(value: Any) -> None:
    _check(parse_entry(value))
    listener = parse_tls_listener(value)
    assert listener is None or isinstance(listener, TlsListener)


@given(st.dictionaries(FIELDS, JSON), TLS_LISTENERS)
def test_fuzz_entries_with_any_field_values(base: dict[str, Any], tls: dict[str, Any]) -> None:
    entry = {**ENTRY, **base, "tls": {**tls}}
    _check(parse_entry(entry))
    # ... and whole documents never make the client raise either.
    for transport in ("auto", "tls", "plain"):
        for upstream in upstreams_from({"proxies": [entry, base, tls]}, transport=transport):
            assert isinstance(upstream, Upstream)


@given(
    st.integers(1, 65535),
    st.integers(1, 65535),
    st.binary(min_size=32, max_size=32),
    st.text(min_size=1, max_size=20),
)
def test_fuzz_registry_written_entries_round_trip(
    port: int, tls_port: int, digest: bytes, password: str
) -> None:
    entry = {
        **ENTRY,
        "endpoint": {"host": "198.51.100.1", "port": port},
        "credentials": [{"username": "u", "password": password}],
        "tls": TlsListener(tls_port, digest.hex()).to_json(),
    }
    parsed = parse_entry(entry)
    assert parsed is not None and parsed.password == password
    expected = None if tls_port == port else TlsListener(tls_port, digest.hex())
    assert parsed.tls == expected


def test_old_documents_keep_their_canonical_bytes() -> None:
    """``tls`` is absent from plain nodes' entries, so their signed bytes do not change."""
    assert b"tls" not in canonical_bytes(ENTRY)


# -- the upstreams an entry gives --------------------------------------------------------


def test_transports() -> None:
    entry = parse_entry(with_tls())
    assert entry is not None
    tls = Upstream("203.0.113.7", 443, "u", "p", "k", tls_sha256=PIN)
    plain = Upstream("203.0.113.7", 1080, "u", "p", "k")
    assert entry_upstreams(entry, "auto") == [tls, plain]
    assert entry_upstreams(entry, "tls") == [tls]
    assert entry_upstreams(entry, "plain") == [plain]
    bare = parse_entry(ENTRY)
    assert bare is not None
    assert entry_upstreams(bare, "tls") == []
    assert entry_upstreams(bare, "auto") == [plain]
    blocked = {**with_tls(), "status": "blocked:RU"}
    assert upstreams_from({"proxies": [blocked]}, country="RU") == []
    assert len(upstreams_from({"proxies": [blocked]}, country="IR")) == 2
    with pytest.raises(ConfigError):
        upstreams_from({"proxies": []}, transport="quic")
    assert tls.label == "203.0.113.7:443 (TLS)" and plain.label == "203.0.113.7:1080"


def test_a_pool_preferring_tls_puts_tls_first_whatever_the_latency() -> None:
    tls = Upstream("203.0.113.7", 443, tls_sha256=PIN)
    plain, other = Upstream("203.0.113.7", 1080), Upstream("198.51.100.1", 1080)
    pool = UpstreamPool([plain, tls, other], prefer_tls=True)
    pool.succeeded(plain, 0.010, now=0)
    pool.succeeded(tls, 0.030, now=0)
    pool.used(plain)
    assert pool.order(now=0) == [tls, plain, other]
    pool.failed(tls, "blocked", now=0)
    assert pool.order(now=0) == [plain, other, tls]  # the fallback while TLS rests
    assert pool.order(now=10)[0] == tls  # and back to TLS after its rest
    indifferent = UpstreamPool([plain, tls], prefer_tls=False)
    indifferent.succeeded(plain, 0.010, now=0)
    indifferent.succeeded(tls, 0.030, now=0)
    assert indifferent.order(now=0) == [plain, tls]


# -- the challenge inside TLS ------------------------------------------------------------


def test_tls_challenge_message_is_the_same_on_both_sides() -> None:
    nonce, digest = bytes(range(16)), hashlib.sha256(b"cert").digest()
    message = identity.tls_challenge_message(nonce, digest)
    assert message == statement.tls_challenge_message(nonce, digest)
    assert message != identity.challenge_message(nonce)
    assert not message.startswith(identity.challenge_message(nonce))
    with pytest.raises(ValueError):
        identity.tls_challenge_message(nonce, digest[:31])


def test_statements_without_tls_port_are_unchanged() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    kw: dict[str, Any] = {
        "key": key, "operator_id": 1, "host": "203.0.113.7", "port": 1080, "probe_user": "p",
        "probe_password": "pw", "now": 1, "nonce": "0" * 32,
    }  # fmt: skip
    old, _ = statement.make_statement(**kw)
    assert "tls_port" not in old
    new, _ = statement.make_statement(**kw, tls_port=443)
    assert new == {**old, "tls_port": 443}
    assert NodeStatement.model_validate(new).tls_port == 443
    assert NodeStatement.model_validate(old).model_dump(exclude_unset=True) == old


# -- the node's certificate --------------------------------------------------------------


def test_self_signed_certificate_loads_and_pins(tmp_path: Path) -> None:
    cert, key = make_self_signed("203.0.113.7")
    (tmp_path / "c.pem").write_bytes(cert + make_self_signed("chain.example")[0])  # a chain
    (tmp_path / "k.pem").write_bytes(key)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")  # the key fits the leaf
    der = leaf_der(tmp_path / "c.pem")
    assert der == x509.load_pem_x509_certificate(cert).public_bytes(serialization.Encoding.DER)
    assert certificate_sha256(der) == hashlib.sha256(der).hexdigest()
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="no PEM certificate"):
        leaf_der(tmp_path / "junk.pem")


def test_generated_once_kept_and_private(tmp_path: Path) -> None:
    cert, key, created = ensure_certificate(tmp_path, common_name=None)
    assert created and cert == tmp_path / CERT_FILE and key == tmp_path / KEY_FILE
    assert key.stat().st_mode & 0o777 == 0o600
    pin = certificate_sha256(leaf_der(cert))
    again = ensure_certificate(tmp_path, common_name="203.0.113.7")
    assert again == (cert, key, False)
    assert certificate_sha256(leaf_der(cert)) == pin  # a new name never changes the pin
    cert.unlink()
    with pytest.raises(ConfigError, match="remove"):
        ensure_certificate(tmp_path, common_name=None)


def test_generated_names_do_not_mark_a_node(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    names = set()
    for i in range(3):
        (tmp_path / str(i)).mkdir()
        cert, _, _ = ensure_certificate(tmp_path / str(i), common_name=None)
        loaded = x509.load_der_x509_certificate(leaf_der(cert))
        (cn,) = loaded.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        assert re.fullmatch(r"www\.[a-z]{8,20}\.net", str(cn.value))
        names.add(cn.value)
    assert len(names) == 3


def test_tls_listen_without_a_certificate_gets_the_generated_one(tmp_path: Path) -> None:
    settings = node_settings(overrides={"tls_listen": ["127.0.0.1:0"]})
    assert settings.tls_listen == (Endpoint("127.0.0.1", 0),) and settings.tls_cert is None
    filled = with_certificate(settings, tmp_path)
    assert filled.tls_cert == tmp_path / CERT_FILE and filled.tls_key == tmp_path / KEY_FILE
    given_paths = node_settings(
        overrides={"tls_listen": ["127.0.0.1:0"], "tls_cert": "/x.pem", "tls_key": "/x.key"}
    )
    assert with_certificate(given_paths, tmp_path / "other") == given_paths
    with pytest.raises(ConfigError, match="go together"):
        node_settings(overrides={"tls_listen": ["127.0.0.1:0"], "tls_cert": "/x.pem"})
