"""The probe's own keys, made on first run in its state directory, never leaving it.

The Ed25519 key signs result batches.  The WireGuard key (``wireguard.key``,
base64 text as ``wg genkey`` writes it) handshakes with WireGuard endpoints,
whose operators add its public half as a probe peer.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from resistance import keyfile
from resistance.vpn import keys as wg_keys

PROBE_KEY_FILE = "probe-key.pem"
WIREGUARD_KEY_FILE = "wireguard.key"


def load_or_create_probe_key(state_dir: Path) -> Ed25519PrivateKey:
    return keyfile.load_or_create_ed25519(state_dir / PROBE_KEY_FILE, what="probe key")


def load_or_create_wireguard_key(state_dir: Path) -> wg_keys.KeyPair:
    return wg_keys.load_or_create_key_file(
        state_dir / WIREGUARD_KEY_FILE, what="probe WireGuard key"
    )
