"""API errors: each knows its HTTP status; every error body is ``{"error": ...}``.

Handlers installed by :func:`install_error_handlers` give FastAPI's own
errors (validation, unknown route, wrong method) the same JSON shape, answer
503 with Retry-After when no database connection came within the pool's wait
(overload), and turn anything unexpected into a 500 with no details (the bug
is logged).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from resistance.errors import ResistanceError

log = logging.getLogger(__name__)


class ApiError(ResistanceError):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers
        self.extra = extra


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def _location(loc: Any) -> str:
    parts = [str(p) for p in loc if p not in ("body",)] if isinstance(loc, list | tuple) else []
    return ".".join(parts) or "body"


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.headers, **exc.extra)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {"field": _location(e.get("loc", ())), "problem": str(e.get("msg", "invalid"))}
        for e in exc.errors()[:20]
    ]
    first = problems[0] if problems else {"field": "body", "problem": "invalid"}
    message = f"invalid request: {first['field']}: {first['problem']}"
    return error_response(422, message, details=problems)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else "request refused"
    if exc.status_code == 404 and message == "Not Found":
        message = "no such path"
    elif exc.status_code == 405:
        message = "method not allowed on this path"
    return error_response(exc.status_code, message, dict(exc.headers or {}))


async def _pool_exhausted(_request: Request, exc: Exception) -> JSONResponse:
    """Every database connection stayed busy for the pool's whole wait: the registry is
    overloaded, not broken, so the client is told to come back (a probe keeps its batch
    and retries) and nothing was changed."""
    log.warning("no database connection within the pool's wait: %s", exc)
    return error_response(
        503,
        "the registry is busy (every database connection in use); retry later",
        {"Retry-After": str(POOL_RETRY_AFTER)},
        retry_after=POOL_RETRY_AFTER,
    )


#: Seconds a client is asked to wait when the database pool was exhausted.
POOL_RETRY_AFTER = 5


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected error", exc_info=exc)
    return error_response(500, "internal error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(PoolTimeout, _pool_exhausted)
    app.add_exception_handler(Exception, _unexpected)
