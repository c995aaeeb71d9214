"""Telegram proxy links and QR codes a user can scan or tap.

Link forms are Telegram's own (core.telegram.org/api/links): ``tg://socks``
and ``https://t.me/socks`` with ``server``, ``port`` and optional ``user`` and
``pass``; ``tg://proxy`` and ``https://t.me/proxy`` with ``server``, ``port``
and ``secret`` (all three required), all URL-encoded.

An MTProto proxy secret comes in three forms, told apart by its first byte:
16 bytes (classic obfuscated2), ``dd`` + 16 bytes (padded intermediate) and
``ee`` + 16 bytes + the fake-TLS domain's bytes.  Apps take it as hex; mtg
and others also print it as unpadded base64url, which the apps accept too, so
the parser takes both and always writes hex.  ``mtproto://SECRET@HOST:PORT``
is this project's own short form for the same three fields.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

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


#: Longest secret text accepted: ee + 16-byte key + a 253-byte domain, in hex.
MAX_SECRET_CHARS = 2 * (1 + 16 + 253)
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")


@dataclass(frozen=True, slots=True)
class MTProtoSecret:
    """An MTProto proxy secret as the apps take it: mode, 16-byte key, fake-TLS domain.

    ``mode`` is ``classic`` (no prefix), ``dd`` (padded intermediate) or ``ee``
    (fake-TLS, where ``domain`` is the name the ClientHello carries).
    """

    mode: str
    key: bytes
    domain: str | None = None

    @property
    def hex(self) -> str:
        """The secret as hex, the form Telegram's links carry."""
        if self.mode == "classic":
            return self.key.hex()
        if self.mode == "dd":
            return "dd" + self.key.hex()
        assert self.domain is not None
        return "ee" + self.key.hex() + self.domain.encode("ascii").hex()


def is_host_name(name: str) -> bool:
    """Whether ``name`` is an ASCII DNS host name (labels of letters, digits, hyphens)."""
    labels = name.split(".")
    return len(name) <= 253 and all(_HOST_LABEL.match(label) for label in labels)


def parse_mtproto_secret(text: str) -> MTProtoSecret:
    """Parse a secret in hex or unpadded base64url; ConfigError when it is no valid secret."""
    text = text.strip()
    if not text or len(text) > MAX_SECRET_CHARS:
        raise ConfigError("bad MTProto secret: expected 32 hex digits, dd+32 or ee+32+domain")
    raw: bytes | None = None
    if re.fullmatch(r"[0-9A-Fa-f]+", text) and len(text) % 2 == 0:
        raw = bytes.fromhex(text)
    elif re.fullmatch(r"[A-Za-z0-9_-]+=*", text):
        try:
            raw = base64.urlsafe_b64decode(text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4))
        except (binascii.Error, ValueError):
            raw = None
    if raw is None:
        raise ConfigError("bad MTProto secret: neither hex nor base64url")
    if len(raw) == 16:
        return MTProtoSecret("classic", raw)
    if len(raw) == 17 and raw[0] == 0xDD:
        return MTProtoSecret("dd", raw[1:])
    if len(raw) > 17 and raw[0] == 0xEE:
        try:
            domain = raw[17:].decode("ascii")
        except UnicodeDecodeError:
            domain = ""
        if not is_host_name(domain):
            raise ConfigError("bad MTProto secret: the fake-TLS domain is not a host name")
        return MTProtoSecret("ee", raw[1:17], domain)
    raise ConfigError(
        "bad MTProto secret: expected 16 bytes, dd + 16 bytes or ee + 16 bytes + domain"
    )


def mtproto_links(host: str, port: int, secret: MTProtoSecret) -> TelegramLinks:
    """The two links that make Telegram add this MTProto proxy (secret written in hex)."""
    query = urlencode({"server": host.strip("[]"), "port": port, "secret": secret.hex})
    return TelegramLinks(tg=f"tg://proxy?{query}", https=f"https://t.me/proxy?{query}")


@dataclass(frozen=True, slots=True)
class MTProtoProxy:
    """Where an MTProto proxy listens and the secret that opens it."""

    host: str
    port: int
    secret: MTProtoSecret

    def links(self) -> TelegramLinks:
        return mtproto_links(self.host, self.port, self.secret)


_TME_HOSTS = ("t.me", "telegram.me", "telegram.dog")


def _port(text: str, original: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 5 or not 0 < int(text) < 65536:
        raise ConfigError(f"bad proxy link {original!r}: port must be 1-65535")
    return int(text)


def _host(text: str, original: str) -> str:
    host = text.strip().strip("[]")
    if not host or len(host) > 253 or any(c in host for c in " /?#@\x00"):
        raise ConfigError(f"bad proxy link {original!r}: server must be a host name or address")
    return host


def parse_mtproto_link(text: str) -> MTProtoProxy:
    """Parse ``tg://proxy?…``, ``https://t.me/proxy?…`` or ``mtproto://SECRET@HOST:PORT``."""
    try:
        parts = urlsplit(text.strip())
    except ValueError as exc:
        raise ConfigError(f"bad proxy link {text!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme == "mtproto":
        try:
            port = parts.port
            hostname = parts.hostname
        except ValueError as exc:
            raise ConfigError(f"bad proxy link {text!r}: {exc}") from None
        if not hostname or port is None or parts.username is None or port == 0:
            raise ConfigError(f"bad proxy link {text!r}: expected mtproto://SECRET@HOST:PORT")
        return MTProtoProxy(
            _host(hostname, text), port, parse_mtproto_secret(unquote(parts.username))
        )
    app_link = scheme == "tg" and parts.netloc.lower() == "proxy" and parts.path in ("", "/")
    web_link = (
        scheme in ("https", "http")
        and parts.netloc.lower() in _TME_HOSTS
        and parts.path.rstrip("/") == "/proxy"
    )
    if not (app_link or web_link):
        raise ConfigError(
            f"bad proxy link {text!r}: expected tg://proxy?…, https://t.me/proxy?… "
            "or mtproto://SECRET@HOST:PORT"
        )
    query = parse_qs(parts.query, keep_blank_values=True)
    fields: dict[str, str] = {}
    for name in ("server", "port", "secret"):
        values = query.get(name)
        if not values or len(values) != 1:
            raise ConfigError(f"bad proxy link {text!r}: exactly one {name}= is required")
        fields[name] = values[0]
    return MTProtoProxy(
        _host(fields["server"], text),
        _port(fields["port"], text),
        parse_mtproto_secret(fields["secret"]),
    )


def telegram_links_for(text: str) -> TelegramLinks:
    """Telegram's two links for a proxy given as any URL ``resist link`` takes.

    ``socks5://USER:PASS@HOST:PORT`` gives the SOCKS5 links; ``tg://proxy``,
    ``https://t.me/proxy`` and ``mtproto://SECRET@HOST:PORT`` give the MTProto
    links with the secret in hex.
    """
    scheme = text.strip().partition(":")[0].lower()
    if scheme.startswith("socks5"):
        proxy = parse_socks_url(text.strip())
        return socks_links(proxy.host, proxy.port, proxy.username, proxy.password)
    return parse_mtproto_link(text).links()
