"""Per-hop verdicts of a cascade (issue 24): which hop failed."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from resistance.probe.cascade import BRIDGE_STEPS, HopVerdict, cascade_verdict
from resistance.probe.check import STEPS, CheckVerdict, Failure, Step, StepOutcome, verdict
from resistance.probe.verdict import Status, Verdict

UP = Status(Verdict.FUNCTIONAL)
DOWN = Status(Verdict.DOWN)


def failed_at(step: Step, failure: Failure = Failure.TIMEOUT) -> CheckVerdict:
    outcomes = [StepOutcome(s) for s in STEPS[: STEPS.index(step)]]
    return verdict([*outcomes, StepOutcome(step, failure)])


def test_the_whole_path_works() -> None:
    assert cascade_verdict(verdict([StepOutcome(s) for s in STEPS]), DOWN) is HopVerdict.WORKS


def test_a_bridge_that_does_not_answer_inside_is_unreachable() -> None:
    for step in (Step.TCP, Step.GREETING, Step.AUTH):
        assert cascade_verdict(failed_at(step), UP) is HopVerdict.BRIDGE_UNREACHABLE


def test_a_failure_past_the_bridge_is_the_hop_when_the_exit_works_outside() -> None:
    for step in (Step.CONNECT, Step.CANARY, Step.TRANSFER):
        assert cascade_verdict(failed_at(step), UP) is HopVerdict.HOP_BLOCKED
        assert cascade_verdict(failed_at(step), Status(Verdict.BLOCKED, ("RU",))) is (
            HopVerdict.HOP_BLOCKED
        )


def test_a_failure_past_the_bridge_is_the_exit_when_it_is_down() -> None:
    assert cascade_verdict(failed_at(Step.CONNECT, Failure.REFUSED), DOWN) is HopVerdict.EXIT_DOWN


def test_without_word_on_the_exit_the_hop_is_unknown() -> None:
    assert cascade_verdict(failed_at(Step.CONNECT), Status(Verdict.UNTESTED)) is (
        HopVerdict.UNKNOWN
    )


@given(
    st.lists(st.tuples(st.sampled_from(STEPS), st.none() | st.sampled_from(Failure)), max_size=8),
    st.sampled_from(Verdict),
)
def test_every_check_has_exactly_one_verdict_that_agrees_with_it(
    steps: list[tuple[Step, Failure | None]], exit_verdict: Verdict
) -> None:
    check = verdict([StepOutcome(s, f) for s, f in steps])
    got = cascade_verdict(check, Status(exit_verdict))
    assert (got is HopVerdict.WORKS) == check.ok
    if not check.ok:
        assert (got is HopVerdict.BRIDGE_UNREACHABLE) == (check.failed_step in BRIDGE_STEPS)
    if got is HopVerdict.EXIT_DOWN:
        assert exit_verdict is Verdict.DOWN
