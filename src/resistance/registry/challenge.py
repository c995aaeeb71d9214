"""Proof of control: ask a node, over its own SOCKS5 port, to sign a fresh nonce.

The registry logs in with the probe credential from the statement and sends
CONNECT to ``<nonce hex>.challenge.resist.invalid:0``.  A node with an
identity key answers "succeeded", then exactly 64 bytes: its Ed25519
signature over ``challenge_message(nonce)``, and closes.  The signature must
verify with the statement's public key.  The SOCKS5 exchange is the client's
own (:func:`resistance.client.dial.dial`) and the signature check the one in
:func:`resistance.node.identity.verify_challenge`; every step has one overall
timeout, and dial errors are translated here, once, into :class:`ChallengeFailed`.

On a TLS listener the same exchange runs inside TLS (no certificate
authority is consulted: the certificate is what is being learned), and the
node signs ``tls_challenge_message(nonce, sha256(certificate))``.  The
registry verifies that signature with the digest of the certificate *it*
saw, so only the node holding the key, presenting that very certificate,
passes; :func:`prove_tls_control` returns the digest, which becomes the pin.
"""

from __future__ import annotations

import asyncio
import secrets

from resistance.client.dial import DialError, dial, read_at_least
from resistance.client.upstreams import Upstream
from resistance.directory.keys import parse_public_key
from resistance.errors import ResistanceError
from resistance.node.identity import challenge_name, verify_challenge
from resistance.proto.socks5 import Address, Command

SIGNATURE_SIZE = 64


class ChallengeFailed(ResistanceError):
    """The node did not prove control; the message says what went wrong."""


async def _challenge(
    *,
    host: str,
    port: int,
    user: str,
    password: str,
    nonce: bytes,
    within: float,
    tls: bool,
) -> tuple[bytes, bytes | None]:
    """The node's signature and, over TLS, the SHA-256 of the certificate it presented."""
    where = f"{host}:{port}{' (TLS)' if tls else ''}"
    upstream = Upstream(host, port, user, password)
    target = Address.from_host(challenge_name(nonce), 0)
    try:
        async with asyncio.timeout(within):
            dialed = await dial(
                upstream, Command.CONNECT, target, seconds=within, learn_certificate=tls
            )
            try:
                answer = await read_at_least(dialed, SIGNATURE_SIZE, seconds=within)
            finally:
                dialed.close()
    except TimeoutError:
        raise ChallengeFailed(f"no answer from {where} within {within:g} s") from None
    except OSError as exc:
        raise ChallengeFailed(
            f"the node at {where} broke off its answer: {exc.strerror or type(exc).__name__}"
        ) from None
    except DialError as exc:
        raise ChallengeFailed(_explain(exc, where)) from None
    if len(answer) < SIGNATURE_SIZE:
        raise ChallengeFailed(f"the node at {where} closed the connection mid-answer")
    digest = bytes.fromhex(dialed.certificate_sha256) if dialed.certificate_sha256 else None
    return answer[:SIGNATURE_SIZE], digest


def _explain(exc: DialError, where: str) -> str:
    """What a failed dial says about the node, for the operator who registers it."""
    if exc.answered:
        return (
            f"the node at {where} answered the challenge with {exc.reply.name} "
            "(is it running with an identity key and a version that knows challenges?)"
        )
    text = f"{exc} (the node at {where})"
    if "credentials" in text:
        return text + ": check the statement's probe_user/probe_password"
    if "TLS" in text:
        return text + ": is it the node's --tls-listen port?"
    return text


async def prove_control(
    *, host: str, port: int, user: str, password: str, public_key: str, within: float
) -> None:
    """Raise :class:`ChallengeFailed` unless the node at host:port holds ``public_key``."""
    key = parse_public_key(public_key)
    nonce = secrets.token_bytes(16)
    signature, _ = await _challenge(
        host=host, port=port, user=user, password=password, nonce=nonce, within=within, tls=False
    )
    if not verify_challenge(key, nonce, signature):
        raise ChallengeFailed(
            "the node at this endpoint signed with a different key than the statement's public_key"
        )


async def prove_tls_control(
    *, host: str, port: int, user: str, password: str, public_key: str, within: float
) -> str:
    """The pin (hex SHA-256 of the certificate) of the node's TLS listener at host:port.

    Raises :class:`ChallengeFailed` unless the listener is the node holding
    ``public_key`` and the certificate it signed for is the one presented.
    """
    key = parse_public_key(public_key)
    nonce = secrets.token_bytes(16)
    signature, digest = await _challenge(
        host=host, port=port, user=user, password=password, nonce=nonce, within=within, tls=True
    )
    if digest is None:
        raise ChallengeFailed(f"{host}:{port} (TLS) presented no certificate")
    if not verify_challenge(key, nonce, signature, cert_sha256=digest):
        raise ChallengeFailed(
            f"the TLS listener at {host}:{port} is not this node: its answer does not verify "
            "with the statement's public_key over the certificate it presented "
            "(another node's listener, a TLS front, someone in the middle, or a node "
            "version too old to sign its certificate)"
        )
    return digest.hex()
