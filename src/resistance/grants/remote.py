"""Talking to a registry's grant-round API: one request, its JSON answer or a one-line error."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx

from resistance.grants.errors import RegistryError
from resistance.registry.client import MIN_RATE, call_registry, refusal, timed_parts

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


#: Bytes of a refused answer read for its explanation (a refusal's JSON is a line or two).
ERROR_BODY = 64 * 1024
#: Seconds a stream may take on top of its size's share (see :func:`stream`).
STREAM_TIME = 120.0


def stream(
    registry: str,
    path: str,
    *,
    token: str,
    timeout: float | None = None,
    min_rate: int = MIN_RATE,
) -> Iterator[bytes]:
    """GET ``registry + path`` with the admin token, the answer's body as it arrives
    (a round file of ~100 MB is never held whole); a refused answer is one
    ``RegistryError``, as :func:`call` says it.

    ``timeout`` (default ``STREAM_TIME``) bounds each read, and the whole answer has
    ``timeout`` seconds plus one second per ``min_rate`` (64 kB) bytes
    received: a registry that drips bytes (each read in time, the answer never done)
    is one ``RegistryError`` at most one read past that deadline, not an export that
    never ends. A 100 MB round file may take ~27 min."""
    _check_url(registry)
    url = registry.rstrip("/") + path
    timeout = STREAM_TIME if timeout is None else timeout
    start = time.monotonic()

    def arriving(response: httpx.Response) -> Iterator[bytes]:
        return timed_parts(
            response, url, start, timeout=timeout, min_rate=min_rate, error=RegistryError
        )

    try:
        with httpx.stream(
            "GET", url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout
        ) as response:
            if response.status_code != 200:
                body = b""  # its explanation: the first ERROR_BODY bytes at most
                for part in arriving(response):
                    body += part
                    if len(body) >= ERROR_BODY:
                        break
                try:
                    answer = json.loads(body[:ERROR_BODY])
                except ValueError:
                    answer = None
                raise RegistryError(refusal(response.status_code, answer))
            yield from arriving(response)
    except httpx.HTTPError as exc:
        raise RegistryError(f"cannot reach the registry at {url}: {exc}") from None
