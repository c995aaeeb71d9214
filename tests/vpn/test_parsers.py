"""Client config files, the peer database, sizes and dates: round trips and fuzzing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resistance.errors import ConfigError
from resistance.vpn import clientconf, keys, peers
from resistance.vpn.amnezia import AmneziaParams
from resistance.vpn.peers import DisabledReason, Peer, PeerKind

key_text = st.binary(min_size=32, max_size=32).map(keys.encode)
ipv4 = st.integers(0, 2**32 - 1).map(IPv4Address)
moment = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(lambda d: d.replace(microsecond=0))

client_configs = st.builds(
    clientconf.ClientConfig,
    private_key=key_text,
    address=ipv4.map(lambda a: f"{a}/32"),
    server_public_key=key_text,
    endpoint=st.one_of(
        st.tuples(ipv4, st.integers(1, 65535)).map(lambda t: f"{t[0]}:{t[1]}"),
        st.tuples(
            st.from_regex(r"[a-z]{1,10}\.example", fullmatch=True), st.integers(1, 65535)
        ).map(lambda t: f"{t[0]}:{t[1]}"),
        st.just("[2001:db8::1]:51820"),
    ),
    preshared_key=st.one_of(st.none(), key_text),
    dns=st.lists(ipv4.map(str), max_size=3).map(tuple),
    allowed_ips=st.just(clientconf.FULL_TUNNEL),
    persistent_keepalive=st.one_of(st.none(), st.integers(0, 65535)),
    mtu=st.one_of(st.none(), st.integers(576, 9000)),
    amnezia=st.one_of(st.none(), st.builds(AmneziaParams.generate)),
)


@given(client_configs)
def test_client_config_round_trips(config: clientconf.ClientConfig) -> None:
    text = clientconf.render(config)
    assert clientconf.parse(text) == config
    assert clientconf.render(clientconf.parse(text)) == text
    assert config.private_key not in repr(config)


@given(client_configs)
def test_client_config_parsing_ignores_case_comments_and_blank_lines(
    config: clientconf.ClientConfig,
) -> None:
    lines = []
    for line in clientconf.render(config).splitlines():
        if "=" in line:
            key, _, value = line.partition("=")
            line = f"{key.strip().lower()}={value.strip()}  # note"
        lines += [line, ""]
    assert clientconf.parse("# made by hand\n" + "\n".join(lines)) == config


@given(st.text(max_size=400))
def test_client_config_parser_never_crashes(text: str) -> None:
    try:
        clientconf.parse(text)
    except ConfigError:
        pass


@given(client_configs, st.integers(0, 400), st.text(max_size=5))
def test_mangled_client_config_parses_or_fails_cleanly(
    config: clientconf.ClientConfig, cut: int, junk: str
) -> None:
    text = clientconf.render(config)
    try:
        clientconf.parse(text[:cut] + junk + text[cut:])
    except ConfigError:
        pass


def test_client_config_errors_never_echo_the_private_key() -> None:
    secret = keys.KeyPair.generate().private_text
    text = f"[Interface]\nPrivateKey = {secret[:-2]}\nAddress = 10.0.0.2/32\n"
    text += "[Peer]\nPublicKey = " + secret + "\nEndpoint = h:1\n"
    with pytest.raises(ConfigError) as info:
        clientconf.parse(text)
    assert secret[:20] not in str(info.value)


peer_strategy = st.builds(
    Peer,
    name=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}", fullmatch=True),
    kind=st.just(PeerKind.CLIENT),
    public_key=key_text,
    created=moment,
    address=ipv4,
    preshared_key=st.one_of(st.none(), key_text),
    expires=st.one_of(st.none(), moment),
    quota_bytes=st.one_of(st.none(), st.integers(1, 2**62)),
    disabled=st.one_of(st.none(), st.sampled_from(DisabledReason)),
    counted_rx=st.integers(0, 2**62),
    counted_tx=st.integers(0, 2**62),
    device_rx=st.integers(0, 2**62),
    device_tx=st.integers(0, 2**62),
)


def _unique(items: list[Peer]) -> list[Peer]:
    seen: set[object] = set()
    out = []
    for p in items:
        if {p.name, p.public_key, p.address} & seen:
            continue
        seen |= {p.name, p.public_key, p.address}
        out.append(p)
    return out


@given(st.lists(peer_strategy, max_size=5).map(_unique))
def test_peer_database_round_trips(items: list[Peer]) -> None:
    text = peers.dumps(items)
    assert peers.loads(text) == items


@given(st.text(max_size=300))
def test_peer_database_parser_never_crashes_on_text(text: str) -> None:
    try:
        peers.loads(text)
    except ConfigError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=3)
    ),
    max_leaves=12,
)


@given(st.lists(peer_strategy, min_size=1, max_size=2).map(_unique), st.data())
def test_peer_database_with_any_field_replaced_parses_or_fails_cleanly(
    items: list[Peer], data: st.DataObject
) -> None:
    doc = json.loads(peers.dumps(items))
    record = doc["peers"][0]
    field = data.draw(st.sampled_from(sorted(record)))
    record[field] = data.draw(json_values)
    try:
        peers.loads(json.dumps(doc))
    except ConfigError:
        pass


def test_duplicate_names_are_refused() -> None:
    p = Peer(
        "a",
        PeerKind.CLIENT,
        keys.KeyPair.generate().public_text,
        datetime.now(UTC),
        address=IPv4Address("10.66.0.2"),
    )
    q = Peer(
        "a",
        PeerKind.CLIENT,
        keys.KeyPair.generate().public_text,
        datetime.now(UTC),
        address=IPv4Address("10.66.0.3"),
    )
    with pytest.raises(ConfigError, match="twice"):
        peers.loads(peers.dumps([p, q]))


@given(st.integers(0, 2**40), st.integers(0, 2**40), st.integers(0, 2**40), st.integers(0, 2**40))
def test_observing_counters_never_loses_bytes(a: int, b: int, c: int, d: int) -> None:
    p = Peer("a", PeerKind.PROBE, keys.encode(bytes(32)), datetime.now(UTC))
    p = p.observe(a, b)
    assert (p.counted_rx, p.counted_tx) == (a, b)
    p = p.observe(a + c, b + d)  # counters grow
    assert (p.counted_rx, p.counted_tx) == (a + c, b + d)
    p = p.detached().observe(c, d)  # device restarted from zero
    assert (p.counted_rx, p.counted_tx) == (a + 2 * c, b + 2 * d)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("50GB", 50 * 10**9),
        ("500 MB", 500 * 10**6),
        ("2GiB", 2 * 2**30),
        ("1000", 1000),
        ("1.5gb", 1_500_000_000),
        ("10k", 10_000),
    ],
)
def test_sizes(text: str, value: int) -> None:
    assert peers.parse_size(text) == value


@pytest.mark.parametrize("text", ["", "GB", "-5GB", "0", "5XB", "1e9"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ConfigError):
        peers.parse_size(text)


def test_expiry_forms() -> None:
    now = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    assert peers.parse_expiry("2025-12-31", now=now) == datetime(2026, 1, 1, tzinfo=UTC)
    assert peers.parse_expiry("30d", now=now) == now + timedelta(days=30)
    assert peers.parse_expiry("90s", now=now) == now + timedelta(seconds=90)
    assert peers.parse_expiry("2025-07-01T03:00:00+03:00", now=now) == datetime(
        2025, 7, 1, 0, 0, tzinfo=UTC
    )
    assert peers.parse_expiry("2025-07-01T03:00:00", now=now) == datetime(
        2025, 7, 1, 3, 0, tzinfo=UTC
    )
    with pytest.raises(ConfigError):
        peers.parse_expiry("next tuesday", now=now)


@given(st.text(max_size=40))
def test_expiry_parser_never_crashes(text: str) -> None:
    try:
        peers.parse_expiry(text, now=datetime.now(UTC))
    except ConfigError:
        pass


def test_key_errors_do_not_echo_the_key() -> None:
    secret = keys.KeyPair.generate().private_text
    with pytest.raises(ConfigError) as info:
        keys.decode(secret[:-1] + "!")
    assert secret[:10] not in str(info.value)
    assert secret not in repr(keys.KeyPair.from_private(keys.decode(secret)))
