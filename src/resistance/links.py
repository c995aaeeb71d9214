"""Telegram proxy links and QR codes a user can scan or tap.

Link forms are Telegram's own (core.telegram.org/api/links): ``tg://socks``
and ``https://t.me/socks`` with ``server``, ``port`` and optional ``user`` and
``pass``, all URL-encoded.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from urllib.parse import unquote, urlencode, urlsplit

from resistance.errors import ConfigError


@dataclass(frozen=True, slots=True)
class TelegramLinks:
    tg: str
    https: str


def socks_links(
    host: str, port: int, user: str | None = None, password: str | None = None
) -> TelegramLinks:
    """The two links that make Telegram add this SOCKS5 proxy."""
    params: dict[str, str | int] = {"server": host.strip("[]"), "port": port}
    if user is not None:
        params["user"] = user
    if password is not None:
        params["pass"] = password
    query = urlencode(params)
    return TelegramLinks(tg=f"tg://socks?{query}", https=f"https://t.me/socks?{query}")


def qr_terminal(text: str) -> str:
    """A QR code of ``text`` drawn with block characters for a terminal."""
    import segno  # only for --qr: it costs a node's start ~20 ms

    out = io.StringIO()
    segno.make(text, error="m").terminal(out=out, compact=True, border=2)
    return out.getvalue()


def qr_save(text: str, path: str, *, scale: int = 6) -> None:
    """Write a QR code as PNG or SVG, chosen by the file name's ending."""
    import segno

    segno.make(text, error="m").save(path, scale=scale, border=4)


@dataclass(frozen=True, slots=True)
class ProxyURL:
    """``socks5://USER:PASS@HOST:PORT`` (or ``socks5s://`` for SOCKS5 inside TLS)."""

    scheme: str
    host: str
    port: int
    username: str | None
    password: str | None


def parse_socks_url(text: str) -> ProxyURL:
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"bad proxy URL {text!r}: {exc}") from None
    if parts.scheme not in ("socks5", "socks5h", "socks5s"):
        raise ConfigError(f"bad proxy URL {text!r}: expected socks5://USER:PASS@HOST:PORT")
    if not parts.hostname or port is None:
        raise ConfigError(f"bad proxy URL {text!r}: host and port are required")
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return ProxyURL(parts.scheme, parts.hostname, port, user, password)
