"""One check of a WireGuard endpoint: a real handshake from the probe's own WireGuard key.

The operator added the probe's key as a probe peer (no allowed IPs), so the
server answers our initiation with a response made with its private key,
and nothing else can pass.  A verified response is "up", with the round
trip as the latency a user waits before the tunnel carries anything;
silence, an ICMP error or an invalid answer is a failure of the one step,
``handshake``.  Two attempts of half the step timeout each, so that one lost
datagram is not a failure.  An AmneziaWG target (protocol "amneziawg") is
the same handshake in AmneziaWG's wire format, with the parameters the
registry assigned; parameters that do not parse are an error of the step.

The agent announces its WireGuard key to the registry with two proofs
(:func:`key_announcement`): the statement is signed with its probe key (a
token alone cannot claim a key for the account), and it carries an HMAC
keyed with the X25519 secret of that WireGuard key and the registry's prober
key, which only the holder of the WireGuard private key can compute (so no
probe can claim a key it does not hold, such as one another probe used
before).  The registry also keeps each key to one probe.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from resistance.directory.canonical import canonical_bytes
from resistance.directory.keys import b64url
from resistance.errors import ConfigError
from resistance.probe.check import Failure, Step, StepOutcome, Timings, verdict
from resistance.probe.runner import CheckResult, CheckSettings, Target
from resistance.vpn import keys
from resistance.vpn.amnezia import AmneziaParams
from resistance.vpn.noise import dh
from resistance.vpn.probe import Outcome, handshake

REQUIRED = (Step.HANDSHAKE,)
KEY_PURPOSE = "resist-probe-wireguard-key/1"


def key_statement(*, probe_key: str, wireguard_key: str, prober_key: str, at: int) -> bytes:
    """What a probe signs to announce its WireGuard key to the registry whose WireGuard
    prober key is ``prober_key`` (canonical JSON)."""
    return canonical_bytes(
        {"purpose": KEY_PURPOSE, "probe_key": probe_key, "wireguard_key": wireguard_key,
         "prober_key": prober_key, "at": at}
    )  # fmt: skip


def possession_mac(shared_secret: bytes, statement: bytes) -> bytes:
    """HMAC-SHA256 of the statement keyed by the X25519 secret of the two WireGuard keys."""
    return hmac.new(shared_secret, statement, hashlib.sha256).digest()


def key_announcement(
    key: Ed25519PrivateKey,
    wireguard: keys.KeyPair,
    *,
    probe_key: str,
    prober_key: str,
    at: int,
) -> dict[str, object]:
    """The body of ``PUT /api/v1/probe/wireguard-key``: signed, and proving possession."""
    statement = key_statement(
        probe_key=probe_key, wireguard_key=wireguard.public_text, prober_key=prober_key, at=at
    )
    shared = dh(wireguard.private, keys.decode(prober_key, what="registry prober key"))
    return {
        "public_key": wireguard.public_text,
        "at": at,
        "signature": b64url(key.sign(statement)),
        "possession": b64url(possession_mac(shared, statement)),
    }


_FAILURES = {
    Outcome.SILENCE: Failure.TIMEOUT,
    Outcome.REFUSED: Failure.REFUSED,
    Outcome.UNREACHABLE: Failure.UNREACHABLE,
    Outcome.INVALID: Failure.WRONG_ANSWER,
    Outcome.ERROR: Failure.ERROR,
}


async def run_wireguard_check(
    target: Target,
    private_key: bytes,
    settings: CheckSettings,
    *,
    source: str | None = None,
    clock: Callable[[], float] = time.time,
) -> CheckResult:
    """Handshake with ``target`` (its ``wg_public_key``); never raises for the server."""
    at = int(clock())
    started = time.perf_counter()
    try:
        server = keys.decode(target.wg_public_key or "", what="server key")
        amnezia = None
        if target.protocol == "amneziawg":
            amnezia = AmneziaParams.from_json(target.amnezia, "AmneziaWG parameters")
    except ConfigError as exc:
        outcome = StepOutcome(Step.HANDSHAKE, Failure.ERROR, str(exc)[:120])
        return CheckResult(target, at, [outcome], verdict([outcome], required=REQUIRED),
                           Timings(), None, REQUIRED)  # fmt: skip
    result = await handshake(
        target.host,
        target.port,
        server_public=server,
        private_key=private_key,
        within=settings.step_timeout / 2,
        attempts=2,
        source=source,
        amnezia=amnezia,
    )
    if result.up and result.rtt is not None:
        micros = int(result.rtt * 1e6)
        outcome = StepOutcome(Step.HANDSHAKE, micros=micros)
        timings = Timings(connect_us=micros)
    else:
        micros = int((time.perf_counter() - started) * 1e6)
        failure = _FAILURES.get(result.outcome, Failure.ERROR)
        outcome = StepOutcome(Step.HANDSHAKE, failure, result.detail[:120], micros)
        timings = Timings()
    return CheckResult(
        target, at, [outcome], verdict([outcome], required=REQUIRED), timings, None, REQUIRED
    )
