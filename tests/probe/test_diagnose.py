"""The mechanism classifier: each verdict from the controls that tell it apart, each
near miss inconclusive, and invariants over every evidence hypothesis can make."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resistance.probe.check import Failure, Step
from resistance.probe.diagnose import (
    Attempt,
    Diagnosis,
    Evidence,
    Mechanism,
    Stage,
    diagnose,
)

OK = Attempt.passed()
NO_TCP = Attempt.stopped(Stage.TCP, Failure.TIMEOUT)
TCP_RST = Attempt.stopped(Stage.TCP, Failure.REFUSED)
HS_DROP = Attempt.stopped(Stage.HANDSHAKE, Failure.TIMEOUT)
HS_RESET = Attempt.stopped(Stage.HANDSHAKE, Failure.RESET)
HS_REFUSED = Attempt.stopped(Stage.HANDSHAKE, Failure.REFUSED)
STALL = Attempt.stopped(Stage.TRANSFER, Failure.TIMEOUT, received=16384)


def mech(**kwargs: object) -> Mechanism:
    return diagnose(Evidence(**kwargs)).mechanism  # type: ignore[arg-type]


# --- each mechanism, and the near miss that must not be named ---------------------------


def test_ok() -> None:
    assert mech(main=OK) is Mechanism.OK
    assert mech(main=OK, big_transfer=Attempt.passed(65536)) is Mechanism.OK


def test_down_when_outside_fails_too() -> None:
    for main in (NO_TCP, HS_DROP, STALL, HS_REFUSED):
        assert mech(main=main, outside=NO_TCP) is Mechanism.DOWN
    assert mech(main=NO_TCP, outside=OK, other_port=NO_TCP) is not Mechanism.DOWN


def test_blocked_ip_needs_every_port_dark_and_the_outside_view() -> None:
    assert mech(main=NO_TCP, outside=OK, other_port=NO_TCP) is Mechanism.BLOCKED_IP
    assert mech(main=TCP_RST, outside=OK, other_port=TCP_RST) is Mechanism.BLOCKED_IP
    # near misses: another port answers; no outside view; no other port tried
    assert mech(main=NO_TCP, outside=OK, other_port=OK) is Mechanism.INCONCLUSIVE
    assert mech(main=NO_TCP, outside=OK, other_port=HS_DROP) is Mechanism.INCONCLUSIVE
    assert mech(main=NO_TCP, other_port=NO_TCP) is Mechanism.INCONCLUSIVE
    assert mech(main=NO_TCP, outside=OK) is Mechanism.INCONCLUSIVE


def test_blocked_ip_stands_while_an_unlisted_control_host_is_reachable() -> None:
    assert (
        mech(main=NO_TCP, outside=OK, other_port=NO_TCP, control_host=OK, listed_host=OK)
        is Mechanism.BLOCKED_IP
    )


def test_whitelisted_out_needs_a_listed_host_up_and_an_unlisted_one_dark() -> None:
    evidence = {"main": NO_TCP, "control_host": NO_TCP, "listed_host": OK}
    assert mech(**evidence) is Mechanism.WHITELISTED_OUT
    assert mech(**evidence, outside=OK, other_port=NO_TCP) is Mechanism.WHITELISTED_OUT
    # near misses: the listed host dark too (this vantage is offline); no listed host tried
    assert mech(main=NO_TCP, control_host=NO_TCP, listed_host=NO_TCP) is Mechanism.INCONCLUSIVE
    assert mech(main=NO_TCP, control_host=NO_TCP) is Mechanism.INCONCLUSIVE


def test_probed_when_the_first_connection_worked_and_the_address_then_went_dark() -> None:
    assert mech(main=NO_TCP, other_port=NO_TCP, first_ok=True) is Mechanism.PROBED
    assert mech(main=NO_TCP, other_port=NO_TCP, outside=OK, first_ok=True) is Mechanism.PROBED
    # near misses: another port still answers; no first success
    assert mech(main=NO_TCP, other_port=OK, first_ok=True) is Mechanism.INCONCLUSIVE
    assert mech(main=NO_TCP, other_port=NO_TCP, outside=OK) is Mechanism.BLOCKED_IP


def test_probed_when_this_flow_got_through_and_the_other_port_then_went_silent() -> None:
    stopped = Attempt.stopped(Stage.TRANSFER, Failure.TIMEOUT, 200)
    assert mech(main=stopped, other_port=NO_TCP, outside=OK) is Mechanism.PROBED
    # near misses: the other port answers; it refuses (the host is up and says no); the
    # flow stalled past the freeze mark (a freeze); the handshake died (a fingerprint
    # rule, or a whitelist switched on during its timeout, not a probe)
    assert mech(main=stopped, other_port=OK, outside=OK) is Mechanism.INCONCLUSIVE
    refused = Attempt.stopped(Stage.TCP, Failure.REFUSED)
    assert mech(main=stopped, other_port=refused, outside=OK) is Mechanism.INCONCLUSIVE
    stalled = Attempt.stopped(Stage.TRANSFER, Failure.TIMEOUT, 12_000)
    assert mech(main=stalled, other_port=NO_TCP, outside=OK) is Mechanism.FROZEN
    silent = Attempt.stopped(Stage.HANDSHAKE, Failure.TIMEOUT)
    assert mech(main=silent, other_port=NO_TCP, outside=OK) is not Mechanism.PROBED


def test_blocked_sni_when_a_benign_name_goes_through() -> None:
    assert mech(main=HS_DROP, tls=True, benign_sni=OK) is Mechanism.BLOCKED_SNI
    assert mech(main=HS_RESET, tls=True, benign_sni=OK, outside=OK) is Mechanism.BLOCKED_SNI
    # near misses: not TLS; the benign name dies too (the hello itself is caught)
    assert mech(main=HS_DROP, tls=False, benign_sni=OK) is Mechanism.INCONCLUSIVE
    assert mech(main=HS_DROP, tls=True, benign_sni=HS_DROP) is Mechanism.BLOCKED_FINGERPRINT


def test_blocked_fingerprint_from_the_control_host_or_outside() -> None:
    assert mech(main=HS_DROP, control_host=HS_DROP) is Mechanism.BLOCKED_FINGERPRINT
    assert mech(main=HS_RESET, control_host=HS_RESET) is Mechanism.BLOCKED_FINGERPRINT
    assert mech(main=HS_DROP, outside=OK) is Mechanism.BLOCKED_FINGERPRINT
    # near misses: the protocol works to the control host; a TLS block without the SNI
    # control; a proxy that refused (not a censor's silence)
    assert mech(main=HS_DROP, control_host=OK, outside=OK) is Mechanism.INCONCLUSIVE
    assert mech(main=HS_DROP, tls=True, outside=OK) is Mechanism.INCONCLUSIVE
    assert mech(main=HS_REFUSED, control_host=HS_DROP, outside=OK) is Mechanism.INCONCLUSIVE
    assert mech(main=HS_DROP, control_host=NO_TCP) is Mechanism.INCONCLUSIVE


def test_a_tls_hello_without_a_server_name_can_only_be_a_fingerprint() -> None:
    assert mech(main=HS_DROP, tls=True, sni_sent=False, outside=OK) is Mechanism.BLOCKED_FINGERPRINT
    assert mech(main=HS_DROP, tls=True, sni_sent=False, benign_sni=OK) is Mechanism.INCONCLUSIVE
    assert mech(main=HS_DROP, tls=True, sni_sent=False) is Mechanism.INCONCLUSIVE


def test_frozen_names_the_byte_count() -> None:
    found = diagnose(Evidence(main=STALL, outside=OK))
    assert (found.mechanism, found.frozen_at) == (Mechanism.FROZEN, 16384)
    big = Attempt.stopped(Stage.TRANSFER, Failure.TIMEOUT, received=15000)
    found = diagnose(Evidence(main=OK, big_transfer=big))
    assert (found.mechanism, found.frozen_at) == (Mechanism.FROZEN, 15000)
    assert "15000 bytes" in str(found)
    # near misses: a reset mid-transfer is not a freeze; nothing received is not a freeze;
    # a stall from outside too is the server
    reset = Attempt.stopped(Stage.TRANSFER, Failure.RESET, received=16384)
    assert mech(main=reset, outside=OK) is Mechanism.INCONCLUSIVE
    assert mech(main=Attempt.stopped(Stage.TRANSFER, Failure.TIMEOUT)) is Mechanism.INCONCLUSIVE
    assert mech(main=OK, big_transfer=big, outside_big_transfer=big) is Mechanism.INCONCLUSIVE


def test_attempt_from_a_check_step() -> None:
    assert Attempt.from_step(None, None) == OK
    assert Attempt.from_step(Step.TCP, Failure.TIMEOUT).stage is Stage.TCP
    assert Attempt.from_step(Step.GREETING, Failure.RESET).stage is Stage.HANDSHAKE
    assert Attempt.from_step(Step.HANDSHAKE, Failure.TIMEOUT).stage is Stage.HANDSHAKE
    assert Attempt.from_step(Step.TRANSFER, Failure.TIMEOUT, 9).received == 9


def test_inconsistent_attempts_are_refused() -> None:
    with pytest.raises(ValueError):
        Attempt(True, Stage.TCP)
    with pytest.raises(ValueError):
        Attempt(False, None)
    with pytest.raises(ValueError):
        Attempt(True, None, Failure.TIMEOUT)
    with pytest.raises(ValueError):
        Attempt(True, received=-1)


# --- invariants over every evidence ------------------------------------------------------

failures = st.sampled_from(list(Failure))
attempts = st.one_of(
    st.builds(Attempt.passed, st.integers(0, 1 << 20)),
    st.builds(Attempt.stopped, st.sampled_from(list(Stage)), failures, st.integers(0, 1 << 20)),
)
maybe = st.one_of(st.none(), attempts)
evidences = st.builds(
    Evidence,
    main=attempts,
    tls=st.booleans(),
    sni_sent=st.booleans(),
    outside=maybe,
    other_port=maybe,
    control_host=maybe,
    benign_sni=maybe,
    big_transfer=maybe,
    outside_big_transfer=maybe,
    listed_host=maybe,
    first_ok=st.booleans(),
)


@given(evidences)
def test_every_verdict_is_backed_by_its_controls(e: Evidence) -> None:
    d = diagnose(e)
    assert isinstance(d, Diagnosis) and d.reason
    assert (d.frozen_at is not None) == (d.mechanism is Mechanism.FROZEN)
    if d.mechanism is Mechanism.OK:
        assert e.main.ok
    if not e.main.ok:
        assert d.mechanism is not Mechanism.OK
    if d.mechanism is Mechanism.DOWN:
        assert e.outside is not None and not e.outside.ok and not e.main.ok
    if d.mechanism is Mechanism.FROZEN:
        stalled = [a for a in (e.main, e.big_transfer) if a is not None and a.stalled]
        assert d.frozen_at in {a.received for a in stalled} and d.frozen_at > 0
    if d.mechanism is Mechanism.BLOCKED_IP:
        assert not e.main.got_tcp and e.outside is not None and e.outside.ok
        assert e.other_port is not None and not e.other_port.got_tcp
    if d.mechanism is Mechanism.PROBED:  # dark during this check, after its own flow
        assert e.other_port is not None and not e.other_port.got_tcp
        if e.main.got_tcp:
            assert e.main.stage is Stage.TRANSFER and e.main.censor_like
            assert e.other_port.censor_like and not e.main.stalled
        else:
            assert e.first_ok
    if d.mechanism is Mechanism.WHITELISTED_OUT:
        assert e.listed_host is not None and e.listed_host.got_tcp
        assert e.control_host is not None and not e.control_host.got_tcp
    if d.mechanism is Mechanism.BLOCKED_SNI:
        assert e.tls and e.sni_sent and e.benign_sni is not None and e.benign_sni.ok
        assert e.main.stage is Stage.HANDSHAKE
    if d.mechanism is Mechanism.BLOCKED_FINGERPRINT:
        assert e.main.stage is Stage.HANDSHAKE and e.main.censor_like
        assert e.outside is None or e.outside.ok


@given(evidences)
def test_evidence_survives_its_json_form(e: Evidence) -> None:
    assert Evidence.from_json(e.to_json()) == e
    assert diagnose(Evidence.from_json(e.to_json())) == diagnose(e)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.sampled_from(["main", "tls", "ok", "stage", "failure",
                                                       "received", "outside", "first_ok", "x"]),
                                      inner, max_size=5),
                    max_leaves=12))  # fmt: skip
def test_parsing_anything_gives_evidence_or_value_error(raw: object) -> None:
    try:
        Evidence.from_json(raw)
    except ValueError:
        pass
