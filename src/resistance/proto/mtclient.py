"""The client side of an MTProto proxy connection (classic, dd, ee), sans-IO.

Telegram's apps do this in C++; the node's tests, probes and the lab's
Telegram-like client use this one.  For ee secrets it sends the randomised
fake-TLS hello of :func:`resistance.proto.faketls.build_client_hello`, checks
the server's HMAC-signed answer, then sends a ChangeCipherSpec record and
obfuscated2 inside ApplicationData records, as Telegram Desktop does.

Use::

    client = ProxyClient(secret, dc=2)
    send(client.start())                 # hello (ee) or init (classic, dd)
    ...client.receive(data) -> plaintext MTProto stream (b"" until established)
    send(client.send(frame))             # frame = encode_frame(client.tag, payload)
"""

from __future__ import annotations

import time
from collections.abc import Callable

from resistance.errors import ProtocolError
from resistance.proto import faketls, obfuscated2
from resistance.proto.faketls import ProxySecret, SecretMode
from resistance.proto.obfuscated2 import ProtocolTag


class ProxyClient:
    """One client connection to an MTProto proxy (or, with no secret, to a DC)."""

    __slots__ = (
        "_answer",
        "_init",
        "_records",
        "_sent_init",
        "_wire_init",
        "client_random",
        "dc",
        "established",
        "now",
        "secret",
        "tag",
    )

    def __init__(
        self,
        secret: ProxySecret | None,
        dc: int,
        tag: ProtocolTag | None = None,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.secret = secret
        self.dc = dc
        if tag is None:
            plain = secret is None or secret.mode is SecretMode.CLASSIC
            tag = ProtocolTag.INTERMEDIATE if plain else ProtocolTag.PADDED
        self.tag = tag
        self.now = now
        key = secret.key if secret is not None else None
        self._wire_init, self._init = obfuscated2.generate_init(tag, dc, key)
        self._sent_init = False
        self._answer = bytearray()
        self._records: faketls.RecordReader | None = None
        self.client_random = b""
        self.established = False

    @property
    def fake_tls(self) -> bool:
        return self.secret is not None and self.secret.mode is SecretMode.EE

    def start(self) -> bytes:
        """The first bytes to send: the ClientHello (ee) or the obfuscated2 init."""
        if not self.fake_tls:
            self._sent_init = True
            self.established = True
            return self._wire_init
        assert self.secret is not None and self.secret.domain is not None
        hello = faketls.build_client_hello(self.secret.key, self.secret.domain, self.now())
        self.client_random = hello[faketls.RANDOM_OFFSET : faketls.RANDOM_OFFSET + 32]
        return hello

    def receive(self, data: bytes) -> bytes:
        """Bytes from the proxy in, the decrypted MTProto stream out.

        Raises :class:`ProtocolError` if an ee proxy's answer is not signed
        with our key (it is not our proxy, or a site fronting for it).
        """
        if self.fake_tls:
            if self._records is None:
                self._answer += data
                assert self.secret is not None
                size = faketls.parse_server_answer(
                    self.secret.key, self.client_random, bytes(self._answer)
                )
                if size is None:
                    return b""
                data = bytes(self._answer[size:])
                self._answer.clear()
                self._records = faketls.RecordReader(allow_ccs=False)
                self.established = True
            data = self._records.feed(data)
        if not self.established:
            raise ProtocolError("data before the proxy answered")
        return self._init.decryptor.update(data)

    def send(self, plain: bytes) -> bytes:
        """Plaintext MTProto stream bytes to wire bytes (the init goes out with the first)."""
        if self.fake_tls and not self.established:
            raise ProtocolError("cannot send before the proxy's answer")
        wire = self._init.encryptor.update(plain)
        if not self.fake_tls:
            return wire
        if not self._sent_init:
            self._sent_init = True
            return faketls.CCS_RECORD + faketls.encode_records(self._wire_init + wire)
        return faketls.encode_records(wire)
