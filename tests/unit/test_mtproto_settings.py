"""MTProto settings, users, replay cache and user lookup (no sockets)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resistance.config import (
    Endpoint,
    MTProtoSettings,
    MTProtoUserSpec,
    node_settings,
    parse_mtproto_dc,
    parse_mtproto_user,
    parse_size,
)
from resistance.errors import ConfigError
from resistance.links import mtproto_links
from resistance.node.mtproto import dc_table, default_modes
from resistance.node.mtproto_users import (
    GENERATED_FILE,
    HandshakeRefused,
    MTProtoUser,
    ReplayCache,
    UserTable,
    resolve_users,
)
from resistance.proto import faketls, obfuscated2
from resistance.proto.faketls import ProxySecret, SecretMode

KEY = bytes.fromhex("00112233445566778899aabbccddeeff")


def test_user_spec_forms() -> None:
    assert parse_mtproto_user("alice") == MTProtoUserSpec("alice")
    spec = parse_mtproto_user(f"bob:{KEY.hex()}:quota=1GiB,expires=2027-01-31,conns=3")
    assert spec.key == KEY and spec.quota_bytes == 2**30 and spec.max_connections == 3
    assert spec.expires is not None and time.gmtime(spec.expires).tm_mday == 31
    assert parse_mtproto_user(f"carol:dd{KEY.hex()}").key == KEY
    assert parse_mtproto_user("dave::conns=1").max_connections == 1
    assert parse_mtproto_user("erin::ips=2").max_addresses == 2


@pytest.mark.parametrize(
    "text",
    ["", "bad name", "x:zz", "x:" + "ab" * 15, "x::quota=lots", "x::conns=0", "x::what=1",
     "x::expires=tomorrow", "x::quota"],
)  # fmt: skip
def test_bad_user_specs(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_mtproto_user(text)


def test_dc_overrides_and_table() -> None:
    assert parse_mtproto_dc("2=198.18.100.1:443") == (2, Endpoint("198.18.100.1", 443))
    assert parse_mtproto_dc("-4=[::1]:8443") == (-4, Endpoint("::1", 8443))
    for bad in ("x=1.2.3.4:1", "0=1.2.3.4:1", "2", "99999=1.2.3.4:1"):
        with pytest.raises(ConfigError):
            parse_mtproto_dc(bad)
    table = dc_table(MTProtoSettings(dcs={2: (Endpoint("127.0.0.1", 9),)}))
    assert table[2] == table[-2] == (Endpoint("127.0.0.1", 9),)
    assert table[1][0] == Endpoint("149.154.175.50", 443)
    assert table[10002] == (Endpoint("149.154.167.40", 443),)


def test_node_settings_mtproto_keys(tmp_path: Path) -> None:
    conf = tmp_path / "node.toml"
    conf.write_text(
        '[node]\nmtproto_listen = "127.0.0.1:8443"\nmtproto_domain = "Example.COM"\n'
        f'[node.mtproto_users]\nalice = "{KEY.hex()}"\nbob = {{ quota = "5GB", conns = 2 }}\n'
    )
    s = node_settings(config_file=conf, overrides={"mtproto_user": ["carol"]})
    assert s.listen == ()  # MTProto alone
    assert s.mtproto is not None and s.mtproto.domain == "example.com"
    assert [u.name for u in s.mtproto.users] == ["alice", "bob", "carol"]
    assert s.mtproto.users[1].quota_bytes == 5 * 10**9
    assert default_modes(s.mtproto) == {"ee"}
    assert default_modes(MTProtoSettings()) == {"dd"}


@pytest.mark.parametrize(
    "overrides",
    [
        {"mtproto_listen": ["127.0.0.1:1"], "mtproto_modes": "ee"},  # ee without a domain
        {"mtproto_listen": ["127.0.0.1:1"], "mtproto_modes": "dd,tls"},
        {"mtproto_listen": ["127.0.0.1:1"], "mtproto_user": ["a", "a"]},
        {"mtproto_listen": ["127.0.0.1:1"], "mtproto_user": [f"a:{KEY.hex()}", f"b:{KEY.hex()}"]},
        {"mtproto_domain": "bad domain"},
    ],
)
def test_bad_node_settings(overrides: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        node_settings(overrides=overrides)


def test_mtproto_with_workers_is_accepted() -> None:
    s = node_settings(overrides={"mtproto_listen": ["127.0.0.1:1"], "workers": 2})
    assert s.workers == 2 and s.mtproto is not None and s.mtproto.listen


def test_sizes() -> None:
    assert parse_size("10GiB") == 10 * 2**30 and parse_size("500mb") == 500 * 10**6
    assert parse_size("1e3") == 1000
    with pytest.raises(ConfigError):
        parse_size("-1")


def test_generated_secrets_are_kept(tmp_path: Path) -> None:
    first = resolve_users([MTProtoUserSpec("alice"), MTProtoUserSpec("bob", KEY)], tmp_path)
    again = resolve_users([MTProtoUserSpec("alice")], tmp_path)
    assert first[0].key == again[0].key and first[1].key == KEY
    assert (tmp_path / GENERATED_FILE).stat().st_mode & 0o777 == 0o600


def test_links() -> None:
    links = mtproto_links("203.0.113.7", 443, ProxySecret(KEY, SecretMode.EE, "example.com"))
    assert links.tg == (
        "tg://proxy?server=203.0.113.7&port=443&secret=ee" + KEY.hex() + b"example.com".hex()
    )
    assert links.https.startswith("https://t.me/proxy?server=203.0.113.7&port=443&secret=ee")


# -- user lookup ---------------------------------------------------------------------


def table(n: int) -> UserTable:
    return UserTable([MTProtoUser(f"u{i}", i.to_bytes(16, "big")) for i in range(n)])


def test_find_hello_with_and_without_hint() -> None:
    users = table(50)
    now = 1_800_000_000.0
    record = faketls.build_client_hello((37).to_bytes(16, "big"), "a.example", now)
    hello = faketls.parse_client_hello(record)
    hint = users.hint_for("198.51.100.7")
    assert users.find_hello(hello, now, hint)[0].name == "u37"
    assert users.hint_for("198.51.100.200") == hint  # the same /24
    assert users.hint_for("198.51.101.7") != hint
    assert users.hint_for("::ffff:198.51.100.9") == hint
    v6 = users.hint_for("2001:db8:1:2300::5")
    assert users.hint_for("2001:db8:1:23ff:ffff::1") == v6  # the same /56
    assert users.hint_for("2001:db8:1:2400::5") != v6
    assert next(iter(users._order(hint))).name == "u37"
    with pytest.raises(HandshakeRefused) as info:
        users.find_hello(hello, now + 1000, hint)
    assert info.value.reason == "stale"
    foreign = faketls.parse_client_hello(faketls.build_client_hello(bytes(15) + b"\xff", "a", now))
    with pytest.raises(HandshakeRefused) as info:
        users.find_hello(foreign, now)
    assert info.value.reason == "wrong_secret"


def test_find_init() -> None:
    users = table(20)
    wire, _ = obfuscated2.generate_init(obfuscated2.ProtocolTag.PADDED, 3, (5).to_bytes(16, "big"))
    user, init = users.find_init(wire)
    assert user.name == "u5" and init.dc == 3
    with pytest.raises(HandshakeRefused):
        users.find_init(obfuscated2.generate_init(obfuscated2.ProtocolTag.PADDED, 3, KEY)[0])


def test_reload_keeps_usage() -> None:
    users = table(2)
    users.users[0].used = 1234
    users.replace([MTProtoUser("u0", KEY), MTProtoUser("new", bytes(16))])
    assert users.by_name["u0"].used == 1234 and users.by_name["new"].used == 0


# -- replay cache ---------------------------------------------------------------------


def test_replay_cache_expiry_capacity_and_persistence(tmp_path: Path) -> None:
    cache = ReplayCache(capacity=3)
    assert not cache.seen(b"a" * 16, until=100, now=0)
    assert cache.seen(b"a" * 16, until=100, now=50)
    assert not cache.seen(b"a" * 16, until=400, now=150)  # its bucket ended: new again
    for c in b"bc":
        assert not cache.seen(bytes([c]) * 16, until=400, now=160)
    assert len(cache) == 3
    cache.save(tmp_path / "r.bin", now=170)
    loaded = ReplayCache()
    loaded.load(tmp_path / "r.bin", now=350)
    assert len(loaded) == 3 and loaded.seen(b"c" * 16, until=500, now=350)
    later = ReplayCache()
    later.load(tmp_path / "r.bin", now=1000)
    assert len(later) == 0
    # Over capacity the oldest bucket goes first.
    full = ReplayCache(capacity=2)
    full.seen(b"x" * 16, until=100, now=0)
    full.seen(b"y" * 16, until=200, now=0)
    full.seen(b"z" * 16, until=300, now=0)
    assert len(full) == 2 and not full.seen(b"x" * 16, until=300, now=0)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_replay_file_fuzz(data: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "r.bin"
        path.write_bytes(data)
        cache = ReplayCache(capacity=4)
        cache.load(path, now=0)
        assert len(cache) <= 4


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_parse_mtproto_user_fuzz(text: str) -> None:
    try:
        spec = parse_mtproto_user(text)
    except ConfigError:
        return
    assert spec.name and (spec.key is None or len(spec.key) == 16)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_parse_mtproto_dc_fuzz(text: str) -> None:
    try:
        dc, endpoint = parse_mtproto_dc(text)
    except ConfigError:
        return
    assert dc != 0 and 0 <= endpoint.port <= 65535


def test_scan_budget_turns_floods_away_but_not_returning_clients() -> None:
    from resistance.node.mtproto_users import ScanBudget

    users = UserTable(
        [MTProtoUser(f"u{i}", i.to_bytes(16, "big")) for i in range(300)],
        budget=ScanBudget(per_network=2, period=60.0, share=10.0),
    )
    now = 1_800_000_000.0
    prober = users.hint_for("203.0.113.9")
    reasons = []
    for _ in range(4):
        junk = faketls.build_client_hello(b"\xff" * 16, "a.example", now)
        with pytest.raises(HandshakeRefused) as info:
            users.find_hello(faketls.parse_client_hello(junk), now, prober)
        reasons.append(info.value.reason)
    assert reasons == ["wrong_secret", "wrong_secret", "scan_budget", "scan_budget"]
    # Another network still gets its scan, and once found its user needs none.
    app = users.hint_for("198.51.100.1")
    for _ in range(5):
        record = faketls.build_client_hello((250).to_bytes(16, "big"), "a.example", now)
        assert users.find_hello(faketls.parse_client_hello(record), now, app)[0].name == "u250"
    # A minute later the prober's network has budget again.
    with pytest.raises(HandshakeRefused) as info:
        junk = faketls.build_client_hello(b"\xff" * 16, "a.example", now + 61)
        users.find_hello(faketls.parse_client_hello(junk), now + 61, prober)
    assert info.value.reason == "wrong_secret"


def test_scan_budget_global_share() -> None:
    from resistance.node.mtproto_users import ScanBudget

    budget = ScanBudget(per_network=100, share=0.5)
    assert budget.allow(b"a", 10.0)
    budget.spend(0.6, 10.0)
    assert not budget.allow(b"b", 10.5)  # this second's share is used
    assert budget.allow(b"b", 11.1)
