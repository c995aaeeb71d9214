"""HTTP routes for the directory, operators and their proxies: parse, authorize, call
one service, shape the answer.  Nothing else."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, status

from resistance.directory.keys import key_id, public_key_text
from resistance.registry import services
from resistance.registry.routes.deps import (
    ERRORS,
    AdminDep,
    OperatorDep,
    RegistryDep,
    public_rate,
    signup_rate,
)
from resistance.registry.schemas import (
    Assignment,
    Health,
    KeyList,
    NamePath,
    OperatorList,
    OperatorView,
    PayoutRequest,
    PayoutView,
    ProxyList,
    ProxyView,
    Published,
    RegistrationRequest,
    SignedDirectoryBody,
    SignupRequest,
    SignupResponse,
)

public = APIRouter(dependencies=[Depends(public_rate)], responses=ERRORS)
accounts = APIRouter(prefix="/api/v1", responses=ERRORS)


@public.get("/healthz", response_model=Health, tags=["public"])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@public.get("/api/v1/directory", response_model=SignedDirectoryBody, tags=["public"])
async def directory(registry: RegistryDep) -> dict[str, Any]:
    """The current signed directory (also in STATE_DIR/directory.json)."""
    return await services.current_directory(registry)


@public.get("/api/v1/directory/keys", response_model=KeyList, tags=["public"])
async def directory_keys(registry: RegistryDep) -> dict[str, Any]:
    """The registry's directory signing keys (pin them out of band too)."""
    return {
        "keys": [
            {
                "key_id": key_id(k.public_key()),
                "public_key": public_key_text(k.public_key()),
                "algorithm": "ed25519",
            }
            for k in registry.signing_keys
        ]
    }


@public.get("/api/v1/proxies/assign", response_model=Assignment, tags=["public"])
async def assign(request: Request, registry: RegistryDep) -> dict[str, Any]:
    """A few non-public proxies for your network, the same all UTC day."""
    return await services.assign(
        registry, client_host=request.client.host if request.client else None
    )


@accounts.post(
    "/operators",
    response_model=SignupResponse,
    status_code=status.HTTP_201_CREATED,
    dependencies=[Depends(signup_rate)],
    tags=["operators"],
)
async def sign_up(body: SignupRequest, registry: RegistryDep) -> dict[str, Any]:
    """Create an operator account; the token in the answer is shown only once."""
    operator, token = await services.sign_up(registry, name=body.name)
    return {"operator_id": operator, "name": body.name, "token": token}


@accounts.get("/operators", response_model=OperatorList, tags=["admin"])
async def operators(registry: RegistryDep, _admin: AdminDep) -> dict[str, Any]:
    """Every operator and how many proxies each registered."""
    return {"operators": await services.list_operators(registry)}


@accounts.post(
    "/operators/{name}/tokens",
    response_model=SignupResponse,
    status_code=status.HTTP_201_CREATED,
    tags=["admin"],
)
async def operator_token(name: NamePath, registry: RegistryDep, _admin: AdminDep) -> dict[str, Any]:
    """A new token for an operator who lost theirs; shown only once."""
    operator, token = await services.issue_operator_token(registry, name=name)
    return {"operator_id": operator, "name": name, "token": token}


@accounts.get("/operators/me", response_model=OperatorView, tags=["operators"])
async def me(registry: RegistryDep, operator: OperatorDep) -> dict[str, Any]:
    return await services.operator_view(registry, operator_id=operator)


@accounts.put("/operators/me/payout-address", response_model=PayoutView, tags=["operators"])
async def payout(body: PayoutRequest, registry: RegistryDep, operator: OperatorDep) -> Any:
    """Set the Bitcoin address grants are paid to (checked for this registry's network)."""
    return await services.set_payout(registry, operator_id=operator, address=body.address)


@accounts.post(
    "/proxies",
    response_model=ProxyView,
    status_code=status.HTTP_201_CREATED,
    tags=["proxies"],
)
async def register(
    body: RegistrationRequest, registry: RegistryDep, operator: OperatorDep
) -> dict[str, Any]:
    """Register a node from its signed statement; the registry challenges the node first."""
    return await services.register_proxy(registry, operator_id=operator, request=body)


@accounts.get("/proxies", response_model=ProxyList, tags=["proxies"])
async def my_proxies(registry: RegistryDep, operator: OperatorDep) -> dict[str, Any]:
    return {"proxies": await services.list_proxies(registry, operator_id=operator)}


@accounts.post("/directory/publish", response_model=Published, tags=["admin"])
async def publish_now(registry: RegistryDep, _admin: AdminDep) -> dict[str, Any]:
    """Sign and publish a new directory now."""
    signed = await services.publish(registry)
    return {"serial": signed["document"]["serial"], "proxies": len(signed["document"]["proxies"])}
