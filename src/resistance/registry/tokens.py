"""API tokens: made, listed, rotated, expired and revoked, for every kind of account.

A token is 32 random bytes shown once and stored only as its SHA-256: with
256 bits of entropy a plain hash is enough to make a stolen database useless
for logging in (no password stretching needed); the lookup is by digest and
the final comparison is constant-time.

Theory of operation.  A token belongs to one account: the admin (role
``admin``), an operator (``operator_id``) or a probe (``probe_id``).  It is
*live* while it has no ``revoked_at`` and its ``expires_at``, if any, is in
the future.  Every request looks its token up in the database with that
condition (:func:`resistance.registry.repositories.live_token_by_hash`); no
process keeps a copy, so a revocation, rotation or expiry written by any
process, or by ``resist registry token`` on the database directly, is
refused by every registry process on the database from the next request.
Rotation makes a new token for the same account (shown once) and revokes the
old one in the same transaction.  An account's last live admin token cannot
be revoked, only rotated, so the registry never locks its admin out.

The use cases here take an open session and the time, so the API routes
(:mod:`resistance.registry.routes.tokens`) and the command line share them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol, TypeVar

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resistance.errors import ConfigError
from resistance.registry import repositories as repo
from resistance.registry.errors import ApiError
from resistance.registry.models import ApiToken


class Caller(Protocol):
    """Who is asking (:class:`resistance.registry.services.Principal` is one)."""

    @property
    def role(self) -> str: ...
    @property
    def operator_id(self) -> int | None: ...
    @property
    def probe_id(self) -> int | None: ...
    @property
    def token_id(self) -> int | None: ...


PREFIX: Final = "rst_"
#: The longest lifetime a token can be given (ten years).
MAX_LIFETIME: Final = 10 * 366 * 86400
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION: Final = re.compile(r"([0-9]{1,9})([smhdw])")
T = TypeVar("T")


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("ascii"), b.encode("ascii"))


def parse_duration(text: str) -> int:
    """Seconds in ``30d``, ``12h``, ``90m``, ``3600s`` or ``2w`` (1 s to ten years).

    Raises :class:`ValueError` with one line for anything else.
    """
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 30d, 12h, 90m, 3600s or 2w")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if not 1 <= seconds <= MAX_LIFETIME:
        raise ValueError(f"{text!r} is not between 1 s and ten years")
    return seconds


def state(token: ApiToken, now: int) -> str:
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= now:
        return "expired"
    return "live"


def token_view(token: ApiToken, owner: str | None, now: int) -> dict[str, Any]:
    """What may be shown of a token: never the token, nor its digest."""
    return {
        "token_id": token.id,
        "role": token.role,
        "operator_id": token.operator_id,
        "probe_id": token.probe_id,
        "owner": owner,
        "created_at": token.created_at,
        "expires_at": token.expires_at,
        "revoked_at": token.revoked_at,
        "state": state(token, now),
    }


async def authenticate(session: AsyncSession, *, token: str, now: int) -> ApiToken | None:
    """The live token this is, or ``None``."""
    digest = token_hash(token)
    found = await repo.live_token_by_hash(session, token_hash=digest, now=now)
    if found is None or not same_hash(found.token_hash, digest):
        return None
    return found


async def list_tokens(
    session: AsyncSession,
    *,
    now: int,
    role: str | None = None,
    operator_id: int | None = None,
    probe_id: int | None = None,
) -> list[dict[str, Any]]:
    rows = await repo.tokens_of(session, role=role, operator_id=operator_id, probe_id=probe_id)
    return [token_view(token, owner, now) for token, owner in rows]


async def _live_token(session: AsyncSession, token_id: int, now: int) -> ApiToken:
    token = await repo.token_by_id(session, token_id=token_id, lock=True)
    if token is None:
        raise ApiError(404, f"no token {token_id}")
    if state(token, now) != "live":
        raise ApiError(409, f"token {token_id} is already {state(token, now)}")
    return token


async def _others_live(session: AsyncSession, token: ApiToken, now: int) -> int:
    return (
        await repo.count_live_tokens(
            session,
            role=token.role,
            operator_id=token.operator_id,
            probe_id=token.probe_id,
            now=now,
        )
        - 1
    )


async def revoke(
    session: AsyncSession, *, token_id: int, now: int, keep_one: bool = False
) -> dict[str, Any]:
    """Revoke a live token now.  The admin's last live token is never revoked (rotate it);
    with ``keep_one`` no account's last live token is (an account revoking its own)."""
    token = await _live_token(session, token_id, now)
    if (keep_one or token.role == "admin") and await _others_live(session, token, now) < 1:
        raise ApiError(409, f"token {token_id} is the account's last live token: rotate it")
    token.revoked_at = now
    await session.flush()
    return token_view(token, None, now)


async def expire(session: AsyncSession, *, token_id: int, now: int, after: int) -> dict[str, Any]:
    """Make a live token stop working ``after`` seconds from now (sooner if it already would)."""
    if not 1 <= after <= MAX_LIFETIME:
        raise ApiError(422, "a token's remaining life must be between 1 s and ten years")
    token = await _live_token(session, token_id, now)
    end = now + after
    if token.expires_at is None or end < token.expires_at:
        token.expires_at = end
    await session.flush()
    return token_view(token, None, now)


async def rotate(
    session: AsyncSession, *, token_id: int, now: int, lifetime: int | None = None
) -> tuple[str, dict[str, Any]]:
    """A new token for the same account (to show once), the old one revoked at once.

    ``lifetime`` (seconds) makes the new token expire; ``None`` keeps none.
    """
    if lifetime is not None and not 1 <= lifetime <= MAX_LIFETIME:
        raise ApiError(422, "a token's lifetime must be between 1 s and ten years")
    old = await _live_token(session, token_id, now)
    old.revoked_at = now
    text = new_token()
    made = await repo.add_token(
        session,
        role=old.role,
        token_hash=token_hash(text),
        now=now,
        operator_id=old.operator_id,
        probe_id=old.probe_id,
    )
    made.expires_at = None if lifetime is None else now + lifetime
    await session.flush()
    return text, {**token_view(made, None, now), "replaces": old.id}


# --- an account's own tokens (the API) ----------------------------------------------


def _account(who: Caller) -> dict[str, Any]:
    if who.role == "operator":
        return {"role": "operator", "operator_id": who.operator_id}
    if who.role == "probe":
        return {"role": "probe", "probe_id": who.probe_id}
    return {"role": "admin"}


def _mine(token: ApiToken | None, who: Caller) -> bool:
    return (
        token is not None
        and token.role == who.role
        and token.operator_id == who.operator_id
        and token.probe_id == who.probe_id
    )


Sessions = async_sessionmaker[AsyncSession]


async def own_tokens(sessions: Sessions, who: Caller, *, now: int) -> list[dict[str, Any]]:
    """The tokens of the caller's account, the one it came with marked ``current``."""
    async with sessions() as session:
        found = await list_tokens(session, now=now, **_account(who))
    return [{**view, "current": view["token_id"] == who.token_id} for view in found]


async def rotate_own(
    sessions: Sessions, who: Caller, *, now: int, lifetime: int | None
) -> tuple[str, dict[str, Any]]:
    """Replace the token the caller came with; the old one is refused from now on."""
    assert who.token_id is not None
    async with sessions.begin() as session:
        return await rotate(session, token_id=who.token_id, now=now, lifetime=lifetime)


async def revoke_own(sessions: Sessions, who: Caller, *, token_id: int, now: int) -> None:
    """Revoke one of the caller's account's tokens (never its last live one)."""
    async with sessions.begin() as session:
        if not _mine(await repo.token_by_id(session, token_id=token_id), who):
            raise ApiError(404, f"no token {token_id} on your account")
        await revoke(session, token_id=token_id, now=now, keep_one=True)


# --- the registry owner's view (the command line, on the database itself) -----------


async def on_database(url: str, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run ``work`` in one transaction on the database at ``url`` (migrated first).

    Refusals and database errors become a :class:`ConfigError` with one line.
    """
    from resistance.registry.db import make_engine, make_sessions, migrate

    await migrate(url)
    engine = make_engine(url)
    try:
        async with make_sessions(engine).begin() as session:
            return await work(session)
    except ApiError as exc:
        raise ConfigError(exc.message) from None
    except SQLAlchemyError as exc:
        raise ConfigError(f"database error: {type(exc).__name__}") from None
    finally:
        await engine.dispose()
