"""Which hop of a cascade failed: the bridge, the hop to the exit, or the exit.

A cascade is measured twice (issue 24): from vantages inside the censored
country the whole path through the bridge (an ordinary SOCKS5 check of the
bridge, whose CONNECT the bridge carries over its hop to the exit), and from
control vantages outside the exit itself.  The per-hop verdict reads both:

* **bridge unreachable**: inside, the check failed before the bridge
  answered the request (TCP, greeting or authentication): the user cannot
  reach the domestic address, whatever the exit does.
* **exit down**: the exit fails from the control vantages (its own verdict
  is ``down``): nothing the bridge does can help.
* **hop blocked**: the bridge answered inside but the CONNECT through it (or
  what followed) failed, while the exit works from outside: the censor stops
  the bridge → exit hop.
* **works**: the whole path passed inside.
* **unknown**: the path failed after the bridge answered and nothing says
  whether the exit works (untested, or its verdict still undecided).

Pure: the check outcomes and the exit's status come from the probes and the
registry's verdict state machine (:mod:`resistance.probe.verdict`).
"""

from __future__ import annotations

import enum

from resistance.probe.check import CheckVerdict, Step
from resistance.probe.verdict import Status, Verdict

#: Steps that only the bridge takes part in: a failure there is the bridge's.
BRIDGE_STEPS = frozenset({Step.TCP, Step.GREETING, Step.AUTH})


class HopVerdict(enum.StrEnum):
    WORKS = "works"
    BRIDGE_UNREACHABLE = "bridge-unreachable"
    HOP_BLOCKED = "hop-blocked"
    EXIT_DOWN = "exit-down"
    UNKNOWN = "unknown"


def cascade_verdict(inside: CheckVerdict, exit_status: Status) -> HopVerdict:
    """The hop that failed, from an inside check through the bridge and the exit's status
    from outside (see the module docstring)."""
    if inside.ok:
        return HopVerdict.WORKS
    if inside.failed_step in BRIDGE_STEPS:
        return HopVerdict.BRIDGE_UNREACHABLE
    if exit_status.verdict is Verdict.DOWN:
        return HopVerdict.EXIT_DOWN
    if exit_status.verdict in (Verdict.FUNCTIONAL, Verdict.BLOCKED):
        # Blocked from inside is expected of an exit abroad: what counts is that it works.
        return HopVerdict.HOP_BLOCKED
    return HopVerdict.UNKNOWN


__all__ = ["BRIDGE_STEPS", "HopVerdict", "cascade_verdict"]
