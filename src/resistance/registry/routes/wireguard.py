"""HTTP routes for WireGuard endpoints: parse, authorize, call one service."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, status
from pydantic import BaseModel, Field

from resistance.registry import wireguard
from resistance.registry.routes.deps import ERRORS, OperatorDep, ProbeDep, RegistryDep, public_rate
from resistance.registry.schemas import EndpointModel, ProxyView, Strict

router = APIRouter(prefix="/api/v1", responses=ERRORS)

WgKey = Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$")]


class ProberKeys(BaseModel):
    public_key: str = Field(description="The registry's own WireGuard prober key.")
    probe_keys: list[str] = Field(description="WireGuard keys of the probe agents.")


class WireGuardRegistration(Strict):
    endpoint: EndpointModel
    public_key: WgKey = Field(description="The server's WireGuard public key (wg pubkey).")
    public: bool = False
    probe_keys: Annotated[list[WgKey], Field(max_length=wireguard.MAX_PROBE_KEYS)] = Field(
        default=[], description="Probe keys added as probe peers: those probes check it."
    )
    amnezia: dict[str, int | str] | None = Field(
        default=None,
        description="An AmneziaWG endpoint's parameters (jc, jmin, jmax, s1-s4, h1-h4, "
        "i1-i5, and for AWG 3 header_protection_key, random_trailers, content_padding_addition, "
        "as resist vpn keeps them); absent for plain WireGuard.",
    )


class ProbeWireGuardKey(Strict):
    public_key: WgKey


class ProbeWireGuardAnnouncement(ProbeWireGuardKey):
    at: Annotated[int, Field(ge=0, le=2**62, description="Unix time of the statement.")]
    signature: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{86}$")] = Field(
        description="Ed25519 by the probe's key over resistance.probe.wireguard.key_statement."
    )
    possession: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{43}$")] = Field(
        description="HMAC-SHA256 of the statement keyed by X25519(this key, the prober key)."
    )


@router.get(
    "/wireguard/prober-key",
    response_model=ProberKeys,
    dependencies=[Depends(public_rate)],
    tags=["public"],
)
async def prober_key(registry: RegistryDep) -> dict[str, Any]:
    """Keys to add with `resist vpn add-probe` before registering a WireGuard endpoint."""
    return await wireguard.prober_keys(registry)


@router.post(
    "/wireguard/endpoints",
    response_model=ProxyView,
    status_code=status.HTTP_201_CREATED,
    tags=["proxies"],
)
async def register(
    body: WireGuardRegistration, registry: RegistryDep, operator: OperatorDep
) -> dict[str, Any]:
    """Register a WireGuard endpoint; the registry proves it with a real handshake first."""
    return await wireguard.register_endpoint(
        registry,
        operator_id=operator,
        host=body.endpoint.host,
        port=body.endpoint.port,
        public_key=body.public_key,
        public=body.public,
        probe_keys=body.probe_keys,
        amnezia=body.amnezia,
    )


@router.put("/probe/wireguard-key", response_model=ProbeWireGuardKey, tags=["probes"])
async def announce(body: ProbeWireGuardAnnouncement, registry: RegistryDep, probe: ProbeDep) -> Any:
    """The probe's WireGuard key, signed with its probe key, for operators to add as a
    probe peer; a key another probe holds is refused (409)."""
    return await wireguard.announce_probe_key(
        registry, probe_id=probe, public_key=body.public_key, at=body.at,
        signature=body.signature, possession=body.possession,
    )  # fmt: skip
