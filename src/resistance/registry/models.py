"""Tables of the registry (SQLAlchemy 2 typed mappings).

Times are integer unix seconds (portable across SQLite and PostgreSQL and
comparable without time zones).  Tokens are stored only as SHA-256 hex
digests.  The schema itself is created and changed only by migrations.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Double,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Operator(Base):
    __tablename__ = "operators"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    payout_address: Mapped[str | None] = mapped_column(String(100))
    payout_type: Mapped[str | None] = mapped_column(String(16))


class ApiToken(Base):
    """A bearer token: ``role`` is ``admin``, ``operator`` or ``probe``."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    role: Mapped[str] = mapped_column(String(16), index=True)
    operator_id: Mapped[int | None] = mapped_column(
        ForeignKey("operators.id", ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    #: The probe account a ``probe`` token belongs to (migration 0002).
    probe_id: Mapped[int | None] = mapped_column(
        ForeignKey("probe_accounts.id", ondelete="CASCADE"), index=True
    )
    #: When it stops working (null: never) and when it was revoked or rotated away
    #: (migration 0008); see :mod:`resistance.registry.tokens`.
    expires_at: Mapped[int | None] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger)


class Proxy(Base):
    __tablename__ = "proxies"
    __table_args__ = (UniqueConstraint("host", "port", name="uq_proxies_endpoint"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    operator_id: Mapped[int] = mapped_column(
        ForeignKey("operators.id", ondelete="CASCADE"), index=True
    )
    #: An IP literal, or a DNS name (migration 0018) that the directory carries.
    host: Mapped[str] = mapped_column(String(253))
    port: Mapped[int] = mapped_column(Integer)
    #: What a DNS-name host resolved to when control was proven, every address
    #: checked by policy and the proof made against the first (null: an IP literal).
    addresses: Mapped[list[str] | None] = mapped_column(JSON)
    #: The /24 (IPv4) or /48 (IPv6) the endpoint is in, e.g. ``203.0.113.0/24``.
    network: Mapped[str] = mapped_column(String(64), index=True)
    public_key: Mapped[str] = mapped_column(String(64))
    protocols: Mapped[list[str]] = mapped_column(JSON)
    probe_user: Mapped[str] = mapped_column(String(255))
    probe_password: Mapped[str] = mapped_column(String(255))
    #: Credentials handed to users: a list of {"username", "password"}.
    credentials: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    public: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String(16))
    registered_at: Mapped[int] = mapped_column(BigInteger)
    verified_at: Mapped[int] = mapped_column(BigInteger)
    #: The SOCKS5-inside-TLS port and the SHA-256 (hex) of the DER certificate the
    #: node presented there while proving its key (migration 0003); both or neither.
    tls_port: Mapped[int | None] = mapped_column(Integer)
    tls_sha256: Mapped[str | None] = mapped_column(String(64))
    # --- WireGuard endpoints (migration 0005) -------------------------------------------
    # A row with protocols ["wireguard"] is a WireGuard server at host:port (UDP).  It
    # proves control with a handshake, not an Ed25519 statement: its ``public_key`` is
    # "" and it has no credentials nor probe login ("" / []).
    #: The WireGuard server's public key (standard base64, as ``wg pubkey`` prints it).
    wg_public_key: Mapped[str | None] = mapped_column(String(44))
    #: The probes' WireGuard keys the operator added as probe peers when registering:
    #: only those probes are sent to check it (others would see silence).
    wg_probe_keys: Mapped[list[str] | None] = mapped_column(JSON)
    #: An AmneziaWG endpoint's obfuscation parameters (protocols ["amneziawg"], migration
    #: 0010): what its handshake needs besides the keys.  Probes get them; the directory not.
    awg_params: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # --- MTProto proxies (migration 0006) ----------------------------------------------
    # A row with protocols ["mtproto"] is an MTProto proxy at host:port (TCP), proven by
    # a req_pq_multi answered through it with the operator's prober secret (see
    # :mod:`resistance.registry.mtproto`); no node key, credentials nor probe login.
    #: How users connect: "classic", "dd" (padded intermediate) or "ee" (fake-TLS).
    mtproto_mode: Mapped[str | None] = mapped_column(String(8))
    #: The fake-TLS domain of an "ee" proxy (what its ClientHello names).
    mtproto_domain: Mapped[str | None] = mapped_column(String(253))
    #: The 16-byte secret key (hex) probes check with; never published.
    mtproto_key: Mapped[str | None] = mapped_column(String(32))
    # --- cascades (migration 0013) -----------------------------------------------------
    #: "exit": a node abroad that bridges relay to; never in the directory nor handed
    #: out, paid only through its bridges.  "bridge": a node (on a domestic address)
    #: relaying everything to ``exit_id``.  Null: an ordinary proxy.
    cascade_role: Mapped[str | None] = mapped_column(String(8))
    exit_id: Mapped[int | None] = mapped_column(
        ForeignKey("proxies.id", ondelete="SET NULL"), index=True
    )

    @property
    def address(self) -> str:
        """The IP address the proxy was proven at: its host, or its name's first address."""
        return proven_address(self)


def proven_address(proxy: Any) -> str:
    """:attr:`Proxy.address` of a proxy or of a plain row of its columns (the directory
    reads rows, not objects): its host, or its name's first proven address."""
    addresses = proxy.addresses
    return str(addresses[0]) if addresses else str(proxy.host)


class StatementNonce(Base):
    """Nonces of accepted registration statements, kept while their timestamp is fresh."""

    __tablename__ = "statement_nonces"

    nonce: Mapped[str] = mapped_column(String(32), primary_key=True)
    seen_at: Mapped[int] = mapped_column(BigInteger, index=True)


class RateBucket(Base):
    """A client network's token bucket of one rate limit, shared by every registry
    process on the database (migration 0017; used on PostgreSQL, see ratelimit.py)."""

    __tablename__ = "rate_buckets"

    limiter: Mapped[str] = mapped_column(String(16), primary_key=True)
    client: Mapped[str] = mapped_column(String(64), primary_key=True)
    tokens: Mapped[float] = mapped_column(Double)
    at: Mapped[float] = mapped_column(Double)
    #: When the bucket is full again: from then on the row says nothing and is pruned.
    full_at: Mapped[float] = mapped_column(Double, index=True)
    #: Whether the request that last touched the bucket passed.
    passed: Mapped[bool] = mapped_column(Boolean)


class Publication(Base):
    """Every signed directory published, by serial."""

    __tablename__ = "publications"

    serial: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    published_at: Mapped[int] = mapped_column(BigInteger)
    body: Mapped[str] = mapped_column(Text)


# --- probes (migration 0002) ----------------------------------------------------------


class ProbeAccount(Base):
    """A measuring vantage, created by the admin with the probe's own public key."""

    __tablename__ = "probe_accounts"
    __table_args__ = (Index("uq_probe_accounts_wg_public_key", "wg_public_key", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    public_key: Mapped[str] = mapped_column(String(64))
    country: Mapped[str] = mapped_column(String(2), index=True)
    control: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[int] = mapped_column(BigInteger)
    #: The WireGuard public key its agent announced, for WireGuard checks (migration 0005),
    #: proven by the probe's signature and held by one probe only (migration 0008).
    wg_public_key: Mapped[str | None] = mapped_column(String(44))
    #: When its last batch arrived and when it last pulled its assignment (migration 0016):
    #: a probe without a batch for 1.5 rounds is silent and its share goes to others.
    last_batch_at: Mapped[int | None] = mapped_column(BigInteger)
    last_assignment_at: Mapped[int | None] = mapped_column(BigInteger)


class ProbeBatch(Base):
    """A signed batch as uploaded (its file kept verbatim), at most once per batch id."""

    __tablename__ = "probe_batches"

    batch_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    probe_id: Mapped[int] = mapped_column(
        ForeignKey("probe_accounts.id", ondelete="CASCADE"), index=True
    )
    digest: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[int] = mapped_column(BigInteger, index=True)
    result_count: Mapped[int] = mapped_column(Integer)
    body: Mapped[str] = mapped_column(Text)


class ProbeResult(Base):
    """One check's raw result (also inside its batch's body, kept for audits)."""

    __tablename__ = "probe_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_id: Mapped[str] = mapped_column(
        ForeignKey("probe_batches.batch_id", ondelete="CASCADE"), index=True
    )
    probe_id: Mapped[int] = mapped_column(ForeignKey("probe_accounts.id", ondelete="CASCADE"))
    proxy_id: Mapped[int] = mapped_column(ForeignKey("proxies.id", ondelete="CASCADE"))
    measured_at: Mapped[int] = mapped_column(BigInteger)
    country: Mapped[str] = mapped_column(String(2))
    control: Mapped[bool] = mapped_column(Boolean)
    ok: Mapped[bool] = mapped_column(Boolean)
    step: Mapped[str | None] = mapped_column(String(16))
    failure: Mapped[str | None] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(String(128))
    connect_us: Mapped[int | None] = mapped_column(BigInteger)
    ttfb_us: Mapped[int | None] = mapped_column(BigInteger)
    throughput_kbps: Mapped[int | None] = mapped_column(BigInteger)
    #: The mechanism the probe's controls named for a failure (migration 0007).
    mechanism: Mapped[str | None] = mapped_column(String(24))


class ProbeEvidenceRow(Base):
    """What one probe last saw of one proxy (see :mod:`resistance.probe.verdict`)."""

    __tablename__ = "probe_evidence"

    proxy_id: Mapped[int] = mapped_column(
        ForeignKey("proxies.id", ondelete="CASCADE"), primary_key=True
    )
    probe_id: Mapped[int] = mapped_column(
        ForeignKey("probe_accounts.id", ondelete="CASCADE"), primary_key=True
    )
    country: Mapped[str] = mapped_column(String(2))
    control: Mapped[bool] = mapped_column(Boolean)
    last_at: Mapped[int] = mapped_column(BigInteger)
    last_ok: Mapped[bool] = mapped_column(Boolean)
    fail_streak: Mapped[int] = mapped_column(Integer)
    fail_windows: Mapped[list[int]] = mapped_column(JSON)
    #: The latest result's ``ok`` or named mechanism; null when it had none (0007).
    mechanism: Mapped[str | None] = mapped_column(String(24))
    #: The same for the node's other transports measured beside it, e.g. {"tls": "ok"}.
    transports: Mapped[dict[str, str] | None] = mapped_column(JSON)


class ProbeRollup(Base):
    """Daily totals per (proxy, UTC day, vantage country, control or not)."""

    __tablename__ = "probe_rollups"
    __table_args__ = (
        UniqueConstraint("proxy_id", "day", "country", "control", name="uq_probe_rollups_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    proxy_id: Mapped[int] = mapped_column(ForeignKey("proxies.id", ondelete="CASCADE"), index=True)
    day: Mapped[str] = mapped_column(String(10), index=True)
    country: Mapped[str] = mapped_column(String(2))
    control: Mapped[bool] = mapped_column(Boolean)
    attempts: Mapped[int] = mapped_column(Integer)
    successes: Mapped[int] = mapped_column(Integer)
    latency_hist: Mapped[list[int]] = mapped_column(JSON)
    latency_p50_ms: Mapped[int | None] = mapped_column(Integer)
    latency_p90_ms: Mapped[int | None] = mapped_column(Integer)
    throughput_hist: Mapped[list[int]] = mapped_column(JSON)
    throughput_p50_kbps: Mapped[int | None] = mapped_column(BigInteger)


class ProxyVerdict(Base):
    """A proxy's current status from the probes."""

    __tablename__ = "proxy_verdicts"

    proxy_id: Mapped[int] = mapped_column(
        ForeignKey("proxies.id", ondelete="CASCADE"), primary_key=True
    )
    verdict: Mapped[str] = mapped_column(String(16))
    blocked_in: Mapped[list[str]] = mapped_column(JSON)
    since: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class ProxyVerdictChange(Base):
    """Every change of a proxy's status, kept."""

    __tablename__ = "proxy_verdict_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    proxy_id: Mapped[int] = mapped_column(ForeignKey("proxies.id", ondelete="CASCADE"), index=True)
    at: Mapped[int] = mapped_column(BigInteger)
    verdict: Mapped[str] = mapped_column(String(16))
    blocked_in: Mapped[list[str]] = mapped_column(JSON)
    previous: Mapped[str] = mapped_column(String(16))


class BlocklistImport(Base):
    """One import of a censor's registry (Roskomnadzor dump or a prefix list): a version.

    ``ranges`` is the version's size in merged ranges, ``added`` and ``removed``
    how many ranges it gained and lost against the version before it (migration
    0018; both 0 for the first import and for imports made before history was kept).
    """

    __tablename__ = "blocklist_imports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16))
    updated: Mapped[str | None] = mapped_column(String(64))
    imported_at: Mapped[int] = mapped_column(BigInteger)
    prefixes: Mapped[int] = mapped_column(Integer)
    ranges: Mapped[int] = mapped_column(Integer)
    skipped: Mapped[int] = mapped_column(Integer)
    added: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    removed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class BlocklistRange(Base):
    """A merged range of the censor's registry and the versions it was part of.

    A row is stored once for the run of imports that keep it unchanged:
    ``first_import`` is the import that added it, ``until_import`` the one that
    dropped it (null while it is current).  A version ``v`` is the rows with
    ``first_import <= v`` and ``until_import`` null or above ``v``; its diff
    against the version before it is the rows with ``first_import = v``
    (added) and ``until_import = v`` (removed).  So storage grows with what
    changes between imports, not with their number times their size.

    IPv6 addresses are numbers below ``2**128`` and IPv4 ones ``2**128 +
    address``; 33 lowercase hex digits sort like the numbers they write, so
    "the range with the largest start <= address" is one indexed query.
    The import ids carry no foreign key: pruning old versions
    (:func:`resistance.registry.repositories.prune_blocklist`) drops imports
    whose ranges may still be current.
    """

    __tablename__ = "blocklist_spans"
    __table_args__ = (
        Index("ix_blocklist_spans_until_start", "until_import", "start_hex"),
        Index("ix_blocklist_spans_first_start", "first_import", "start_hex"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    start_hex: Mapped[str] = mapped_column(String(33))
    end_hex: Mapped[str] = mapped_column(String(33))
    first_import: Mapped[int] = mapped_column(Integer)
    until_import: Mapped[int | None] = mapped_column(Integer)


class ProxyBlocklistFlag(Base):
    """Whether a proxy's address is in the censor's registry, as of one import.

    ``listed_since`` is the first import of the unbroken run of versions that
    list the address (the import that blocked it), null when not listed.
    """

    __tablename__ = "proxy_blocklist_flags"

    proxy_id: Mapped[int] = mapped_column(
        ForeignKey("proxies.id", ondelete="CASCADE"), primary_key=True
    )
    import_id: Mapped[int] = mapped_column(Integer)
    listed: Mapped[bool] = mapped_column(Boolean)
    checked_at: Mapped[int] = mapped_column(BigInteger)
    listed_since: Mapped[int | None] = mapped_column(Integer)


# --- grant rounds (migration 0004) ---------------------------------------------------


class GrantRoundRow(Base):
    """A grant round kept by the registry: draft, approved (frozen) or paid.

    ``settings``, ``inputs`` and ``result`` hold the round file's parts as
    canonical JSON text, so an approved round's digest is recomputed from the
    very bytes that were approved.  ``carry_ids`` lists the carried amounts
    (``grant_carries``) the round's inputs take in; approval claims them.
    """

    __tablename__ = "grant_rounds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    network: Mapped[str] = mapped_column(String(16))
    target_country: Mapped[str] = mapped_column(String(2), index=True)
    period_start: Mapped[str] = mapped_column(String(10))
    period_end: Mapped[str] = mapped_column(String(10))
    budget_sat: Mapped[int] = mapped_column(BigInteger)
    paid_sat: Mapped[int] = mapped_column(BigInteger)
    payouts: Mapped[int] = mapped_column(Integer)
    settings: Mapped[str] = mapped_column(Text)
    inputs: Mapped[str] = mapped_column(Text)
    result: Mapped[str] = mapped_column(Text)
    carry_ids: Mapped[list[int]] = mapped_column(JSON)
    #: Operators left out for want of a payout address when the inputs were built.
    skipped_operators: Mapped[list[str]] = mapped_column(JSON)
    digest: Mapped[str | None] = mapped_column(String(64))
    txid: Mapped[str | None] = mapped_column(String(64), unique=True)
    tx_hex: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)
    approved_at: Mapped[int | None] = mapped_column(BigInteger)
    paid_at: Mapped[int | None] = mapped_column(BigInteger)
    #: What views show of the inputs without parsing them (migration 0015): canonical JSON
    #: ``{"rollups": n, "signatures": [key ids], "carried_in": [...]}``; null for rounds
    #: computed before it.
    summary: Mapped[str | None] = mapped_column(Text, nullable=True)


class GrantRoundProxy(Base):
    """A round's signed inputs summed per proxy, in the order the funder's page shows them
    (operator, then proxy), so the page reads one page of rows (migration 0015)."""

    __tablename__ = "grant_round_proxies"

    round_pk: Mapped[int] = mapped_column(
        ForeignKey("grant_rounds.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    proxy_id: Mapped[str] = mapped_column(String(32))
    operator: Mapped[str] = mapped_column(String(64))
    network: Mapped[str] = mapped_column(String(64))
    days: Mapped[int] = mapped_column(Integer)
    control_attempts: Mapped[int] = mapped_column(BigInteger)
    control_successes: Mapped[int] = mapped_column(BigInteger)
    target_attempts: Mapped[int] = mapped_column(BigInteger)
    target_successes: Mapped[int] = mapped_column(BigInteger)


class GrantRoundChunk(Base):
    """One chunk of a round's /2 inputs, its exact text, in manifest order (migration
    0019): a round's inputs are stored as bounded values, whatever its size; the round's
    ``inputs`` column keeps the manifest, carried amounts, prior service and signatures."""

    __tablename__ = "grant_round_chunks"

    round_pk: Mapped[int] = mapped_column(
        ForeignKey("grant_rounds.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    body: Mapped[str] = mapped_column(Text)


class GrantCarry(Base):
    """An amount a paid round owed an operator below the minimum payout, for a later round.

    Made when its round is marked paid; ``consumed_by`` is set when a later
    round that takes it in is approved, so each amount is paid out once.
    """

    __tablename__ = "grant_carries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_round: Mapped[int] = mapped_column(
        ForeignKey("grant_rounds.id", ondelete="RESTRICT"), index=True
    )
    operator_id: Mapped[int] = mapped_column(
        ForeignKey("operators.id", ondelete="CASCADE"), index=True
    )
    amount_sat: Mapped[int] = mapped_column(BigInteger)
    consumed_by: Mapped[int | None] = mapped_column(
        ForeignKey("grant_rounds.id", ondelete="RESTRICT"), index=True
    )
    created_at: Mapped[int] = mapped_column(BigInteger)
