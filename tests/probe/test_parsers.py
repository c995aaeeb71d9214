"""Every parser the probe work added, three ways and fuzzed: censor dumps, prefix lists,
signed batch documents; plus the verdict state machine."""

from __future__ import annotations

import ipaddress
import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from resistance.directory.keys import public_key_text
from resistance.probe.batch import BatchError, new_batch_id, parse_batch, sign_batch
from resistance.probe.verdict import ProbeEvidence, Rules, Status, Verdict, evaluate, observe
from resistance.registry.blocklist import (
    ParseReport,
    PrefixError,
    PrefixSet,
    parse_blocklist,
    parse_dump,
    parse_list,
    parse_prefix,
)

DUMP = """Updated: 2018-04-17 12:00:00 +0000
149.154.160.0/20 | 91.108.4.0/22;telegram.org;https://telegram.org;;27-31-2018/Ид2971-18;2018-04-16
1.2.3.4;пример.рф;http://пример.рф/;Роскомнадзор;2-1234;2018-04-17
;only-a-domain.example;;;5-6;2018-04-17
999.1.1.1 | 5.6.7.8;bad.example;;;1;2018-04-17
this line has no separators
2001:db8::/32 | 10.0.0.1;v6.example;;;7;2018-04-17
"""


@pytest.mark.parametrize("encoding", ["utf-8", "cp1251"])
def test_dump_in_both_encodings_keeps_good_lines_and_reports_bad_ones(
    encoding: str, tmp_path: Path
) -> None:
    sample = tmp_path / f"dump-{encoding}.csv"
    sample.write_bytes(DUMP.encode(encoding))
    ranges, report = parse_blocklist(sample.read_bytes())
    assert report.kind == "rkn-dump" and report.updated == "2018-04-17 12:00:00 +0000"
    assert report.prefixes == 5 and report.skipped == 2
    assert [line for line, _ in report.problems] == [5, 6]
    blocked = PrefixSet(ranges)
    for address in ("149.154.167.51", "91.108.4.1", "1.2.3.4", "2001:db8::1", "10.0.0.1"):
        assert address in blocked, address
    # the bad line is skipped whole: its good address is not half-imported
    for address in ("5.6.7.8", "1.2.3.5", "8.8.8.8", "2001:db9::1", "not an address"):
        assert address not in blocked, address


def test_plain_prefix_list() -> None:
    text = "# antifilter\n149.154.160.0/20\n\n 91.108.56.0/22 \n1.2.3.4\nbogus/99\n2a0a::/16\n"
    ranges, report = parse_blocklist(text.encode())
    assert report.kind == "prefix-list" and report.prefixes == 4 and report.skipped == 1
    assert report.problems[0][0] == 6
    assert "149.154.175.255" in PrefixSet(ranges) and "149.154.176.0" not in PrefixSet(ranges)


@pytest.mark.parametrize("how", ["whole", "line by line", "trailing junk"])
def test_dump_parses_the_same_whole_line_by_line_and_with_trailing_bytes(how: str) -> None:
    expected = list(parse_dump(DUMP, ParseReport("rkn-dump")))
    lines = DUMP.splitlines(keepends=True)
    report = ParseReport("rkn-dump")
    if how == "whole":
        got = list(parse_dump(DUMP, report))
    elif how == "line by line":
        got = [r for i, line in enumerate(lines) for r in parse_dump(("\n" * i) + line, report)]
    else:
        got = list(parse_dump(DUMP + "\x00\xff garbage", report))
    assert got == expected


networks = st.one_of(
    st.builds(
        lambda a, n: ipaddress.IPv4Network((a, n), strict=False),
        st.integers(0, 2**32 - 1),
        st.integers(0, 32),
    ),
    st.builds(
        lambda a, n: ipaddress.IPv6Network((a, n), strict=False),
        st.integers(0, 2**128 - 1),
        st.integers(0, 128),
    ),
)


@given(st.lists(networks, max_size=20), st.lists(st.integers(0, 2**32 - 1), max_size=20))
def test_prefix_set_agrees_with_ipaddress(
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network], probes: list[int]
) -> None:
    blocked = PrefixSet(parse_prefix(str(n)) for n in nets)
    candidates = [str(ipaddress.IPv4Address(p)) for p in probes]
    candidates += [str(n.network_address) for n in nets] + [str(n.broadcast_address) for n in nets]
    for address in candidates:
        ip = ipaddress.ip_address(address)
        assert (address in blocked) == any(ip in n for n in nets if n.version == ip.version)


@given(st.text(max_size=80))
def test_prefix_parser_fuzz(text: str) -> None:
    try:
        first, last = parse_prefix(text)
    except PrefixError:
        return
    assert 0 <= first <= last < 2**129


@given(st.binary(max_size=400))
def test_blocklist_parser_fuzz_never_loses_or_crashes(data: bytes) -> None:
    ranges, report = parse_blocklist(data)
    assert report.skipped == len(report.problems) or len(report.problems) == 1000
    assert all(0 <= a <= b < 2**129 for a, b in ranges)


@given(
    st.lists(st.sampled_from(["1.2.3.0/24", "10.0.0.1", "x", "::1", "1.2.3.4/33", ""]), max_size=30)
)
def test_prefix_list_counts_add_up(lines: list[str]) -> None:
    report = ParseReport("prefix-list")
    parsed = list(parse_list("\n".join(lines), report))
    assert (
        len(parsed)
        == report.prefixes
        == sum(1 for x in lines if x in ("1.2.3.0/24", "10.0.0.1", "::1"))
    )
    assert report.skipped == sum(1 for x in lines if x in ("x", "1.2.3.4/33"))


# --- signed batch documents -----------------------------------------------------------

KEY = Ed25519PrivateKey.generate()
RESULT = {
    "proxy_id": 3, "at": 1_700_000_000, "ok": False, "step": "connect", "failure": "refused",
    "detail": "proxy answered NOT_ALLOWED", "tcp_us": 10, "connect_us": None, "ttfb_us": None,
    "throughput_kbps": None, "canary": None,
}  # fmt: skip


def signed(results: list[dict[str, object]] | None = None) -> bytes:
    return sign_batch(
        key=KEY, probe_key=public_key_text(KEY.public_key()), batch_id=new_batch_id(),
        vantage="msk-1", country="RU", created_at=int(time.time()), results=results or [RESULT],
    )  # fmt: skip


def test_batch_round_trip() -> None:
    batch = parse_batch(signed())
    assert batch.vantage == "msk-1" and batch.results[0].failure == "refused"
    pretty = json.dumps(json.loads(signed()), indent=2).encode()  # whitespace is not signed
    assert parse_batch(pretty).results[0].proxy_id == 3


@given(st.text(max_size=40))
def test_a_batch_file_is_rebuilt_byte_for_byte_from_its_checked_document(detail: str) -> None:
    """The registry stores the file from the document's canonical bytes made for the
    signature check (not encoded twice): the same bytes as encoding the whole file."""
    from resistance.directory.canonical import CanonicalError, canonical_bytes

    try:
        canonical_bytes(detail)
    except CanonicalError:  # a lone surrogate: no batch can carry it
        return
    data = signed([{**RESULT, "detail": detail}])
    outer = json.loads(data)
    batch = parse_batch(data)
    assert batch.file_bytes(outer["signature"]) == canonical_bytes(outer) == data


@given(st.binary(max_size=300))
def test_batch_parser_fuzz_bytes(data: bytes) -> None:
    try:
        parse_batch(data)
    except BatchError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=10) | st.floats(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(st.sampled_from(sorted(RESULT)), json_values)
def test_batch_parser_fuzz_fields(name: str, value: object) -> None:
    """Any value in any result field: parsed and re-checked, or a BatchError; never a crash."""
    outer = json.loads(signed())
    outer["document"]["results"][0][name] = value
    try:
        data = json.dumps(outer).encode()
    except ValueError:
        return
    try:
        parse_batch(data)
    except BatchError:
        return
    assert value == RESULT[name]  # anything else breaks the signature


# --- verdicts -------------------------------------------------------------------------

RULES = Rules(window_seconds=60, min_probes=2, min_windows=2, down_after=2)


def run(events: list[tuple[int, str, bool, int, bool]]) -> list[Status]:
    """(probe, country, control, at, ok) in order; the status after each."""
    evidence: dict[int, ProbeEvidence] = {}
    status, seen = Status(Verdict.UNTESTED), []
    for probe, country, control, at, ok in events:
        before = evidence.get(probe, ProbeEvidence(probe, country, control))
        evidence[probe] = observe(before, at=at, ok=ok, rules=RULES)
        status = evaluate(status, evidence.values(), now=at, rules=RULES)
        seen.append(status)
    return seen


def test_verdicts_functional_down_back() -> None:
    seen = run([(1, "NL", True, 0, True), (1, "NL", True, 60, False), (1, "NL", True, 120, False),
                (1, "NL", True, 180, True)])  # fmt: skip
    assert [s.verdict for s in seen] == ["functional", "functional", "down", "functional"]


def test_blocked_needs_two_probes_and_two_windows() -> None:
    one_probe = run([(1, "NL", True, 0, True), (2, "RU", False, 0, False),
                     (2, "RU", False, 61, False), (1, "NL", True, 62, True)])  # fmt: skip
    assert one_probe[-1].verdict is Verdict.FUNCTIONAL
    one_window = run(
        [(1, "NL", True, 0, True), (2, "RU", False, 1, False), (3, "RU", False, 2, False)]
    )
    assert one_window[-1].verdict is Verdict.FUNCTIONAL
    blocked = run(
        [(1, "NL", True, 0, True), (2, "RU", False, 1, False), (3, "RU", False, 61, False)]
    )
    assert blocked[-1] == Status(Verdict.BLOCKED, ("RU",)) and str(blocked[-1]) == "blocked:RU"
    back = run([(1, "NL", True, 0, True), (2, "RU", False, 1, False), (3, "RU", False, 61, False),
                (2, "RU", False, 62, True)])  # fmt: skip
    assert back[-1].verdict is Verdict.FUNCTIONAL


def test_late_results_do_not_rewind_evidence() -> None:
    e = observe(ProbeEvidence(1, "NL", True), at=100, ok=True, rules=RULES)
    assert observe(e, at=50, ok=False, rules=RULES) == e


@given(st.lists(st.tuples(st.integers(1, 4), st.integers(0, 600), st.booleans()), max_size=40))
def test_verdict_machine_invariants(events: list[tuple[int, int, bool]]) -> None:
    countries = {1: ("NL", True), 2: ("RU", False), 3: ("RU", False), 4: ("IR", False)}
    seen = run([(p, *countries[p], at, ok) for p, at, ok in sorted(events, key=lambda e: e[1])])
    for status in seen:
        assert (status.verdict is Verdict.BLOCKED) == bool(status.blocked_in)
        assert set(status.blocked_in) <= {"RU", "IR"}
