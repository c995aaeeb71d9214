"""WireGuard keys: Curve25519 key pairs and preshared keys as base64 text.

The text form is the one ``wg genkey`` prints and config files hold: 32 bytes
in standard base64 (44 characters ending in ``=``).  Private keys are clamped
as ``wg genkey`` clamps them, so a key made here is byte-for-byte one that
``wg`` would have made.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from resistance import keyfile
from resistance.errors import ConfigError

KEY_LEN: Final = 32
_KEY_TEXT: Final = re.compile(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=")


def clamp(raw: bytes) -> bytes:
    """Curve25519 clamping, as ``wg genkey`` applies it."""
    b = bytearray(raw)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def decode(text: str, *, what: str = "key") -> bytes:
    """32 bytes from base64 text; a one-line :class:`ConfigError` otherwise.

    The message never repeats the text: it may be a private key.
    """
    text = text.strip()
    if not _KEY_TEXT.fullmatch(text):
        raise ConfigError(f"bad {what}: expected 44 characters of base64 (as wg genkey prints)")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:  # pragma: no cover - the pattern already checks it
        raise ConfigError(f"bad {what}: not base64") from None


def public_from_private(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A key pair; ``repr`` shows only the public half."""

    private: bytes
    public: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        return cls.from_private(clamp(os.urandom(KEY_LEN)))

    @classmethod
    def from_private(cls, private: bytes) -> KeyPair:
        if len(private) != KEY_LEN:
            raise ConfigError("bad private key: expected 32 bytes")
        return cls(private, public_from_private(private))

    @property
    def private_text(self) -> str:
        return encode(self.private)

    @property
    def public_text(self) -> str:
        return encode(self.public)

    def __repr__(self) -> str:
        return f"KeyPair(public={self.public_text!r})"


def generate_psk() -> bytes:
    return os.urandom(KEY_LEN)


def load_or_create_key_file(path: Path, *, what: str) -> KeyPair:
    """A key pair kept in ``path`` (its private key's base64 text, mode 0600),
    made on first use; ``what`` names it in errors."""
    return keyfile.load_or_create(path, parse=parse_key_file, new=new_key_file, what=what)


def parse_key_file(data: bytes) -> KeyPair:
    """A key pair from a key file's bytes; ``ValueError`` if it holds no key."""
    text = data.decode("ascii").strip()
    if not _KEY_TEXT.fullmatch(text):
        raise ValueError("expected 44 characters of base64 (as wg genkey prints)")
    return KeyPair.from_private(base64.b64decode(text, validate=True))


def new_key_file() -> bytes:
    """A new private key's text, as ``wg genkey > FILE`` writes it."""
    return (KeyPair.generate().private_text + "\n").encode("ascii")


def read_key_file(path: Path, *, what: str = "private key") -> bytes:
    """A key from a file holding its base64 text (``wg genkey > FILE``)."""
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        raise ConfigError(f"cannot read {what} file {path}: {reason}") from None
    return decode(text, what=f"{what} in {path}")
