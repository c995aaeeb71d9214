"""HTTP routes for an account's own API tokens: list, rotate, revoke.

Every kind of account (admin, operator, probe) manages its own tokens here;
the registry's owner manages everyone's with ``resist registry token``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response, status
from pydantic import BaseModel, Field

from resistance.registry import tokens
from resistance.registry.routes.deps import ERRORS, PrincipalDep, RegistryDep
from resistance.registry.schemas import Strict

router = APIRouter(prefix="/api/v1", responses=ERRORS, tags=["tokens"])

TokenId = Annotated[int, Path(ge=1, le=2**31 - 1, description="A token's id.")]


class TokenView(BaseModel):
    token_id: int
    role: str
    operator_id: int | None
    probe_id: int | None
    owner: str | None = Field(description="The operator's or probe's name.")
    created_at: int
    expires_at: int | None
    revoked_at: int | None
    state: str = Field(description="live, expired or revoked")
    current: bool = Field(description="This is the token the request came with.")


class TokenList(BaseModel):
    tokens: list[TokenView]


class RotateRequest(Strict):
    expires_in: Annotated[int, Field(ge=60, le=tokens.MAX_LIFETIME)] | None = Field(
        default=None, description="Seconds the new token lives (default: until revoked)."
    )


class Rotated(BaseModel):
    token_id: int
    token: str = Field(description="The new token, shown this once.")
    expires_at: int | None
    replaces: int = Field(description="The token revoked by this rotation.")


@router.get("/tokens", response_model=TokenList)
async def own_tokens(registry: RegistryDep, who: PrincipalDep) -> dict[str, Any]:
    """Your account's tokens (never the tokens themselves)."""
    return {"tokens": await tokens.own_tokens(registry.sessions, who, now=registry.now())}


@router.post("/tokens/rotate", response_model=Rotated, status_code=status.HTTP_201_CREATED)
async def rotate(
    registry: RegistryDep, who: PrincipalDep, body: RotateRequest | None = None
) -> dict[str, Any]:
    """Replace the token you call with: the new one is shown once, the old one is refused
    by every registry process from now on."""
    text, made = await tokens.rotate_own(
        registry.sessions,
        who,
        now=registry.now(),
        lifetime=body.expires_in if body is not None else None,
    )
    return {**made, "token": text}


@router.delete(
    "/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response
)
async def revoke(token_id: TokenId, registry: RegistryDep, who: PrincipalDep) -> Response:
    """Revoke one of your account's tokens at once (not its last live one: rotate that)."""
    await tokens.revoke_own(registry.sessions, who, token_id=token_id, now=registry.now())
    return Response(status_code=status.HTTP_204_NO_CONTENT)
