"""Dashboard sign-in: signed session cookies with expiry, CSRF tokens, a sign-in limit.

Theory of operation.  Signing in with an API token (an operator's, or the
admin token for funders) sets one cookie, ``rst_session``:
``base64url(JSON {role, token id, operator id, expiry}) "." HMAC-SHA256``,
keyed by a key derived from the registry's secret ring key, so no session
table is needed and a forged or altered cookie fails the MAC.  The cookie is
HttpOnly, SameSite=Strict, path ``/ui/``, and Secure whenever the page was
asked for over HTTPS or on a loopback name (browsers keep Secure cookies there
too; a plain-HTTP lab address would otherwise lose them).  Each request
checks the MAC, the expiry against the registry's clock, and that the token
the session came from still exists with the same role, so a revoked or
rotated token ends its sessions.

CSRF: every visitor gets a random ``rst_csrf`` cookie (HttpOnly, SameSite
Strict); each form carries HMAC(key, that nonce), and a POST whose field does
not match its cookie is refused with 403.  Signing in and out replace the
nonce.  Sign-in attempts are limited per client network by a token bucket.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

from fastapi import Request, Response

SESSION_COOKIE = "rst_session"
CSRF_COOKIE = "rst_csrf"
COOKIE_PATH = "/ui/"
#: How long a session lasts after sign-in.
SESSION_SECONDS = 8 * 3600
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]", "::1")


def derive_key(ring_key: bytes) -> bytes:
    """The dashboard's MAC key, separate from the ring key's own use."""
    return hmac.new(ring_key, b"resistance dashboard sessions v1", hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class Session:
    role: str
    token_id: int
    operator_id: int | None
    expires: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, what: str, data: str) -> str:
    return _b64(hmac.new(key, f"{what}|{data}".encode(), hashlib.sha256).digest())


def seal(key: bytes, session: Session) -> str:
    body = _b64(
        json.dumps(
            {
                "r": session.role,
                "t": session.token_id,
                "o": session.operator_id,
                "e": session.expires,
            },
            separators=(",", ":"),
        ).encode()
    )
    return f"{body}.{_mac(key, 'session', body)}"


def unseal(key: bytes, cookie: str | None, *, now: int) -> Session | None:
    """The session in a cookie, or ``None`` if it is absent, altered or expired."""
    if not cookie or len(cookie) > 512 or cookie.count(".") != 1:
        return None
    body, mac = cookie.split(".")
    if not hmac.compare_digest(mac.encode(), _mac(key, "session", body).encode()):
        return None
    try:
        data = json.loads(_unb64(body))
        session = Session(str(data["r"]), int(data["t"]), data["o"], int(data["e"]))
    except (ValueError, KeyError, TypeError):
        return None
    if session.expires <= now:
        return None
    return session


def csrf_token(key: bytes, nonce: str) -> str:
    return _mac(key, "csrf", nonce)


def csrf_ok(key: bytes, nonce: str | None, field: str | None) -> bool:
    if not nonce or not field or len(field) > 128:
        return False
    return hmac.compare_digest(field.encode(), csrf_token(key, nonce).encode())


def new_nonce() -> str:
    return secrets.token_urlsafe(24)


def secure_cookies(request: Request) -> bool:
    forwarded = request.headers.get("x-forwarded-proto", "")
    return (
        request.url.scheme == "https"
        or forwarded == "https"
        or (request.url.hostname or "") in LOOPBACK_NAMES
    )


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=secure_cookies(request),
    )


def clear_cookie(request: Request, response: Response, name: str) -> None:
    response.delete_cookie(
        name, path=COOKIE_PATH, httponly=True, samesite="strict", secure=secure_cookies(request)
    )
