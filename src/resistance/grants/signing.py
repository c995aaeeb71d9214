"""The registry's signature over a round's inputs, and checking it against pinned keys.

What is signed
--------------
Ed25519 (the registry's directory keys) over::

    b"resist-grant-inputs/1\\n" + canonical_bytes({
        "round_id", "network", "target_country", "period_start", "period_end",
        "inputs": the inputs as in the round file, without "signatures"})

Inputs in format /2 (chunks, see :mod:`resistance.grants.model`) are signed as::

    b"resist-grant-inputs/2\\n" + canonical_bytes({the same round fields,
        "inputs": {"format", "manifest", "carried_in", "prior_service_days"}})

that is, over the manifest of the chunks' SHA-256 digests instead of the rows,
so signing and checking hash the chunks' bytes and never put a canonical form
on a multi-gigabyte value. The context differs, so a /1 signature can never be
taken for a /2 one or the reverse.

``canonical_bytes`` is the project's one canonical JSON
(:mod:`resistance.directory.canonical`). The round's id, network, country and
period are bound in, so signed measurements of one round cannot be passed off
as those of another; the funder's own choices (budget, caps, exponent...) are
not: anyone may recompute a round with other settings, and the signature
still says the measurements are the registry's. Each entry names its key by
the same key id as directory signatures (16 bytes of SHA-256 of the raw
public key, hex) and carries the signature in base64url.

Checking counts the *distinct trusted keys* with a good signature, as
directory verification does; an entry by an unknown key, or a second entry
by a key already counted, adds nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from resistance.directory.canonical import CanonicalError, canonical_bytes
from resistance.directory.keys import b64url, key_id
from resistance.directory.keys import check_signatures as check_key_signatures
from resistance.grants.errors import InputError
from resistance.grants.model import (
    INPUTS_FORMAT_2,
    GrantSettings,
    InputSignature,
    RoundInputs,
    inputs_to_json,
)

SIGNING_CONTEXT = b"resist-grant-inputs/1\n"
SIGNING_CONTEXT_2 = b"resist-grant-inputs/2\n"
ALGORITHM = "ed25519"


def signed_message(settings: GrantSettings, inputs: RoundInputs) -> bytes:
    """The bytes a registry signs for these inputs of this round."""
    return _message(settings, inputs_to_json(inputs, with_chunks=False))


def _message(settings: GrantSettings, inputs_json: Mapping[str, Any]) -> bytes:
    """The signed bytes from the inputs' JSON (its ``signatures`` and, for /2, its
    ``chunks`` left out: the manifest stands for them)."""
    body = {k: v for k, v in inputs_json.items() if k not in ("signatures", "chunks")}
    context = SIGNING_CONTEXT_2 if body.get("format") == INPUTS_FORMAT_2 else SIGNING_CONTEXT
    try:
        data = canonical_bytes(
            {
                "round_id": settings.round_id,
                "network": settings.network,
                "target_country": settings.target_country,
                "period_start": settings.period_start.isoformat(),
                "period_end": settings.period_end.isoformat(),
                "inputs": body,
            }
        )
    except CanonicalError as exc:
        raise InputError(f"inputs have no canonical form: {exc}") from None
    return context + data


def sign_inputs(
    settings: GrantSettings, inputs: RoundInputs, keys: Sequence[Ed25519PrivateKey]
) -> RoundInputs:
    """The inputs with one signature per key (replacing any signatures they had)."""
    message = signed_message(settings, inputs)
    signatures = tuple(
        InputSignature(key_id(k.public_key()), ALGORITHM, b64url(k.sign(message))) for k in keys
    )
    return dataclasses.replace(inputs, signatures=signatures)


def sign_inputs_json(
    settings: GrantSettings, inputs: RoundInputs, keys: Sequence[Ed25519PrivateKey]
) -> tuple[RoundInputs, dict[str, Any]]:
    """``sign_inputs``, and the signed inputs' JSON (``inputs_to_json`` of them) made in
    the same pass: a round over 100,000 proxies x 30 days has 3,000,000 rollups to
    convert, once instead of twice."""
    body = inputs_to_json(dataclasses.replace(inputs, signatures=()))
    message = _message(settings, body)
    signatures = tuple(
        InputSignature(key_id(k.public_key()), ALGORITHM, b64url(k.sign(message))) for k in keys
    )
    body["signatures"] = [
        {"key_id": s.key_id, "algorithm": s.algorithm, "signature": s.signature} for s in signatures
    ]
    return dataclasses.replace(inputs, signatures=signatures), body


@dataclass(frozen=True, slots=True)
class SignatureCheck:
    """One signature entry and what became of it: good, bad, untrusted or unsupported."""

    key_id: str
    algorithm: str
    outcome: str


@dataclass(frozen=True, slots=True)
class SignatureReport:
    entries: tuple[SignatureCheck, ...]
    signers: tuple[str, ...]  # key ids of the distinct trusted keys with a good signature


def check_signatures(
    settings: GrantSettings, inputs: RoundInputs, trusted: Sequence[Ed25519PublicKey]
) -> SignatureReport:
    """Check every signature entry against the trusted keys."""
    supported = [sig for sig in inputs.signatures if sig.algorithm == ALGORITHM]
    outcomes, signers = check_key_signatures(
        signed_message(settings, inputs), [(s.key_id, s.signature) for s in supported], trusted
    )
    checked = dict(zip((id(s) for s in supported), outcomes, strict=True))
    entries = tuple(
        SignatureCheck(sig.key_id, sig.algorithm, checked.get(id(sig), "unsupported algorithm"))
        for sig in inputs.signatures
    )
    return SignatureReport(entries, signers)
