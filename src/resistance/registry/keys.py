"""The registry's own secrets in its state directory: signing keys and the ring key.

Signing keys are Ed25519, one PKCS8 PEM file each (mode 0600) in
``STATE_DIR/registry-keys/``; the first is made on first start and every
``*.pem`` there signs each publication.  The distribution key (32 random
bytes) keys the hash ring, so a censor cannot compute who gets which proxy.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from resistance import keyfile
from resistance.errors import ConfigError
from resistance.paths import write_atomic

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
        return [keyfile.load_or_create_ed25519(folder / FIRST_KEY, what="registry signing key")]
    return [
        keyfile.read_private(path, keyfile.parse_ed25519_pem, what="registry signing key")
        for path in files
    ]


def load_or_create_ring_key(state_dir: Path) -> bytes:
    return keyfile.load_or_create(
        state_dir / RING_KEY,
        parse=keyfile.parse_hex32,
        new=keyfile.new_hex32,
        what="distribution key",
    )


def write_public_file(path: Path, data: bytes) -> None:
    """Write a file anyone may read (the published directory), atomically.

    The temporary file is this process's own: the workers of ``serve --workers``
    share the state directory and may write the directory at the same time.
    """
    write_atomic(path, data, mode=0o644, tmp=path.with_name(f".{path.name}.{os.getpid()}.tmp"))
