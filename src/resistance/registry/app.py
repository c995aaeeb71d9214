"""The registry's ASGI application, built by :func:`create_app` from explicit settings.

Theory of operation of the lifespan: migrate the database (unless told not
to), open the engine, load or make the signing keys and the ring key, make
the admin token on first start (handed to ``on_admin_token`` once, never
stored in clear), publish a directory if none is fresh, then start the named
periodic-publication and raw-result pruning tasks; on shutdown cancel those
tasks and close the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI

from resistance.paths import resolve_state_dir
from resistance.registry import retention, services
from resistance.registry.canary import CanaryServer, load_or_create_canary_key
from resistance.registry.db import database_url, make_engine, make_sessions, migrate
from resistance.registry.errors import install_error_handlers
from resistance.registry.guard import RequestGuard
from resistance.registry.keys import load_or_create_ring_key, load_or_create_signing_keys
from resistance.registry.ratelimit import TokenBucketLimiter
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
PRUNE_TASK = "registry-prune-raw-results"
#: Seconds a pruning chunk under way gets to finish on shutdown before it is cancelled.
PRUNE_GRACE = 30.0


async def open_registry(settings: RegistrySettings) -> Registry:
    """Migrate, connect and load keys: everything but serving (used by the lifespan)."""
    state_dir = resolve_state_dir(settings.state_dir)
    url = database_url(settings.database_url, state_dir)
    if settings.auto_migrate:
        await migrate(url)
    engine = make_engine(url)
    return Registry(
        settings=settings,
        engine=engine,
        sessions=make_sessions(engine),
        signing_keys=load_or_create_signing_keys(state_dir),
        ring_key=load_or_create_ring_key(state_dir),
        wireguard_prober=load_or_create_prober_key(state_dir),
        signup_limiter=TokenBucketLimiter(
            settings.signup_limit, max_clients=settings.rate_limit_clients
        ),
        public_limiter=TokenBucketLimiter(
            settings.public_limit, max_clients=settings.rate_limit_clients
        ),
    )


def create_app(
    settings: RegistrySettings,
    *,
    on_admin_token: Callable[[str], None] | None = None,
    clock: Callable[[], float] | None = None,
) -> FastAPI:
    """The registry app.  ``on_admin_token`` receives the admin token the one time it is made."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = await open_registry(settings)
        if clock is not None:
            registry.clock = clock
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
            token = await services.ensure_admin_token(registry)
            if token is not None and on_admin_token is not None:
                on_admin_token(token)
            await services.publish_if_stale(registry)
            app.state.registry = registry
            if settings.publish_interval > 0:
                tasks.append(
                    asyncio.create_task(services.publish_periodically(registry), name=PUBLISH_TASK)
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
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if canary is not None:
                await canary.close()
            await registry.engine.dispose()

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
    app.include_router(dashboard.router())
    app.add_middleware(
        RequestGuard,
        max_body=settings.max_body_bytes,
        max_headers=settings.max_headers,
        max_header_bytes=settings.max_header_bytes,
        body_timeout=settings.body_timeout,
    )
    return app
