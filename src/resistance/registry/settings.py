"""The registry's settings: one frozen object, checked once, passed explicitly."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resistance.config import Endpoint
from resistance.errors import ConfigError

NETWORKS = ("bitcoin", "testnet", "signet", "regtest")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket: ``burst`` requests at once, refilled at ``per_second``."""

    per_second: float
    burst: int


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    state_dir: Path
    database_url: str | None = None
    network: str = "bitcoin"
    listen: Endpoint = field(default_factory=lambda: Endpoint("127.0.0.1", 8080))
    auto_migrate: bool = True
    #: Seconds between automatic publications; 0 publishes only on start and on demand.
    publish_interval: float = 3600.0
    fresh_seconds: int = 3 * 3600
    valid_seconds: int = 24 * 3600
    #: How many non-public proxies one requester network gets per day.
    assign_count: int = 3
    challenge_timeout: float = 10.0
    #: How long resolving an endpoint's DNS name may take at registration.
    resolve_timeout: float = 5.0
    #: The DNS server that resolves endpoint names (None: the host's resolver).
    dns: Endpoint | None = None
    statement_skew: int = 300
    #: Accept proxies on loopback/private addresses (tests and labs only).
    allow_private_endpoints: bool = False
    #: Approve grant rounds whose period is not over yet (labs and tests only:
    #: otherwise a round is approved only once every day it pays for is measured).
    approve_open_periods: bool = False
    signup_limit: RateLimit = field(default_factory=lambda: RateLimit(1 / 60, 5))
    public_limit: RateLimit = field(default_factory=lambda: RateLimit(5.0, 60))
    rate_limit_clients: int = 10_000
    max_body_bytes: int = 64 * 1024
    # --- HTTP server limits (`resist registry serve` options; see resistance.registry.server)
    #: Seconds a client has to send a request's whole header block (slow headers are cut).
    header_timeout: float = 10.0
    #: Seconds a client has to send a request's whole body once its headers are in (408).
    body_timeout: float = 30.0
    #: Seconds an idle keep-alive connection stays open between requests.
    keepalive_timeout: int = 5
    #: At most this many header lines and this many bytes of them (431 beyond).
    max_headers: int = 64
    max_header_bytes: int = 16 * 1024
    #: Connections (and requests in progress) at once; beyond it requests get 503.
    max_connections: int = 1000
    #: Networks whose X-Forwarded-For/-Proto is believed (a reverse proxy); empty: nobody.
    trust_proxy: tuple[str, ...] = ()
    #: Where the canary listens (``None``: no canary; probes then stop after CONNECT).
    canary: Endpoint | None = None
    #: How often each probe measures each proxy; offsets inside a round are random.
    probe_round_seconds: int = 600
    #: A proxy that is up and on no censor's list, for probes' control checks:
    #: {"host", "port", "username", "password"} (see resistance.probe.controls).
    probe_control: dict[str, Any] | None = None
    #: Verdict rules (see :mod:`resistance.probe.verdict`).
    verdict_window_seconds: int = 3600
    blocked_min_probes: int = 2
    blocked_min_windows: int = 2
    down_after: int = 2
    #: Batches older than this (by their own clock) are refused.
    batch_max_age: int = 7 * 86400
    #: Probes of each vantage network that measure each proxy (see resistance.registry.shard).
    probe_replicas: int = 3
    #: A probe outvoted by its peers on more than this share of the proxies it was compared
    #: on (at least ``probe_flag_min`` of them) is flagged as lying or broken.
    probe_flag_rate: float = 0.25
    probe_flag_min: int = 20
    #: Days raw results and batch bodies are kept after they arrive (0: for ever); see
    #: :mod:`resistance.registry.retention`.  Pruned every ``prune_interval`` seconds, at
    #: most ``prune_chunk`` batches per transaction.
    retention_days: int = 3
    prune_interval: float = 600.0
    prune_chunk: int = 500
    #: Database connections each registry process keeps open, how many more it may open
    #: under load, and how long a request waits for one before it is answered 503.  At
    #: least 2: start-up and publishing hold an advisory lock on one and work on another.
    db_pool_size: int = 5
    db_pool_overflow: int = 10
    db_pool_timeout: float = 30.0
    #: Keep the last publication's directory entries (and the rows they were built
    #: from) in memory, to rebuild only changed ones (see resistance.registry.entries).
    keep_entries: bool = False

    def __post_init__(self) -> None:
        if self.network not in NETWORKS:
            raise ConfigError(f"network must be one of {', '.join(NETWORKS)}, not {self.network!r}")
        if self.publish_interval < 0:
            raise ConfigError("publish interval must be 0 (off) or a positive number of seconds")
        if not 0 < self.fresh_seconds <= self.valid_seconds:
            raise ConfigError("directory lifetimes must satisfy 0 < fresh <= valid")
        if not 1 <= self.assign_count <= 100:
            raise ConfigError("assign count must be 1-100")
        if self.challenge_timeout <= 0 or self.statement_skew <= 0 or self.resolve_timeout <= 0:
            raise ConfigError(
                "challenge timeout, resolve timeout and statement skew must be positive"
            )
        for limit in (self.signup_limit, self.public_limit):
            if limit.per_second <= 0 or limit.burst < 1:
                raise ConfigError("rate limits need a positive rate and a burst of at least 1")
        if self.rate_limit_clients < 1 or self.max_body_bytes < 1024:
            raise ConfigError("rate limit table and body limit are too small")
        if self.probe_round_seconds < 0 or self.verdict_window_seconds < 1:
            raise ConfigError("probe round must be >= 0 s and the verdict window >= 1 s")
        if min(self.blocked_min_probes, self.blocked_min_windows, self.down_after) < 1:
            raise ConfigError("verdict thresholds must be at least 1")
        if min(self.header_timeout, self.body_timeout) <= 0 or self.keepalive_timeout < 1:
            raise ConfigError("header and body timeouts must be positive, keep-alive at least 1 s")
        if not 8 <= self.max_headers <= 1000 or not 1024 <= self.max_header_bytes <= 1 << 20:
            raise ConfigError("header limits must be 8-1000 lines and 1 KiB-1 MiB")
        if self.max_connections < 1:
            raise ConfigError("max connections must be at least 1")
        for network in self.trust_proxy:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ConfigError(f"--trust-proxy {network!r} is not an address or CIDR") from None
        if not 1 <= self.probe_replicas <= 100:
            raise ConfigError("probe replicas must be 1-100")
        if not 0 <= self.probe_flag_rate < 1 or self.probe_flag_min < 1:
            raise ConfigError("probe flag rate must be in [0, 1) and its minimum at least 1")
        if self.batch_max_age < 60:
            raise ConfigError("batch max age must be at least 60 s")
        if self.db_pool_size < 2 or self.db_pool_overflow < 0 or self.db_pool_timeout <= 0:
            raise ConfigError(  # start-up and publishing hold a lock on one, work on another
                "the database pool needs at least 2 connections, an overflow >= 0 and a "
                "positive wait"
            )
        if self.retention_days < 0 or self.prune_interval <= 0 or self.prune_chunk < 1:
            raise ConfigError(
                "retention must be >= 0 days, the prune interval positive, its chunk >= 1"
            )
