"""The registry's request guard: what every request must satisfy before any route sees it.

An ASGI middleware, so it covers every route (present and future) alike:

* at most ``max_headers`` header lines and ``max_header_bytes`` of them
  (431 otherwise): h11 caps only a header block still arriving, not one
  read whole in one go, and never counts lines;
* a body of at most ``max_body`` bytes, declared or streamed (413), read
  whole before the app runs so a chunked body over the limit is a 413 too,
  not a parse error half-way through, and within ``body_timeout`` seconds
  (408), so a slow body holds no connection for long;
* a JSON body is parsed by the one strict parser signed documents use
  (:func:`resistance.directory.canonical.parse_strict`): duplicate keys,
  NaN and bad UTF-8 are a 422, as is text with a NUL character (no database
  column can hold it); numbers' types and ranges are left to validation,
  which names the field.  FastAPI parses the
  same bytes again afterwards; on what the strict parser accepts the two
  cannot disagree, so no body means one thing to validation and another to
  a signature check.

Theory of operation: the guard reads ``http.request`` messages into a
buffer bounded by ``max_body``, checks it, then hands the app a ``receive``
that yields the whole body once and passes later messages (a disconnect)
through from the server.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from resistance.directory.canonical import CanonicalError, parse_strict
from resistance.registry.errors import error_response


def _is_json(content_type: bytes) -> bool:
    """Whether FastAPI would parse a body of this type as JSON (it does with none at all)."""
    return content_type in (b"", b"application/json") or content_type.endswith(b"+json")


class RequestGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body: int,
        max_headers: int,
        max_header_bytes: int,
        body_timeout: float,
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", ())
        if len(headers) > self.max_headers:
            await _refuse(scope, receive, send, 431, f"more than {self.max_headers} header lines")
            return
        if sum(len(name) + len(value) + 4 for name, value in headers) > self.max_header_bytes:
            too_big = f"headers are larger than {self.max_header_bytes} bytes"
            await _refuse(scope, receive, send, 431, too_big)
            return
        content_type = b""
        for name, value in headers:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_body):
                await self._too_large(scope, receive, send)
                return
            if name == b"content-type":
                content_type = value.partition(b";")[0].strip().lower()
        body = bytearray()
        more = True
        try:
            async with asyncio.timeout(self.body_timeout):
                while more:
                    message = await receive()
                    if message["type"] != "http.request":
                        return  # the client went away before its body was complete
                    body += message.get("body", b"")
                    if len(body) > self.max_body:
                        await self._too_large(scope, receive, send)
                        return
                    more = message.get("more_body", False)
        except TimeoutError:
            late = f"request body did not arrive within {self.body_timeout:g} s"
            await _refuse(scope, receive, send, 408, late)
            return
        if body and _is_json(content_type):
            problem = json_problem(bytes(body))
            if problem is not None:
                await _refuse(scope, receive, send, *problem)
                return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"request body is larger than {self.max_body} bytes"
        await _refuse(scope, receive, send, 413, message)


def json_problem(body: bytes) -> tuple[int, str] | None:
    """Why a JSON body is refused (status, message), or ``None`` if it is acceptable."""
    try:
        value = parse_strict(body, numbers=True)
    except CanonicalError as exc:
        return 422, f"invalid request: body: {exc}"
    if _has_nul(value):
        return 422, "invalid request: body: text must not contain NUL characters"
    return None


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    if isinstance(value, dict):
        return any("\x00" in key or _has_nul(item) for key, item in value.items())
    return False


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
    await error_response(status, message, {"Connection": "close"})(scope, receive, send)
