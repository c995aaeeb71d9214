"""The registry's ASGI application, built by :func:`create_app` from explicit settings.

Theory of operation of the lifespan: migrate the database (unless told not
to), open the engine, load or make the signing keys and the ring key, make
the admin token on first start (handed to ``on_admin_token`` once, never
stored in clear), publish a directory if none is fresh, then start the named
periodic-publication and raw-result pruning tasks (and, on PostgreSQL, the
task that prunes the shared rate-limit buckets); on shutdown cancel them and close the engine.

Several processes may run this on one PostgreSQL database at once (``serve
--workers N``, or machines behind a load balancer): migrating, and the
admin token with the start-up publication, each run under an advisory lock
(:func:`resistance.registry.db.advisory_lock`), so the first process does
them and the others find them done -- one admin token, one directory.  A
process whose signing keys did not sign the current directory refuses to
start (:func:`resistance.registry.services.check_signing_keys`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from resistance.net.resolve import NameServerResolver, Resolver, system_resolver
from resistance.paths import resolve_state_dir
from resistance.registry import probes, retention, services
from resistance.registry.canary import CanaryServer, load_or_create_canary_key
from resistance.registry.db import (
    Lock,
    advisory_lock,
    database_url,
    make_engine,
    make_sessions,
    migrate,
)
from resistance.registry.errors import install_error_handlers
from resistance.registry.guard import RequestGuard
from resistance.registry.keys import load_or_create_ring_key, load_or_create_signing_keys
from resistance.registry.ratelimit import buckets_engine, make_limiter, prune_buckets
from resistance.registry.routes import censor as censor_routes
from resistance.registry.routes import mtproto as mtproto_routes
from resistance.registry.routes import probes as probe_routes
from resistance.registry.routes import rounds as round_routes
from resistance.registry.routes import tokens as token_routes
from resistance.registry.routes import wireguard as wireguard_routes
from resistance.registry.routes.proxies import accounts, public
from resistance.registry.services import Registry
from resistance.registry.settings import RegistrySettings
from resistance.registry.ui import pages as dashboard
from resistance.registry.wireguard import load_or_create_prober_key

PUBLISH_TASK = "registry-publish-directory"
BUCKETS_TASK = "registry-prune-rate-buckets"
#: Seconds between prunings of the shared rate-limit buckets.
PRUNE_SECONDS = 60.0
PRUNE_TASK = "registry-prune-raw-results"
#: Seconds a pruning chunk under way gets to finish on shutdown before it is cancelled.
PRUNE_GRACE = 30.0
log = logging.getLogger(__name__)


async def open_registry(settings: RegistrySettings) -> Registry:
    """Migrate, connect and load keys: everything but serving (used by the lifespan)."""
    state_dir = resolve_state_dir(settings.state_dir)
    url = database_url(settings.database_url, state_dir)
    if settings.auto_migrate:
        await migrate(url)
    engine = make_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_overflow,
        pool_timeout=settings.db_pool_timeout,
    )
    clients = settings.rate_limit_clients
    # Several processes may serve a PostgreSQL database: their rate limits are shared.
    buckets = buckets_engine(engine.url) if engine.dialect.name == "postgresql" else None
    dns = settings.dns
    return Registry(
        resolver=(
            NameServerResolver(dns.host, dns.port, lifetime=settings.resolve_timeout)
            if dns is not None
            else system_resolver
        ),
        settings=settings,
        engine=engine,
        sessions=make_sessions(engine),
        signing_keys=load_or_create_signing_keys(state_dir),
        ring_key=load_or_create_ring_key(state_dir),
        wireguard_prober=load_or_create_prober_key(state_dir),
        buckets=buckets,
        signup_limiter=make_limiter(buckets, "signup", settings.signup_limit, max_clients=clients),
        public_limiter=make_limiter(buckets, "public", settings.public_limit, max_clients=clients),
    )


async def _prune_periodically(buckets: AsyncEngine, clock: Callable[[], float]) -> None:
    """The named background task: forget shared rate-limit buckets that are full again."""
    while True:
        await asyncio.sleep(PRUNE_SECONDS)
        try:
            await prune_buckets(buckets, now=clock())
        except Exception:
            log.exception("pruning the rate-limit buckets failed; will retry")


def create_app(
    settings: RegistrySettings,
    *,
    on_admin_token: Callable[[str], None] | None = None,
    clock: Callable[[], float] | None = None,
    resolver: Resolver | None = None,
) -> FastAPI:
    """The registry app.  ``on_admin_token`` receives the admin token the one time it is made;
    ``resolver`` resolves endpoint names (default: the host's; tests pass their own)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = await open_registry(settings)
        if clock is not None:
            registry.clock = clock
        if resolver is not None:
            registry.resolver = resolver
        tasks: list[asyncio.Task[None]] = []
        stop_pruning = asyncio.Event()
        canary: CanaryServer | None = None
        try:
            if settings.canary is not None:
                registry.canary_key = load_or_create_canary_key(
                    resolve_state_dir(settings.state_dir)
                )
                canary = CanaryServer(registry.canary_key)
                registry.canary_address = await canary.start(settings.canary)
            async with advisory_lock(registry.engine, Lock.START):
                await services.check_signing_keys(registry)
                token = await services.ensure_admin_token(registry)
                if token is not None and on_admin_token is not None:
                    on_admin_token(token)
                await services.publish_at_start(registry)
            app.state.registry = registry
            if registry.engine.dialect.name == "postgresql":
                # The first count of flagged probes reads every fresh evidence row
                # (18 s at 100,000 proxies): begun now, the first batches need not wait.
                probes.count_flags_at_start(registry)
            if settings.publish_interval > 0:
                tasks.append(
                    asyncio.create_task(services.publish_periodically(registry), name=PUBLISH_TASK)
                )
            if registry.buckets is not None:
                tasks.append(
                    asyncio.create_task(
                        _prune_periodically(registry.buckets, registry.clock), name=BUCKETS_TASK
                    )
                )
            if settings.retention_days > 0:
                tasks.append(
                    asyncio.create_task(
                        retention.prune_periodically(registry, stop_pruning), name=PRUNE_TASK
                    )
                )
            yield
        finally:
            stop_pruning.set()  # pruning ends between two chunks, not inside a query
            for task in tasks:
                if task.get_name() == PRUNE_TASK:
                    await asyncio.wait({task}, timeout=PRUNE_GRACE)
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if canary is not None:
                await canary.close()
            await registry.shards.close()  # a count of flags still running
            if registry.round_workers is not None:
                registry.round_workers.shutdown(wait=False, cancel_futures=True)
            await registry.engine.dispose()
            if registry.buckets is not None:
                await registry.buckets.dispose()

    app = FastAPI(
        title="Digital Resistance registry",
        version="1",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    install_error_handlers(app)
    app.include_router(public)
    app.include_router(accounts)
    app.include_router(probe_routes.router)
    app.include_router(round_routes.router)
    app.include_router(wireguard_routes.router)
    app.include_router(mtproto_routes.router)
    app.include_router(token_routes.router)
    app.include_router(censor_routes.router)
    app.include_router(dashboard.router())
    app.add_middleware(
        RequestGuard,
        max_body=settings.max_body_bytes,
        max_headers=settings.max_headers,
        max_header_bytes=settings.max_header_bytes,
        body_timeout=settings.body_timeout,
    )
    return app
