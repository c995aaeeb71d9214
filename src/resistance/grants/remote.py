"""Talking to a registry's grant-round API: one request, its JSON answer or a one-line error."""

from __future__ import annotations

from typing import Any

from resistance.grants.errors import RegistryError
from resistance.registry.client import call_registry

ROUNDS_PATH = "/api/v1/grants/rounds"


def call(
    registry: str,
    path: str,
    *,
    token: str,
    method: str = "GET",
    body: dict[str, Any] | None = None,
    timeout: float = 120.0,
) -> Any:
    """``method`` on ``registry + path`` with the admin token; the decoded answer."""
    if not registry.startswith(("http://", "https://")):
        raise RegistryError(f"--registry must be an http(s):// URL, not {registry[:60]!r}")
    return call_registry(
        registry, path, token=token, method=method, body=body, expect=(200, 201),
        timeout=timeout, error=RegistryError,
    )  # fmt: skip
