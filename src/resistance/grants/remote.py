"""Talking to a registry's grant-round API: one request, its JSON answer or a one-line error."""

from __future__ import annotations

from typing import Any

import httpx

from resistance.grants.errors import RegistryError

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
    url = registry.rstrip("/") + path
    try:
        response = httpx.request(
            method,
            url,
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )
    except httpx.HTTPError as exc:
        raise RegistryError(f"cannot reach the registry at {url}: {exc}") from None
    if response.status_code == 204:
        return None
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if response.status_code >= 400:
        error = answer.get("error") if isinstance(answer, dict) else None
        raise RegistryError(
            f"registry refused ({response.status_code}): {error or 'no explanation given'}"
        )
    if not isinstance(answer, dict):
        raise RegistryError(f"registry answered {response.status_code} without a JSON object")
    return answer
