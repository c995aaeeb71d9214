"""A node's identity: the key that proves to a registry who runs this endpoint.

The node makes an Ed25519 key on first run and keeps it in its state
directory (PKCS8 PEM, mode 0600).  A registry that wants proof that an
operator controls an endpoint connects to it over SOCKS5, authenticates with
the node's probe credential (a user the node makes for registries and
probes), and sends CONNECT to the name ``<32 hex digits>.challenge.resist.invalid``
port 0.  The node answers "succeeded" and then the 64-byte Ed25519 signature
of ``b"resist-node-challenge/1\\n" + nonce`` and closes.  ``.invalid`` is a
reserved top-level domain (RFC 2606), so the name can never be a real
destination, and the challenge is only reachable after authentication, so a
scanner cannot fingerprint a node by it.

On the TLS listener the node signs ``b"resist-node-challenge-tls/1\n" +
nonce + SHA-256(DER of its certificate)`` instead, so the signature also says
which certificate the node presents: a registry that sees another
certificate (a front, or someone in the middle re-encrypting) cannot get a
signature that verifies with it, and the pin it records is the node's own.
"""

from __future__ import annotations

import base64
import re
import secrets
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from resistance import keyfile
from resistance.directory.keys import verify_signature
from resistance.errors import ConfigError

IDENTITY_FILE: Final = "node-identity.pem"
PROBE_USER_FILE: Final = "node-probe-user.txt"
CHALLENGE_SUFFIX: Final = ".challenge.resist.invalid"
CHALLENGE_CONTEXT: Final = b"resist-node-challenge/1\n"
CHALLENGE_TLS_CONTEXT: Final = b"resist-node-challenge-tls/1\n"
_CHALLENGE_NAME: Final = re.compile(r"([0-9a-f]{32})\.challenge\.resist\.invalid")


def load_identity(state_dir: Path) -> Ed25519PrivateKey | None:
    """The node's key if it has one."""
    path = state_dir / IDENTITY_FILE
    if not path.exists():
        return None
    return keyfile.read_private(path, keyfile.parse_ed25519_pem, what="node identity key")


def load_or_create_identity(state_dir: Path) -> Ed25519PrivateKey:
    """The node's key, made on first use."""
    return keyfile.load_or_create_ed25519(state_dir / IDENTITY_FILE, what="node identity key")


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The public key as unpadded base64url of its 32 raw bytes."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def public_key_from_text(text: str) -> Ed25519PublicKey:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        if len(raw) != 32:
            raise ValueError
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise ConfigError(f"{text[:60]!r} is not an Ed25519 public key") from None


def probe_credential(state_dir: Path) -> tuple[str, str]:
    """The user the node keeps for registries and probes, made on first use."""
    return keyfile.load_or_create(
        state_dir / PROBE_USER_FILE,
        parse=keyfile.parse_credential,
        new=lambda: keyfile.credential_text(
            "probe-" + secrets.token_hex(4), secrets.token_urlsafe(24)
        ),
        what="probe user",
    )


def challenge_message(nonce: bytes) -> bytes:
    """What the node signs to answer a challenge."""
    if len(nonce) != 16:
        raise ValueError("a challenge nonce is 16 bytes")
    return CHALLENGE_CONTEXT + nonce


def tls_challenge_message(nonce: bytes, cert_sha256: bytes) -> bytes:
    """What the node signs to answer a challenge on its TLS listener."""
    if len(nonce) != 16 or len(cert_sha256) != 32:
        raise ValueError("a challenge nonce is 16 bytes and a certificate digest 32")
    return CHALLENGE_TLS_CONTEXT + nonce + cert_sha256


def verify_challenge(
    public_key: Ed25519PublicKey,
    nonce: bytes,
    signature: bytes,
    *,
    cert_sha256: bytes | None = None,
) -> bool:
    """Whether ``signature`` is the answer of the node holding ``public_key`` to the
    challenge with ``nonce``; over TLS (``cert_sha256`` given), for that certificate.

    The one check of a challenge answer: the registry's proof of control and
    the client's health check both use it.
    """
    message = (
        challenge_message(nonce)
        if cert_sha256 is None
        else tls_challenge_message(nonce, cert_sha256)
    )
    return verify_signature(public_key, signature, message)


def challenge_name(nonce: bytes) -> str:
    """The name a registry CONNECTs to in order to challenge a node."""
    return nonce.hex() + CHALLENGE_SUFFIX


def parse_challenge(host: str) -> bytes | None:
    """The nonce if ``host`` is a well-formed challenge name, else ``None``."""
    m = _CHALLENGE_NAME.fullmatch(host)
    return bytes.fromhex(m.group(1)) if m else None
