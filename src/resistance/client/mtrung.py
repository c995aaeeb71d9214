"""The ladder's MTProto rung: an app's data-centre connection carried over an MTProto proxy.

Theory of operation.  An MTProto proxy reaches nothing but Telegram's data
centres, so this rung carries only what Telegram's app sends to one: after
its SOCKS5 CONNECT, the app speaks obfuscated2 *without a secret* to the DC
address.  Its 64-byte init carries the key and IV of both directions in the
clear (bytes 8..56), and, once decrypted with them, the protocol tag (bytes
56..60) and the DC index (60..62).  :func:`read_app_init` reads it as the DC
would; :class:`Reframer` then opens a client connection to the MTProto
proxy with the proxy's secret (:class:`~resistance.proto.mtclient.ProxyClient`:
fake-TLS for ``ee``, plain obfuscated2 for ``dd`` and classic) announcing the
*same* tag and DC index, and re-encrypts each direction: the app's bytes are
decrypted with the app's keys and encrypted with the proxy leg's, and the
other way round.  The MTProto stream inside (already encrypted end to end by
MTProto itself) passes unchanged, so framing needs no parsing.

Which connections take the rung (the choice, documented): a CONNECT whose
destination is an IP address inside Telegram's published ranges
(``data/telegram_cidr.txt``, plus ``--telegram-range`` networks for the lab
and tests) *and* whose first 64 bytes are a valid obfuscated2 init
(:func:`read_app_init`: a known tag, a non-zero DC index, and the plaintext
rules Telegram's clients follow).  Anything else (a domain name, another
address, a TLS hello or HTTP to a DC address, i.e. the app's HTTP or
fake-TLS transports) skips the rung and goes to the next transport with
the bytes already read passed on unchanged, never an error to the app.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from resistance.errors import ProtocolError
from resistance.node.policy import Network, telegram_networks
from resistance.proto import obfuscated2
from resistance.proto.faketls import ProxySecret
from resistance.proto.mtclient import ProxyClient
from resistance.proto.obfuscated2 import INIT_LEN, Init, ProtocolTag

#: The largest DC index accepted in an app's init (production 1-5, test DCs
#: 10001-10005, media DCs negative; anything beyond is not an app's init).
MAX_DC_INDEX: Final = 10_005


def is_dc_address(host: str, extra: Iterable[Network] = ()) -> bool:
    """Whether ``host`` is an IP address inside Telegram's ranges (or ``extra``)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(ip.version == net.version and ip in net for net in (*telegram_networks(), *extra))


@dataclass(frozen=True, slots=True)
class AppInit:
    """An app's obfuscated2 init as a data centre reads it."""

    tag: ProtocolTag
    dc: int
    init: Init


def _real_dc(dc: int) -> bool:
    return dc != 0 and abs(dc) <= MAX_DC_INDEX


def read_app_init(first: bytes, dc_hint: int | None = None) -> AppInit | None:
    """The app's init from its first 64 bytes, or ``None``: not DC traffic, skip the rung.

    Telegram's apps write the DC index into the init; some clients (Telethon)
    leave those two bytes random, since a data centre knows who it is.  So
    ``dc_hint``, the index of the destination address (:func:`dc_of_address`),
    wins when given (the init's value only adds the media sign); without
    one, an init whose index is 0 or out of range skips the rung.
    """
    if len(first) != INIT_LEN or not obfuscated2.init_is_allowed(first):
        return None
    try:
        init = obfuscated2.parse_init(first)
    except ProtocolError:
        return None
    if dc_hint is not None and _real_dc(dc_hint):
        # The address's own index wins over random bytes; the init keeps its sign (media).
        return AppInit(init.tag, init.dc if abs(init.dc) == abs(dc_hint) else dc_hint, init)
    if _real_dc(init.dc):
        return AppInit(init.tag, init.dc, init)
    return None


def dc_of_address(host: str, lab: Mapping[str, int] | None = None) -> int | None:
    """The DC index of a published data-centre address (test DCs 10001+), or of a lab one."""
    from resistance.node.mtproto import (  # the node's table; imported only when needed
        DEFAULT_DCS_V4,
        DEFAULT_DCS_V6,
        TEST_DC_OFFSET,
        TEST_DCS_V4,
    )

    try:
        ip = str(ipaddress.ip_address(host))
    except ValueError:
        return None
    if lab and ip in lab:
        return lab[ip]
    for table, offset in ((DEFAULT_DCS_V4, 0), (DEFAULT_DCS_V6, 0), (TEST_DCS_V4, TEST_DC_OFFSET)):
        for index, address in table.items():
            if str(ipaddress.ip_address(address)) == ip:
                return index + offset
    return None


class Reframer:
    """One app connection re-framed onto an MTProto proxy connection, sans-IO.

    ``start()`` gives the first bytes for the proxy; ``to_proxy`` and
    ``from_proxy`` translate each direction.  The app's bytes that arrive
    before the proxy's fake-TLS answer are kept (bounded by the caller's
    reads) and go out with the first send after it.
    """

    __slots__ = ("_pending", "app", "client")

    def __init__(self, app: AppInit, secret: ProxySecret) -> None:
        self.app = app
        self.client = ProxyClient(secret, app.dc, app.tag)
        self._pending = bytearray()

    @property
    def established(self) -> bool:
        return self.client.established

    def start(self) -> bytes:
        """The hello (ee) or the init followed by any app bytes held so far (dd, classic)."""
        first = self.client.start()
        if self.client.established and self._pending:
            first += self.to_proxy(b"")
        return first

    def to_proxy(self, app_bytes: bytes) -> bytes:
        plain = self.app.init.decryptor.update(app_bytes)
        if not self.client.established:
            self._pending += plain
            return b""
        if self._pending:
            plain, self._pending = bytes(self._pending) + plain, bytearray()
        return self.client.send(plain) if plain else b""

    def from_proxy(self, proxy_bytes: bytes) -> tuple[bytes, bytes]:
        """Bytes for the app, and any held-back app bytes now due to the proxy.

        Raises :class:`ProtocolError` when the proxy's fake-TLS answer is not
        signed with the secret (not our proxy, or a site fronting for it).
        """
        was = self.client.established
        plain = self.client.receive(proxy_bytes)
        due = b""
        if not was and self.client.established and self._pending:
            due = self.to_proxy(b"")
        return self.app.init.encryptor.update(plain), due
