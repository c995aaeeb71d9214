"""Talking to a registry's grant-round API: one request, its JSON answer or a one-line error."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from resistance.grants.errors import RegistryError
from resistance.registry.client import call_registry, refusal

ROUNDS_PATH = "/api/v1/grants/rounds"


def _check_url(registry: str) -> None:
    if not registry.startswith(("http://", "https://")):
        raise RegistryError(f"--registry must be an http(s):// URL, not {registry[:60]!r}")


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
    _check_url(registry)
    return call_registry(
        registry, path, token=token, method=method, body=body, expect=(200, 201),
        timeout=timeout, error=RegistryError,
    )  # fmt: skip


#: Bytes read from the answer at a time by :func:`stream`.
STREAM_PART = 1 << 20
#: Bytes of a refused answer read for its explanation (a refusal's JSON is a line or two).
ERROR_BODY = 64 * 1024


def stream(registry: str, path: str, *, token: str, timeout: float = 120.0) -> Iterator[bytes]:
    """GET ``registry + path`` with the admin token, the answer's body as it arrives
    (a round file of ~100 MB is never held whole); a refused answer is one
    ``RegistryError``, as :func:`call` says it."""
    _check_url(registry)
    url = registry.rstrip("/") + path
    try:
        with httpx.stream(
            "GET", url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout
        ) as response:
            if response.status_code != 200:
                body = b""  # its explanation: the first ERROR_BODY bytes at most
                for part in response.iter_bytes(ERROR_BODY):
                    body += part
                    if len(body) >= ERROR_BODY:
                        break
                try:
                    answer = json.loads(body)
                except ValueError:
                    answer = None
                raise RegistryError(refusal(response.status_code, answer))
            yield from response.iter_bytes(STREAM_PART)
    except httpx.HTTPError as exc:
        raise RegistryError(f"cannot reach the registry at {url}: {exc}") from None
