"""Why a proxy does not work from here: the mechanism, named from control experiments.

Theory of operation.  A failed check says *where* it stopped (no TCP, the
protocol handshake, or the data flow); it does not say *why*.  A censor's
mechanisms leave different marks, and a probe can tell them apart with a
few controls it runs beside the main check:

=================  ==============================================================
``outside``        the same check from a control vantage outside the censored
                   network (the registry's control probes): down vs blocked
``other_port``     the same host on another port or protocol (the node's TLS or
                   plain listener, its website): the whole address vs one port
``control_host``   the same protocol to a control host that is up and not
                   listed by the censor: a protocol fingerprint vs this host
``benign_sni``     the same TLS hello with a benign server name: SNI vs hello
``big_transfer``   a download past the freeze size (16 KB and more): freeze
``listed_host``    a host the censor's whitelist lets through: whitelist
``first_ok``       the check's first connection went through and a retry a few
                   seconds later could not connect: an active probe's block
                   (the same mark: the main connection went through and the
                   host's other port, tried right after, is silent)
=================  ==============================================================

Each control is optional (``None``: not run).  :func:`diagnose` is pure and
total: for every evidence it returns one :class:`Diagnosis` whose mechanism
is one of :class:`Mechanism`, and a mechanism is only named when the
controls that distinguish it were run and agree.  Everything else is
``inconclusive`` with the reason, never a guess.  The order of the rules:

1. main passed: ``frozen`` if the big transfer stalled (and not from
   outside too), else ``ok``;
2. the outside view failed too: ``down``;
3. the main flow stopped after data came (a timeout in the transfer):
   ``frozen`` at the byte count where it stopped;
4. no TCP: the probe's own network is tested first (a listed host that
   fails says nothing can be judged); unlisted hosts unreachable but the
   listed one reached: ``whitelisted-out``; the host's other port
   unreachable too: ``probed`` when this same check's first connection went
   through seconds before (the address went dark *during* the check, right
   after its own flow), else, the host alive from outside, ``blocked-ip``.
   An address block is told first: a passing check in an earlier round is
   no evidence of an active probe (an IP block landing since looks the same);
5. TCP but the handshake died (timeout, reset, close): a benign SNI that
   passes: ``blocked-sni``; the same protocol to the control host dying
   too, or a TLS hello dying whatever its server name (or naming none), or
   a non-TLS protocol dying while it works from outside:
   ``blocked-fingerprint``;
6. the handshake passed and the data stopped short of a freeze's mark (no
   stall past MIN_FREEZE_BYTES) the way a censor stops flows, and the host's
   other port, tried right after, is silent: ``probed`` (the censor let this
   flow through and then darkened the address).  A handshake that died is
   not this evidence: a fingerprint rule kills it, and a block landing during
   its timeout (a whitelist switched on mid-check) would read as a probe.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from resistance.probe.check import Failure, Step


class Mechanism(enum.StrEnum):
    OK = "ok"
    DOWN = "down"
    BLOCKED_IP = "blocked-ip"
    BLOCKED_FINGERPRINT = "blocked-fingerprint"
    BLOCKED_SNI = "blocked-sni"
    FROZEN = "frozen"
    WHITELISTED_OUT = "whitelisted-out"
    PROBED = "probed"
    INCONCLUSIVE = "inconclusive"


BLOCKS = frozenset(
    {
        Mechanism.BLOCKED_IP,
        Mechanism.BLOCKED_FINGERPRINT,
        Mechanism.BLOCKED_SNI,
        Mechanism.FROZEN,
        Mechanism.WHITELISTED_OUT,
        Mechanism.PROBED,
    }
)
"""Mechanisms that say a censor, not the proxy, stopped the flow."""


class Stage(enum.StrEnum):
    """Where an attempt stopped: the three marks a censor's mechanisms leave."""

    TCP = "tcp"  # no TCP connection
    HANDSHAKE = "handshake"  # TCP up, the protocol's handshake did not finish
    TRANSFER = "transfer"  # handshake done, the data stopped


_STAGE_OF_STEP = {
    Step.TCP: Stage.TCP,
    Step.GREETING: Stage.HANDSHAKE,
    Step.AUTH: Stage.HANDSHAKE,
    Step.CONNECT: Stage.HANDSHAKE,
    Step.HANDSHAKE: Stage.HANDSHAKE,
    Step.CANARY: Stage.TRANSFER,
    Step.TRANSFER: Stage.TRANSFER,
}

#: Failures a censor's silent drop or injected reset produce (not a proxy's "no").
CENSOR_LIKE = frozenset({Failure.TIMEOUT, Failure.RESET, Failure.CLOSED})
#: A flow must have carried at least this much from the server before a stall counts
#: as a freeze (a stall right after the SOCKS5 reply is the far end, not a byte count).
MIN_FREEZE_BYTES = 1024
#: Byte counts are recorded up to this (a freeze happens well below it).
MAX_BYTES = 1 << 40


@dataclass(frozen=True, slots=True)
class Attempt:
    """One connection's outcome: passed, or where and how it stopped.

    ``received`` counts the bytes from the server in the data phase (for a
    freeze: where the flow stopped).
    """

    ok: bool
    stage: Stage | None = None
    failure: Failure | None = None
    received: int = 0

    def __post_init__(self) -> None:
        if self.ok != (self.stage is None):
            raise ValueError("an attempt passed (no stage) or stopped at a stage, not both")
        if self.ok and self.failure is not None:
            raise ValueError("a passed attempt has no failure")
        if not 0 <= self.received <= MAX_BYTES:
            raise ValueError("received byte count out of range")

    @classmethod
    def passed(cls, received: int = 0) -> Attempt:
        return cls(True, None, None, received)

    @classmethod
    def stopped(cls, stage: Stage, failure: Failure, received: int = 0) -> Attempt:
        return cls(False, stage, failure, received)

    @classmethod
    def from_step(cls, step: Step | None, failure: Failure | None, received: int = 0) -> Attempt:
        """From a check's verdict (failed step and failure; ``None`` when it passed)."""
        if step is None:
            return cls.passed(received)
        return cls.stopped(_STAGE_OF_STEP[step], failure or Failure.ERROR, received)

    @property
    def got_tcp(self) -> bool:
        return self.ok or self.stage is not Stage.TCP

    @property
    def censor_like(self) -> bool:
        """Stopped the way a censor stops flows (silence, reset), not by a refusal."""
        return not self.ok and self.failure in CENSOR_LIKE

    @property
    def stalled(self) -> bool:
        """The data flow began and then stopped without an answer (a freeze's mark)."""
        return (
            not self.ok
            and self.stage is Stage.TRANSFER
            and self.failure is Failure.TIMEOUT
            and self.received >= MIN_FREEZE_BYTES
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "stage": self.stage.value if self.stage else None,
            "failure": self.failure.value if self.failure else None,
            "received": self.received,
        }

    @classmethod
    def from_json(cls, raw: Any) -> Attempt:
        """Parse; raises ``ValueError`` for anything that is not an attempt."""
        if not isinstance(raw, Mapping) or set(raw) != {"ok", "stage", "failure", "received"}:
            raise ValueError("an attempt is {ok, stage, failure, received}")
        ok, stage, failure, received = raw["ok"], raw["stage"], raw["failure"], raw["received"]
        if not isinstance(ok, bool) or type(received) is not int:
            raise ValueError("attempt ok must be a boolean and received an integer")
        return cls(
            ok,
            None if stage is None else Stage(str(stage)),
            None if failure is None else Failure(str(failure)),
            received,
        )


@dataclass(frozen=True, slots=True)
class Evidence:
    """The main check and the controls run beside it (``None``: not run)."""

    main: Attempt
    #: Whether the main transport is TLS (an SNI can be blamed only then).
    tls: bool = False
    #: For TLS: whether the main hello named a server (a client dialling by address
    #: sends none, and then only the hello itself can be recognised).
    sni_sent: bool = True
    outside: Attempt | None = None
    other_port: Attempt | None = None
    control_host: Attempt | None = None
    benign_sni: Attempt | None = None
    big_transfer: Attempt | None = None
    outside_big_transfer: Attempt | None = None
    listed_host: Attempt | None = None
    first_ok: bool = False

    def to_json(self) -> dict[str, Any]:
        """The evidence as recorded in a signed measurement (controls not run are left out)."""
        out: dict[str, Any] = {"main": self.main.to_json(), "tls": self.tls}
        if not self.sni_sent:
            out["sni_sent"] = False
        for name in _CONTROLS:
            attempt = getattr(self, name)
            if attempt is not None:
                out[name] = attempt.to_json()
        if self.first_ok:
            out["first_ok"] = True
        return out

    @classmethod
    def from_json(cls, raw: Any) -> Evidence:
        """Parse recorded evidence; raises ``ValueError`` for anything else."""
        if not isinstance(raw, Mapping):
            raise ValueError("evidence is an object")
        unknown = set(raw) - {"main", "tls", "sni_sent", "first_ok", *_CONTROLS}
        if unknown:
            raise ValueError(f"unknown evidence field {sorted(unknown)[0]!r}")
        if "main" not in raw:
            raise ValueError("evidence without its main attempt")
        tls, first_ok = raw.get("tls", False), raw.get("first_ok", False)
        sni_sent = raw.get("sni_sent", True)
        if not all(isinstance(v, bool) for v in (tls, first_ok, sni_sent)):
            raise ValueError("evidence tls, sni_sent and first_ok are booleans")
        controls = {name: Attempt.from_json(raw[name]) for name in _CONTROLS if name in raw}
        main = Attempt.from_json(raw["main"])
        return cls(main, tls=tls, sni_sent=sni_sent, first_ok=first_ok, **controls)


_CONTROLS = (
    "outside",
    "other_port",
    "control_host",
    "benign_sni",
    "big_transfer",
    "outside_big_transfer",
    "listed_host",
)


@dataclass(frozen=True, slots=True)
class Diagnosis:
    mechanism: Mechanism
    reason: str
    #: For ``frozen``: the bytes that came from the server before the flow stopped.
    frozen_at: int | None = None

    def __str__(self) -> str:
        if self.mechanism is Mechanism.FROZEN:
            return f"frozen after {self.frozen_at} bytes: {self.reason}"
        return f"{self.mechanism.value}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mechanism": self.mechanism.value, "reason": self.reason}
        if self.frozen_at is not None:
            out["frozen_at"] = self.frozen_at
        return out


def _inconclusive(reason: str) -> Diagnosis:
    return Diagnosis(Mechanism.INCONCLUSIVE, reason)


def diagnose(e: Evidence) -> Diagnosis:
    """The mechanism the evidence shows (see the module docstring for the rules)."""
    main = e.main
    if main.ok:
        big = e.big_transfer
        if big is not None and big.stalled:
            if e.outside_big_transfer is not None and e.outside_big_transfer.stalled:
                return _inconclusive("the big transfer stalls from outside too")
            return Diagnosis(
                Mechanism.FROZEN, "the check passed but a longer download stopped", big.received
            )
        return Diagnosis(Mechanism.OK, "every step passed")
    if e.outside is not None and not e.outside.ok:
        return Diagnosis(Mechanism.DOWN, "the check fails from outside the censored network too")
    if main.stalled:
        return Diagnosis(
            Mechanism.FROZEN, "the download began and then stopped without a close", main.received
        )
    if main.stage is Stage.TCP:
        return _no_tcp(e)
    if main.stage is Stage.HANDSHAKE:
        return _no_handshake(e)
    other = e.other_port
    if main.censor_like and other is not None and other.stage is Stage.TCP and other.censor_like:
        return Diagnosis(
            Mechanism.PROBED,
            "the censor let this check's flow through, then it stopped and the host's other "
            "port is silent: the address went dark right after this flow",
        )
    return _inconclusive(f"the data flow ended with {main.failure}, not a stall")


def _no_tcp(e: Evidence) -> Diagnosis:
    if e.listed_host is not None and not e.listed_host.got_tcp:
        return _inconclusive("this vantage reaches nothing, not even a listed host")
    control, listed = e.control_host, e.listed_host
    if control is not None and listed is not None and not control.got_tcp:
        return Diagnosis(
            Mechanism.WHITELISTED_OUT,
            "only listed hosts are reachable: an unlisted control host is not",
        )
    if control is not None and not control.got_tcp:
        return _inconclusive("the control host is unreachable too (whitelist or local outage)")
    other = e.other_port
    if other is None:
        return _inconclusive("no TCP, and no other port of the host was tried")
    if other.got_tcp:
        return _inconclusive("only this port is unreachable; the host answers on another")
    if e.first_ok:
        return Diagnosis(
            Mechanism.PROBED,
            "this check's first connection went through, then the whole address went dark",
        )
    if e.outside is not None and e.outside.ok:
        return Diagnosis(
            Mechanism.BLOCKED_IP,
            "no port of the host is reachable here, and it works from outside",
        )
    return _inconclusive("the host is unreachable here and there is no outside view")


def _no_handshake(e: Evidence) -> Diagnosis:
    main = e.main
    if not main.censor_like:
        return _inconclusive(f"the proxy answered the handshake with {main.failure}")
    sni = e.benign_sni
    if e.tls and e.sni_sent and sni is not None and sni.ok:
        return Diagnosis(
            Mechanism.BLOCKED_SNI, "the same hello with a benign server name goes through"
        )
    control = e.control_host
    if control is not None and control.stage is Stage.HANDSHAKE and control.censor_like:
        return Diagnosis(
            Mechanism.BLOCKED_FINGERPRINT,
            "the same protocol dies the same way to an unrelated control host",
        )
    if e.tls and sni is not None and sni.stage is Stage.HANDSHAKE and sni.censor_like:
        return Diagnosis(
            Mechanism.BLOCKED_FINGERPRINT,
            "the TLS hello dies whatever its server name: the hello itself is caught",
        )
    if control is not None and control.ok:
        return _inconclusive("the protocol works to the control host; only this host fails")
    if e.tls and not e.sni_sent and e.outside is not None and e.outside.ok:
        return Diagnosis(
            Mechanism.BLOCKED_FINGERPRINT,
            "a TLS hello naming no server dies here, not from outside: the hello is caught",
        )
    if not e.tls and e.outside is not None and e.outside.ok:
        return Diagnosis(
            Mechanism.BLOCKED_FINGERPRINT,
            "TCP connects but the protocol's first bytes are dropped here, not from outside",
        )
    return _inconclusive("the handshake dies but no control tells the protocol from this host")
