"""The registry's own secrets in its state directory: signing keys and the ring key.

Signing keys are Ed25519, one PKCS8 PEM file each (mode 0600) in
``STATE_DIR/registry-keys/``; the first is made on first start and every
``*.pem`` there signs each publication.  The distribution key (32 random
bytes) keys the hash ring, so a censor cannot compute who gets which proxy.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from resistance.directory.keys import check_private_mode, create_private_key, load_private_key
from resistance.errors import ConfigError
from resistance.paths import write_atomic, write_private

KEYS_DIR = "registry-keys"
FIRST_KEY = "key-1.pem"
RING_KEY = "distribution.key"


def load_or_create_signing_keys(state_dir: Path) -> list[Ed25519PrivateKey]:
    folder = state_dir / KEYS_DIR
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        files = sorted(folder.glob("*.pem"))
    except OSError as exc:
        raise ConfigError(f"cannot use {folder}: {exc.strerror}") from None
    if not files:
        return [create_private_key(folder / FIRST_KEY)]
    keys = []
    for path in files:
        check_private_mode(path)
        keys.append(load_private_key(path))
    return keys


def load_or_create_ring_key(state_dir: Path) -> bytes:
    path = state_dir / RING_KEY
    if not path.exists():
        write_private(path, secrets.token_hex(32) + "\n")
    check_private_mode(path)
    try:
        text = path.read_text().strip()
        key = bytes.fromhex(text)
    except (OSError, ValueError):
        raise ConfigError(f"{path} is damaged: expected 64 hex digits") from None
    if len(key) != 32:
        raise ConfigError(f"{path} is damaged: expected 64 hex digits")
    return key


def write_public_file(path: Path, data: bytes) -> None:
    """Write a file anyone may read (the published directory), atomically."""
    write_atomic(path, data, mode=0o644)
