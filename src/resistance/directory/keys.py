"""Ed25519 keys of directory authorities: files, text forms and key ids.

A public key is written as base64url without padding of its 32 raw bytes
(the same text form as node identities).  A key id is the first 16 bytes of
SHA-256 over the raw public key, in hex: short enough to read, long enough
that two authorities never collide by accident.  Ids only help find the key;
verification always uses the pinned key itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from resistance import keyfile
from resistance.errors import ConfigError


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode base64url with or without padding; raises ``ValueError`` on anything else."""
    if not text.isascii() or any(c in text for c in "+/= \n\t\r"):
        raise ValueError("not base64url without padding")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_text(key: Ed25519PublicKey) -> str:
    return b64url(raw_public(key))


def key_id(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(raw_public(key)).digest()[:16].hex()


def parse_public_key(text: str) -> Ed25519PublicKey:
    """A public key from its base64url text; raises ``ValueError`` if it is not one."""
    raw = b64url_decode(text.strip())
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key has 32 bytes, not {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def verify_signature(key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    if len(signature) != 64:
        return False
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def check_signatures(
    message: bytes, entries: Sequence[tuple[str, str]], trusted: Sequence[Ed25519PublicKey]
) -> tuple[list[str], tuple[str, ...]]:
    """Check ``(key_id, base64url signature)`` entries over ``message``.

    Returns each entry's outcome ("good", "bad signature" or "untrusted key")
    and the key ids of the *distinct* trusted keys with a good signature: a
    second entry by a key already counted, or one by an unknown key, adds
    nothing.  Directories and grant-round inputs are both checked here.
    """
    by_id: dict[str, list[Ed25519PublicKey]] = {}
    for key in trusted:
        by_id.setdefault(key_id(key), []).append(key)
    good: dict[bytes, str] = {}
    outcomes = []
    for kid, text in entries:
        keys = by_id.get(kid)
        if not keys:
            outcomes.append("untrusted key")
            continue
        try:
            signature = b64url_decode(text)
        except ValueError:
            signature = b""
        outcome = "bad signature"
        for key in keys:
            if verify_signature(key, signature, message):
                outcome = "good"
                good.setdefault(raw_public(key), kid)
                break
        outcomes.append(outcome)
    return outcomes, tuple(sorted(good.values()))


def trusted_key(spec: str) -> Ed25519PublicKey:
    """``--trust`` value: a key's base64url text, or a file holding that text or a PEM key."""
    path = Path(spec)
    if len(spec) < 4096 and path.is_file():
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read key file {path}: {exc.strerror}") from None
        if data.lstrip().startswith(b"-----BEGIN"):
            return _pem_public(data, path)
        spec = data.decode("ascii", "replace").strip()
    try:
        return parse_public_key(spec)
    except ValueError as exc:
        raise ConfigError(f"bad trusted key {spec[:60]!r}: {exc}") from None


def _pem_public(data: bytes, path: Path) -> Ed25519PublicKey:
    try:
        loaded = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise ConfigError(f"{path} holds no readable PEM key") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise ConfigError(f"{path} is not an Ed25519 key") from None
        return private.public_key()
    if not isinstance(loaded, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an Ed25519 public key")
    return loaded


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An Ed25519 key from a PKCS8 PEM file (mode 0600)."""
    return keyfile.read_private(path, keyfile.parse_ed25519_pem, what="Ed25519 private key")


def private_pem(key: Ed25519PrivateKey) -> str:
    return keyfile.ed25519_pem(key).decode("ascii")


def create_private_key(path: Path) -> Ed25519PrivateKey:
    """Make a new key file (mode 0600); refuses to overwrite an existing one."""
    data = keyfile.new_ed25519_pem()
    keyfile.create_new(path, data, what="Ed25519 private key")
    return keyfile.parse_ed25519_pem(data)
