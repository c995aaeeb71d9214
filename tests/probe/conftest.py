"""Probe test fixtures: the registry's database fixtures (SQLite and PostgreSQL)."""

from __future__ import annotations

from tests.registry.conftest import db_url, pg_template

__all__ = ["db_url", "pg_template"]
