"""The operator's side of registration: sign a statement with the node's key, post it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from resistance.config import parse_user
from resistance.errors import ConfigError
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
    host: str,
    port: int,
    public: bool,
    users: list[dict[str, str]],
    now: int | None = None,
    tls_port: int | None = None,
) -> dict[str, Any]:
    try:
        from resistance.node.identity import load_or_create_identity, probe_credential
    except ImportError:
        raise ConfigError("this installation's node has no identity support yet") from None
    key = load_or_create_identity(state_dir)
    probe_user, probe_password = probe_credential(state_dir)
    statement, signature = make_statement(
        key=key,
        host=host,
        port=port,
        probe_user=probe_user,
        probe_password=probe_password,
        now=int(time.time()) if now is None else now,
        tls_port=tls_port,
    )
    return {"statement": statement, "signature": signature, "public": public, "users": users}


def post_registration(
    *, registry: str, token: str, body: dict[str, Any], timeout: float = 30.0
) -> dict[str, Any]:
    url = registry.rstrip("/") + REGISTER_PATH
    try:
        response = httpx.post(
            url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=timeout
        )
    except httpx.HTTPError as exc:
        raise ConfigError(f"cannot reach the registry at {url}: {exc}") from None
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise ConfigError(f"registry answered {response.status_code} without a JSON object")
    if response.status_code != 201:
        raise ConfigError(f"registry refused ({response.status_code}): {answer.get('error')}")
    return answer
