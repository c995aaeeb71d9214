"""Alembic environment: runs on the connection the registry hands in.

:func:`resistance.registry.db.migrate` passes a synchronous connection (from
an async engine's ``run_sync``) in ``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context

from resistance.registry.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `resist registry migrate`")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
