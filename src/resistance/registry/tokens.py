"""API tokens: 32 random bytes shown once, stored only as their SHA-256.

A token has 256 bits of entropy, so a plain SHA-256 is enough to make a stolen
database useless for logging in (no password stretching needed); the lookup
is by digest and the final comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

PREFIX = "rst_"


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("ascii"), b.encode("ascii"))
