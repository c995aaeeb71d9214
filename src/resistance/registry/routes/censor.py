"""HTTP routes for the censor's registry as imported, version by version: public,
as the dashboard's censor page is (the lists are the censor's own, published)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query

from resistance.probe.batch import PROXY_ID_MAX
from resistance.registry import censor
from resistance.registry.errors import ApiError
from resistance.registry.routes.deps import ERRORS, RegistryDep, public_rate
from resistance.registry.schemas import BlocklistDiff, BlocklistVersionList, RowIdPath

router = APIRouter(
    prefix="/api/v1/blocklist",
    responses=ERRORS,
    dependencies=[Depends(public_rate)],
    tags=["public"],
)


@router.get("/versions", response_model=BlocklistVersionList)
async def versions(
    registry: RegistryDep,
    before: Annotated[int | None, Query(ge=1, le=PROXY_ID_MAX)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Imports of the censor's registry, newest first: each one's size and diff counts."""
    async with registry.sessions() as session:
        return await censor.list_versions(session, before=before, limit=limit)


@router.get("/versions/{import_id}/diff", response_model=BlocklistDiff)
async def diff(
    import_id: RowIdPath,
    registry: RegistryDep,
    change: Literal["added", "removed"] = "added",
    after: Annotated[str, Query(pattern=r"^[0-9a-f]{0,33}$")] = "",
    limit: Annotated[int, Query(ge=1, le=censor.MAX_PAGE)] = 1000,
) -> dict[str, Any]:
    """One page of the ranges a version added or removed against the version before it."""
    async with registry.sessions() as session:
        page = await censor.version_diff(
            session, import_id=import_id, change=change, after=after, limit=limit
        )
    if page is None:
        raise ApiError(404, f"no blocklist version {import_id} (pruned, or never imported)")
    return page
