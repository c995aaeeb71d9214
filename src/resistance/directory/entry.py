"""One proxy entry of a directory (or of a registry's assignment), read defensively.

An entry as the registry writes it::

    {"endpoint": {"host": H, "port": P}, "protocols": ["socks5"],
     "credentials": [{"username": U, "password": PW}, ...],
     "node_key": B64URL, "status": S, "measurements": {...},
     "tls": {"port": TP, "sha256": 64_HEX}}          # only for nodes with a TLS listener

An MTProto proxy's entry has ``"protocols": ["mtproto"]`` and
``"mtproto": {"mode": "ee"|"dd"|"classic", "domain": NAME}`` (domain for ee
only) and never a secret; users get theirs from the operator.

``tls`` is optional, so directories written before it existed read the same
and their signatures still verify; ``status`` and ``measurements`` are
absent from assignments.  A document is trusted for its signatures, not for
its shape, so :func:`parse_entry` never raises: an entry it cannot use is
``None``, and a malformed ``tls`` object only costs the entry its TLS
listener (the plain endpoint stays usable).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_PIN = re.compile(r"[0-9a-f]{64}")
MAX_CREDENTIAL_BYTES = 255


@dataclass(frozen=True, slots=True)
class TlsListener:
    """A node's SOCKS5-inside-TLS port and the SHA-256 of its DER certificate."""

    port: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"port": self.port, "sha256": self.sha256}


@dataclass(frozen=True, slots=True)
class MTProtoListing:
    """How an MTProto proxy is used: its secret's mode and, for ee, the fake-TLS domain."""

    mode: str
    domain: str | None


MTPROTO_MODES = ("classic", "dd", "ee")


def parse_mtproto_listing(value: Any) -> MTProtoListing | None:
    """``{"mode": M, "domain": D}`` as a :class:`MTProtoListing`, or ``None`` if not that."""
    if not isinstance(value, dict) or value.get("mode") not in MTPROTO_MODES:
        return None
    mode, domain = value["mode"], value.get("domain")
    if mode == "ee":
        if not isinstance(domain, str) or not 0 < len(domain) <= 253 or not domain.isascii():
            return None
        return MTProtoListing(mode, domain)
    return MTProtoListing(mode, None)


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    host: str
    port: int
    protocols: tuple[str, ...]
    username: str | None
    password: str | None
    node_key: str | None
    status: str
    tls: TlsListener | None
    mtproto: MTProtoListing | None = None


def _port(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
        return value
    return None


def _credential(value: Any) -> str | None:
    if (
        isinstance(value, str)
        and value
        and len(value.encode("utf-8", "replace")) <= MAX_CREDENTIAL_BYTES
    ):
        return value
    return None


def parse_tls_listener(value: Any) -> TlsListener | None:
    """``{"port": P, "sha256": HEX}`` as a :class:`TlsListener`, or ``None`` if not that."""
    if not isinstance(value, dict):
        return None
    port, pin = _port(value.get("port")), value.get("sha256")
    if port is None or not isinstance(pin, str) or not _PIN.fullmatch(pin):
        return None
    return TlsListener(port, pin)


def parse_entry(value: Any) -> DirectoryEntry | None:
    """A usable entry, or ``None`` (never raises, whatever the value)."""
    if not isinstance(value, dict):
        return None
    endpoint = value.get("endpoint")
    if not isinstance(endpoint, dict):
        return None
    host, port = endpoint.get("host"), _port(endpoint.get("port"))
    if not isinstance(host, str) or not host or port is None:
        return None
    protocols = value.get("protocols")
    if not isinstance(protocols, list):
        return None
    credentials = value.get("credentials")
    first = credentials[0] if isinstance(credentials, list) and credentials else None
    username = password = None
    if isinstance(first, dict):
        username, password = _credential(first.get("username")), _credential(first.get("password"))
        if username is None or password is None:
            username = password = None
    key, status = value.get("node_key"), value.get("status")
    tls = parse_tls_listener(value.get("tls"))
    if tls is not None and tls.port == port:
        tls = None  # one port cannot serve both; the entry is confused, keep the plain one
    return DirectoryEntry(
        host=host,
        port=port,
        protocols=tuple(p for p in protocols if isinstance(p, str)),
        username=username,
        password=password,
        node_key=key if isinstance(key, str) else None,
        status=status if isinstance(status, str) else "",
        tls=tls,
        mtproto=parse_mtproto_listing(value.get("mtproto")),
    )
