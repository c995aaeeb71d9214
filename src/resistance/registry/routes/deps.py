"""What the routes share: the registry, rate limits, who is asking, error bodies.

Each route module (one per part of the API) takes its dependencies from here.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from resistance.registry import services
from resistance.registry.errors import ApiError
from resistance.registry.models import ProbeAccount
from resistance.registry.ratelimit import Limiter, client_network
from resistance.registry.schemas import (
    ErrorBody,
)
from resistance.registry.services import Principal, Registry

_bearer = HTTPBearer(auto_error=False, description="An API token (admin or operator).")

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 405, 408, 409, 413, 422, 429, 431)
}


def get_registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


RegistryDep = Annotated[Registry, Depends(get_registry)]


async def _limited(limiter: Limiter, request: Request, registry: Registry) -> None:
    wait = await limiter.allow(
        client_network(request.client.host if request.client else None), registry.clock()
    )
    if wait > 0:
        seconds = max(1, math.ceil(wait))
        raise ApiError(
            429,
            "too many requests from your network; slow down",
            headers={"Retry-After": str(seconds)},
            retry_after=seconds,
        )


async def public_rate(request: Request, registry: RegistryDep) -> None:
    await _limited(registry.public_limiter, request, registry)


async def signup_rate(request: Request, registry: RegistryDep) -> None:
    await _limited(registry.signup_limiter, request, registry)


CredentialsDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _bearer_token(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or not credentials.credentials:
        raise ApiError(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    return credentials.credentials


def _unknown_token() -> ApiError:
    return ApiError(401, "unknown API token", headers={"WWW-Authenticate": "Bearer"})


async def principal(registry: RegistryDep, credentials: CredentialsDep) -> Principal:
    found = await services.authenticate(registry, token=_bearer_token(credentials))
    if found is None:
        raise _unknown_token()
    return found


PrincipalDep = Annotated[Principal, Depends(principal)]


def operator_id(who: PrincipalDep) -> int:
    if who.role != "operator" or who.operator_id is None:
        raise ApiError(403, "this needs an operator token")
    return who.operator_id


def admin(who: PrincipalDep) -> Principal:
    if who.role != "admin":
        raise ApiError(403, "this needs the admin token")
    return who


OperatorDep = Annotated[int, Depends(operator_id)]
AdminDep = Annotated[Principal, Depends(admin)]


def probe_id(who: PrincipalDep) -> int:
    if who.role != "probe" or who.probe_id is None:
        raise ApiError(403, "this needs a probe token")
    return who.probe_id


ProbeDep = Annotated[int, Depends(probe_id)]


async def probe_account(registry: RegistryDep, credentials: CredentialsDep) -> ProbeAccount:
    """:func:`probe_id`'s checks, and the probe's account, read with the token (batches)."""
    who, account = await services.authenticate_probe(registry, token=_bearer_token(credentials))
    if who is None:
        raise _unknown_token()
    probe_id(who)
    if account is None:
        raise ApiError(403, "this probe account no longer exists")
    return account


ProbeAccountDep = Annotated[ProbeAccount, Depends(probe_account)]
