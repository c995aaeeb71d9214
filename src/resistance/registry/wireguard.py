"""WireGuard endpoints in the registry: registered by a real handshake, probed like any proxy.

Theory of operation of registration.  The registry has a WireGuard key of its
own, the *prober key* (``STATE_DIR/wireguard-prober.key``, made on first
start like its other keys), whose public half anyone may read at
``GET /api/v1/wireguard/prober-key`` along with the WireGuard keys that probe
agents have announced.  ``resist vpn register`` adds all of those keys to
the server as probe peers (no allowed IPs: they can handshake, never carry
traffic), then posts the endpoint, the server's public key and the probe keys
it added.  The registry then handshakes with the claimed endpoint from its
prober key, expecting the claimed server key (:mod:`resistance.vpn.noise`).
Only the holder of that server's private key, with our key configured, can
answer with a response that decrypts; silence, a wrong key or a closed port
all mean "not proven", answered with a 422 and nothing stored.

A registered endpoint is a row of ``proxies`` with protocols ["wireguard"],
so verdicts, rollups, the directory and grants treat it as any proxy.  It
is checked only by the probes whose keys the operator added (kept in
``wg_probe_keys``): a probe the server does not know would hear silence and
blame the proxy for it.  Re-running ``resist vpn register`` adds newly
announced probes.

An AmneziaWG endpoint (the same server's translator, on its own port) is
registered the same way with its obfuscation parameters: the proving
handshake is made in AmneziaWG's wire format with them, the row gets
protocols ["amneziawg"] and the parameters (migration 0010), and probes get
the parameters with their assignment and report results with protocol
"amneziawg".  The parameters never go into the directory.

A probe's successful WireGuard result carries no canary proof: nothing can
go through a probe peer, and no proof from the handshake is feasible: the
response's keys come from Diffie-Hellman with the probe's own static and
ephemeral keys, so the registry, holding neither, has nothing to check, and
the probe could have made the response itself.  It rests on the probe's
signature, as its failures always did, and counts only where the operator
added that probe's key (:func:`resistance.registry.probes.in_assignment`);
the probe's key itself is announced signed with its probe key and held by
one probe only (:func:`announce_probe_key`).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from sqlalchemy.exc import IntegrityError

from resistance.directory.keys import b64url_decode, parse_public_key, verify_signature
from resistance.errors import ConfigError
from resistance.probe.batch import ResultRecord
from resistance.probe.wireguard import key_statement, possession_mac
from resistance.registry import repositories as repo
from resistance.registry.challenge import ChallengeFailed
from resistance.registry.errors import ApiError
from resistance.registry.models import ProbeAccount, Proxy
from resistance.registry.services import (
    AMNEZIAWG_PROTOCOL,
    WIREGUARD_PROTOCOL,
    Registry,
    check_owner,
    check_result_kind,
    named_addresses,
    prove_at_addresses,
    resolve_endpoint,
    save_keyless_proxy,
)
from resistance.registry.statement import endpoint_network
from resistance.vpn import keys
from resistance.vpn.amnezia import AmneziaParams
from resistance.vpn.noise import HandshakeError, dh
from resistance.vpn.probe import Outcome, handshake

log = logging.getLogger(__name__)

PROBER_KEY_FILE: Final = "wireguard-prober.key"
PROTOCOL: Final = WIREGUARD_PROTOCOL
MAX_PROBE_KEYS: Final = 256


def load_or_create_prober_key(state_dir: Path) -> keys.KeyPair:
    """The registry's WireGuard prober key (base64 text, mode 0600), made on first use."""
    return keys.load_or_create_key_file(state_dir / PROBER_KEY_FILE, what="WireGuard prober key")


KINDS: Final = (PROTOCOL, AMNEZIAWG_PROTOCOL)


def is_wireguard(proxy: Proxy) -> bool:
    """WireGuard, plain or AmneziaWG: checked by a handshake from a probe peer."""
    return any(kind in proxy.protocols for kind in KINDS)


def _amnezia(params: Mapping[str, Any] | None) -> AmneziaParams | None:
    if params is None:
        return None
    try:
        return AmneziaParams.from_json(dict(params), "amnezia")
    except ConfigError as exc:
        raise ApiError(422, str(exc)) from None


def _wg_key(text: str, what: str) -> str:
    try:
        return keys.encode(keys.decode(text, what=what))
    except ConfigError as exc:
        raise ApiError(422, str(exc)) from None


def _prober(registry: Registry) -> keys.KeyPair:
    if registry.wireguard_prober is None:  # pragma: no cover - the lifespan sets it
        raise ApiError(503, "this registry has no WireGuard prober key yet")
    return registry.wireguard_prober


async def prober_keys(registry: Registry) -> dict[str, Any]:
    """The keys a WireGuard server should add as probe peers."""
    async with registry.sessions() as session:
        probes = await repo.probe_wireguard_keys(session)
    return {"public_key": _prober(registry).public_text, "probe_keys": sorted(set(probes))}


def _refusal(outcome: Outcome, detail: str, host: str, port: int, within: float) -> str:
    if outcome is Outcome.SILENCE:
        return (
            f"no WireGuard handshake response from {host}:{port} within {within:g} s: check "
            "that the server is up and reachable on that UDP port, that public_key is its "
            "key, and that the registry's prober key (GET /api/v1/wireguard/prober-key) "
            "was added with `resist vpn add-probe`"
        )
    if outcome is Outcome.INVALID:
        return f"{host}:{port} answered, but not with a valid response to our handshake ({detail})"
    return f"cannot handshake with {host}:{port}: {detail}"


async def register_endpoint(
    registry: Registry,
    *,
    operator_id: int,
    host: str,
    port: int,
    public_key: str,
    public: bool,
    probe_keys: Sequence[str],
    amnezia: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Prove control of a WireGuard endpoint by a handshake, then store it as a proxy.

    With ``amnezia`` (its parameters) it is an AmneziaWG endpoint, proven by a
    handshake in that wire format.
    """
    params = _amnezia(amnezia)
    kind = PROTOCOL if params is None else AMNEZIAWG_PROTOCOL
    server_key = _wg_key(public_key, "public_key")
    added = sorted({_wg_key(k, "probe_keys entry") for k in probe_keys})
    if len(added) > MAX_PROBE_KEYS:
        raise ApiError(422, f"at most {MAX_PROBE_KEYS} probe_keys")
    resolved = await resolve_endpoint(registry, host)
    async with registry.sessions() as session:
        current = await repo.proxy_by_endpoint(session, host=host, port=port)
    check_owner(current, operator_id, host, port, kind=kind)
    within = registry.settings.challenge_timeout

    async def prove(address: str) -> None:
        result = await handshake(
            address,
            port,
            server_public=keys.decode(server_key),
            private_key=_prober(registry).private,
            within=within / 2,
            attempts=2,
            amnezia=params,
        )
        if not result.up:
            log.info("WireGuard registration of %s:%d refused: %s", address, port, result.outcome)
            raise ChallengeFailed(_refusal(result.outcome, result.detail, address, port, within))

    try:
        proven = await prove_at_addresses(host, resolved, prove)
    except ChallengeFailed as exc:
        raise ApiError(422, f"proof of control failed: {exc}") from None
    network = endpoint_network(proven[0])
    return await save_keyless_proxy(
        registry, operator_id=operator_id, host=host, port=port, network=network,
        kind=kind, public=public,
        extra={
            "wg_public_key": server_key,
            "wg_probe_keys": added,
            "awg_params": None if params is None else params.to_json(),
            "addresses": named_addresses(resolved, proven),
        },
    )  # fmt: skip


async def announce_probe_key(
    registry: Registry,
    *,
    probe_id: int,
    public_key: str,
    at: int,
    signature: str,
    possession: str,
) -> dict[str, str]:
    """A probe agent's WireGuard key, which operators then add as a probe peer.

    The announcement must be recent, signed by the probe's own key, prove that the
    probe holds the WireGuard private key (see :mod:`resistance.probe.wireguard`), and
    name a key no other probe holds (else a probe could be sent where only another was
    added, and report on endpoints it can never reach).
    """
    key = _wg_key(public_key, "public_key")
    if abs(at - registry.now()) > registry.settings.statement_skew:
        raise ApiError(422, "announcement time is too far from the registry's clock")
    prober = _prober(registry)
    try:
        async with registry.sessions.begin() as session:
            probe = await repo.probe_by_id(session, probe_id=probe_id)
            if probe is None:
                raise ApiError(403, "this probe account no longer exists")
            statement = key_statement(
                probe_key=probe.public_key, wireguard_key=key, prober_key=prober.public_text,
                at=at,
            )  # fmt: skip
            try:
                signed = verify_signature(
                    parse_public_key(probe.public_key), b64url_decode(signature), statement
                )
                mac = possession_mac(dh(prober.private, keys.decode(key)), statement)
                held = hmac.compare_digest(mac, b64url_decode(possession))
            except (ValueError, HandshakeError):
                signed = held = False
            if not signed:
                raise ApiError(422, "the announcement is not signed by this probe's key")
            if not held:
                raise ApiError(422, "the announcement does not prove the WireGuard key is held")
            holder = await repo.probe_by_wireguard_key(session, public_key=key)
            if holder is not None and holder.id != probe_id:
                raise ApiError(409, "another probe has announced this WireGuard key")
            await repo.set_probe_wireguard_key(session, probe_id=probe_id, public_key=key)
    except IntegrityError:
        raise ApiError(409, "another probe has announced this WireGuard key") from None
    return {"public_key": key}


# --- what probes do with WireGuard proxies --------------------------------------------


def probe_target(proxy: Proxy, probe: ProbeAccount) -> dict[str, Any] | None:
    """The assignment fields of a WireGuard proxy for this probe, or None to skip it.

    A probe is sent only where the operator said it added the probe's key.
    """
    if probe.wg_public_key is None or probe.wg_public_key not in (proxy.wg_probe_keys or []):
        return None
    if AMNEZIAWG_PROTOCOL in proxy.protocols:
        return {
            "protocol": AMNEZIAWG_PROTOCOL,
            "wg_public_key": proxy.wg_public_key,
            "amnezia": proxy.awg_params,
        }
    return {"protocol": PROTOCOL, "wg_public_key": proxy.wg_public_key}


def check_result_protocols(
    results: Sequence[ResultRecord], protocols: Mapping[int, Sequence[str]]
) -> None:
    """Refuse results made with another protocol than their proxy speaks."""
    for kind in KINDS:
        check_result_kind(results, protocols, kind)
