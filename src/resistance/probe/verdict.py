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

Each proxy is measured by several probes of each vantage network (see
:func:`network`: the control vantages together, and the inside vantages of
each country), so no single probe decides anything: the probes of a network
vote, and a lying or broken probe is outvoted.

* **down**: a strict majority of the control vantages has failed at least
  ``down_after`` checks in a row (fails from outside the censored country
  too: the proxy is off).  Without any control evidence, the same majority
  of all vantages says down, since nothing says it works anywhere.
* **blocked in CC**: the control vantages whose latest check worked are at
  least as many as those whose latest check failed, the vantages in CC whose
  latest check failed outnumber those in CC whose latest check worked, and
  those failures come from at least ``min_probes`` distinct probes across at
  least ``min_windows`` distinct time windows.  One flaky probe, one bad hour
  or one probe that always says "blocked" is not a block, and one probe that
  always says "ok" does not hide a block its peers see.
* **functional**: the control vantages (or, without any, all vantages) that
  worked are at least as many as those that failed, and nothing above holds.
* Between those (most controls failed, but not yet ``down_after`` times): the
  previous status stands.

A probe's *disagreement* (:func:`disagreement`) is how often its latest
result differs from the majority of its peers' (same network, same proxy);
the registry flags a probe whose rate stays high.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
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


#: The network label of control vantages (no country code is lowercase).
CONTROL_NETWORK = "control"


def network(evidence: ProbeEvidence) -> str:
    """The vantage network a probe votes in: every control vantage together (they all
    see the proxy from outside the censorship), or the inside vantages of one country."""
    return vantage_network(evidence.country, evidence.control)


def vantage_network(country: str, control: bool) -> str:
    return CONTROL_NETWORK if control else country


def evaluate(
    previous: Status, evidence: Iterable[ProbeEvidence], *, now: int, rules: Rules
) -> Status:
    """The proxy's status now (see the module docstring)."""
    fresh = [e for e in evidence if e.last_at >= 0 and now - e.last_at <= rules.stale_seconds]
    if not fresh:
        return previous if previous.verdict is not Verdict.UNTESTED else UNTESTED
    controls = [e for e in fresh if e.control]
    voters = controls or fresh
    working = sum(e.last_ok for e in voters)
    failing = len(voters) - working
    if 2 * sum(e.fail_streak >= rules.down_after for e in voters) > len(voters):
        return Status(Verdict.DOWN)
    if working < failing:  # most failed, but not often enough to say down
        return previous
    if not controls:
        return Status(Verdict.FUNCTIONAL)
    blocked = tuple(sorted(c for c in _countries(fresh) if _blocked_in(c, fresh, rules)))
    if blocked:
        return Status(Verdict.BLOCKED, blocked)
    return Status(Verdict.FUNCTIONAL)


def _countries(evidence: list[ProbeEvidence]) -> set[str]:
    return {e.country for e in evidence if not e.control}


def _blocked_in(country: str, evidence: list[ProbeEvidence], rules: Rules) -> bool:
    inside = [e for e in evidence if e.country == country and not e.control]
    failed = [e for e in inside if not e.last_ok and e.fail_streak > 0]
    if 2 * len(failed) <= len(inside):  # the working ones are not outnumbered
        return False
    windows = {w for e in failed for w in e.fail_windows}
    return len(failed) >= rules.min_probes and len(windows) >= rules.min_windows


@dataclass(frozen=True, slots=True)
class Disagreement:
    """How often one probe's latest result went against its peers' majority."""

    #: Proxies where its peers had a majority (at least one peer, no tie).
    compared: int = 0
    disagreed: int = 0

    @property
    def rate(self) -> float | None:
        return self.disagreed / self.compared if self.compared else None

    def flagged(self, *, threshold: float, minimum: int) -> bool:
        """Outvoted too often, over enough proxies for the rate to mean something."""
        return self.compared >= minimum and self.disagreed > threshold * self.compared


def disagreement(
    by_proxy: Mapping[int, Iterable[ProbeEvidence]], *, now: int, rules: Rules
) -> dict[int, Disagreement]:
    """Each probe's :class:`Disagreement` over fresh evidence, proxy by proxy: its latest
    result against the majority of the other probes of its network on the same proxy."""
    compared: dict[int, int] = {}
    disagreed: dict[int, int] = {}
    for evidence in by_proxy.values():
        groups: dict[str, list[ProbeEvidence]] = {}
        for e in evidence:
            if e.last_at >= 0 and now - e.last_at <= rules.stale_seconds:
                groups.setdefault(network(e), []).append(e)
        for group in groups.values():
            working = sum(e.last_ok for e in group)
            for e in group:
                peers, peers_ok = len(group) - 1, working - e.last_ok
                compared.setdefault(e.probe_id, 0)
                disagreed.setdefault(e.probe_id, 0)
                if peers == 0 or 2 * peers_ok == peers:
                    continue
                compared[e.probe_id] += 1
                if e.last_ok != (2 * peers_ok > peers):
                    disagreed[e.probe_id] += 1
    return {p: Disagreement(compared[p], disagreed[p]) for p in compared}
