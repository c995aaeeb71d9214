"""The canary: a TCP endpoint the registry runs that answers a fresh nonce.

A proxy could fake a successful CONNECT, or echo bytes back itself; it cannot
sign.  So a check ends at the canary, through the proxy, with this exchange
(all integers big-endian)::

    probe  → canary   "RSC1" | nonce (16) | upload length (u32) | download length (u32)
                      | upload bytes
    canary → probe    signature (64) | download bytes

The signature is Ed25519, by the registry's canary key, over
``CANARY_CONTEXT | nonce | SHA-256(upload) | download length (u32) | window
(u64)``, where the window is the canary's clock in :data:`WINDOW_SECONDS`
steps; the download bytes are SHAKE-128 of ``nonce | signature``, so neither
direction's bytes can be made up by the proxy either.  The probe verifies at
once when it knows the canary's public key, and it keeps nonce, upload
digest and signature in its results so the registry can check them again.

What a proof backs.  A probe could fetch the canary directly, without any
proxy, and claim the answer came through one; nothing in the exchange can
stop that once.  What stops it from counting more than once is the nonce: a
probe's check uses :func:`bound_nonce`, a digest of the probe's key, the
proxy id and the check's time, and the registry recomputes it from the
result, and checks that the canary's window is within one of the check's
time (:func:`verify_bound`).  So one canary answer backs one probe's one
result for one proxy at one time, and a proof fetched now cannot back a
check dated tomorrow or be shared between probes or proxies.  The window is
not sent: the verifier tries the windows around the check's time, so the
wire format is unchanged.

:class:`CanaryRequestParser` is the canary's sans-IO half: fed bytes, it
returns the request once complete, hashing the upload as it streams (never
buffering it).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from resistance.directory.keys import verify_signature
from resistance.errors import ProtocolError

MAGIC: Final = b"RSC1"
CANARY_CONTEXT: Final = b"resist-canary/2\n"
NONCE_CONTEXT: Final = b"resist-canary-nonce/1\n"
#: The canary signs its clock in steps of this many seconds; a proof is accepted for a
#: check dated in the same step or the one before or after (clock skew up to a step).
WINDOW_SECONDS: Final = 300
NONCE_BYTES: Final = 16
SIGNATURE_BYTES: Final = 64
HEADER: Final = struct.Struct("!4s16sII")
MAX_UPLOAD: Final = 1 << 20
MAX_DOWNLOAD: Final = 4 << 20


def proof_message(nonce: bytes, upload_sha256: bytes, download: int, window: int) -> bytes:
    """What the canary signs."""
    if len(nonce) != NONCE_BYTES or len(upload_sha256) != 32:
        raise ValueError("nonce must be 16 bytes and the upload digest 32")
    if not 0 <= download <= MAX_DOWNLOAD:
        raise ValueError(f"download length must be 0-{MAX_DOWNLOAD}")
    if not 0 <= window < 1 << 64:
        raise ValueError("window out of range")
    return (
        CANARY_CONTEXT + nonce + upload_sha256 + download.to_bytes(4, "big")
        + window.to_bytes(8, "big")
    )  # fmt: skip


def window_of(at: float) -> int:
    return max(0, int(at) // WINDOW_SECONDS)


def bound_nonce(probe_key: str, proxy_id: int, at: int) -> bytes:
    """The nonce of ``probe_key``'s check of ``proxy_id`` started at ``at`` (unix seconds)."""
    if not 0 <= proxy_id < 1 << 63 or not 0 <= at < 1 << 63:
        raise ValueError("proxy id or time out of range")
    material = b"%s%s\n%d\n%d" % (NONCE_CONTEXT, probe_key.encode(), proxy_id, at)
    return hashlib.sha256(material).digest()[:NONCE_BYTES]


def download_stream(nonce: bytes, signature: bytes, length: int) -> bytes:
    """The bytes the canary sends after its signature."""
    return hashlib.shake_128(nonce + signature).digest(length) if length else b""


def request_bytes(nonce: bytes, upload: bytes, download: int) -> bytes:
    if len(nonce) != NONCE_BYTES:
        raise ValueError("nonce must be 16 bytes")
    if len(upload) > MAX_UPLOAD or not 0 <= download <= MAX_DOWNLOAD:
        raise ValueError("upload or download length out of range")
    return HEADER.pack(MAGIC, nonce, len(upload), download) + upload


def answer(
    key: Ed25519PrivateKey, nonce: bytes, upload_sha256: bytes, download: int, *, now: float
) -> bytes:
    """Everything the canary sends back: signature, then the download bytes."""
    signature = key.sign(proof_message(nonce, upload_sha256, download, window_of(now)))
    return signature + download_stream(nonce, signature, download)


def verify_proof(
    key: Ed25519PublicKey,
    nonce: bytes,
    upload_sha256: bytes,
    download: int,
    signature: bytes,
    *,
    around: float,
) -> bool:
    """Whether the canary signed this in the window of ``around`` or the one on each side."""
    middle = window_of(around)
    # Most likely first: the check's window, then the next (the answer comes after it).
    for window in (middle, middle + 1, middle - 1):
        try:
            message = proof_message(nonce, upload_sha256, download, window)
        except ValueError:
            continue
        if verify_signature(key, signature, message):
            return True
    return False


def verify_bound(
    key: Ed25519PublicKey,
    *,
    probe_key: str,
    proxy_id: int,
    at: int,
    nonce: bytes,
    upload_sha256: bytes,
    download: int,
    signature: bytes,
) -> bool:
    """Whether a result's proof is the canary's answer to this probe's check of this proxy
    at ``at``, signed in that time's window (see the module's "What a proof backs")."""
    try:
        expected = bound_nonce(probe_key, proxy_id, at)
    except ValueError:
        return False
    return nonce == expected and verify_proof(
        key, nonce, upload_sha256, download, signature, around=at
    )


@dataclass(frozen=True, slots=True)
class CanaryRequest:
    nonce: bytes
    upload_sha256: bytes
    download: int


class CanaryRequestParser:
    """Sans-IO: feed bytes; returns the :class:`CanaryRequest` once the upload is all in.

    Raises :class:`ProtocolError` on a bad magic or lengths over the caps.  Bytes
    after the upload are ignored (the probe sends none).
    """

    __slots__ = ("_hash", "_header", "_header_buf", "_remaining", "done")

    def __init__(self) -> None:
        self._header_buf = bytearray()
        self._header: tuple[bytes, int] | None = None
        self._hash = hashlib.sha256()
        self._remaining = 0
        self.done = False

    def feed(self, data: bytes | bytearray | memoryview) -> CanaryRequest | None:
        if self.done:
            return None
        view = memoryview(data)
        if self._header is None:
            need = HEADER.size - len(self._header_buf)
            self._header_buf += view[:need]
            view = view[need:]
            if len(self._header_buf) < HEADER.size:
                return None
            magic, nonce, upload, download = HEADER.unpack(self._header_buf)
            if magic != MAGIC:
                raise ProtocolError("not a canary request")
            if upload > MAX_UPLOAD or download > MAX_DOWNLOAD:
                raise ProtocolError("canary request lengths over the caps")
            self._header = (nonce, download)
            self._remaining = upload
        take = min(self._remaining, len(view))
        if take:
            self._hash.update(view[:take])
            self._remaining -= take
        if self._remaining:
            return None
        self.done = True
        nonce, download = self._header
        return CanaryRequest(nonce, self._hash.digest(), download)
