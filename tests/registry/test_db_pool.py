"""The database pool is sized by options, and a request that gets no connection within
the pool's wait is answered 503 with Retry-After (overload, retried by probes) instead of
500 (issue 25: the scale bench's 100 probes saw 500s from 5 + 10 connections, 30 s)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from resistance.cli import main
from resistance.errors import ConfigError
from resistance.registry.db import make_engine
from tests.registry.conftest import make_settings, start_registry


async def test_a_request_that_gets_no_connection_in_time_is_answered_503(
    tmp_path: Path, db_url: str
) -> None:
    async with start_registry(
        tmp_path / "reg", db_url, db_pool_size=2, db_pool_overflow=0, db_pool_timeout=0.2
    ) as reg:
        admin = reg.client(token=reg.admin_token)
        assert (await admin.get("/api/v1/probes")).status_code == 200
        engine = reg.registry.engine
        async with engine.connect() as one, engine.connect() as two:  # the pool's two
            await one.execute(select(1))
            await two.execute(select(1))
            busy = await admin.get("/api/v1/probes")
            assert busy.status_code == 503, busy.text
            assert busy.headers["Retry-After"] == "5"
            assert busy.json()["retry_after"] == 5
            assert "busy" in busy.json()["error"]
        assert (await admin.get("/api/v1/probes")).status_code == 200


def test_the_pool_is_sized_as_asked(tmp_path: Path) -> None:
    engine = make_engine(
        f"sqlite+aiosqlite:///{tmp_path / 'r.sqlite3'}",
        pool_size=7,
        max_overflow=3,
        pool_timeout=2.5,
    )
    pool = engine.pool
    assert (pool.size(), pool._max_overflow, pool._timeout) == (7, 3, 2.5)  # type: ignore[attr-defined]
    assert type(make_engine("sqlite+aiosqlite://").pool).__name__ == "StaticPool"


@pytest.mark.parametrize(
    "pool", [{"db_pool_size": 1}, {"db_pool_overflow": -1}, {"db_pool_timeout": 0}]
)
def test_a_pool_that_cannot_serve_is_refused(tmp_path: Path, pool: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="database pool"):
        make_settings(tmp_path, "sqlite+aiosqlite:///x", **pool)


def test_serve_takes_the_pool_options() -> None:
    shown = CliRunner().invoke(main, ["registry", "serve", "--help"])
    assert "--db-pool-timeout" in shown.output and "--db-pool-overflow" in shown.output
    refused = CliRunner().invoke(main, ["registry", "serve", "--db-pool", "1"])
    assert refused.exit_code == 2 and "--db-pool" in refused.output
