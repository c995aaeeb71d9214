"""HTTP routes for grant rounds (admin only): parse, authorize, call one use case."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status
from fastapi.responses import StreamingResponse

from resistance.registry import rounds
from resistance.registry.routes.deps import ERRORS, AdminDep, RegistryDep
from resistance.registry.schemas import (
    MarkPaidRequest,
    RoundCreateRequest,
    RoundFileBody,
    RoundIdPath,
    RoundList,
    RoundRecomputeRequest,
    RoundView,
)

router = APIRouter(prefix="/api/v1/grants", responses=ERRORS, tags=["grants"])


@router.post("/rounds", response_model=RoundView, status_code=status.HTTP_201_CREATED)
async def create_round(body: RoundCreateRequest, registry: RegistryDep, _: AdminDep) -> Any:
    """Compute a draft round for a period from the registry's rollups, inputs signed."""
    return await rounds.create_round(registry, request=body)


@router.get("/rounds", response_model=RoundList)
async def list_rounds(registry: RegistryDep, _: AdminDep) -> dict[str, Any]:
    return {"rounds": await rounds.list_rounds(registry)}


@router.get("/rounds/{round_id}", response_model=RoundView)
async def show_round(round_id: RoundIdPath, registry: RegistryDep, _: AdminDep) -> Any:
    return await rounds.show_round(registry, round_id=round_id)


@router.delete("/rounds/{round_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_round(round_id: RoundIdPath, registry: RegistryDep, _: AdminDep) -> Response:
    """Delete a draft (an approved or paid round is kept for ever)."""
    await rounds.delete_draft(registry, round_id=round_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/rounds/{round_id}/recompute", response_model=RoundView)
async def recompute_round(
    round_id: RoundIdPath, body: RoundRecomputeRequest, registry: RegistryDep, _: AdminDep
) -> Any:
    """Recompute a draft from fresh rollups, addresses and carried amounts."""
    return await rounds.recompute_round(registry, round_id=round_id, request=body)


@router.post("/rounds/{round_id}/approve", response_model=RoundView)
async def approve_round(round_id: RoundIdPath, registry: RegistryDep, _: AdminDep) -> Any:
    """Freeze a draft whose period is over; nothing in it changes again."""
    return await rounds.approve_round(registry, round_id=round_id)


@router.get("/rounds/{round_id}/export", response_model=RoundFileBody)
async def export_round(round_id: RoundIdPath, registry: RegistryDep, _: AdminDep) -> Any:
    """The round file `resist grants` works on (verify, psbt, electrum-list...), streamed:
    a round's /2 input chunks are read from the database a few at a time."""
    parts = await rounds.export_round_stream(registry, round_id=round_id)
    return StreamingResponse(parts, media_type="application/json")


@router.post("/rounds/{round_id}/mark-paid", response_model=RoundView)
async def mark_paid(
    round_id: RoundIdPath, body: MarkPaidRequest, registry: RegistryDep, _: AdminDep
) -> Any:
    """Record the signed transaction that pays exactly the approved awards."""
    return await rounds.mark_round_paid(
        registry,
        round_id=round_id,
        tx_hex=body.tx_hex,
        change_descriptor=body.change_descriptor,
    )
