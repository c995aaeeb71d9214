"""MTProto proxies in the registry: proven with the operator's prober secret, probed like any.

Theory of operation of proof of control.  An MTProto proxy authenticates
clients with symmetric secrets, and the secrets of a public proxy are in
every link users pass around, so "I can get through with this secret"
proves nothing about who runs the proxy: anyone holding a user's link could
register someone else's proxy and collect its grants.  So, as with
WireGuard's prober key, the registry makes the credential itself: each
operator has a *prober secret*, a 16-byte key derived from the registry's
distribution key and the operator id (HMAC-SHA256, nothing stored), which
only that operator can read (``GET /api/v1/mtproto/prober-secret`` with
their token).  The operator adds it to their node as one more MTProto user
(``resist node --mtproto-user registry:KEY``) and registers the endpoint with
the mode users connect with (``classic``, ``dd``, or ``ee`` with its fake-TLS
domain).  The registry then does what a Telegram client does: the fake-TLS
handshake (``ee``: the server's random must be the HMAC made with that
key), the obfuscated2 init made with that key, and an unencrypted
``req_pq_multi`` that must come back as a ``resPQ`` echoing its nonce
(:mod:`resistance.net.mtproto`).  Only a proxy whose operator added this
operator's secret can pass; a wrong key, a fronting proxy that hands us a
real website, silence or a closed port all mean "not proven", answered with
a 422 and nothing stored.  Unlike the SOCKS5 challenge it needs no node
identity key, so a node that runs only the MTProto listener registers too.

A registered proxy is a row of ``proxies`` with protocols ["mtproto"], so
verdicts, rollups, the directory and grants treat it as any proxy.  The key
is stored (``mtproto_key``) and handed to probes through their authenticated
assignment, which is how they check it; the public directory lists only the
endpoint, the mode and the domain, never a secret: users get their own
secrets (links) from the operator.  A probe's successful MTProto result
carries no canary proof (the path ends at a data centre, not at our
canary); it rests on the probe's signature, as WireGuard results do.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final

from resistance.links import MODES_BY_NAME
from resistance.net.mtproto import ask_res_pq
from resistance.probe.batch import ResultRecord
from resistance.proto.faketls import ProxySecret, SecretMode
from resistance.registry import repositories as repo
from resistance.registry.challenge import ChallengeFailed
from resistance.registry.errors import ApiError
from resistance.registry.models import Proxy
from resistance.registry.services import (
    Registry,
    check_owner,
    check_result_kind,
    named_addresses,
    prove_at_addresses,
    resolve_endpoint,
    save_keyless_proxy,
)
from resistance.registry.statement import endpoint_network

log = logging.getLogger(__name__)

PROTOCOL: Final = "mtproto"
MODES: Final = ("classic", "dd", "ee")
_PROBER_LABEL: Final = b"resist registry: MTProto prober secret for operator "


def is_mtproto(proxy: Proxy) -> bool:
    return PROTOCOL in proxy.protocols


def prober_key(registry: Registry, operator_id: int) -> bytes:
    """The operator's 16-byte prober secret key (the same on every call, never stored)."""
    label = _PROBER_LABEL + str(operator_id).encode()
    return hmac.new(registry.ring_key, label, hashlib.sha256).digest()[:16]


def prober_secret(registry: Registry, *, operator_id: int) -> dict[str, Any]:
    key = prober_key(registry, operator_id).hex()
    return {
        "key": key,
        "user": "registry",
        "node_option": f"--mtproto-user registry:{key}",
    }


def make_secret(mode: str, key: bytes, domain: str | None) -> ProxySecret:
    """The secret of mode ``classic``, ``dd`` or ``ee`` (with its domain) for ``key``."""
    return ProxySecret(key, MODES_BY_NAME[mode], domain if mode == "ee" else None)


def proxy_secret(proxy: Proxy) -> ProxySecret | None:
    """The secret probes check ``proxy`` with (mode, key, domain), if it is MTProto."""
    if not is_mtproto(proxy) or proxy.mtproto_key is None or proxy.mtproto_mode not in MODES:
        return None
    try:
        return make_secret(proxy.mtproto_mode, bytes.fromhex(proxy.mtproto_key),
                           proxy.mtproto_domain)  # fmt: skip
    except ValueError:  # a row no registration writes
        return None


def check_mode(mode: str, domain: str | None) -> str | None:
    """The domain to store for this mode, or ApiError when mode and domain disagree."""
    if mode not in MODES:
        raise ApiError(422, f"mode must be one of {', '.join(MODES)}", field="mode")
    if mode != "ee":
        if domain is not None:
            raise ApiError(422, "only an ee (fake-TLS) proxy has a domain", field="domain")
        return None
    if domain is None:
        raise ApiError(422, "an ee (fake-TLS) proxy needs its domain", field="domain")
    try:
        ProxySecret(bytes(16), SecretMode.EE, domain)
    except ValueError:
        raise ApiError(422, f"domain {domain!r} is not a host name", field="domain") from None
    return domain


async def register_endpoint(
    registry: Registry,
    *,
    operator_id: int,
    host: str,
    port: int,
    mode: str,
    domain: str | None,
    public: bool,
) -> dict[str, Any]:
    """Prove an MTProto proxy with the operator's prober secret, then store it as a proxy."""
    domain = check_mode(mode, domain)
    resolved = await resolve_endpoint(registry, host)
    async with registry.sessions() as session:
        current = await repo.proxy_by_endpoint(session, host=host, port=port)
    check_owner(current, operator_id, host, port, kind=PROTOCOL)
    key = prober_key(registry, operator_id)
    secret = make_secret(mode, key, domain)
    within = registry.settings.challenge_timeout

    async def prove(address: str) -> None:
        answer = await ask_res_pq(address, port, secret, within=within)
        if not answer.ok:
            log.info("MTProto registration of %s:%d refused: %s", address, port, answer.reason)
            raise ChallengeFailed(answer.reason)

    try:
        proven = await prove_at_addresses(host, resolved, prove)
    except ChallengeFailed as exc:
        raise ApiError(
            422,
            f"proof of control failed: {exc} (did the node add this operator's "
            "prober secret, GET /api/v1/mtproto/prober-secret, as an --mtproto-user, and "
            f"does it serve {mode} connections?)",
        ) from None
    network = endpoint_network(proven[0])
    return await save_keyless_proxy(
        registry, operator_id=operator_id, host=host, port=port, network=network,
        kind=PROTOCOL, public=public,
        extra={
            "mtproto_mode": mode,
            "mtproto_domain": domain,
            "mtproto_key": key.hex(),
            "addresses": named_addresses(resolved, proven),
        },
    )  # fmt: skip


# --- what probes do with MTProto proxies ----------------------------------------------


def probe_target(proxy: Proxy) -> dict[str, Any] | None:
    """The assignment fields of an MTProto proxy: the full secret, for probes only."""
    secret = proxy_secret(proxy)
    if secret is None:
        return None
    return {"protocol": PROTOCOL, "mtproto_secret": secret.to_hex()}


def check_result_protocols(
    results: Sequence[ResultRecord], protocols: Mapping[int, Sequence[str]]
) -> None:
    """Refuse MTProto results for other proxies, and other results for MTProto proxies."""
    check_result_kind(results, protocols, PROTOCOL)
