"""Settings parsers: every input gives a value or one ConfigError, never anything else."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resistance.config import Endpoint, node_settings, parse_endpoint, parse_user
from resistance.errors import ConfigError
from resistance.links import parse_socks_url, socks_links


@pytest.mark.parametrize(
    "text, expected",
    [
        ("127.0.0.1:1080", Endpoint("127.0.0.1", 1080)),
        ("[::1]:1080", Endpoint("::1", 1080)),
        ("[::]:0", Endpoint("::", 0)),
        ("localhost:65535", Endpoint("localhost", 65535)),
        (" 0.0.0.0:1 ", Endpoint("0.0.0.0", 1)),
    ],
)
def test_endpoints(text: str, expected: Endpoint) -> None:
    assert parse_endpoint(text) == expected
    assert parse_endpoint(str(expected)) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        ":80",
        "host",
        "host:",
        "host:x",
        "host:65536",
        "::1:80",
        "[::1]80",
        "[nothost]:80",
        "[::1",
    ],
)
def test_bad_endpoints(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_endpoint(text)


def test_default_port() -> None:
    assert parse_endpoint("example.org", default_port=443) == Endpoint("example.org", 443)
    assert parse_endpoint("[2001:db8::1]", default_port=1) == Endpoint("2001:db8::1", 1)


@given(st.text(max_size=80))
def test_parse_endpoint_never_fails_otherwise(text: str) -> None:
    try:
        endpoint = parse_endpoint(text)
    except ConfigError:
        return
    assert 0 <= endpoint.port <= 65535
    assert parse_endpoint(str(endpoint)) == endpoint


@given(st.text(max_size=600))
def test_parse_user_never_fails_otherwise(text: str) -> None:
    try:
        name, password = parse_user(text)
    except ConfigError:
        return
    assert f"{name}:{password}" == text


def test_users_keep_colons_and_limits() -> None:
    assert parse_user("a:b:c") == ("a", "b:c")
    with pytest.raises(ConfigError):
        parse_user("a:" + "x" * 256)


@given(st.text(max_size=120))
def test_parse_socks_url_never_fails_otherwise(text: str) -> None:
    try:
        proxy = parse_socks_url(text)
    except ConfigError:
        return
    assert proxy.scheme in ("socks5", "socks5h", "socks5s")
    assert 0 <= proxy.port <= 65535


def test_socks_url_and_links_round_trip() -> None:
    proxy = parse_socks_url("socks5://al%3Aice:p%40ss@[2001:db8::1]:1080")
    assert (proxy.host, proxy.port, proxy.username, proxy.password) == (
        "2001:db8::1",
        1080,
        "al:ice",
        "p@ss",
    )
    links = socks_links(proxy.host, proxy.port, proxy.username, proxy.password)
    assert links.tg == "tg://socks?server=2001%3Adb8%3A%3A1&port=1080&user=al%3Aice&pass=p%40ss"
    assert links.https.startswith("https://t.me/socks?server=")
    bare = socks_links("198.51.100.7", 443)
    assert bare.tg == "tg://socks?server=198.51.100.7&port=443"


def test_flags_override_the_file(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        'listen = ["127.0.0.1:1"]\nallow = "10.0.0.0/8"\n'
        '[users]\na = "1"\n[limits]\nidle_timeout = 5\n'
    )
    settings = node_settings(
        config_file=config,
        overrides={"listen": ["[::1]:2"], "users": {"b": "2"}, "idle_timeout": 7.5, "allow": None},
    )
    assert settings.listen == (Endpoint("::1", 2),)
    assert dict(settings.users) == {"a": "1", "b": "2"}
    assert settings.limits.idle_timeout == 7.5
    assert settings.allow == ("10.0.0.0/8",)
    assert settings.limits.max_connections == 20000  # untouched defaults stay


def test_node_section_is_accepted(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[node]\nrelay = "copy"\nudp = false\n')
    settings = node_settings(config_file=config)
    assert settings.relay == "copy" and settings.udp is False
    config.write_text('[node]\nrelay = "magic"\n')
    with pytest.raises(ConfigError, match="relay"):
        node_settings(config_file=config)


@pytest.mark.parametrize("value", [0, -1, 257, 1.5, True, "2"])
def test_bad_worker_counts_are_refused(value: object, tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(f"workers = {value!r}\n".replace("True", "true").replace("'", '"'))
    with pytest.raises(ConfigError, match="workers"):
        node_settings(config_file=config)


def test_workers_split_the_connection_limits() -> None:
    from resistance.node.workers import worker_settings

    settings = node_settings(
        overrides={"workers": 3, "max_connections": 1000, "max_connections_per_ip": 10}
    )
    assert settings.workers == 3
    share = worker_settings(settings)
    assert (share.limits.max_connections, share.limits.max_connections_per_ip) == (334, 4)
    assert share.limits.handshake_timeout == settings.limits.handshake_timeout


def test_a_bridges_warm_connections_are_configurable(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("[node]\n")
    assert node_settings(config_file=config).upstream_warm == 2
    config.write_text("[node]\nupstream_warm = 0\n")
    assert node_settings(config_file=config).upstream_warm == 0
    for bad in ("-1", "17", "1.5", "true", '"2"'):
        config.write_text(f"[node]\nupstream_warm = {bad}\n")
        with pytest.raises(ConfigError, match="upstream_warm"):
            node_settings(config_file=config)
