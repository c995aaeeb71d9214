"""Build, sign, co-sign and verify signed directories.

File format (``resist-signed-directory/1``), a JSON object::

    {"format": "resist-signed-directory/1",
     "document": {...},                       # the directory itself
     "signatures": [{"key_id": HEX, "signature": B64URL}, ...]}

Each signature is Ed25519 over ``SIGNING_CONTEXT + canonical_bytes(document)``
(see :mod:`resistance.directory.canonical`).  The file's own whitespace does
not matter: the verifier parses the document strictly and re-derives its
canonical bytes, so any change to what the document *says* breaks every
signature.

Theory of operation of :func:`verify_directory`: parse strictly; check the
shape of the document; count the *distinct trusted keys* whose signature
verifies (an entry naming an unknown key, or a second entry for a key already
counted, adds nothing); require at least ``threshold`` of them; require
``valid_after <= now < valid_until``; require the serial not to be older than
the last one accepted (an equal serial only with the identical document), and
only then remember the new serial.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from resistance.directory.canonical import CanonicalError, canonical_bytes, parse_strict
from resistance.directory.keys import (
    b64url,
    check_signatures,
    key_id,
    raw_public,
)
from resistance.errors import ResistanceError
from resistance.paths import write_private

FILE_FORMAT = "resist-signed-directory/1"
DOCUMENT_VERSION = 1
SIGNING_CONTEXT = b"resist-directory/1\n"
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_SIGNATURES = 64
STATE_FILE = "directory-trust.json"


class DirectoryError(ResistanceError):
    """A directory file was refused; the message says why in one line."""


@dataclass(frozen=True, slots=True)
class VerifiedDirectory:
    document: dict[str, Any]
    serial: int
    signers: tuple[str, ...]
    digest: str


def build_document(
    *,
    serial: int,
    valid_after: int,
    fresh_until: int,
    valid_until: int,
    proxies: Sequence[Mapping[str, Any]],
    network: str,
) -> dict[str, Any]:
    return {
        "version": DOCUMENT_VERSION,
        "serial": serial,
        "network": network,
        "valid_after": valid_after,
        "fresh_until": fresh_until,
        "valid_until": valid_until,
        "proxies": [dict(p) for p in proxies],
    }


def signed_message(document: Mapping[str, Any]) -> bytes:
    return SIGNING_CONTEXT + canonical_bytes(document)


def sign_document(document: Mapping[str, Any], keys: Sequence[Ed25519PrivateKey]) -> dict[str, Any]:
    message = signed_message(document)
    signatures = [
        {"key_id": key_id(k.public_key()), "signature": b64url(k.sign(message))} for k in keys
    ]
    return {"format": FILE_FORMAT, "document": dict(document), "signatures": signatures}


def dump_signed(signed: Mapping[str, Any]) -> bytes:
    """The file's bytes (canonical too, though verifiers do not rely on it)."""
    return canonical_bytes(signed) + b"\n"


def sign_and_dump(
    document: Mapping[str, Any], keys: Sequence[Ed25519PrivateKey]
) -> tuple[dict[str, Any], bytes]:
    """``sign_document`` and ``dump_signed`` at once, the document serialized only once
    (for a directory of 100,000 proxies that is seconds): the file's canonical bytes
    hold the signed document's canonical bytes as they are (keys sort as
    ``document``, ``format``, ``signatures``)."""
    return _signed_and_dumped(document, canonical_bytes(document), keys)


class EncodedEntries(Sequence[dict[str, Any]]):
    """A signed document's entries held as their canonical bytes, each decoded when read.

    A directory of 100,000 proxies is a million small objects as dicts (1.4 GB at the
    peak of a publication): the document a publication returns holds the bytes it
    signed instead, and whoever reads an entry gets it decoded (canonical JSON holds
    integers, never floats, so each decodes to the value encoded).  Compared as a
    list of the entries."""

    __slots__ = ("_encoded",)

    def __init__(self, encoded: Sequence[bytes]) -> None:
        self._encoded = encoded

    def __len__(self) -> int:
        return len(self._encoded)

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...
    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            return [json.loads(entry) for entry in self._encoded[index]]
        decoded: dict[str, Any] = json.loads(self._encoded[index])
        return decoded

    def __eq__(self, other: object) -> bool:
        if isinstance(other, EncodedEntries):
            return list(self._encoded) == list(other._encoded)
        if isinstance(other, list):
            return list(self) == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"EncodedEntries({len(self)} entries)"


def sign_and_dump_encoded(
    fields: Mapping[str, Any],
    encoded: Sequence[bytes],
    keys: Sequence[Ed25519PrivateKey],
) -> tuple[dict[str, Any], bytes]:
    """:func:`sign_and_dump` of ``build_document(**fields, proxies=entries)`` when only the
    entries' canonical bytes are known (``encoded[i]`` is ``canonical_bytes(entries[i])``):
    the document's canonical bytes are put together from them, byte for byte what
    :func:`canonical_bytes` writes for the whole document, so only the other fields are
    checked and encoded here.  The signed document's ``proxies`` are the entries
    decoded when read (:class:`EncodedEntries`)."""
    if "proxies" in fields:
        raise ValueError("the proxies are passed apart from the other fields")
    document = {**fields, "proxies": EncodedEntries(encoded)}
    parts = []
    for key in sorted(document):  # as json.dumps(sort_keys=True): by code point
        value = (
            b"[" + b",".join(encoded) + b"]" if key == "proxies" else canonical_bytes(document[key])
        )
        parts.append(canonical_bytes(key) + b":" + value)
    return _signed_and_dumped(document, b"{" + b",".join(parts) + b"}", keys)


def _signed_and_dumped(
    document: Mapping[str, Any], body: bytes, keys: Sequence[Ed25519PrivateKey]
) -> tuple[dict[str, Any], bytes]:
    """The signed directory and its file's bytes, ``body`` being the document's canonical
    bytes."""
    signatures = [
        {"key_id": key_id(k.public_key()), "signature": b64url(k.sign(SIGNING_CONTEXT + body))}
        for k in keys
    ]
    signed = {"format": FILE_FORMAT, "document": dict(document), "signatures": signatures}
    rest = canonical_bytes({"format": FILE_FORMAT, "signatures": signatures})
    return signed, b'{"document":' + body + b"," + rest[1:] + b"\n"


def _parse_file(data: bytes) -> tuple[dict[str, Any], list[Any]]:
    if len(data) > MAX_FILE_BYTES:
        raise DirectoryError(f"directory file is larger than {MAX_FILE_BYTES} bytes")
    try:
        signed = parse_strict(data)
    except CanonicalError as exc:
        raise DirectoryError(f"directory file is not valid: {exc}") from None
    if not isinstance(signed, dict) or signed.get("format") != FILE_FORMAT:
        raise DirectoryError(f"not a signed directory (format must be {FILE_FORMAT!r})")
    document, signatures = signed.get("document"), signed.get("signatures")
    if not isinstance(document, dict):
        raise DirectoryError("signed directory has no document object")
    if not isinstance(signatures, list) or len(signatures) > MAX_SIGNATURES:
        raise DirectoryError(f"signatures must be a list of at most {MAX_SIGNATURES}")
    return document, signatures


def _check_document(document: Mapping[str, Any]) -> int:
    if document.get("version") != DOCUMENT_VERSION:
        raise DirectoryError(f"unsupported directory version {document.get('version')!r}")
    fields = ("serial", "valid_after", "fresh_until", "valid_until")
    for name in fields:
        value = document.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise DirectoryError(f"directory field {name!r} must be a non-negative integer")
    if not document["valid_after"] <= document["fresh_until"] <= document["valid_until"]:
        raise DirectoryError("directory times are not ordered valid_after <= fresh <= valid")
    if not isinstance(document.get("proxies"), list):
        raise DirectoryError("directory has no proxies list")
    serial: int = document["serial"]
    return serial


def count_signers(
    document: Mapping[str, Any], signatures: Sequence[Any], trusted: Sequence[Ed25519PublicKey]
) -> tuple[str, ...]:
    """Key ids of the distinct trusted keys with a good signature on the document."""
    entries = [
        (e["key_id"], e["signature"])
        for e in signatures
        if isinstance(e, dict)
        and isinstance(e.get("key_id"), str)
        and isinstance(e.get("signature"), str)
    ]
    return check_signatures(signed_message(document), entries, trusted)[1]


def document_digest(document: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_bytes(document)).hexdigest()


def verify_directory(
    data: bytes,
    *,
    trusted: Sequence[Ed25519PublicKey],
    threshold: int,
    now: int,
    last_serial: int | None = None,
    last_digest: str | None = None,
    skew: int = 0,
) -> VerifiedDirectory:
    """Check a signed directory file; raises :class:`DirectoryError` saying why not.

    ``skew`` seconds of clock difference are forgiven at the start of the
    validity window only (a directory signed a moment ago by a registry whose
    clock runs ahead); the end of the window is never stretched.
    """
    if threshold < 1:
        raise DirectoryError("threshold must be at least 1")
    distinct = {raw_public(k) for k in trusted}
    if threshold > len(distinct):
        raise DirectoryError(
            f"threshold {threshold} needs at least that many distinct trusted keys, "
            f"got {len(distinct)}"
        )
    document, signatures = _parse_file(data)
    try:
        serial = _check_document(document)
        signers = count_signers(document, signatures, trusted)
        digest = document_digest(document)
    except CanonicalError as exc:
        raise DirectoryError(f"directory document is not valid: {exc}") from None
    if len(signers) < threshold:
        raise DirectoryError(
            f"directory has good signatures from {len(signers)} trusted key(s), "
            f"{threshold} required"
        )
    if now + skew < document["valid_after"]:
        raise DirectoryError(
            f"directory is not valid yet (valid after {document['valid_after']}, now {now})"
        )
    if now >= document["valid_until"]:
        raise DirectoryError(f"directory expired at {document['valid_until']} (now {now})")
    if last_serial is not None:
        if serial < last_serial:
            raise DirectoryError(
                f"directory serial {serial} is older than the last accepted {last_serial} "
                "(rollback refused)"
            )
        if serial == last_serial and last_digest is not None and digest != last_digest:
            raise DirectoryError(
                f"directory serial {serial} was already accepted with different content"
            )
    return VerifiedDirectory(document, serial, signers, digest)


def cosign(data: bytes, key: Ed25519PrivateKey) -> bytes:
    """Add ``key``'s signature to a signed directory file (a no-op if already there)."""
    document, signatures = _parse_file(data)
    try:
        _check_document(document)
        message = signed_message(document)
    except CanonicalError as exc:
        raise DirectoryError(f"directory document is not valid: {exc}") from None
    public = key.public_key()
    kid = key_id(public)
    for entry in signatures:
        good = isinstance(entry, dict) and entry.get("key_id") == kid
        if good and count_signers(document, [entry], [public]):
            return dump_signed(
                {"format": FILE_FORMAT, "document": document, "signatures": signatures}
            )
    kept = [s for s in signatures if not (isinstance(s, dict) and s.get("key_id") == kid)]
    kept.append({"key_id": kid, "signature": b64url(key.sign(message))})
    return dump_signed({"format": FILE_FORMAT, "document": document, "signatures": kept})


@dataclass(frozen=True, slots=True)
class TrustState:
    """The last directory a client accepted, for rollback checks."""

    serial: int | None = None
    digest: str | None = None


def load_trust_state(state_dir: Path) -> TrustState:
    path = state_dir / STATE_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return TrustState()
    except (OSError, ValueError) as exc:
        raise DirectoryError(f"{path} is damaged ({exc}); remove it to start over") from None
    serial, digest = raw.get("serial"), raw.get("digest")
    if not isinstance(serial, int) or not isinstance(digest, str):
        raise DirectoryError(f"{path} is damaged; remove it to start over")
    return TrustState(serial, digest)


def save_trust_state(state_dir: Path, verified: VerifiedDirectory) -> None:
    write_private(
        state_dir / STATE_FILE,
        json.dumps({"serial": verified.serial, "digest": verified.digest}) + "\n",
    )
