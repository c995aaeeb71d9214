"""Database access: small keyword-only functions over an open session.

Each function does one query or one change; transactions belong to the
caller (the services), so a request either changes everything it meant to or
nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from resistance.registry.models import ApiToken, Operator, Proxy, Publication, StatementNonce


async def add_operator(session: AsyncSession, *, name: str, now: int) -> Operator:
    operator = Operator(name=name, created_at=now)
    session.add(operator)
    await session.flush()
    return operator


async def operator_by_name(session: AsyncSession, *, name: str) -> Operator | None:
    result = await session.execute(select(Operator).where(Operator.name == name))
    return result.scalar_one_or_none()


async def operator_by_id(session: AsyncSession, *, operator_id: int) -> Operator | None:
    return await session.get(Operator, operator_id)


async def add_token(
    session: AsyncSession, *, role: str, token_hash: str, now: int, operator_id: int | None = None
) -> ApiToken:
    token = ApiToken(role=role, token_hash=token_hash, created_at=now, operator_id=operator_id)
    session.add(token)
    await session.flush()
    return token


async def token_by_hash(session: AsyncSession, *, token_hash: str) -> ApiToken | None:
    result = await session.execute(select(ApiToken).where(ApiToken.token_hash == token_hash))
    return result.scalar_one_or_none()


async def count_tokens(session: AsyncSession, *, role: str) -> int:
    result = await session.execute(
        select(func.count()).select_from(ApiToken).where(ApiToken.role == role)
    )
    return int(result.scalar_one())


async def set_payout_address(
    session: AsyncSession, *, operator_id: int, address: str, kind: str
) -> None:
    operator = await session.get(Operator, operator_id)
    if operator is not None:
        operator.payout_address = address
        operator.payout_type = kind


async def proxy_by_endpoint(session: AsyncSession, *, host: str, port: int) -> Proxy | None:
    result = await session.execute(select(Proxy).where(Proxy.host == host, Proxy.port == port))
    return result.scalar_one_or_none()


async def save_proxy(session: AsyncSession, *, fields: dict[str, Any]) -> Proxy:
    """Insert a proxy, or update the one at the same endpoint (same operator)."""
    existing = await proxy_by_endpoint(session, host=fields["host"], port=fields["port"])
    if existing is None:
        proxy = Proxy(**fields)
        session.add(proxy)
    else:
        proxy = existing
        for key, value in fields.items():
            if key != "registered_at":
                setattr(proxy, key, value)
    await session.flush()
    return proxy


async def proxies_of(session: AsyncSession, *, operator_id: int) -> Sequence[Proxy]:
    result = await session.execute(
        select(Proxy).where(Proxy.operator_id == operator_id).order_by(Proxy.id)
    )
    return result.scalars().all()


async def active_proxies(session: AsyncSession, *, public: bool) -> Sequence[Proxy]:
    result = await session.execute(
        select(Proxy)
        .where(Proxy.public.is_(public), Proxy.status == "active")
        .order_by(Proxy.host, Proxy.port)
    )
    return result.scalars().all()


async def nonce_seen(session: AsyncSession, *, nonce: str) -> bool:
    return await session.get(StatementNonce, nonce) is not None


async def add_nonce(session: AsyncSession, *, nonce: str, now: int) -> None:
    session.add(StatementNonce(nonce=nonce, seen_at=now))
    await session.flush()


async def forget_nonces(session: AsyncSession, *, before: int) -> None:
    await session.execute(delete(StatementNonce).where(StatementNonce.seen_at < before))


async def last_publication(session: AsyncSession) -> Publication | None:
    result = await session.execute(select(Publication).order_by(Publication.serial.desc()).limit(1))
    return result.scalar_one_or_none()


async def add_publication(session: AsyncSession, *, serial: int, now: int, body: str) -> None:
    session.add(Publication(serial=serial, published_at=now, body=body))
    await session.flush()
