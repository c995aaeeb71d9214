"""Telegram's MTProto proxy links: every input parses or gives one ConfigError."""

from __future__ import annotations

import base64
from pathlib import Path
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from resistance.cli import main
from resistance.errors import ConfigError
from resistance.links import (
    MTProtoSecret,
    mtproto_links,
    parse_mtproto_link,
    parse_mtproto_secret,
    telegram_links_for,
)

KEY = bytes(range(16))
EE = "ee" + KEY.hex() + b"example.com".hex()


@pytest.mark.parametrize(
    "text, mode, domain",
    [
        (KEY.hex(), "classic", None),
        (KEY.hex().upper(), "classic", None),
        ("dd" + KEY.hex(), "dd", None),
        (EE, "ee", "example.com"),
        # mtg prints secrets as unpadded base64url; the apps take that too.
        (base64.urlsafe_b64encode(bytes.fromhex(EE)).decode().rstrip("="), "ee", "example.com"),
    ],
)
def test_secret_forms(text: str, mode: str, domain: str | None) -> None:
    secret = parse_mtproto_secret(text)
    assert (secret.mode, secret.key, secret.domain) == (mode, KEY, domain)
    assert parse_mtproto_secret(secret.hex) == secret


@pytest.mark.parametrize(
    "text",
    [
        "",
        KEY.hex()[:-2],  # 15 bytes
        "dd" + KEY.hex() + "00",  # dd with a tail
        "ee" + KEY.hex(),  # fake-TLS without a domain
        "ee" + KEY.hex() + b"bad domain".hex(),
        "ee" + KEY.hex() + "ff00",  # domain not ASCII
        "ab" + KEY.hex(),  # 17 bytes, unknown prefix
        "zz" * 16,
        "ee" + KEY.hex() + b"a".hex() * 300,  # longer than any host name
    ],
)
def test_bad_secrets(text: str) -> None:
    with pytest.raises(ConfigError, match="MTProto secret"):
        parse_mtproto_secret(text)


def test_links_carry_server_port_and_hex_secret() -> None:
    links = mtproto_links("[2001:db8::1]", 443, parse_mtproto_secret(EE))
    assert links.tg == f"tg://proxy?server=2001%3Adb8%3A%3A1&port=443&secret={EE}"
    assert links.https == f"https://t.me/proxy?server=2001%3Adb8%3A%3A1&port=443&secret={EE}"


@pytest.mark.parametrize(
    "text",
    [
        f"tg://proxy?server=198.51.100.7&port=443&secret={EE}",
        f"https://t.me/proxy?secret={EE}&port=443&server=198.51.100.7",
        f"http://telegram.me/proxy/?server=198.51.100.7&port=443&secret={EE}",
        f"mtproto://{EE}@198.51.100.7:443",
    ],
)
def test_every_link_form_gives_the_same_proxy(text: str) -> None:
    proxy = parse_mtproto_link(text)
    assert (proxy.host, proxy.port, proxy.secret.hex) == ("198.51.100.7", 443, EE)


@pytest.mark.parametrize(
    "text",
    [
        f"tg://socks?server=198.51.100.7&port=443&secret={EE}",
        f"tg://proxy?server=198.51.100.7&port=443&secret={EE}&secret={EE}",
        f"tg://proxy?server=198.51.100.7&secret={EE}",
        f"tg://proxy?server=&port=443&secret={EE}",
        f"tg://proxy?server=198.51.100.7&port=0&secret={EE}",
        f"tg://proxy?server=198.51.100.7&port=70000&secret={EE}",
        f"tg://proxy?server=198.51.100.7&port=%D9%A1&secret={EE}",  # Arabic-Indic digit
        f"https://evil.example/proxy?server=198.51.100.7&port=443&secret={EE}",
        f"mtproto://198.51.100.7:443?secret={EE}",
        "mtproto://00@198.51.100.7:443",
    ],
)
def test_bad_links(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_mtproto_link(text)


secrets = (
    st.builds(
        MTProtoSecret,
        mode=st.just("classic"),
        key=st.binary(min_size=16, max_size=16),
    )
    | st.builds(MTProtoSecret, mode=st.just("dd"), key=st.binary(min_size=16, max_size=16))
    | st.builds(
        MTProtoSecret,
        mode=st.just("ee"),
        key=st.binary(min_size=16, max_size=16),
        domain=st.from_regex(
            r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z]{2,10}){0,3}", fullmatch=True
        ),
    )
)
hosts = st.ip_addresses().map(str) | st.from_regex(r"[a-z][a-z0-9.-]{0,40}", fullmatch=True)


@given(host=hosts, port=st.integers(1, 65535), secret=secrets)
def test_links_round_trip(host: str, port: int, secret: MTProtoSecret) -> None:
    links = mtproto_links(host, port, secret)
    netloc = f"[{host}]" if ":" in host else host
    for text in (links.tg, links.https, f"mtproto://{secret.hex}@{netloc}:{port}"):
        proxy = parse_mtproto_link(text)
        assert (proxy.host, proxy.port, proxy.secret) == (host, port, secret)


@given(st.text(max_size=300))
def test_any_text_parses_or_is_refused(text: str) -> None:
    for candidate in (text, "tg://proxy?" + text, "mtproto://" + text, "tg://proxy?" + quote(text)):
        try:
            proxy = parse_mtproto_link(candidate)
        except ConfigError:
            continue
        assert 0 < proxy.port < 65536
        assert proxy.secret.mode in ("classic", "dd", "ee")
        assert len(proxy.secret.key) == 16


@given(st.text(max_size=600) | st.binary(max_size=300).map(bytes.hex))
def test_any_secret_parses_or_is_refused(text: str) -> None:
    try:
        secret = parse_mtproto_secret(text)
    except ConfigError:
        return
    assert parse_mtproto_secret(secret.hex) == secret


def test_resist_link_prints_both_mtproto_links_and_a_qr(tmp_path: Path) -> None:
    runner = CliRunner()
    qr_file = tmp_path / "qr.svg"
    result = runner.invoke(
        main, ["link", f"mtproto://{EE}@203.0.113.7:443", "--qr", "--qr-file", str(qr_file)]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"tg://proxy?server=203.0.113.7&port=443&secret={EE}"
    assert lines[1] == f"https://t.me/proxy?server=203.0.113.7&port=443&secret={EE}"
    assert "█" in result.output or "▀" in result.output
    assert qr_file.read_text().lstrip().startswith("<?xml")
    again = runner.invoke(main, ["link", lines[1]])
    assert again.output.splitlines() == lines[:2]


def test_resist_link_refuses_a_bad_secret_in_one_line() -> None:
    result = CliRunner().invoke(main, ["link", "tg://proxy?server=h&port=443&secret=00"])
    assert result.exit_code != 0
    assert len(result.output.strip().splitlines()) == 1
    assert "MTProto secret" in result.output


def test_socks_urls_still_work() -> None:
    links = telegram_links_for("socks5://a:b@198.51.100.7:1080")
    assert links.tg == "tg://socks?server=198.51.100.7&port=1080&user=a&pass=b"
