"""Verdicts are votes of the probes of each vantage network: a lying probe is outvoted.

Pure tests of :func:`resistance.probe.verdict.evaluate` and
:func:`~resistance.probe.verdict.disagreement`: the two liars of issue 25
(one inside probe that always says "blocked", one that always says "ok"),
a lying control, and properties over random fleets.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from resistance.probe.verdict import (
    ProbeEvidence,
    Rules,
    Status,
    Verdict,
    disagreement,
    evaluate,
    observe,
)

RULES = Rules(window_seconds=60, min_probes=2, min_windows=2, down_after=2)
#: probe id -> (country, control)
FLEET = {1: ("NL", True), 2: ("DE", True), 3: ("SE", True),
         11: ("RU", False), 12: ("RU", False), 13: ("RU", False), 14: ("RU", False)}  # fmt: skip


def rounds(says: dict[int, bool], *, count: int = 3) -> dict[int, ProbeEvidence]:
    """Evidence after ``count`` rounds, one per verdict window, each probe saying the same."""
    evidence = {p: ProbeEvidence(p, *FLEET[p]) for p in says}
    for n in range(count):
        for p, ok in says.items():
            evidence[p] = observe(evidence[p], at=n * 60 + p, ok=ok, rules=RULES)
    return evidence


def verdict(says: dict[int, bool]) -> Status:
    evidence = rounds(says)
    now = max(e.last_at for e in evidence.values())
    return evaluate(Status(Verdict.FUNCTIONAL), evidence.values(), now=now, rules=RULES)


CONTROLS_UP = {1: True, 2: True, 3: True}


def test_an_inside_probe_that_always_says_blocked_does_not_block() -> None:
    liar = {14: False}
    assert verdict({**CONTROLS_UP, 11: True, 12: True, 13: True, **liar}) == Status(
        Verdict.FUNCTIONAL
    )
    # Even against a single honest peer it is not enough (min_probes, and a tie).
    assert verdict({**CONTROLS_UP, 11: True, **liar}).verdict is Verdict.FUNCTIONAL


def test_an_inside_probe_that_always_says_ok_does_not_hide_a_block() -> None:
    liar = {14: True}
    blocked = verdict({**CONTROLS_UP, 11: False, 12: False, 13: False, **liar})
    assert blocked == Status(Verdict.BLOCKED, ("RU",))
    assert verdict({**CONTROLS_UP, 11: False, 12: False, **liar}) == blocked


def test_both_liars_at_once_are_outvoted_either_way() -> None:
    liars = {13: False, 14: True}
    assert verdict({**CONTROLS_UP, 11: True, 12: True, **liars}).verdict is Verdict.FUNCTIONAL
    # Two honest failures against one liar's "ok": 3 fail (liar 13 included) to 1.
    assert verdict({**CONTROLS_UP, 11: False, 12: False, **liars}) == Status(
        Verdict.BLOCKED, ("RU",)
    )


def test_a_tie_inside_is_no_block() -> None:
    assert verdict({**CONTROLS_UP, 11: False, 12: False, 13: True, 14: True}).verdict is (
        Verdict.FUNCTIONAL
    )


def test_a_lying_control_is_outvoted_both_ways() -> None:
    # The proxy is off: two controls fail, one says ok -> down.
    assert verdict({1: False, 2: False, 3: True}) == Status(Verdict.DOWN)
    # The proxy is up: one control always fails -> not down, and a block is still seen.
    assert verdict({1: True, 2: True, 3: False, 11: True, 12: True}).verdict is Verdict.FUNCTIONAL
    assert verdict({1: True, 2: True, 3: False, 11: False, 12: False}) == Status(
        Verdict.BLOCKED, ("RU",)
    )


def test_without_controls_the_majority_of_all_vantages_decides() -> None:
    assert verdict({11: False, 12: False, 13: True}) == Status(Verdict.DOWN)
    assert verdict({11: True, 12: True, 13: False}).verdict is Verdict.FUNCTIONAL


def test_disagreement_counts_the_liars_and_not_their_honest_peers() -> None:
    works = rounds({**CONTROLS_UP, 11: True, 12: True, 13: False, 14: True})
    blocked = rounds({**CONTROLS_UP, 11: False, 12: False, 13: False, 14: True})
    by_proxy = {p: list((works if p % 2 else blocked).values()) for p in range(1, 11)}
    seen = disagreement(by_proxy, now=200, rules=RULES)
    assert {p: (d.compared, d.disagreed) for p, d in seen.items()} == {
        1: (10, 0), 2: (10, 0), 3: (10, 0),
        11: (10, 0), 12: (10, 0), 13: (10, 5), 14: (10, 5),
    }  # fmt: skip
    assert seen[13].rate == 0.5 and seen[11].rate == 0.0
    assert seen[13].flagged(threshold=0.25, minimum=10)
    assert not seen[13].flagged(threshold=0.25, minimum=11)  # too few proxies to tell
    assert not seen[11].flagged(threshold=0.25, minimum=1)


def test_a_probe_alone_in_its_network_is_never_compared() -> None:
    alone = rounds({1: True, 11: False})
    seen = disagreement({7: list(alone.values())}, now=200, rules=RULES)
    assert seen[1].compared == seen[11].compared == 0 and seen[1].rate is None


@st.composite
def fleets(draw: st.DrawFn) -> tuple[dict[int, bool], int, bool]:
    """Honest probes that all see the truth, and one liar (inside or a control)."""
    controls = draw(st.integers(1, 5))
    inside = draw(st.integers(3, 7))
    truth = draw(st.sampled_from(["works", "blocked"]))
    says = {p: True for p in range(1, controls + 1)}
    says |= {100 + p: truth == "works" for p in range(inside)}
    liar = 100 + draw(st.integers(0, inside - 1))
    says[liar] = truth != "works"
    return says, liar, truth == "works"


@given(fleets())
def test_one_inside_liar_never_decides_when_it_has_two_honest_peers(
    fleet: tuple[dict[int, bool], int, bool],
) -> None:
    says, liar, works = fleet
    evidence = {
        p: ProbeEvidence(p, "NL" if p < 100 else "RU", p < 100) for p in says
    }  # controls below 100
    for n in range(3):
        for p, ok in says.items():
            evidence[p] = observe(evidence[p], at=n * 60 + p % 50, ok=ok, rules=RULES)
    status = evaluate(Status(Verdict.FUNCTIONAL), evidence.values(), now=200, rules=RULES)
    assert status == (Status(Verdict.FUNCTIONAL) if works else Status(Verdict.BLOCKED, ("RU",)))
    seen = disagreement({1: list(evidence.values())}, now=200, rules=RULES)
    assert seen[liar].disagreed == 1
    assert all(d.disagreed == 0 for p, d in seen.items() if p != liar)


@given(
    st.dictionaries(
        st.sampled_from(sorted(FLEET)),
        st.lists(st.booleans(), min_size=1, max_size=4),
        min_size=1,
    )
)
def test_a_unanimous_network_is_never_overruled(results: dict[int, list[bool]]) -> None:
    """Whatever the rest say: inside probes that all worked mean no block in RU, and
    controls that all failed enough mean down."""
    evidence = {p: ProbeEvidence(p, *FLEET[p]) for p in results}
    for p, oks in results.items():
        for n, ok in enumerate(oks):
            evidence[p] = observe(evidence[p], at=n * 60 + p, ok=ok, rules=RULES)
    status = evaluate(Status(Verdict.UNTESTED), evidence.values(), now=400, rules=RULES)
    inside = [e for e in evidence.values() if not e.control]
    controls = [e for e in evidence.values() if e.control]
    if inside and all(e.last_ok for e in inside):
        assert "RU" not in status.blocked_in
    if controls and all(e.fail_streak >= RULES.down_after for e in controls):
        assert status.verdict is Verdict.DOWN
    assert (status.verdict is Verdict.BLOCKED) == bool(status.blocked_in)
