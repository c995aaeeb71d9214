"""`resist registry`: operators, their proxies and payout addresses, the signed directory.

An ASGI application (FastAPI) built by :func:`resistance.registry.app.create_app`
from explicit :class:`~resistance.registry.settings.RegistrySettings`, over a
SQL database (SQLite by default, PostgreSQL by URL) whose schema is managed
only by the Alembic migrations shipped in ``registry/migrations``.
"""
