"""HTTP routes for MTProto proxies: parse, authorize, call one service."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, status
from pydantic import BaseModel, Field

from resistance.registry import mtproto
from resistance.registry.routes import ERRORS, OperatorDep, RegistryDep
from resistance.registry.schemas import EndpointModel, ProxyView, Strict

router = APIRouter(prefix="/api/v1", responses=ERRORS)


class ProberSecret(BaseModel):
    key: str = Field(description="This operator's prober secret: 16 bytes, hex.")
    user: str = Field(description="A user name to give it on the node.")
    node_option: str = Field(description="The `resist node` option that adds it.")


class MTProtoRegistration(Strict):
    endpoint: EndpointModel
    mode: Literal["classic", "dd", "ee"] = Field(
        description="How users connect: ee (fake-TLS, needs domain), dd or classic."
    )
    domain: Annotated[str, Field(min_length=1, max_length=253)] | None = Field(
        default=None, description="The fake-TLS domain of an ee proxy."
    )
    public: bool = False


@router.get("/mtproto/prober-secret", response_model=ProberSecret, tags=["proxies"])
async def prober_secret(registry: RegistryDep, operator: OperatorDep) -> dict[str, Any]:
    """The secret to add to your node as an MTProto user before registering its listener."""
    return mtproto.prober_secret(registry, operator_id=operator)


@router.post(
    "/mtproto/endpoints",
    response_model=ProxyView,
    status_code=status.HTTP_201_CREATED,
    tags=["proxies"],
)
async def register(
    body: MTProtoRegistration, registry: RegistryDep, operator: OperatorDep
) -> dict[str, Any]:
    """Register an MTProto proxy; the registry first gets a resPQ through it with your
    prober secret."""
    return await mtproto.register_endpoint(
        registry,
        operator_id=operator,
        host=body.endpoint.host,
        port=body.endpoint.port,
        mode=body.mode,
        domain=body.domain,
        public=body.public,
    )
