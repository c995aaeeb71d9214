"""What the registry does, one function per use case, over explicit state.

Routers call these; these call repositories inside one transaction each and
raise :class:`~resistance.registry.errors.ApiError` for refusals.  Network
I/O (the proof-of-control challenge) happens outside any transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import ipaddress
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from resistance.directory.canonical import CanonicalError
from resistance.directory.document import (
    DOCUMENT_VERSION,
    build_document,
    sign_and_dump,
    sign_and_dump_encoded,
)
from resistance.directory.entry import TlsListener
from resistance.directory.keys import b64url_decode, key_id, parse_public_key, verify_signature
from resistance.errors import ConfigError
from resistance.net.resolve import (
    ResolveError,
    Resolver,
    host_name,
    is_ip_literal,
    resolve_all,
    system_resolver,
)
from resistance.probe.cascade import HopVerdict, cascade_verdict
from resistance.probe.check import CheckVerdict, Failure, Step
from resistance.probe.verdict import Status, Verdict
from resistance.registry import repositories as repo
from resistance.registry import tokens
from resistance.registry.addresses import AddressError, payout_address
from resistance.registry.challenge import ChallengeFailed, prove_control, prove_tls_control
from resistance.registry.db import Lock, advisory_lock
from resistance.registry.entries import DirectoryEntries
from resistance.registry.errors import ApiError
from resistance.registry.keys import write_public_file
from resistance.registry.measurements import (
    MeasurementRows,
    directory_measurements,
    measurement_rows,
)
from resistance.registry.models import Operator, ProbeAccount, Proxy
from resistance.registry.ratelimit import Limiter, make_limiter
from resistance.registry.ring import HashRing, requester_key
from resistance.registry.schemas import RegistrationRequest
from resistance.registry.settings import RateLimit, RegistrySettings
from resistance.registry.shard import ShardCache
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
    signup_limiter: Limiter
    public_limiter: Limiter
    clock: Callable[[], float] = time.time
    publish_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: The canary's signing key and where it actually listens (set by the lifespan).
    canary_key: Ed25519PrivateKey | None = None
    canary_address: tuple[str, int] | None = None
    #: Serializes batch ingestion on SQLite (one writer); on PostgreSQL per-proxy advisory
    #: locks do it across processes (see :func:`repositories.open_batch`).
    probe_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: The engine shared rate-limit buckets go through (PostgreSQL only; see ratelimit.py).
    buckets: AsyncEngine | None = None
    #: The serial of the directory this process last wrote to ``directory.json``.
    written_serial: int | None = None
    #: The registry's own WireGuard key that proves control of WireGuard endpoints
    #: (see :mod:`resistance.registry.wireguard`; set by the lifespan).
    wireguard_prober: KeyPair | None = None
    #: Each vantage network's assignment of proxies to probes (see registry.shard).
    shards: ShardCache = field(default_factory=ShardCache)
    #: How endpoint names are resolved at registration (tests inject their own).
    resolver: Resolver = system_resolver
    #: Where grant rounds are computed (:mod:`resistance.registry.rounds` starts a worker
    #: process at the first round; the lifespan shuts it down).
    round_workers: Executor | None = None
    #: The entries of this process's last publication, reused while their rows are
    #: unchanged, when ``settings.keep_entries`` (see :mod:`resistance.registry.entries`).
    entries: DirectoryEntries = field(default_factory=DirectoryEntries)

    def now(self) -> int:
        return int(self.clock())

    def make_limiter(self, name: str, limit: RateLimit) -> Limiter:
        """A rate limit every process on the database shares (in memory on SQLite)."""
        return make_limiter(self.buckets, name, limit, max_clients=self.settings.rate_limit_clients)


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


async def authenticate_probe(
    registry: Registry, *, token: str
) -> tuple[Principal | None, ProbeAccount | None]:
    """:func:`authenticate`, and for a probe's token its account, read in one session (a
    batch upload needs both; a session each cost it four round trips more, issue 25)."""
    async with registry.sessions() as session:
        found = await tokens.authenticate(session, token=token, now=registry.now())
        if found is None:
            return None, None
        account = (
            await repo.probe_by_id(session, probe_id=found.probe_id)
            if found.role == "probe" and found.probe_id is not None
            else None
        )
    return Principal(found.role, found.operator_id, found.probe_id, found.id), account


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
        "addresses": list(proxy.addresses) if proxy.addresses else None,
    }


def endpoint_refusal(address: str, *, allow_private: bool) -> str | None:
    """Why users cannot be sent to ``address`` (an IP literal), or ``None`` if they can:
    never the unspecified or a multicast address, and only public ones unless the
    registry allows private endpoints (a lab, a test)."""
    ip = ipaddress.ip_address(address)
    if ip.is_unspecified or ip.is_multicast:
        return "cannot serve users"
    if not allow_private and not ip.is_global:
        return "is not a public address"
    return None


def check_endpoint_host(host: str, *, allow_private: bool) -> str:
    """The /24 (/48) of an endpoint users can reach: an IP literal, public unless allowed."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ApiError(422, f"endpoint host {host!r} must be an IP address literal") from None
    if str(ip) != host:
        raise ApiError(422, f"endpoint host {host!r} must be written as {str(ip)!r}")
    why = endpoint_refusal(host, allow_private=allow_private)
    if why is not None:
        raise ApiError(422, f"endpoint host {host} {why}")
    return endpoint_network(host)


def check_endpoint_addresses(host: str, addresses: Sequence[str], *, allow_private: bool) -> None:
    """Refuse a name if ANY address it resolved to is refused: users' resolvers may
    hand out any of them, so one private address would send users (and probes) there."""
    for address in addresses:
        why = endpoint_refusal(address, allow_private=allow_private)
        if why is not None:
            raise ApiError(422, f"endpoint host {host} resolves to {address}, which {why}")


async def resolve_endpoint(registry: Registry, host: str) -> tuple[str, ...] | None:
    """The addresses a name endpoint resolves to, every one allowed by policy; ``None``
    for an IP literal (checked as ever).  Raises :class:`ApiError` (422)."""
    allow = registry.settings.allow_private_endpoints
    if is_ip_literal(host):
        check_endpoint_host(host, allow_private=allow)
        return None
    try:
        name = host_name(host)
    except ValueError as exc:
        raise ApiError(
            422, f"endpoint host {host[:80]!r} is neither an address nor a name: {exc}"
        ) from None
    if name != host:
        raise ApiError(422, f"endpoint host {host!r} must be written as {name!r}")
    try:
        addresses = await resolve_all(
            name, registry.resolver, within=registry.settings.resolve_timeout
        )
    except ResolveError as exc:
        raise ApiError(422, f"endpoint host: {exc}") from None
    check_endpoint_addresses(name, addresses, allow_private=allow)
    return addresses


async def prove_at_addresses(
    host: str, resolved: Sequence[str] | None, prove: Callable[[str], Awaitable[None]]
) -> tuple[str, ...]:
    """Where ``prove(address)`` succeeds: at ``host`` itself (an IP literal, ``resolved``
    ``None``), or at each address a name resolved to (all tried at once, in order).
    Raises the first :class:`ChallengeFailed` (naming its address, for a name) if none
    succeeds."""
    addresses = tuple(resolved) if resolved is not None else (host,)
    outcomes = await asyncio.gather(*(prove(a) for a in addresses), return_exceptions=True)
    proven = tuple(a for a, o in zip(addresses, outcomes, strict=True) if o is None)
    if proven:
        return proven
    for address, outcome in zip(addresses, outcomes, strict=True):
        if isinstance(outcome, ChallengeFailed):
            if resolved is None:
                raise outcome
            raise ChallengeFailed(f"at {address}: {outcome}")
        if isinstance(outcome, BaseException):
            raise outcome
    raise ChallengeFailed("no address to prove control at")


def named_addresses(resolved: Sequence[str] | None, proven: Sequence[str]) -> list[str] | None:
    """What ``proxies.addresses`` holds: the proven addresses of a name, null for a literal."""
    return list(proven) if resolved is not None else None


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
    resolved = await resolve_endpoint(registry, host)
    async with registry.sessions() as session:
        if await repo.nonce_seen(session, nonce=st.nonce):
            raise ApiError(409, "statement already used (replay refused): make a new one")
        owner = await repo.proxy_by_endpoint(session, host=host, port=port)
    check_owner(owner, operator_id, host, port, kind="socks5")

    async def prove(address: str) -> None:
        await prove_control(
            host=address,
            port=port,
            user=st.probe_user,
            password=st.probe_password,
            public_key=st.public_key,
            within=registry.settings.challenge_timeout,
        )

    try:
        # A name is proven at each address it resolved to; only those proven are kept
        # (probes measure only them, see resistance.net.resolve).
        proven = await prove_at_addresses(host, resolved, prove)
    except ChallengeFailed as exc:
        raise ApiError(422, f"proof of control failed: {exc}") from None
    network = endpoint_network(proven[0])
    tls_sha256 = await _prove_tls_listener(registry, request, proven[0])
    exit_id = await _prove_exit_agreed(registry, request)
    now = registry.now()
    fields: dict[str, Any] = {
        "operator_id": operator_id,
        "host": host,
        "addresses": named_addresses(resolved, proven),
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
            if resolved is not None:  # a name may have moved: look its address up again
                await repo.forget_blocklist_flag(session, proxy_id=proxy.id)
            await repo.forget_nonces(session, before=now - 2 * registry.settings.statement_skew)
            view = proxy_view(proxy)
    except IntegrityError:
        raise ApiError(409, "statement already used or endpoint taken meanwhile") from None
    return view


async def _prove_tls_listener(
    registry: Registry, request: RegistrationRequest, address: str
) -> str | None:
    """The pin of the statement's TLS listener at ``address`` (the endpoint's first
    proven address), proven to be the node's own; or ``None``."""
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
            host=address,
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
            host=exit_proxy.address,
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


@contextlib.asynccontextmanager
async def publishing(registry: Registry) -> AsyncIterator[None]:
    """One signer at a time: in this process, and across every process on the database
    (a PostgreSQL advisory lock), so each serial is computed from the last one stored
    and signed once however many processes serve."""
    async with registry.publish_lock, advisory_lock(registry.engine, Lock.PUBLISH):
        yield


async def publish(registry: Registry) -> dict[str, Any]:
    """Sign a new directory of the public proxies, store it and write directory.json.

    The database is read on the event loop (it waits on I/O); turning the rows into
    entries, the canonical bytes and the signatures (seconds for 100,000 proxies) run
    in a worker thread, so requests keep being answered while a directory is built."""
    async with publishing(registry):
        return await _publish_held(registry)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector paused (process-wide) for a publication's seconds.

    A publication at 100,000 proxies makes millions of objects (rows, entries) that
    hold no reference cycles and are freed by their counts; each full collection the
    allocations set off walked every live object, 14 of them in one publication:
    measured at 5.7-6.5 s of its 12-14 s of CPU (bench/publish_scale.py).  Other
    requests' cyclic garbage waits those seconds; the collector runs as usual after."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


async def _publish_held(registry: Registry) -> dict[str, Any]:
    with _collector_paused():
        return await _publish_paused(registry)


async def _publish_paused(registry: Registry) -> dict[str, Any]:
    settings = registry.settings
    now = registry.now()
    async with registry.sessions.begin() as session:
        last = await repo.last_publication(session)
        serial = max((last.serial + 1) if last else 1, now)
        proxies = listed(await repo.active_proxy_rows(session, public=True))
        rows = await measurement_rows(session, proxies, now)
        signed, body = await asyncio.to_thread(
            _sign_directory, registry, proxies, rows, serial, now
        )
        await repo.add_publication(session, serial=serial, now=now, body=body.decode())
    write_public_file(settings.state_dir / DIRECTORY_FILE, body)
    registry.written_serial = serial
    log.info(
        "published directory serial %d with %d proxies (%d entries rebuilt)",
        serial,
        len(proxies),
        registry.entries.built,
    )
    return signed


def _sign_directory(
    registry: Registry, proxies: Sequence[Proxy], rows: MeasurementRows, serial: int, now: int
) -> tuple[dict[str, Any], bytes]:
    """The signed directory and its file's bytes (CPU only: run in a worker thread).

    With ``--keep-entries`` the entries whose rows are what they were at this process's
    last publication are reused with their canonical bytes
    (:class:`~resistance.registry.entries.DirectoryEntries`); the bytes signed are those
    :func:`~resistance.directory.document.sign_and_dump` writes for the same document."""
    settings = registry.settings
    registry.entries.keep = settings.keep_entries
    encoded = registry.entries.entries(proxies, rows, _listing)
    fields = {
        "version": DOCUMENT_VERSION,
        "serial": serial,
        "network": settings.network,
        "valid_after": now,
        "fresh_until": now + settings.fresh_seconds,
        "valid_until": now + settings.valid_seconds,
    }
    return sign_and_dump_encoded(fields, encoded, registry.signing_keys)


def _sign_directory_whole(
    registry: Registry, proxies: Sequence[Proxy], rows: MeasurementRows, serial: int, now: int
) -> tuple[dict[str, Any], bytes]:
    """:func:`_sign_directory` without kept entries: every entry built, the whole document
    checked and encoded at once (the tests' reference for the bytes signed)."""
    settings = registry.settings
    measured = directory_measurements(proxies, rows)
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
    return sign_and_dump(document, registry.signing_keys)


async def current_directory(registry: Registry) -> dict[str, Any]:
    async with registry.sessions() as session:
        last = await repo.last_publication(session)
    if last is None:
        raise ApiError(404, "no directory has been published yet")
    result: dict[str, Any] = json.loads(last.body)
    return result


async def check_signing_keys(registry: Registry) -> None:
    """Refuse to serve with signing keys none of which signed the directory clients hold.

    Every process on a database signs directories in turn, so all must hold the
    same keys: a machine started with an empty state directory would make a key
    of its own, and clients pinned to the others' keys would refuse what it signs.
    (Keys are rotated by adding one and then retiring the old one, so a process
    always shares a key with the current directory; once that directory has
    expired, clients hold none, and nothing is checked.)  Only PostgreSQL is shared:
    a SQLite database lives in the state directory beside its keys.
    """
    if registry.engine.dialect.name != "postgresql":
        return
    async with registry.sessions() as session:
        last = await repo.last_publication(session)
    if last is None:
        return
    signed = json.loads(last.body)
    if registry.now() >= signed["document"]["valid_until"]:
        return
    ours = {key_id(key.public_key()) for key in registry.signing_keys}
    if ours & {s["key_id"] for s in signed["signatures"]}:
        return
    raise ConfigError(
        f"this registry's signing keys did not sign the current directory (serial "
        f"{last.serial}) that another registry process published on this database: copy "
        f"registry-keys/, distribution.key, canary-key.pem and wireguard-prober.key from "
        f"that machine's state directory to {registry.settings.state_dir}"
    )


async def publish_if_stale(registry: Registry) -> None:
    """At start: publish unless the last directory is still fresh (then write its file)."""
    async with registry.sessions() as session:
        last = await repo.last_publication(session)
    if last is None:
        await publish(registry)
        return
    document = json.loads(last.body)["document"]
    if registry.now() >= document["fresh_until"]:
        await publish(registry)
    else:
        _write_directory_file(registry, last.serial, last.body)


def _write_directory_file(registry: Registry, serial: int, body: str) -> None:
    write_public_file(registry.settings.state_dir / DIRECTORY_FILE, body.encode())
    registry.written_serial = serial


async def publish_when_due(registry: Registry) -> float:
    """Publish if the last directory, by whichever process, is ``publish_interval`` old.

    Every process on the database runs this at the due time; the first to
    take the publication lock signs, the others then find a directory too
    young to replace and only bring their ``directory.json`` up to it.
    Returns the seconds until the next publication is due.
    """
    interval = registry.settings.publish_interval
    async with publishing(registry):
        async with registry.sessions() as session:
            last = await repo.last_publication(session)
        now = registry.clock()
        if last is None or now >= last.published_at + interval:
            await _publish_held(registry)
            return interval
        if last.serial != registry.written_serial:
            _write_directory_file(registry, last.serial, last.body)
        return last.published_at + interval - now


async def publish_periodically(registry: Registry) -> None:
    """The named background task: publish every ``publish_interval`` seconds, counted
    from the last publication of any process on the database (see publish_when_due)."""
    interval = registry.settings.publish_interval
    wait = interval
    while True:
        await asyncio.sleep(min(max(wait, 0.05), interval))
        try:
            wait = await publish_when_due(registry)
        except Exception as exc:
            log.error("periodic publication failed (%s); will retry next interval", _why(exc))
            wait = interval


def _why(exc: BaseException) -> str:
    """An exception as one line of a log (a database error's text spans several)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


async def publish_at_start(registry: Registry) -> None:
    """The start-up publication: a failure is logged in one line and the server serves on
    (the last directory stays what clients get; the periodic task tries again)."""
    try:
        await publish_if_stale(registry)
    except Exception as exc:
        log.error("publication at start-up failed (%s); serving the last directory", _why(exc))
