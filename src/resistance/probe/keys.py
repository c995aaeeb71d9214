"""The probe's own Ed25519 key: made on first run in its state directory, never leaves it."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from resistance.directory.keys import check_private_mode, create_private_key, load_private_key

PROBE_KEY_FILE = "probe-key.pem"


def load_or_create_probe_key(state_dir: Path) -> Ed25519PrivateKey:
    path = state_dir / PROBE_KEY_FILE
    if not path.exists():
        return create_private_key(path)
    check_private_mode(path)
    return load_private_key(path)
