"""The operator's side of registration: sign a statement with the node's key, post it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from resistance.config import parse_user
from resistance.errors import ConfigError, ResistanceError
from resistance.registry.statement import make_statement

REGISTER_PATH = "/api/v1/proxies"


def node_user_credentials(state_dir: Path) -> list[dict[str, str]]:
    """The node's generated user, if it has one (never creates it)."""
    from resistance.node.users import GENERATED_USERS_FILE

    path = state_dir / GENERATED_USERS_FILE
    if not path.exists():
        return []
    try:
        name, password = parse_user(path.read_text().strip())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    return [{"username": name, "password": password}]


def registration_body(
    *,
    state_dir: Path,
    operator_id: int,
    host: str,
    port: int,
    public: bool,
    users: list[dict[str, str]],
    now: int | None = None,
    tls_port: int | None = None,
    role: str = "proxy",
    exit: dict[str, Any] | None = None,
) -> dict[str, Any]:
    try:
        from resistance.node.identity import load_or_create_identity, probe_credential
    except ImportError:
        raise ConfigError("this installation's node has no identity support yet") from None
    key = load_or_create_identity(state_dir)
    probe_user, probe_password = probe_credential(state_dir)
    statement, signature = make_statement(
        key=key,
        operator_id=operator_id,
        host=host,
        port=port,
        probe_user=probe_user,
        probe_password=probe_password,
        now=int(time.time()) if now is None else now,
        tls_port=tls_port,
    )
    body = {"statement": statement, "signature": signature, "public": public, "users": users}
    if role != "proxy":
        body["role"] = role
    if exit is not None:
        body["exit"] = exit
    return body


def refusal(status: int, answer: Any) -> str:
    """The one line for a registry's refusal: its ``{"error": ...}`` explanation, if any."""
    why = answer.get("error") if isinstance(answer, dict) else None
    return f"registry refused ({status}): {why or 'no explanation given'}"


#: Bytes per second an answer must average past its first ``timeout`` seconds.
MIN_RATE = 64 * 1024


def timed_parts(
    response: httpx.Response,
    url: str,
    start: float,
    *,
    timeout: float,
    min_rate: int = MIN_RATE,
    error: type[ResistanceError] = ConfigError,
) -> Iterator[bytes]:
    """``response``'s body as it arrives, within ``timeout`` seconds of ``start`` plus one
    second per ``min_rate`` bytes received: httpx's ``timeout`` bounds each read, so a
    registry that drips bytes (each read in time) would hold a command for ever. Past
    the deadline (checked after each read, so at most one read later): ``error``."""
    received = 0
    for part in response.iter_bytes():
        received += len(part)
        elapsed = time.monotonic() - start
        if elapsed > timeout + received / min_rate:
            raise error(
                f"the registry at {url} sent {received} bytes in {elapsed:.0f} s "
                f"(less than {min_rate // 1024} kB/s past the first {timeout:g} s): stopped"
            )
        yield part


def call_registry(
    registry: str,
    path: str,
    *,
    token: str | None = None,
    method: str = "GET",
    body: dict[str, Any] | None = None,
    expect: tuple[int, ...] = (200,),
    timeout: float = 30.0,
    error: type[ResistanceError] = ConfigError,
) -> dict[str, Any]:
    """One request to a registry's API: its JSON object, or ``error`` with one line.

    Every command that talks to a registry (register-node, add-probe, vpn
    register, grant rounds) goes through here, so they fail alike.
    """
    url = registry.rstrip("/") + path
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    start = time.monotonic()
    try:
        with httpx.stream(method, url, json=body, headers=headers, timeout=timeout) as response:
            data = b"".join(timed_parts(response, url, start, timeout=timeout, error=error))
    except httpx.HTTPError as exc:
        raise error(f"cannot reach the registry at {url}: {exc}") from None
    if response.status_code == 204:
        return {}
    try:
        answer = json.loads(data)
    except ValueError:
        answer = None
    if response.status_code not in expect:
        raise error(refusal(response.status_code, answer))
    if not isinstance(answer, dict):
        raise error(f"registry answered {response.status_code} without a JSON object")
    return answer


def operator_id_for(registry: str, token: str, *, timeout: float = 30.0) -> int:
    """The id of the operator account ``token`` belongs to (statements name it)."""
    answer = call_registry(registry, "/api/v1/operators/me", token=token, timeout=timeout)
    operator_id = answer.get("operator_id")
    if not isinstance(operator_id, int):
        raise ConfigError("the registry did not say which operator this token belongs to")
    return operator_id


def post_registration(
    *, registry: str, token: str, body: dict[str, Any], timeout: float = 30.0
) -> dict[str, Any]:
    return call_registry(
        registry, REGISTER_PATH, token=token, method="POST", body=body, expect=(201,),
        timeout=timeout,
    )  # fmt: skip
