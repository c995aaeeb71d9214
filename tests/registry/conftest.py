"""Registry fixtures: a fresh database per test on SQLite and PostgreSQL, a running app.

PostgreSQL tests clone a template database migrated once per session
(``CREATE DATABASE ... TEMPLATE``), so each test has its own database at the
cost of a file copy; they are skipped only if PostgreSQL is not reachable.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from resistance.registry.app import create_app
from resistance.registry.db import migrate
from resistance.registry.server import server_config
from resistance.registry.services import Registry
from resistance.registry.settings import RateLimit, RegistrySettings

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
GENEROUS = RateLimit(per_second=1000.0, burst=10_000)


async def no_dns(name: str) -> list[str]:
    """The resolver test registries get: tests never resolve real names, so every name
    fails as an unknown one would (tests that need names inject a table of their own)."""
    raise socket.gaierror(socket.EAI_NONAME, f"{name[:60]}: no resolution in tests")


async def _pg_admin(*statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN, timeout=3)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def _pg_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            pass
        asyncio.run(_pg_admin("SELECT 1"))
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    if not _pg_reachable():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    name = f"resist_tpl_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        asyncio.run(migrate(PG_URL.format(name=name)))
        yield name
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'registry-test.sqlite3'}"
        return
    template = request.getfixturevalue("pg_template")
    name = f"resist_t_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    try:
        yield PG_URL.format(name=name)
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def make_settings(state_dir: Path, db_url: str, **overrides: Any) -> RegistrySettings:
    values: dict[str, Any] = {
        "state_dir": state_dir,
        "database_url": db_url,
        "network": "regtest",
        "publish_interval": 0,
        "allow_private_endpoints": True,
        "challenge_timeout": 5.0,
        "signup_limit": GENEROUS,
        "public_limit": GENEROUS,
    }
    values.update(overrides)
    return RegistrySettings(**values)


@dataclass
class RunningRegistry:
    app: Any
    admin_token: str
    state_dir: Path
    clients: list[httpx.AsyncClient] = field(default_factory=list)
    #: Operator ids by token, for statements (they name their operator).
    operator_ids: dict[str, int] = field(default_factory=dict)

    @property
    def registry(self) -> Registry:
        registry: Registry = self.app.state.registry
        return registry

    def client(self, ip: str = "127.0.0.1", token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app, client=(ip, 40000)),
            base_url="http://registry.test",
            headers=headers,
            timeout=30,
        )
        self.clients.append(client)
        return client

    async def operator(self, name: str) -> str:
        response = await self.client().post("/api/v1/operators", json={"name": name})
        assert response.status_code == 201, response.text
        token: str = response.json()["token"]
        self.operator_ids[token] = response.json()["operator_id"]
        return token


@pytest.fixture
async def running(tmp_path: Path, db_url: str) -> AsyncIterator[RunningRegistry]:
    async with start_registry(tmp_path / "registry", db_url) as reg:
        yield reg


class start_registry:
    """Run the app's lifespan around a block: ``async with start_registry(...) as reg``."""

    def __init__(self, state_dir: Path, db_url: str, **overrides: Any) -> None:
        self.settings = make_settings(state_dir, db_url, **overrides)
        self.tokens: list[str] = []
        self.app = create_app(self.settings, on_admin_token=self.tokens.append, resolver=no_dns)
        self._ctx: Any = None
        self.reg: RunningRegistry | None = None

    async def __aenter__(self) -> RunningRegistry:
        self._ctx = self.app.router.lifespan_context(self.app)
        await self._ctx.__aenter__()
        self.reg = RunningRegistry(
            self.app, self.tokens[0] if self.tokens else "", self.settings.state_dir
        )
        return self.reg

    async def __aexit__(self, *exc: object) -> None:
        assert self.reg is not None
        for client in self.reg.clients:
            await client.aclose()
        await self._ctx.__aexit__(None, None, None)


class ThreadedServer:
    """The app on a loopback port, in a thread, served as `serve` serves it (for schemathesis)."""

    def __init__(self, app: Any, settings: RegistrySettings | None = None) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        # the server's limits are all the config reads: their defaults unless given
        limits = settings or RegistrySettings(state_dir=Path("unused"))
        self.server = uvicorn.Server(server_config(app, limits))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            if not self.thread.is_alive():
                raise AssertionError("registry server thread died")
            time.sleep(0.05)
        assert self.server.started, "registry did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()
