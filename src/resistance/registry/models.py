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
    ForeignKey,
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
    """A bearer token: ``role`` is ``admin``, ``operator`` or (later) ``probe``."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    role: Mapped[str] = mapped_column(String(16), index=True)
    operator_id: Mapped[int | None] = mapped_column(
        ForeignKey("operators.id", ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger)


class Proxy(Base):
    __tablename__ = "proxies"
    __table_args__ = (UniqueConstraint("host", "port", name="uq_proxies_endpoint"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    operator_id: Mapped[int] = mapped_column(
        ForeignKey("operators.id", ondelete="CASCADE"), index=True
    )
    host: Mapped[str] = mapped_column(String(64))
    port: Mapped[int] = mapped_column(Integer)
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


class StatementNonce(Base):
    """Nonces of accepted registration statements, kept while their timestamp is fresh."""

    __tablename__ = "statement_nonces"

    nonce: Mapped[str] = mapped_column(String(32), primary_key=True)
    seen_at: Mapped[int] = mapped_column(BigInteger, index=True)


class Publication(Base):
    """Every signed directory published, by serial."""

    __tablename__ = "publications"

    serial: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    published_at: Mapped[int] = mapped_column(BigInteger)
    body: Mapped[str] = mapped_column(Text)
