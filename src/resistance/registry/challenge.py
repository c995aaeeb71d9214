"""Proof of control: ask a node, over its own SOCKS5 port, to sign a fresh nonce.

The registry logs in with the probe credential from the statement and sends
CONNECT to ``<nonce hex>.challenge.resist.invalid:0``.  A node with an
identity key answers "succeeded", then exactly 64 bytes: its Ed25519
signature over ``challenge_message(nonce)``, and closes.  The signature must
verify with the statement's public key.  Every step has one overall timeout;
OS errors are translated here, once, into :class:`ChallengeFailed`.

On a TLS listener the same exchange runs inside TLS (no certificate
authority is consulted: the certificate is what is being learned), and the
node signs ``tls_challenge_message(nonce, sha256(certificate))``.  The
registry verifies that signature with the digest of the certificate *it*
saw, so only the node holding the key, presenting that very certificate,
passes; :func:`prove_tls_control` returns the digest, which becomes the pin.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import ssl

from resistance.directory.keys import parse_public_key, verify_signature
from resistance.errors import ProtocolError, ResistanceError
from resistance.node.identity import challenge_message, challenge_name, tls_challenge_message
from resistance.node.tlscert import pinning_client_context
from resistance.proto.socks5 import (
    Address,
    AddressType,
    Command,
    Reply,
    client_auth,
    client_greeting,
    client_request,
    parse_reply,
)

_MAX_REPLY = 262


class ChallengeFailed(ResistanceError):
    """The node did not prove control; the message says what went wrong."""


async def _read_reply(reader: asyncio.StreamReader) -> Reply:
    data = b""
    while len(data) < _MAX_REPLY:
        chunk = await reader.read(1)
        if not chunk:
            raise ChallengeFailed("the node closed the connection before answering")
        data += chunk
        try:
            parsed = parse_reply(data)
        except ProtocolError as exc:
            raise ChallengeFailed(f"the node's answer is not SOCKS5: {exc}") from None
        if parsed is not None:
            return parsed[0]
    raise ChallengeFailed("the node's SOCKS5 reply is too long")


async def _exchange(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    user: str,
    password: str,
    nonce: bytes,
) -> bytes:
    writer.write(client_greeting(auth=True))
    method = await reader.readexactly(2)
    if method != b"\x05\x02":
        raise ChallengeFailed("the node does not offer username/password authentication")
    writer.write(client_auth(user.encode(), password.encode()))
    status = await reader.readexactly(2)
    if status[1] != 0:
        raise ChallengeFailed("the node refused the statement's probe_user/probe_password")
    target = Address(AddressType.DOMAIN, challenge_name(nonce), 0)
    writer.write(client_request(Command.CONNECT, target))
    reply = await _read_reply(reader)
    if reply is not Reply.SUCCEEDED:
        raise ChallengeFailed(
            f"the node answered the challenge with {reply.name} "
            "(is it running with an identity key and a version that knows challenges?)"
        )
    return await reader.readexactly(64)


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
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(within):
            if tls:
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=pinning_client_context()
                )
            else:
                reader, writer = await asyncio.open_connection(host, port)
            digest = None
            if tls:
                ssl_object = writer.get_extra_info("ssl_object")
                der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
                if not der:
                    raise ChallengeFailed(f"{where} presented no certificate")
                digest = hashlib.sha256(der).digest()
            signature = await _exchange(reader, writer, user, password, nonce)
    except TimeoutError:
        raise ChallengeFailed(f"no answer from {where} within {within:g} s") from None
    except asyncio.IncompleteReadError:
        raise ChallengeFailed(f"the node at {where} closed the connection mid-answer") from None
    except ssl.SSLError as exc:
        raise ChallengeFailed(
            f"no TLS handshake with {where}: {exc.reason or type(exc).__name__} "
            "(is it the node's --tls-listen port?)"
        ) from None
    except OSError as exc:
        raise ChallengeFailed(
            f"cannot reach {where}: {exc.strerror or type(exc).__name__}"
        ) from None
    finally:
        if writer is not None:
            writer.close()
    return signature, digest


async def prove_control(
    *, host: str, port: int, user: str, password: str, public_key: str, within: float
) -> None:
    """Raise :class:`ChallengeFailed` unless the node at host:port holds ``public_key``."""
    key = parse_public_key(public_key)
    nonce = secrets.token_bytes(16)
    signature, _ = await _challenge(
        host=host, port=port, user=user, password=password, nonce=nonce, within=within, tls=False
    )
    if not verify_signature(key, signature, challenge_message(nonce)):
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
    assert digest is not None
    if not verify_signature(key, signature, tls_challenge_message(nonce, digest)):
        raise ChallengeFailed(
            f"the TLS listener at {host}:{port} is not this node: its answer does not verify "
            "with the statement's public_key over the certificate it presented "
            "(another node's listener, a TLS front, someone in the middle, or a node "
            "version too old to sign its certificate)"
        )
    return digest.hex()
