"""The censor's rules as text: shapes, chains, settings (pure parts, no root)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resistance.lab import censor
from resistance.lab.censorwatch import server_name_listed
from resistance.lab.errors import LabError


def _shape(ip_len: int, doff: int, third: int) -> str:
    return f"{ip_len} . {doff << 4:#x} . {third}"


@given(methods=st.binary(min_size=1, max_size=255), doff=st.integers(5, 15))
def test_every_greeting_segment_is_a_socks5_shape(methods: bytes, doff: int) -> None:
    payload = bytes([5, len(methods)]) + methods
    ip_len = 20 + 4 * doff + len(payload)
    assert _shape(ip_len, doff, payload[1]) in set(censor.socks5_shapes())


@given(
    n=st.integers(1, 255), extra=st.integers(-2, 2).filter(lambda e: e != 0),
    doff=st.integers(5, 15),
)  # fmt: skip
def test_a_greeting_with_another_length_is_no_shape(n: int, extra: int, doff: int) -> None:
    ip_len = 20 + 4 * doff + 2 + n + extra
    assert _shape(ip_len, doff, n) not in set(censor.socks5_shapes())


@given(body=st.integers(14, 1299), doff=st.integers(5, 15))
def test_openvpn_tcp_shapes_agree_with_the_length_prefix(body: int, doff: int) -> None:
    shapes = set(censor.openvpn_tcp_shapes())
    assert _shape(20 + 4 * doff + 2 + body, doff, body) in shapes
    assert _shape(20 + 4 * doff + 2 + body + 1, doff, body) not in shapes


def test_forward_chain_jumps_in_rule_order_and_holds_hellos_only_when_watched() -> None:
    text = censor.forward_chain(["freeze", "socks5", "ip"])
    jumps = [line.split()[-1] for line in text.splitlines() if "jump" in line]
    assert jumps == ["rule_ip", "rule_socks5", "rule_freeze"]
    watched = censor.forward_chain(["sni", "ip"])
    assert "jump hold" in watched and watched.index("rule_sni") < watched.index("jump hold")
    assert text.rstrip().endswith(f"ct mark set ct mark | {censor.SEEN:#x}")


def test_freeze_chain_carries_its_limit() -> None:
    assert "ct reply bytes > 20000" in censor.freeze_chain(20000)


def test_all_and_unknown_rules() -> None:
    assert censor.expand(["all"]) == list(censor.RULES)
    assert censor.expand(["sni", "sni", "ip"]) == ["sni", "ip"]
    with pytest.raises(LabError, match="no censor rule 'tor'"):
        censor.expand(["tor"])


def test_configure_adds_replaces_and_refuses_bad_values_whole() -> None:
    s = censor.Settings(sni=["a.example"])
    s2 = censor.configure(s, sni=["B.example."], freeze_bytes=100)
    assert s2.sni == ["a.example", "b.example"] and s2.freeze_bytes == 100
    assert s.sni == ["a.example"]  # the old settings are untouched
    assert censor.configure(s2, sni=["c.example"], replace=True).sni == ["c.example"]
    for bad in (
        {"sni": ["ok.example", "bad name"]},
        {"fingerprints": ["nothex"]},
        {"freeze_prefixes": ["10.0.0.0/33"]},
        {"whitelist": ["2001:db8::/32"]},
        {"freeze_bytes": 0},
    ):
        with pytest.raises(LabError):
            censor.configure(s, **bad)  # type: ignore[arg-type]


def test_fingerprint_forms() -> None:
    ja4 = "t13i181000_85036bcba153_d41ae481755e"
    ja3 = "93c7d42c0df602fb91589311534831f5"
    assert censor.configure(censor.Settings(), fingerprints=[ja4, ja3.upper()]).fingerprints == [
        ja4,
        ja3,
    ]


def test_server_names_match_the_domain_and_below_only() -> None:
    listed = ["blocked.example"]
    assert server_name_listed("blocked.example", listed)
    assert server_name_listed("www.blocked.example", listed)
    assert not server_name_listed("notblocked.example", listed)
    assert not server_name_listed("blocked.example.org", listed)
    assert not server_name_listed(None, listed)
