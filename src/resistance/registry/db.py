"""Engines and migrations: the only place that knows database URLs.

The default database is a SQLite file in the state directory, so a registry
needs no set-up; PostgreSQL is chosen by URL (``postgresql+asyncpg://...``).
The schema is only ever changed by the Alembic migrations in ``migrations/``,
run by ``resist registry migrate`` or automatically on start.

Several registry processes may share one PostgreSQL database (``serve
--workers N``, or machines behind a load balancer).  What must happen once
at a time across all of them -- migrating, the start-up steps, signing a
directory -- runs under :func:`advisory_lock`, a PostgreSQL transaction-level
advisory lock that the server releases when the holder commits, rolls back
or dies.  SQLite serves one process only (``serve`` refuses more), so there
the lock is a no-op and the in-process locks suffice.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, func, select
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession

from resistance.errors import ConfigError

MIGRATIONS = Path(__file__).with_name("migrations")
SQLITE_FILE = "registry.sqlite3"


def database_url(url: str | None, state_dir: Path) -> str:
    """The async URL to use: the given one (driver filled in) or SQLite in the state dir."""
    if not url:
        return f"sqlite+aiosqlite:///{state_dir / SQLITE_FILE}"
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"bad database URL {url!r}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif backend == "postgresql":
        parsed = parsed.set(drivername="postgresql+asyncpg")
    else:
        raise ConfigError(f"database {backend!r} is not supported: use sqlite or postgresql")
    return parsed.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


class Lock(enum.IntEnum):
    """The advisory locks registry processes take, by key (one 64-bit number each)."""

    MIGRATE = 0x5245_5349_0001
    START = 0x5245_5349_0002
    PUBLISH = 0x5245_5349_0003


@contextlib.asynccontextmanager
async def advisory_lock(engine: AsyncEngine, lock: Lock) -> AsyncIterator[AsyncConnection | None]:
    """Hold ``lock`` against every other process on this PostgreSQL database until exit.

    Waits for a holder to finish.  Yields the transaction that holds it (the
    caller may work in it) or ``None`` on SQLite, where nothing is taken.
    """
    if engine.dialect.name != "postgresql":
        yield None
        return
    async with engine.connect() as connection, connection.begin():
        await connection.execute(select(func.pg_advisory_xact_lock(int(lock))))
        yield connection


def make_engine(
    url: str, *, pool_size: int = 5, max_overflow: int = 10, pool_timeout: float = 30.0
) -> AsyncEngine:
    """An engine for ``url`` whose pool keeps ``pool_size`` connections, opens up to
    ``max_overflow`` more under load, and makes a checkout wait at most ``pool_timeout``
    seconds (then :class:`sqlalchemy.exc.TimeoutError`, answered 503 by the API)."""
    parsed = make_url(url)
    in_memory = parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")
    pool: dict[str, Any] = (
        {}  # one connection, shared (StaticPool): nothing to size
        if in_memory
        else {"pool_size": pool_size, "max_overflow": max_overflow, "pool_timeout": pool_timeout}
    )
    engine = create_async_engine(url, pool_pre_ping=url.startswith("postgresql"), **pool)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def make_sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _upgrade(connection: Connection, url: str, revision: str) -> None:
    config = alembic_config(url)
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def migrate(url: str, *, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (the newest by default)."""
    engine = make_engine(url)
    try:
        # Processes starting together: the first migrates, the rest wait for it
        # and then find nothing to do (PostgreSQL's DDL is transactional).
        async with advisory_lock(engine, Lock.MIGRATE) as locked:
            if locked is not None:
                await locked.run_sync(_upgrade, url, revision)
            else:
                async with engine.begin() as connection:
                    await connection.run_sync(_upgrade, url, revision)
    except (OSError, SQLAlchemyError) as exc:
        raise ConfigError(f"cannot migrate the database: {_one_line(exc)}") from None
    finally:
        await engine.dispose()


def _one_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
