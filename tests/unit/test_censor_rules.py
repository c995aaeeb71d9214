"""The censor's rules as text: shapes, chains, settings (pure parts, no root)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resistance.lab import censor
from resistance.lab.censorwatch import server_name_listed
from resistance.lab.errors import LabError


def _shape(ip_len: int, doff: int, third: int) -> str:
    return f"{ip_len} . {doff << 4:#x} . {third}"


def socks5_matches(ip_len: int, doff: int, count: int) -> bool:
    """Whether a segment of these lengths is in the socks5 set (its IP lengths are
    intervals, as nft reads them)."""
    for shape in censor.socks5_shapes():
        lengths, offset, n = shape.split(" . ")
        low, high = (int(x) for x in lengths.split("-"))
        if (offset, int(n)) == (f"{doff << 4:#x}", count) and low <= ip_len <= high:
            return True
    return False


@given(
    methods=st.binary(min_size=1, max_size=255), doff=st.integers(5, 15),
    tail=st.binary(max_size=300),
)  # fmt: skip
def test_a_greeting_at_the_start_of_a_segment_is_a_socks5_shape(
    methods: bytes, doff: int, tail: bytes
) -> None:
    """Bare or followed by the client's credentials and request in the same write."""
    payload = bytes([5, len(methods)]) + methods + tail
    assert socks5_matches(20 + 4 * doff + len(payload), doff, payload[1])


@given(n=st.integers(1, 255), short=st.integers(1, 2), doff=st.integers(5, 15))
def test_a_greeting_shorter_than_its_count_is_no_shape(n: int, short: int, doff: int) -> None:
    assert not socks5_matches(20 + 4 * doff + 2 + n - short, doff, n)


def test_socks5_shapes_name_no_count_zero() -> None:
    assert all(not shape.endswith(" . 0") for shape in censor.socks5_shapes())


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


def _nflog_message(*attrs: bytes) -> bytes:
    import struct

    from resistance.lab import censorwatch as cw

    body = struct.pack("BBH", 2, 0, 0x1200) + b"".join(attrs)
    kind = (cw._NFNL_SUBSYS_ULOG << 8) | cw._NFULNL_MSG_PACKET
    return struct.pack("IHHII", 16 + len(body), kind, 0, 0, 0) + body


def test_nflog_messages_give_their_packets() -> None:
    from resistance.lab import censorwatch as cw

    hwaddr = cw._attr(3, bytes(6))  # another attribute first, padded
    one = _nflog_message(hwaddr, cw._attr(cw._NFULA_PAYLOAD, b"\x45packet-one"))
    two = _nflog_message(cw._attr(cw._NFULA_PAYLOAD, b"\x45two"))
    assert cw.nflog_packets(one + two) == [b"\x45packet-one", b"\x45two"]
    assert cw.nflog_packets(one[:-3]) == []  # cut short: nothing made up
    config = cw._config(18, cw._attr(cw._NFULA_CFG_CMD, b"\x01"))
    assert cw.nflog_packets(config) == []  # not a packet message


@given(st.binary(max_size=600))
def test_any_nflog_read_gives_packets_or_nothing(data: bytes) -> None:
    from resistance.lab import censorwatch as cw

    packets = cw.nflog_packets(data)
    assert all(isinstance(p, bytes) and len(p) <= len(data) for p in packets)
    assert cw.nflog_packets(_nflog_message(cw._attr(cw._NFULA_PAYLOAD, data))) == [data]


# --- the verdict program's record of its probes (no sockets: a Watcher never opened) ---


@pytest.fixture
def watcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from resistance.lab import censorwatch as cw

    monkeypatch.setattr(censor, "CONFIG_DIR", tmp_path)
    w = cw.Watcher("unit")
    yield w
    w.pool.shutdown(wait=True)


def test_stats_written_from_many_threads_at_once_lose_no_probe_record(watcher: Any) -> None:
    """The main thread writes the stats after each verdict while probe threads write
    theirs: unserialised, they shared the temporary file (a rename found it gone, an
    exception that ended the program) and an old snapshot could overwrite a record."""
    import threading

    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def writer(n: int) -> None:
        start.wait(10)
        try:
            for i in range(40):
                with watcher.lock:
                    watcher.probes = [*watcher.probes, {"address": f"198.18.{n}.{i}"}]
                watcher.write_stats()
        except BaseException as exc:  # a thread's error, reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    written = censor.read_stats("unit")["probes"]
    assert len(written) == 6 * 40 == len(watcher.probes)


def test_a_probed_servers_record_is_written_before_its_address_is_blocked(
    watcher: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever sees the block must find the evidence (the e2e test once read the
    probes between the two and found no record: KeyError)."""
    from resistance.lab import censorwatch as cw

    monkeypatch.setattr(cw, "browser_probe", lambda *_: (False, "no HTTPS answer"))
    monkeypatch.setattr(cw, "_exchange", lambda *_: b"\x05\xff")
    seen_at_block: list[list[dict[str, Any]]] = []
    monkeypatch.setattr(
        watcher, "nft", lambda statement: seen_at_block.append(censor.read_stats("unit")["probes"])
    )
    watcher.probe("198.18.11.1", 8443, b"\x16\x03\x01", 60)
    (probes,) = seen_at_block
    assert [(p["address"], p["port"], p["verdict"]) for p in probes] == [
        ("198.18.11.1", 8443, "blocked")
    ]
    assert probes[0]["replay"] == "2 bytes: 05ff"


def test_a_probe_that_raises_is_reported_not_lost(
    watcher: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from resistance.lab import censorwatch as cw

    def broken(*_: Any) -> tuple[bool, str]:
        raise ValueError("bad certificate text")

    monkeypatch.setattr(cw, "browser_probe", broken)
    watcher.probe("198.18.11.1", 8443, b"", 60)
    assert "probing 198.18.11.1:8443 failed: ValueError: bad certificate text" in (
        capsys.readouterr().out
    )
