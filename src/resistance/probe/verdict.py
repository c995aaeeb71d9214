"""A proxy's status from the evidence of every vantage: the verdict state machine.

Theory of operation.  For each (proxy, probe) the registry keeps a small
:class:`ProbeEvidence`: the probe's country and whether it is a control
vantage, when it last measured the proxy and whether that worked, and, while
it keeps failing, how many checks in a row failed and in which time windows.
:func:`observe` folds one result into that evidence (results older than the
last one seen change nothing, so late uploads cannot rewind it).
:func:`evaluate` turns all of a proxy's fresh evidence into a :class:`Status`::

    untested ──▶ functional ◀──▶ down
                     ▲ │
                     │ ▼
                 blocked in CC

* **down**: every control vantage has failed at least ``down_after`` checks in
  a row (fails from outside the censored country too: the proxy is off).
  Without any control evidence, a proxy failing from every vantage is down
  too, since nothing says it works anywhere.
* **blocked in CC**: a control vantage's latest check worked, no vantage in
  CC's latest check worked, and the failures in CC come from at least
  ``min_probes`` distinct probes across at least ``min_windows`` distinct
  time windows.  One flaky probe or one bad hour is not a block.
* **functional**: some vantage's latest check worked, and nothing above holds.
* Between those (a control vantage failed once): the previous status stands.

Any success moves back: a control success ends "down", a success in CC ends
"blocked in CC".
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, replace

MAX_WINDOWS = 8


class Verdict(enum.StrEnum):
    UNTESTED = "untested"
    FUNCTIONAL = "functional"
    DOWN = "down"
    BLOCKED = "blocked"


@dataclass(frozen=True, slots=True)
class Rules:
    window_seconds: int = 3600
    min_probes: int = 2
    min_windows: int = 2
    down_after: int = 2
    #: Evidence older than this is ignored.
    stale_seconds: int = 3 * 86400


@dataclass(frozen=True, slots=True)
class ProbeEvidence:
    probe_id: int
    country: str
    control: bool
    last_at: int = -1
    last_ok: bool = False
    fail_streak: int = 0
    fail_windows: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Status:
    verdict: Verdict
    blocked_in: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.verdict is Verdict.BLOCKED:
            return f"blocked:{','.join(self.blocked_in)}"
        return self.verdict.value


UNTESTED = Status(Verdict.UNTESTED)


def observe(evidence: ProbeEvidence, *, at: int, ok: bool, rules: Rules) -> ProbeEvidence:
    """Fold one result in; a result older than the newest seen changes nothing."""
    if at < evidence.last_at:
        return evidence
    if ok:
        return replace(evidence, last_at=at, last_ok=True, fail_streak=0, fail_windows=())
    window = at // rules.window_seconds
    windows = evidence.fail_windows
    if window not in windows:
        windows = (*windows, window)[-MAX_WINDOWS:]
    return replace(
        evidence,
        last_at=at,
        last_ok=False,
        fail_streak=evidence.fail_streak + 1,
        fail_windows=windows,
    )


def evaluate(
    previous: Status, evidence: Iterable[ProbeEvidence], *, now: int, rules: Rules
) -> Status:
    """The proxy's status now (see the module docstring)."""
    fresh = [e for e in evidence if e.last_at >= 0 and now - e.last_at <= rules.stale_seconds]
    if not fresh:
        return previous if previous.verdict is not Verdict.UNTESTED else UNTESTED
    controls = [e for e in fresh if e.control]
    control_up = any(e.last_ok for e in controls)
    control_down = bool(controls) and all(e.fail_streak >= rules.down_after for e in controls)
    if control_down:
        return Status(Verdict.DOWN)
    if not controls:
        if any(e.last_ok for e in fresh):
            return Status(Verdict.FUNCTIONAL)
        if all(e.fail_streak >= rules.down_after for e in fresh):
            return Status(Verdict.DOWN)
        return previous
    if not control_up:  # a control failed, but not often enough to say down
        return previous
    blocked = tuple(sorted(c for c in _countries(fresh) if _blocked_in(c, fresh, rules)))
    if blocked:
        return Status(Verdict.BLOCKED, blocked)
    return Status(Verdict.FUNCTIONAL)


def _countries(evidence: list[ProbeEvidence]) -> set[str]:
    return {e.country for e in evidence if not e.control}


def _blocked_in(country: str, evidence: list[ProbeEvidence], rules: Rules) -> bool:
    inside = [e for e in evidence if e.country == country and not e.control]
    if any(e.last_ok for e in inside):
        return False
    probes = {e.probe_id for e in inside if e.fail_streak > 0}
    windows = {w for e in inside for w in e.fail_windows}
    return len(probes) >= rules.min_probes and len(windows) >= rules.min_windows
