"""HTTP routes for probes and their admin: parse, authorize, call one service."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response, status

from resistance.registry import probes
from resistance.registry.errors import ApiError
from resistance.registry.routes.deps import (
    ERRORS,
    AdminDep,
    ProbeAccountDep,
    ProbeDep,
    RegistryDep,
    public_rate,
)
from resistance.registry.schemas import (
    BatchReceipt,
    CanaryView,
    ProbeAssignment,
    ProbeBatchBody,
    ProbeCreated,
    ProbeCreateRequest,
    ProbeFleetStatus,
    ProbeList,
    ProbePage,
    ProxyStatusView,
    RowIdPath,
)

router = APIRouter(prefix="/api/v1", responses=ERRORS)


@router.post(
    "/probes", response_model=ProbeCreated, status_code=status.HTTP_201_CREATED, tags=["admin"]
)
async def create_probe(body: ProbeCreateRequest, registry: RegistryDep, _: AdminDep) -> Any:
    """Create a probe account for a vantage; the token is shown only once."""
    return await probes.create_probe(
        registry,
        name=body.name,
        country=body.country,
        control=body.control,
        public_key=body.public_key,
    )


@router.get("/probes", response_model=ProbeList, tags=["admin"])
async def list_probes(registry: RegistryDep, _: AdminDep) -> dict[str, Any]:
    return {"probes": await probes.list_probes(registry)}


@router.get("/probes/status", response_model=ProbeFleetStatus, tags=["admin"])
async def fleet_status(
    registry: RegistryDep, _: AdminDep, page: Annotated[ProbePage, Query()]
) -> dict[str, Any]:
    """Which probes are live, their share of the proxies, their last batch, and how often
    their peers outvoted them (flagged: lying or broken)."""
    return await probes.fleet_status(registry, offset=page.offset, limit=page.limit)


@router.get("/proxies/{proxy_id}/status", response_model=ProxyStatusView, tags=["admin"])
async def proxy_status(proxy_id: RowIdPath, registry: RegistryDep, _: AdminDep) -> dict[str, Any]:
    """A proxy's verdict from the probes and every change of it."""
    if not 1 <= proxy_id <= 2**62:
        raise ApiError(404, "no such proxy")
    return await probes.proxy_status(registry, proxy_id=proxy_id)


@router.get("/probe/assignment", response_model=ProbeAssignment, tags=["probes"])
async def assignment(registry: RegistryDep, probe: ProbeDep) -> dict[str, Any]:
    """Which proxies to check this round and when, and where the canary is."""
    return await probes.assignment(registry, probe_id=probe)


@router.post(
    "/probe/batches",
    response_model=BatchReceipt,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"model": BatchReceipt, "description": "Already stored (a retry)."}},
    tags=["probes"],
)
async def upload(
    body: ProbeBatchBody, registry: RegistryDep, probe: ProbeAccountDep, response: Response
) -> dict[str, Any]:
    """Upload a signed batch of results; uploading the same batch again stores nothing."""
    done = await probes.ingest_batch(
        registry, probe=probe, document=body.document, signature=body.signature
    )
    if not done.stored:
        response.status_code = status.HTTP_200_OK
    return {
        "batch_id": done.batch_id,
        "stored": done.stored,
        "results": done.results,
        "not_counted": list(done.not_counted),
        "why_not_counted": {str(i): why for i, why in done.why_not_counted.items()},
    }


@router.get(
    "/probe/canary",
    response_model=CanaryView,
    dependencies=[Depends(public_rate)],
    tags=["public"],
)
async def canary(registry: RegistryDep) -> dict[str, Any]:
    """Where the canary listens and the key its answers are signed with."""
    info = probes.canary_info(registry)
    if info is None:
        raise ApiError(404, "this registry runs no canary")
    return info
