"""What the registry does, one function per use case, over explicit state.

Routers call these; these call repositories inside one transaction each and
raise :class:`~resistance.registry.errors.ApiError` for refusals.  Network
I/O (the proof-of-control challenge) happens outside any transaction.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from resistance.directory.canonical import CanonicalError
from resistance.directory.document import build_document, dump_signed, sign_document
from resistance.directory.entry import TlsListener
from resistance.directory.keys import b64url_decode, parse_public_key, verify_signature
from resistance.probe.cascade import HopVerdict, cascade_verdict
from resistance.probe.check import CheckVerdict, Failure, Step
from resistance.probe.verdict import Status, Verdict
from resistance.registry import repositories as repo
from resistance.registry import tokens
from resistance.registry.addresses import AddressError, payout_address
from resistance.registry.challenge import ChallengeFailed, prove_control, prove_tls_control
from resistance.registry.errors import ApiError
from resistance.registry.keys import write_public_file
from resistance.registry.measurements import directory_measurements
from resistance.registry.models import Operator, Proxy
from resistance.registry.ratelimit import TokenBucketLimiter
from resistance.registry.ring import HashRing, requester_key
from resistance.registry.schemas import RegistrationRequest
from resistance.registry.settings import RegistrySettings
from resistance.registry.statement import endpoint_network, statement_bytes
from resistance.registry.tokens import new_token, token_hash

if TYPE_CHECKING:
    from resistance.probe.batch import ResultRecord
    from resistance.vpn.keys import KeyPair

log = logging.getLogger(__name__)

DIRECTORY_FILE = "directory.json"
ROLES = ("admin", "operator", "probe")


@dataclass
class Registry:
    """Everything a running registry holds, built by the app's lifespan."""

    settings: RegistrySettings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    signing_keys: list[Ed25519PrivateKey]
    ring_key: bytes
    signup_limiter: TokenBucketLimiter
    public_limiter: TokenBucketLimiter
    clock: Callable[[], float] = time.time
    publish_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: The canary's signing key and where it actually listens (set by the lifespan).
    canary_key: Ed25519PrivateKey | None = None
    canary_address: tuple[str, int] | None = None
    #: Serializes batch ingestion on SQLite (one writer); on PostgreSQL per-proxy advisory
    #: locks do it across processes (see :func:`repositories.lock_proxies_for_fold`).
    probe_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: The registry's own WireGuard key that proves control of WireGuard endpoints
    #: (see :mod:`resistance.registry.wireguard`; set by the lifespan).
    wireguard_prober: KeyPair | None = None

    def now(self) -> int:
        return int(self.clock())


@dataclass(frozen=True, slots=True)
class Principal:
    role: str
    operator_id: int | None
    probe_id: int | None = None
    #: The token the request came with.
    token_id: int | None = None


# --- accounts -------------------------------------------------------------------------


async def ensure_admin_token(registry: Registry) -> str | None:
    """Make the admin token on first start; returns it (to show once) or ``None``."""
    async with registry.sessions.begin() as session:
        if await repo.count_tokens(session, role="admin"):
            return None
        token = new_token()
        await repo.add_token(
            session, role="admin", token_hash=token_hash(token), now=registry.now()
        )
    return token


async def authenticate(registry: Registry, *, token: str) -> Principal | None:
    """Who a live token belongs to, read from the database on every request (no cache,
    so a token revoked by any process is refused by every process at once)."""
    async with registry.sessions() as session:
        found = await tokens.authenticate(session, token=token, now=registry.now())
    if found is None:
        return None
    return Principal(found.role, found.operator_id, found.probe_id, found.id)


async def _add_operator_token(
    registry: Registry, session: AsyncSession, *, operator_id: int
) -> str:
    """A new operator token, stored as its hash; the token itself is shown once."""
    token = new_token()
    await repo.add_token(
        session,
        role="operator",
        operator_id=operator_id,
        token_hash=token_hash(token),
        now=registry.now(),
    )
    return token


async def sign_up(registry: Registry, *, name: str) -> tuple[int, str]:
    try:
        async with registry.sessions.begin() as session:
            if await repo.operator_by_name(session, name=name) is not None:
                raise ApiError(409, f"operator name {name!r} is taken")
            operator = await repo.add_operator(session, name=name, now=registry.now())
            token = await _add_operator_token(registry, session, operator_id=operator.id)
            operator_id = operator.id
    except IntegrityError:
        raise ApiError(409, f"operator name {name!r} is taken") from None
    return operator_id, token


async def list_operators(registry: Registry) -> list[dict[str, Any]]:
    """Every operator with the number of proxies they registered (for the admin)."""
    async with registry.sessions() as session:
        operators = sorted(await repo.all_operators(session), key=lambda o: o.id)
        counts = {o.id: len(await repo.proxies_of(session, operator_id=o.id)) for o in operators}
    return [{**_operator_json(o), "proxies": counts[o.id]} for o in operators]


def _operator_json(operator: Operator) -> dict[str, Any]:
    return {
        "operator_id": operator.id,
        "name": operator.name,
        "created_at": operator.created_at,
        "payout_address": operator.payout_address,
        "payout_type": operator.payout_type,
    }


async def issue_operator_token(registry: Registry, *, name: str) -> tuple[int, str]:
    """A new token for an existing operator (its other tokens stay valid); shown once."""
    async with registry.sessions.begin() as session:
        operator = await repo.operator_by_name(session, name=name)
        if operator is None:
            raise ApiError(404, f"no operator named {name!r}")
        return operator.id, await _add_operator_token(registry, session, operator_id=operator.id)


async def operator_view(registry: Registry, *, operator_id: int) -> dict[str, Any]:
    async with registry.sessions() as session:
        operator = await repo.operator_by_id(session, operator_id=operator_id)
    if operator is None:
        raise ApiError(404, "operator not found")
    return _operator_json(operator)


async def set_payout(registry: Registry, *, operator_id: int, address: str) -> dict[str, str]:
    network = registry.settings.network
    try:
        decoded = payout_address(address, network)
    except AddressError as exc:
        raise ApiError(422, f"payout address refused: {exc}") from None
    async with registry.sessions.begin() as session:
        await repo.set_payout_address(
            session, operator_id=operator_id, address=decoded.address, kind=decoded.kind
        )
    return {"address": decoded.address, "type": decoded.kind, "network": network}


# --- proxies --------------------------------------------------------------------------


def tls_listener(proxy: Proxy) -> TlsListener | None:
    """The proxy's TLS listener as proven at its last registration, if it has one."""
    if proxy.tls_port is None or proxy.tls_sha256 is None:
        return None
    return TlsListener(proxy.tls_port, proxy.tls_sha256)


def proxy_view(proxy: Proxy) -> dict[str, Any]:
    tls = tls_listener(proxy)
    return {
        "proxy_id": proxy.id,
        "endpoint": {"host": proxy.host, "port": proxy.port},
        "network": proxy.network,
        "public_key": proxy.public_key,
        "protocols": list(proxy.protocols),
        "public": proxy.public,
        "status": proxy.status,
        "registered_at": proxy.registered_at,
        "verified_at": proxy.verified_at,
        "wg_public_key": proxy.wg_public_key,
        "tls": tls.to_json() if tls else None,
        "mtproto": (
            {"mode": proxy.mtproto_mode, "domain": proxy.mtproto_domain}
            if MTPROTO_PROTOCOL in proxy.protocols
            else None
        ),
        "cascade_role": proxy.cascade_role,
        "exit_id": proxy.exit_id,
    }


def check_endpoint_host(host: str, *, allow_private: bool) -> str:
    """The /24 (/48) of an endpoint users can reach: an IP literal, public unless allowed."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ApiError(422, f"endpoint host {host!r} must be an IP address literal") from None
    if str(ip) != host:
        raise ApiError(422, f"endpoint host {host!r} must be written as {str(ip)!r}")
    if ip.is_unspecified or ip.is_multicast:
        raise ApiError(422, f"endpoint host {host} cannot serve users")
    if not allow_private and not ip.is_global:
        raise ApiError(422, f"endpoint host {host} is not a public address")
    return endpoint_network(host)


def _verify_statement(registry: Registry, request: RegistrationRequest) -> dict[str, Any]:
    statement = request.statement.model_dump(exclude_unset=True)
    try:
        key = parse_public_key(request.statement.public_key)
        signature = b64url_decode(request.signature)
        message = statement_bytes(statement)
    except (ValueError, CanonicalError) as exc:
        raise ApiError(422, f"statement refused: {exc}") from None
    if not verify_signature(key, signature, message):
        raise ApiError(422, "statement signature does not verify with its public_key")
    skew = registry.settings.statement_skew
    if abs(registry.now() - request.statement.timestamp) > skew:
        raise ApiError(422, f"statement timestamp is more than {skew} s from the registry's clock")
    return statement


WIREGUARD_PROTOCOL = "wireguard"
AMNEZIAWG_PROTOCOL = "amneziawg"
MTPROTO_PROTOCOL = "mtproto"
#: What each kind of proxy row is called in refusals, by the protocol that marks it.
KINDS = {
    "socks5": "a SOCKS5 node",
    WIREGUARD_PROTOCOL: "a WireGuard server",
    AMNEZIAWG_PROTOCOL: "an AmneziaWG server",
    MTPROTO_PROTOCOL: "an MTProto proxy",
}


def proxy_kind(protocols: list[str]) -> str:
    """``wireguard``, ``amneziawg``, ``mtproto`` or ``socks5``: which kind a row describes."""
    for kind in (WIREGUARD_PROTOCOL, AMNEZIAWG_PROTOCOL, MTPROTO_PROTOCOL):
        if kind in protocols:
            return kind
    return "socks5"


def check_owner(
    current: Proxy | None, operator_id: int, host: str, port: int, *, kind: str
) -> None:
    """Refuse to register over an endpoint another operator holds, or over one
    registered as another kind of server (a row half rewritten would show a
    WireGuard key on a SOCKS5 node, or no credentials on a WireGuard server)."""
    if current is None:
        return
    if current.operator_id != operator_id:
        raise ApiError(409, f"endpoint {host}:{port} belongs to another operator")
    held = proxy_kind(list(current.protocols))
    if held != kind:
        raise ApiError(
            409,
            f"endpoint {host}:{port} is registered as {KINDS[held]}: give the "
            f"{KINDS[kind].partition(' ')[2]} another port",
        )


async def save_keyless_proxy(
    registry: Registry,
    *,
    operator_id: int,
    host: str,
    port: int,
    network: str,
    kind: str,
    public: bool,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Store a proven server that has no SOCKS5 credentials or node key (WireGuard,
    MTProto): the common row, ``extra`` holding its kind's own columns."""
    now = registry.now()
    fields: dict[str, Any] = {
        "operator_id": operator_id,
        "host": host,
        "port": port,
        "network": network,
        "public_key": "",
        "protocols": [kind],
        "probe_user": "",
        "probe_password": "",
        "credentials": [],
        "public": public,
        "status": "active",
        "registered_at": now,
        "verified_at": now,
        **extra,
    }
    try:
        async with registry.sessions.begin() as session:
            current = await repo.proxy_by_endpoint(session, host=host, port=port)
            check_owner(current, operator_id, host, port, kind=kind)
            proxy = await repo.save_proxy(session, fields=fields)
            view = proxy_view(proxy)
    except IntegrityError:
        raise ApiError(409, f"endpoint {host}:{port} was taken meanwhile") from None
    return view


def check_result_kind(
    results: Sequence[ResultRecord], protocols: Mapping[int, Sequence[str]], kind: str
) -> None:
    """Refuse ``kind`` results for other proxies, and other results for ``kind`` proxies."""
    for index, r in enumerate(results):
        held = kind in protocols.get(r.proxy_id, ())
        if (r.protocol == kind) != held:
            what = KINDS[kind] if held else f"not {KINDS[kind]}"
            raise ApiError(
                422, f"results[{index}]: proxy {r.proxy_id} is {what}; the result says {r.protocol}"
            )


async def register_proxy(
    registry: Registry, *, operator_id: int, request: RegistrationRequest
) -> dict[str, Any]:
    """Verify a signed statement, challenge the node, then store the proxy."""
    _verify_statement(registry, request)
    st = request.statement
    if st.operator_id != operator_id:
        raise ApiError(
            403,
            f"statement is for operator {st.operator_id}, not for this token's "
            f"operator {operator_id}: sign one for your own account",
            field="statement.operator_id",
        )
    host, port = st.endpoint.host, st.endpoint.port
    network = check_endpoint_host(host, allow_private=registry.settings.allow_private_endpoints)
    async with registry.sessions() as session:
        if await repo.nonce_seen(session, nonce=st.nonce):
            raise ApiError(409, "statement already used (replay refused): make a new one")
        owner = await repo.proxy_by_endpoint(session, host=host, port=port)
    check_owner(owner, operator_id, host, port, kind="socks5")
    try:
        await prove_control(
            host=host,
            port=port,
            user=st.probe_user,
            password=st.probe_password,
            public_key=st.public_key,
            within=registry.settings.challenge_timeout,
        )
    except ChallengeFailed as exc:
        raise ApiError(422, f"proof of control failed: {exc}") from None
    tls_sha256 = await _prove_tls_listener(registry, request)
    exit_id = await _prove_exit_agreed(registry, request)
    now = registry.now()
    fields: dict[str, Any] = {
        "operator_id": operator_id,
        "host": host,
        "port": port,
        "network": network,
        "public_key": st.public_key,
        "protocols": list(st.protocols),
        "probe_user": st.probe_user,
        "probe_password": st.probe_password,
        "credentials": [u.model_dump() for u in request.users],
        # an exit is reached only through its bridges: never published nor handed out
        "public": request.public and request.role != "exit",
        "status": "active",
        "registered_at": now,
        "verified_at": now,
        # a re-registration without tls_port says the node has no TLS listener (any more)
        "tls_port": st.tls_port,
        "tls_sha256": tls_sha256,
        "cascade_role": "exit" if request.role == "exit" else ("bridge" if exit_id else None),
        "exit_id": exit_id,
    }
    try:
        async with registry.sessions.begin() as session:
            await repo.add_nonce(session, nonce=st.nonce, now=now)
            current = await repo.proxy_by_endpoint(session, host=host, port=port)
            check_owner(current, operator_id, host, port, kind="socks5")
            proxy = await repo.save_proxy(session, fields=fields)
            await repo.forget_nonces(session, before=now - 2 * registry.settings.statement_skew)
            view = proxy_view(proxy)
    except IntegrityError:
        raise ApiError(409, "statement already used or endpoint taken meanwhile") from None
    return view


async def _prove_tls_listener(registry: Registry, request: RegistrationRequest) -> str | None:
    """The pin of the statement's TLS listener, proven to be the node's own; or ``None``."""
    st = request.statement
    if st.tls_port is None:
        return None
    if st.tls_port == st.endpoint.port:
        raise ApiError(
            422,
            "tls_port must differ from the plain SOCKS5 port (one port cannot serve both)",
            field="statement.tls_port",
        )
    try:
        return await prove_tls_control(
            host=st.endpoint.host,
            port=st.tls_port,
            user=st.probe_user,
            password=st.probe_password,
            public_key=st.public_key,
            within=registry.settings.challenge_timeout,
        )
    except ChallengeFailed as exc:
        raise ApiError(
            422, f"TLS proof of control failed: {exc}", field="statement.tls_port"
        ) from None


async def _prove_exit_agreed(registry: Registry, request: RegistrationRequest) -> int | None:
    """A bridge's exit, once the exit has accepted the bridge's own credential there
    (so its operator agreed to the cascade) and signed the challenge with its key."""
    hop = request.exit
    if hop is None:
        return None
    if request.role == "exit":
        raise ApiError(422, "an exit relays to no other exit", field="exit")
    async with registry.sessions() as session:
        exit_proxy = await repo.proxy_by_id(session, proxy_id=hop.exit_id)
    if exit_proxy is None or exit_proxy.cascade_role != "exit" or exit_proxy.status != "active":
        raise ApiError(422, f"proxy {hop.exit_id} is no active exit", field="exit.exit_id")
    try:
        await prove_control(
            host=exit_proxy.host,
            port=exit_proxy.port,
            user=hop.username,
            password=hop.password,
            public_key=exit_proxy.public_key,
            within=registry.settings.challenge_timeout,
        )
    except ChallengeFailed as exc:
        raise ApiError(
            422, f"the exit refused the bridge's credential: {exc}", field="exit"
        ) from None
    return exit_proxy.id


def listed(proxies: Sequence[Proxy]) -> list[Proxy]:
    """What users may learn: every proxy but the exits of cascades."""
    return [p for p in proxies if p.cascade_role != "exit"]


async def list_proxies(registry: Registry, *, operator_id: int) -> list[dict[str, Any]]:
    async with registry.sessions() as session:
        proxies = await repo.proxies_of(session, operator_id=operator_id)
        hops = {p.id: await hop_verdict(session, p) for p in proxies if p.exit_id is not None}
    return [proxy_view(p) | ({"hop": hops[p.id]} if p.id in hops else {}) for p in proxies]


async def hop_verdict(session: AsyncSession, bridge: Proxy) -> str:
    """Which hop of a cascade fails (:func:`resistance.probe.cascade.cascade_verdict`):
    the bridge's newest check from inside, and its exit's status from the probes."""
    inside = await repo.latest_inside_result(session, proxy_id=bridge.id)
    if inside is None or bridge.exit_id is None:
        return HopVerdict.UNKNOWN.value
    try:
        step = Step(inside.step) if inside.step else None
        failure = Failure(inside.failure) if inside.failure else None
    except ValueError:
        step, failure = None, None
    check = CheckVerdict(inside.ok, step, failure, "")
    (current,) = await repo.verdicts_for(session, proxy_ids=[bridge.exit_id]) or (None,)
    exit_status = (
        Status(Verdict(current.verdict), tuple(current.blocked_in))
        if current is not None
        else Status(Verdict.UNTESTED)
    )
    return cascade_verdict(check, exit_status).value


def _listing(proxy: Proxy) -> dict[str, Any]:
    if MTPROTO_PROTOCOL in proxy.protocols:
        # An MTProto proxy (migration 0006): where, and how users connect; never a secret
        # (users get theirs from the operator; probes from their assignment).
        mtproto: dict[str, Any] = {"mode": proxy.mtproto_mode}
        if proxy.mtproto_mode == "ee":
            mtproto["domain"] = proxy.mtproto_domain
        return {
            "endpoint": {"host": proxy.host, "port": proxy.port},
            "protocols": list(proxy.protocols),
            "mtproto": mtproto,
        }
    if WIREGUARD_PROTOCOL in proxy.protocols or AMNEZIAWG_PROTOCOL in proxy.protocols:
        # A WireGuard endpoint (migration 0005) or AmneziaWG (0010): no credentials, no
        # node key; users get their configs (AmneziaWG's parameters with them) from the
        # operator.  Clients that want SOCKS5 skip it by protocol.
        return {
            "endpoint": {"host": proxy.host, "port": proxy.port},
            "protocols": list(proxy.protocols),
            "wg_public_key": proxy.wg_public_key,
        }
    listing: dict[str, Any] = {
        "endpoint": {"host": proxy.host, "port": proxy.port},
        "protocols": list(proxy.protocols),
        "credentials": [dict(c) for c in proxy.credentials],
        "node_key": proxy.public_key,
    }
    tls = tls_listener(proxy)
    if tls is not None:  # absent otherwise: entries of plain nodes stay as they were
        listing["tls"] = tls.to_json()
    if proxy.cascade_role == "bridge":
        # On a domestic address a whitelist lets through; its exit is never named.
        listing["bridge"] = True
    return listing


def utc_day(now: int) -> str:
    return datetime.datetime.fromtimestamp(now, datetime.UTC).date().isoformat()


async def assign(registry: Registry, *, client_host: str | None) -> dict[str, Any]:
    """A few non-public proxies, the same for one /16 (/32) network all UTC day."""
    async with registry.sessions() as session:
        proxies = listed(await repo.active_proxies(session, public=False))
    # Only what a requester can use with the credentials handed out (not WireGuard).
    by_name = {f"{p.host}|{p.port}": p for p in proxies if "socks5" in p.protocols}
    day = utc_day(registry.now())
    ring = HashRing(registry.ring_key, list(by_name))
    picked = ring.pick(requester_key(client_host, day), registry.settings.assign_count)
    return {"day": day, "proxies": [_listing(by_name[name]) for name in picked]}


# --- directory ------------------------------------------------------------------------


async def publish(registry: Registry) -> dict[str, Any]:
    """Sign a new directory of the public proxies, store it and write directory.json."""
    settings = registry.settings
    async with registry.publish_lock:
        now = registry.now()
        async with registry.sessions.begin() as session:
            last = await repo.last_publication(session)
            serial = max((last.serial + 1) if last else 1, now)
            proxies = listed(await repo.active_proxies(session, public=True))
            measured = await directory_measurements(session, proxies, now)
            entries = [
                {**_listing(p), "status": measured[p.id][0], "measurements": measured[p.id][1]}
                for p in proxies
            ]
            document = build_document(
                serial=serial,
                valid_after=now,
                fresh_until=now + settings.fresh_seconds,
                valid_until=now + settings.valid_seconds,
                proxies=entries,
                network=settings.network,
            )
            signed = sign_document(document, registry.signing_keys)
            body = dump_signed(signed)
            await repo.add_publication(session, serial=serial, now=now, body=body.decode())
        write_public_file(settings.state_dir / DIRECTORY_FILE, body)
    log.info("published directory serial %d with %d proxies", serial, len(entries))
    return signed


async def current_directory(registry: Registry) -> dict[str, Any]:
    async with registry.sessions() as session:
        last = await repo.last_publication(session)
    if last is None:
        raise ApiError(404, "no directory has been published yet")
    result: dict[str, Any] = json.loads(last.body)
    return result


async def publish_if_stale(registry: Registry) -> None:
    async with registry.sessions() as session:
        last = await repo.last_publication(session)
    if last is None:
        await publish(registry)
        return
    document = json.loads(last.body)["document"]
    if registry.now() >= document["fresh_until"]:
        await publish(registry)
    else:
        write_public_file(registry.settings.state_dir / DIRECTORY_FILE, last.body.encode())


async def publish_periodically(registry: Registry) -> None:
    """The named background task: publish every ``publish_interval`` seconds."""
    interval = registry.settings.publish_interval
    while True:
        await asyncio.sleep(interval)
        try:
            await publish(registry)
        except Exception:
            log.exception("periodic publication failed; will retry next interval")
