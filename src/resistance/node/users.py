"""Users of a node and their RFC 1929 passwords, checked in constant time.

Passwords are kept only as keyed BLAKE2b digests (a MAC, RFC 7693) under a
key made at start-up, so every comparison is between two 32-byte strings: the
time it takes says nothing about the password, its length, or whether the
user exists.  BLAKE2b rather than HMAC-SHA256: the check runs once per
connection, and keyed BLAKE2b costs a single hash where OpenSSL's HMAC sets
up two (a connection cycle spent ~8,000 instructions in it).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from resistance import keyfile

GENERATED_USERS_FILE = "node-users.toml"


class UserDB:
    __slots__ = ("_digests", "_dummy", "_key")

    def __init__(self, users: Mapping[str, str]) -> None:
        self._key = os.urandom(32)
        self._digests = {
            name.encode(): self._digest(password.encode()) for name, password in users.items()
        }
        self._dummy = self._digest(os.urandom(16))

    def _digest(self, password: bytes) -> bytes:
        return hashlib.blake2b(password, key=self._key, digest_size=32).digest()

    def __len__(self) -> int:
        return len(self._digests)

    def check(self, username: bytes, password: bytes) -> str | None:
        """The user's name if the password is right, else ``None``."""
        expected = self._digests.get(username)
        ok = hmac.compare_digest(self._digest(password), expected or self._dummy)
        if ok and expected is not None:
            return username.decode("utf-8", "replace")
        return None


def generated_user(state_dir: Path) -> tuple[str, str, bool]:
    """The node's own user, made once and kept in the state directory.

    Returns ``(name, password, created)``; the same credentials come back on
    every start so that links a user already has keep working.
    """
    (name, password), created = keyfile.load_or_create_created(
        state_dir / GENERATED_USERS_FILE,
        parse=keyfile.parse_credential,
        new=lambda: keyfile.credential_text("u" + secrets.token_hex(3), secrets.token_urlsafe(18)),
        what="generated user",
    )
    return name, password, created
