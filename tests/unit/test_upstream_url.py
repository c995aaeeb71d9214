"""``resist node --upstream URL``: the forms accepted, the ones refused, and fuzzing."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resistance.errors import ConfigError
from resistance.node.upstream import parse_upstream_url

PIN = "ab" * 32


def test_tls_with_a_pinned_certificate() -> None:
    up = parse_upstream_url(f"socks5s://bridge1:s3cret@203.0.113.7:443#sha256={PIN}")
    assert (up.host, up.port, up.username, up.password, up.tls_sha256) == (
        "203.0.113.7", 443, "bridge1", "s3cret", PIN,
    )  # fmt: skip


def test_the_socks5_tls_alias_with_a_pin_parameter_and_colons() -> None:
    colons = ":".join(PIN[i : i + 2].upper() for i in range(0, 64, 2))
    up = parse_upstream_url(f"socks5+tls://b:p@[2001:db8::7]:8443?pin={colons}")
    assert (up.host, up.port, up.tls_sha256) == ("2001:db8::7", 8443, PIN)


def test_plain_socks5_and_no_credentials() -> None:
    up = parse_upstream_url("socks5://exit.example:1080")
    assert (up.host, up.port, up.username, up.tls_sha256) == ("exit.example", 1080, None, None)


def test_percent_encoded_credentials() -> None:
    up = parse_upstream_url(f"socks5://{quote('b@x', safe='')}:{quote('p:/#', safe='')}@h:1")
    assert (up.username, up.password) == ("b@x", "p:/#")


@pytest.mark.parametrize(
    "url",
    [
        "socks5s://b:p@h:443",  # TLS without a pin
        f"socks5s://b:p@h:443#sha256={PIN[:-1]}",
        f"socks5s://b:p@h:443#md5={PIN}",
        f"socks5s://b:p@h:443?pin={PIN}&x=1",
        f"socks5s://b:p@h:443?pin={PIN}#sha256={'cd' * 32}",  # two different pins
        f"socks5://b:p@h:1080#sha256={PIN}",  # a pin on a plain hop
        "http://b:p@h:80",
        "socks5://b:p@h",
        "socks5://b:p@h:0",
        "socks5://b:p@h:99999",
        "socks5://b@h:1",  # a user without a password
        "socks5://b:@h:1",
        "socks5://b:p@h:1/path",
        "socks5://" + "u" * 256 + ":p@h:1",
        "",
    ],
)
def test_refused_forms(url: str) -> None:
    with pytest.raises(ConfigError):
        parse_upstream_url(url)


def test_an_error_never_repeats_the_password() -> None:
    with pytest.raises(ConfigError) as err:
        parse_upstream_url("socks5s://bridge1:TopSecret99@h:443")
    assert "TopSecret99" not in str(err.value) and "\n" not in str(err.value)


@given(st.text(max_size=300))
def test_any_text_parses_or_is_one_config_error(text: str) -> None:
    try:
        up = parse_upstream_url(text)
    except ConfigError as exc:
        assert "\n" not in str(exc)
    else:
        assert 0 < up.port < 65536 and up.host


_names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1)


@given(
    scheme=st.sampled_from(["socks5", "socks5s", "socks5+tls"]),
    user=_names.filter(lambda s: len(s.encode()) <= 255),
    password=_names.filter(lambda s: len(s.encode()) <= 255),
    host=st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z]{2,5}){0,2}", fullmatch=True),
    port=st.integers(1, 65535),
    pin=st.binary(min_size=32, max_size=32).map(bytes.hex),
)
def test_what_is_written_is_what_is_read(
    scheme: str, user: str, password: str, host: str, port: int, pin: str
) -> None:
    userinfo = f"{quote(user, safe='')}:{quote(password, safe='')}"
    tail = {"socks5": "", "socks5s": f"#sha256={pin}", "socks5+tls": f"?pin={pin}"}[scheme]
    up = parse_upstream_url(f"{scheme}://{userinfo}@{host}:{port}{tail}")
    assert (up.host, up.port, up.username, up.password) == (host, port, user, password)
    assert up.tls_sha256 == (None if scheme == "socks5" else pin)


def test_a_bridge_refuses_udp_and_bind_whatever_else_is_set() -> None:
    from resistance.config import node_settings

    url = f"socks5s://b:p@h:443#sha256={PIN}"
    settings = node_settings(overrides={"upstream": [url, "socks5://b:p@h:1080"], "udp": True})
    assert settings.upstream == (url, "socks5://b:p@h:1080")
    assert not settings.udp and not settings.bind
    assert node_settings().upstream == () and node_settings().udp
