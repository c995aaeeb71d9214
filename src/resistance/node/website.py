"""What the node's TLS listener says to anyone who is not a SOCKS5 client: a website.

A censor's active prober (and a curious browser) connects to a suspicious
server with a browser's TLS hello and asks ``GET /``; a server that answers
nothing, or closes, is no ordinary website and gets blocked.  Every SOCKS5
client's first byte inside TLS is the version, 5; anything else is answered
as a small web server does (the way the MTProto listener fronts a real site):
``200`` with a plain page for ``GET`` and ``HEAD``, ``405`` for another
method, ``400`` for bytes that are no HTTP request, then the connection
closes.
"""

from __future__ import annotations

import re
import time
from email.utils import formatdate

SOCKS5_VERSION = 5
#: A request line's start: method token and a space (RFC 9110 token characters).
_REQUEST = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]{1,16}) ")
PAGE = (
    b'<!doctype html>\n<html><head><meta charset="utf-8"><title>Welcome</title></head>\n'
    b"<body><h1>Welcome</h1><p>This site is under construction.</p></body></html>\n"
)
REASONS = {200: "OK", 400: "Bad Request", 405: "Method Not Allowed"}


def is_socks5(first: bytes) -> bool:
    """Whether a connection's first bytes inside TLS are a SOCKS5 client's."""
    return first[:1] == bytes([SOCKS5_VERSION])


def answer(first: bytes, now: float | None = None) -> bytes:
    """The whole HTTP/1.1 response to a connection whose first bytes are ``first``."""
    match = _REQUEST.match(first)
    method = match.group(1) if match else None
    if method in (b"GET", b"HEAD"):
        status, body = 200, PAGE
    elif method is not None:
        status, body = 405, b"<html><body><h1>405 Not Allowed</h1></body></html>\n"
    else:
        status, body = 400, b"<html><body><h1>400 Bad Request</h1></body></html>\n"
    date = formatdate(time.time() if now is None else now, usegmt=True)
    head = (
        f"HTTP/1.1 {status} {REASONS[status]}\r\n"
        f"Server: nginx\r\nDate: {date}\r\n"
        f"Content-Type: text/html; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n\r\n"
    ).encode()
    return head if method == b"HEAD" else head + body
