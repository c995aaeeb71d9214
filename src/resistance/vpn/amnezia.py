"""AmneziaWG's wire format, and rewriting it to WireGuard and back, sans-IO.

AmneziaWG is WireGuard (same Noise handshake, keys and transport crypto)
whose datagrams no longer look like WireGuard's.  What follows was read in
amneziawg-go at commit 1b86b2a (tag v3.1.20260814): ``device/send.go``,
``device/receive.go`` (``DeterminePacketTypeAndPadding``),
``device/noise-protocol.go``, ``device/noise-types.go`` (``UintRange``),
``device/uapi.go`` and ``device/obf*.go`` (the CPS tags).

The wire rules (as implemented here)
------------------------------------
* Every datagram of message type T is ``S_T random bytes ‖ the WireGuard
  message``, whose 4-byte little-endian type field holds a value picked at
  random from the range H_T instead of 1..4.  S1/H1: initiation (148 bytes
  after the padding), S2/H2: response (92), S3/H3: cookie reply (64),
  S4/H4: transport (at least 32).
* mac1 and mac2 are computed over the message *with* its H value in the
  type field (send.go: the type is set before ``AddMacs``), so whoever
  rewrites the type must recompute them.
* A receiver classifies a datagram (receive.go) by trying, in order,
  initiation, response, cookie reply and transport: the size must be exactly
  S_T + 148/92/64 (at least S4 + 32 for transport) and the four bytes after
  the padding must lie in H_T.  Datagrams under 32 bytes and anything that
  classifies as none of them are dropped without an answer.  The handshake
  messages then pass mac1 (keyed by HASH("mac1----" ‖ receiver's public
  key)), as in WireGuard.
* Before each handshake initiation the initiator sends, in this order, the
  signature packets I1..I5 (those that are set), then Jc junk datagrams of
  Jmin + rand(Jmax - Jmin) random bytes each (send.go, noise-protocol.go
  ``JunkPackets``).  The receiver drops them: they classify as nothing.
* An I packet is built from a CPS chain of tags (obf.go's ``obfBuilders``):
  ``<b 0xHEX>`` those bytes, ``<t>`` the Unix time as 4 big-endian bytes,
  ``<r N>`` N random bytes, ``<rc N>`` N random ASCII letters, ``<rd N>`` N
  random ASCII digits, and ``<d>``, ``<ds>``, ``<dz N>`` (the data, its
  base64, its size in N bytes), which are empty in an I packet (it carries
  no data).  Text outside tags is ignored; an unknown tag, an empty tag, a
  bad argument or a missing ``>`` is an error (HEAD collects every error and
  refuses the chain).  AWG 2.0 (v0.2.15, ``device/awg/tag_parser.go``) had
  no ``<d>``/``<ds>``/``<dz>`` but a ``<c>`` tag: the packet counter as 8
  big-endian bytes (its ``<t>`` was 8 bytes too), ``<c>`` and ``<t>`` at
  most once each.  HEAD refuses ``<c>``; it is accepted here so AWG 2.0
  client configs still read, and it writes the number of handshake
  initiations the flow has sent (v0.2.15 counts every packet; the value is
  only decoration: the receiver drops I packets).  Servers generated here
  set no I packets: they are the sender's alone.
* Which side checks what: the receiver checks only sizes and H ranges (and
  then WireGuard's mac1/mac2 and crypto); it never checks Jc/Jmin/Jmax or
  I1..I5, which only shape what its own side sends.  A header value is
  picked afresh per message from the sender's H range, and the receiver
  accepts any value in the range, so both ends need the same four ranges.
* H values: ``N`` or ``LO-HI`` (LO ≤ HI, 32-bit); the four ranges must not
  overlap (uapi.go).  Values ≤ 4 are refused here, because AWG 1.0/2.0 peers
  read them as "plain WireGuard".
* S1..S4 and H1..H4 must match on both ends; Jc, Jmin, Jmax and I1..I5 are
  the sender's own.  S1+148, S2+92, S3+64 and S4+32 must all differ (older
  amneziawg-go enforces it; HEAD does not, but its peers in the field do).

AWG 3 (read at the same commit; file:line there)
------------------------------------------------
Config keys as amneziawg-tools (ee0f0a9, ``src/config.c:548-579``,
``showconf.c:82-99``) spells them in ``[Interface]``, and their uapi names:

* ``HeaderProtectionKey`` (uapi ``header_protection_key``, hex there): 32
  bytes, base64 in the config like every wg key (``parse_key``); ``awg
  genkey`` makes one.  All zero is "off" (noise-types.go:87 ``IsZero``).
  Must match on both ends.
* ``RandomTrailers`` (uapi ``random_trailers``): on/off or a number
  (config.c ``parse_bool``; uapi.go:530 ``strconv.ParseBool``).
* ``ContentPaddingAddition`` (uapi ``content_padding_addition``): ``N`` or
  ``LO-HI``, 16 bits in amneziawg-tools (``u16_range_from_string``).
  README: "client-side", need not match.

Header protection (noise-protocol.go:647 ``HeaderProtectionCipher``): a
ChaCha20 stream (RFC 8439, x/crypto ``NewUnauthenticatedCipher``: 12-byte
nonce, block counter 0) keyed by the key, with the first 12 bytes of the
datagram, i.e. of its random padding, as nonce (noise-types.go:23
``HeaderCipherNonceSize``).  Setting a key with any S1..S4 under 12 is
refused (uapi.go:852-858).

* Sending, after the MACs are computed over the message with its H value
  (so the MACs are the unmasked message's): a handshake message (initiation,
  response, cookie reply) is XORed whole (send.go:165-170, 222-227,
  275-280); a transport message only its 16-byte header, type, receiver
  and counter, after sealing (send.go:638-645).  The padding itself and the
  transport ciphertext are not masked.
* Receiving (receive.go:144-180): the cipher is keyed by the datagram's
  first 12 bytes whatever its type; the first 4 keystream bytes unmask the
  candidate type field at each candidate padding offset during
  classification (``DeterminePacketTypeAndPadding``, receive.go:604-657),
  then the rest of the message (handshakes, receive.go:228-244) or of the
  16-byte header (transport, receive.go:180) continues the same stream.  A
  wrong key gives random type values: the datagram classifies as nothing,
  or fails mac1 or the index lookup, and is dropped silently.

Random trailers (send.go:150, 200, 264, 554-575; receive.go:611-640): the
sender appends ``rand(udpWindow - size)`` random bytes after a handshake
message (nothing when the datagram already reaches the window); udpWindow
is 500 (constants.go:27 ``DefaultUdpWindow``), per peer raised to the
largest transport datagram seen (send.go:592, receive.go:519).  The
receiver, *if its own RandomTrailers is on*, accepts a handshake of S_T +
size or longer (classification still needs the H value) and cuts the
trailer off; with it off, only the exact size.  So it must be on at the
receiver whenever the peer sends trailers: in practice both ends alike.
Because handshakes are tried first, a transport datagram at least S1+148
long whose (unmasked) bytes at offset S1 fall in H1 is taken for an
initiation and lost (likewise H2, H3): :meth:`AmneziaParams.generate` keeps
H1..H3 narrow for AWG 3.  On transport messages RandomTrailers and
ContentPaddingAddition add zero bytes to the *plaintext before sealing*
(send.go:533-552, 612-621), instead of WireGuard's pad-to-16: inside the
AEAD, so only the WireGuard sender can do it, and the receiver needs nothing
(the inner IP header gives the length).

What this module does with them: header protection both ways on every
message type (Python here; transport also in ``_awg.c``, whose RFC 8439
block function is tested against the RFC's vectors); random trailers on the
handshakes it sends (window fixed at 500: its trailers are shorter than
amneziawg-go's can grow, which any receiver accepts) and accepted on those
it receives when ``random_trailers`` is set; ContentPaddingAddition read,
kept, shown, but not applied (a translator outside WireGuard's encryption
cannot pad the plaintext; the setting is the sender's own).  Noticed in
passing: uapi.go:856 names the offending S 0-based ("S0" for S1).

Theory of operation
-------------------
:class:`AmneziaParams` holds one server's parameters, checks them, makes
new ones (:meth:`AmneziaParams.generate`) and renders them as the
``[Interface]`` keys awg-quick and the AmneziaVPN apps read.
:func:`classify` is the receiver's classification.  :class:`Rewriter` is one
flow's translator between the two wire formats: :meth:`Rewriter.to_wireguard`
takes an AmneziaWG datagram and returns the WireGuard datagram (or ``None``:
junk, I packets, a handshake with a bad mac1, a message addressed to an
index our WireGuard end never announced — so junk does not reach WireGuard),
:meth:`Rewriter.to_amnezia` the reverse (a list: junk and I packets go in
front of an initiation).  It recomputes mac1 for the new type field, keeps
the cookie a cookie reply carries so mac2 can be recomputed too, and
re-encrypts each cookie reply for the mac1 its recipient actually sent.
The translator (:mod:`resistance.vpn.translator`) runs the transport rules
of :meth:`Rewriter.to_wireguard` and :meth:`Rewriter.to_amnezia` in C
(``_awg.c``, header protection included) where it is built;
tests/vpn/test_awg_native.py and test_awg3.py hold the two to the same
output datagram by datagram.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import random
import re
import secrets
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any, Final

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from resistance.errors import ConfigError, ProtocolError
from resistance.vpn.noise import (
    COOKIE_REPLY_LEN,
    INITIATION_LEN,
    KEEPALIVE_LEN,
    LABEL_COOKIE,
    LABEL_MAC1,
    RESPONSE_LEN,
    HandshakeError,
    MessageType,
    blake2s,
    mac,
    xaead_decrypt,
    xaead_encrypt,
)

MAX_DATAGRAM: Final = 65507
MAX_U16: Final = 65535
MAX_U32: Final = 0xFFFFFFFF
BASE_SIZE: Final = {
    MessageType.INITIATION: INITIATION_LEN,
    MessageType.RESPONSE: RESPONSE_LEN,
    MessageType.COOKIE_REPLY: COOKIE_REPLY_LEN,
    MessageType.TRANSPORT: KEEPALIVE_LEN,
}
_ORDER: Final = (
    MessageType.INITIATION,
    MessageType.RESPONSE,
    MessageType.COOKIE_REPLY,
    MessageType.TRANSPORT,
)
_TRANSPORT_TYPE: Final = b"\x04\x00\x00\x00"
COOKIE_LIFETIME: Final = 120.0  # seconds, as WireGuard's CookieRefreshTime
NONCE_SIZE: Final = 12  # HeaderCipherNonceSize: the padding bytes that key the header cipher
TRANSPORT_HEADER: Final = 16  # type, receiver, counter: what header protection hides
UDP_WINDOW: Final = 500  # DefaultUdpWindow: random trailers stop short of it
# [Interface] keys as amneziawg-tools spells them -> AmneziaParams fields
_AWG3_KEYS: Final = {
    "headerprotectionkey": "header_protection_key",
    "randomtrailers": "random_trailers",
    "contentpaddingaddition": "content_padding_addition",
}


class AmneziaError(ProtocolError):
    """A CPS chain or a parameter set that amneziawg-go would refuse."""


@dataclass(frozen=True, slots=True)
class HeaderRange:
    """An H value: ``lo``..``hi`` inclusive (``N`` is ``N-N``)."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        if not 0 <= self.lo <= self.hi <= MAX_U32:
            raise AmneziaError(f"bad header range {self.lo}-{self.hi}")

    @classmethod
    def parse(cls, text: str) -> HeaderRange:
        match = re.fullmatch(r"\s*(\d{1,10})(?:\s*-\s*(\d{1,10}))?\s*", text)
        if match is None:
            raise AmneziaError(f"bad header value {text!r}: expected N or LO-HI")
        lo = int(match[1])
        hi = lo if match[2] is None else int(match[2])
        return cls(lo, hi)

    def __str__(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and self.lo <= value <= self.hi

    def overlaps(self, other: HeaderRange) -> bool:
        return self.lo <= other.hi and other.lo <= self.hi

    def pick(self) -> int:
        return self.lo + secrets.randbelow(self.hi - self.lo + 1)


# --- CPS chains (signature packets I1..I5) ---------------------------------

_TAG_ARG: Final = {
    "b": "hex",
    "t": None,
    "c": None,
    "r": "n",
    "rc": "n",
    "rd": "n",
    "d": None,
    "ds": None,
    "dz": "n",
}
_LETTERS: Final = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_DIGITS: Final = b"0123456789"


@dataclass(frozen=True, slots=True)
class CpsTag:
    name: str
    data: bytes = b""
    length: int = 0


def parse_cps(spec: str) -> tuple[CpsTag, ...]:
    """The tags of a CPS chain (obf.go's ``newObfChain``); :class:`AmneziaError` if bad."""
    tags: list[CpsTag] = []
    rest = spec
    while (start := rest.find("<")) != -1:
        end = rest.find(">", start)
        if end == -1:
            raise AmneziaError(f"bad CPS chain {spec[:40]!r}: missing enclosing >")
        parts = rest[start + 1 : end].split()
        rest = rest[end + 1 :]
        if not parts:
            raise AmneziaError("bad CPS chain: empty tag")
        name, arg = parts[0], (parts[1] if len(parts) > 1 else "")
        if name not in _TAG_ARG:
            raise AmneziaError(f"bad CPS chain: unknown tag <{name[:20]}>")
        kind = _TAG_ARG[name]
        if kind == "hex":
            digits = arg.removeprefix("0x")
            if not digits or len(digits) % 2 or not re.fullmatch(r"[0-9a-fA-F]+", digits):
                raise AmneziaError("bad CPS chain: <b> needs an even, non-empty hex string")
            tags.append(CpsTag(name, data=bytes.fromhex(digits)))
        elif kind == "n":
            if not re.fullmatch(r"\d{1,5}", arg) or int(arg) > MAX_U16:
                raise AmneziaError(f"bad CPS chain: <{name}> needs a length 0..65535")
            tags.append(CpsTag(name, length=int(arg)))
        elif name == "c":  # AWG 2.0's tag: no argument, at most once (tag_parser.go)
            if arg or any(t.name == "c" for t in tags):
                raise AmneziaError("bad CPS chain: <c> takes no argument and comes once")
            tags.append(CpsTag(name))
        else:
            tags.append(CpsTag(name))
    if sum(cps_size(tag) for tag in tags) > MAX_DATAGRAM:
        raise AmneziaError("bad CPS chain: the packet would exceed 65507 bytes")
    return tuple(tags)


def cps_size(tag: CpsTag) -> int:
    if tag.name == "b":
        return len(tag.data)
    if tag.name == "t":
        return 4
    if tag.name == "c":
        return 8
    if tag.name in ("r", "rc", "rd", "dz"):
        return tag.length
    return 0  # <d>, <ds>: an I packet carries no data


def build_cps(tags: Iterable[CpsTag], *, now: float | None = None, counter: int = 0) -> bytes:
    """One signature packet from its tags (obfChain.Obfuscate with no data)."""
    out = bytearray()
    for tag in tags:
        if tag.name == "b":
            out += tag.data
        elif tag.name == "c":
            out += struct.pack(">Q", counter & 0xFFFFFFFFFFFFFFFF)
        elif tag.name == "t":
            out += struct.pack(">I", int(time.time() if now is None else now) & MAX_U32)
        elif tag.name == "r":
            out += os.urandom(tag.length)
        elif tag.name == "rc":
            out += bytes(_LETTERS[b % 52] for b in os.urandom(tag.length))
        elif tag.name == "rd":
            out += bytes(_DIGITS[b % 10] for b in os.urandom(tag.length))
        elif tag.name == "dz":
            out += bytes(tag.length)  # the size of no data, big-endian
    return bytes(out)


# --- parameters --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AmneziaParams:
    """One server's obfuscation parameters (see the module docstring)."""

    jc: int
    jmin: int
    jmax: int
    s1: int
    s2: int
    s3: int
    s4: int
    h1: HeaderRange
    h2: HeaderRange
    h3: HeaderRange
    h4: HeaderRange
    i1: str = ""
    i2: str = ""
    i3: str = ""
    i4: str = ""
    i5: str = ""
    header_protection_key: bytes = b""  # AWG 3: 32 bytes, or empty (off)
    random_trailers: bool = False  # AWG 3: random bytes after handshake messages
    content_padding_addition: HeaderRange | None = None  # AWG 3: sender's own, see docstring

    def __post_init__(self) -> None:
        if len(self.header_protection_key) not in (0, 32):
            raise AmneziaError("bad HeaderProtectionKey: expected 32 bytes (a key as awg genkey)")
        if self.header_protection_key == bytes(32):
            object.__setattr__(self, "header_protection_key", b"")  # all zero is off (IsZero)
        if self.header_protection_key:
            for n, s in enumerate((self.s1, self.s2, self.s3, self.s4), start=1):
                if isinstance(s, int) and s < NONCE_SIZE:
                    raise AmneziaError(
                        f"S{n} {s} is below 12: header protection takes its nonce from the padding"
                    )
        cpa = self.content_padding_addition
        if cpa is not None and cpa.hi > MAX_U16:
            raise AmneziaError(f"bad ContentPaddingAddition {cpa}: expected 0..65535")
        for name in ("jc", "jmin", "jmax", "s1", "s2", "s3", "s4"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= MAX_U16:
                raise AmneziaError(f"bad {name.capitalize()} {value!r}: expected 0..65535")
        if self.jc and self.jmin > self.jmax:
            raise AmneziaError(f"Jmin {self.jmin} is above Jmax {self.jmax}")
        if self.jmax > MAX_DATAGRAM:
            raise AmneziaError(f"Jmax {self.jmax} is above one datagram (65507)")
        headers = self.headers()
        for t, h in headers.items():
            if h.lo <= 4:
                raise AmneziaError(f"H{t} {h} includes 0..4, WireGuard's own types")
        ranges = list(headers.items())
        for i, (ta, a) in enumerate(ranges):
            for tb, b in ranges[i + 1 :]:
                if a.overlaps(b):
                    raise AmneziaError(f"H{ta} {a} and H{tb} {b} overlap")
        sizes = [self.padding(t) + BASE_SIZE[t] for t in _ORDER]
        if len(set(sizes)) != 4:
            raise AmneziaError(
                "S1+148, S2+92, S3+64 and S4+32 must all differ "
                f"(they are {', '.join(map(str, sizes))})"
            )
        if max(sizes) > MAX_DATAGRAM:
            raise AmneziaError("a padded handshake message would exceed 65507 bytes")
        for n in range(1, 6):
            parse_cps(getattr(self, f"i{n}"))

    def headers(self) -> dict[MessageType, HeaderRange]:
        return {
            MessageType.INITIATION: self.h1,
            MessageType.RESPONSE: self.h2,
            MessageType.COOKIE_REPLY: self.h3,
            MessageType.TRANSPORT: self.h4,
        }

    def header(self, kind: MessageType) -> HeaderRange:
        return self.headers()[kind]

    def padding(self, kind: MessageType) -> int:
        return (self.s1, self.s2, self.s3, self.s4)[kind - 1]

    def signature_packets(self) -> list[tuple[CpsTag, ...]]:
        chains = (self.i1, self.i2, self.i3, self.i4, self.i5)
        return [tags for tags in map(parse_cps, chains) if tags]

    @classmethod
    def generate(
        cls, *, jc: int | None = None, legacy: bool = False, awg3: bool = False
    ) -> AmneziaParams:
        """Fresh random parameters: valid, non-overlapping, one MTU at most.

        Jc 4..8 junk datagrams of 40..700 bytes; S1, S2 15..150 and S3 8..64
        (the handshakes lose WireGuard's sizes); S4 1..16 (it costs MTU on
        every transport packet); H1..H4 four disjoint ranges above 4.  No
        handshake size is one a transport message can have: WireGuard pads
        transport messages to 32 + 16n bytes (below the MTU), and a receiver
        that sees a handshake's size reads that handshake's H at its padding
        offset first, so a transport message of that size whose payload
        happened to hold a value of that H range there would be taken for a
        handshake and lost (amneziawg-go classifies in the same order).
        ``legacy`` makes what AWG 1.0 peers (older AmneziaVPN apps,
        amneziawg-go v0.2.12) read: single H values and no S3/S4.

        ``awg3`` makes what AWG 3 peers (amneziawg-go 3.x) read: a header
        protection key, random trailers on, every S at least 12 (S4 12..24),
        and H1..H3 at most 256 values wide.  With random trailers a receiver
        tries a transport message longer than S1+148 as an initiation first
        (and so on for H2, H3): its four bytes at offset S_T, unmasked, are
        random, so a range of width w takes it for a handshake, and loses
        it, with probability w / 2^32.  Header protection already hides the
        values, so narrow ranges cost nothing.
        """
        if legacy and awg3:
            raise AmneziaError("AWG 1.0 (legacy) parameters cannot have AWG 3's header protection")
        rand = secrets.SystemRandom()
        while True:
            jmin = rand.randint(40, 100)
            points = sorted(rand.sample(range(5, MAX_U32 + 1), 8))
            if legacy:
                ranges = [HeaderRange(p, p) for p in points[:4]]
            elif awg3:  # H1..H3 narrow (see above), H4 wide
                ranges = [
                    HeaderRange(points[2 * i], min(points[2 * i] + 255, points[2 * i + 1]))
                    for i in range(4)
                ]
                wide = rand.randrange(4)
                ranges[wide] = HeaderRange(points[2 * wide], points[2 * wide + 1])
                ranges[wide], ranges[3] = ranges[3], ranges[wide]
            else:
                ranges = [HeaderRange(points[2 * i], points[2 * i + 1]) for i in range(4)]
            if awg3:
                head = ranges[:3]
                rand.shuffle(head)
                ranges[:3] = head
            else:
                rand.shuffle(ranges)
            try:
                params = cls(
                    jc=rand.randint(4, 8) if jc is None else jc,
                    jmin=jmin,
                    jmax=jmin + rand.randint(100, 600),
                    s1=rand.randint(15, 150),
                    s2=rand.randint(15, 150),
                    s3=0 if legacy else rand.randint(12 if awg3 else 8, 64),
                    s4=0 if legacy else (rand.randint(12, 24) if awg3 else rand.randint(1, 16)),
                    h1=ranges[0],
                    h2=ranges[1],
                    h3=ranges[2],
                    h4=ranges[3],
                    header_protection_key=os.urandom(32) if awg3 else b"",
                    random_trailers=awg3,
                )
            except AmneziaError:
                continue  # sizes collided: draw again
            if not params.transport_may_look_like_handshake(settable_only=legacy):
                return params

    def transport_may_look_like_handshake(self, *, settable_only: bool = False) -> bool:
        """Whether a padded WireGuard transport message can have a handshake's size.

        ``settable_only``: look at the initiation and response alone (AWG 1.0
        has no S3, so its cookie reply keeps WireGuard's 64 bytes).
        """
        transport = self.s4 + KEEPALIVE_LEN
        kinds = _ORDER[:2] if settable_only else _ORDER[:3]
        return any(
            (self.padding(t) + BASE_SIZE[t] - transport) % 16 == 0
            and self.padding(t) + BASE_SIZE[t] >= transport
            for t in kinds
        )

    def interface_keys(self) -> list[tuple[str, str]]:
        """The ``[Interface]`` keys awg-quick and AmneziaVPN read, in their order."""
        keys = [
            ("Jc", str(self.jc)),
            ("Jmin", str(self.jmin)),
            ("Jmax", str(self.jmax)),
            ("S1", str(self.s1)),
            ("S2", str(self.s2)),
            *([("S3", str(self.s3)), ("S4", str(self.s4))] if self.s3 or self.s4 else []),
            ("H1", str(self.h1)),
            ("H2", str(self.h2)),
            ("H3", str(self.h3)),
            ("H4", str(self.h4)),
        ]
        for n in range(1, 6):
            if value := getattr(self, f"i{n}"):
                keys.append((f"I{n}", value))
        if self.header_protection_key:
            key = base64.b64encode(self.header_protection_key).decode()
            keys.append(("HeaderProtectionKey", key))
        if self.content_padding_addition is not None:
            keys.append(("ContentPaddingAddition", str(self.content_padding_addition)))
        if self.random_trailers:
            keys.append(("RandomTrailers", "on"))
        return keys

    @property
    def version(self) -> str:
        """Which AmneziaWG this is: "AWG 3" (header protection or trailers), "AWG 2", "AWG 1"."""
        if self.header_protection_key or self.random_trailers or self.content_padding_addition:
            return "AWG 3"
        if self.s3 or self.s4 or any(h.lo != h.hi for h in self.headers().values()):
            return "AWG 2"
        return "AWG 1"

    def in_force(self) -> str:
        """One line: the version and the AWG 3 settings a translator applies."""
        parts = [self.version]
        if self.version == "AWG 3":
            parts.append(f"header protection {'on' if self.header_protection_key else 'off'}")
            parts.append(f"random trailers {'on' if self.random_trailers else 'off'}")
            if self.content_padding_addition is not None:
                parts.append(
                    f"content padding {self.content_padding_addition} "
                    "(inside WireGuard's encryption: not applied by the translator)"
                )
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("header_protection_key", "random_trailers", "content_padding_addition"):
                if value:  # absent when off, so older state files and code read the same
                    doc[f.name] = (
                        base64.b64encode(value).decode()
                        if isinstance(value, bytes)
                        else "on"
                        if value is True
                        else str(value)
                    )
                continue
            doc[f.name] = str(value) if isinstance(value, HeaderRange) else value
        return doc

    @classmethod
    def from_keys(cls, keys: dict[str, str], source: str) -> AmneziaParams:
        """From ``[Interface]``-style keys (any case), as awg-quick reads them."""
        lowered = {_AWG3_KEYS.get(k.lower(), k.lower()): v.strip() for k, v in keys.items()}
        unknown = set(lowered) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"{source}: unsupported AmneziaWG key {sorted(unknown)[0]!r}")
        try:
            values: dict[str, Any] = {}
            for f in fields(cls):
                if f.name not in lowered:
                    if f.name.startswith("i") or f.name in _AWG3_KEYS.values():
                        continue
                    if f.name in ("s3", "s4"):  # AWG 1.0 configs have neither
                        values[f.name] = 0
                        continue
                    raise ConfigError(f"{source}: AmneziaWG key {f.name.upper()} missing")
                text = lowered[f.name]
                if f.name == "header_protection_key":
                    values[f.name] = _parse_key(text)
                elif f.name == "random_trailers":
                    values[f.name] = _parse_bool(text, "RandomTrailers")
                elif f.name == "content_padding_addition":
                    try:
                        rng = HeaderRange.parse(text)
                    except AmneziaError:
                        raise AmneziaError(
                            f"bad ContentPaddingAddition {text[:20]!r}: expected N or LO-HI"
                        ) from None
                    values[f.name] = None if rng == HeaderRange(0, 0) else rng
                elif f.name.startswith("h"):
                    values[f.name] = HeaderRange.parse(text)
                elif f.name.startswith("i"):
                    values[f.name] = text
                else:
                    if not re.fullmatch(r"\d{1,5}", text):
                        raise AmneziaError(f"bad {f.name.capitalize()} {text[:20]!r}")
                    values[f.name] = int(text)
            return cls(**values)
        except AmneziaError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def from_json(cls, doc: Any, source: str) -> AmneziaParams:
        if not isinstance(doc, dict):
            raise ConfigError(f"{source}: bad AmneziaWG settings")
        return cls.from_keys({k: str(v) for k, v in doc.items()}, source)


def _parse_key(text: str) -> bytes:
    """HeaderProtectionKey as amneziawg-tools reads it (``parse_key``: base64 of 32 bytes)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32 or len(text) != 44:
        raise AmneziaError("bad HeaderProtectionKey: expected base64 of 32 bytes (awg genkey)")
    return raw


def _parse_bool(text: str, name: str) -> bool:
    """on/off (any case) or a number, as amneziawg-tools' ``parse_bool`` reads a config."""
    lowered = text.lower()
    if lowered == "on":
        return True
    if lowered == "off":
        return False
    if re.fullmatch(r"\d{1,10}", text):
        return int(text) != 0
    raise AmneziaError(f"bad {name} {text[:20]!r}: expected on or off")


# --- header protection (AWG 3) -----------------------------------------------


def keystream(key: bytes, nonce: bytes, size: int) -> bytes:
    """The first ``size`` bytes of ChaCha20(key, nonce), block counter 0 (RFC 8439).

    amneziawg-go's ``chacha20.NewUnauthenticatedCipher(key, nonce)`` with a
    12-byte nonce; ``cryptography`` takes the counter as the first four
    (little-endian) bytes of a 16-byte nonce.
    """
    cipher = Cipher(algorithms.ChaCha20(key, b"\0\0\0\0" + nonce), mode=None)
    return cipher.encryptor().update(bytes(size))


def _xor(data: bytes, stream: bytes) -> bytes:
    """``data`` XOR the first len(data) bytes of ``stream``."""
    n = len(data)
    return (int.from_bytes(data, "little") ^ int.from_bytes(stream[:n], "little")).to_bytes(
        n, "little"
    )


def protect(key: bytes, padding: bytes, message: bytes, kind: MessageType) -> bytes:
    """``message`` as it goes on the wire after ``padding`` (header protection on).

    Handshake messages are XORed whole, transport messages only their 16-byte
    header, with ChaCha20 keyed by ``key`` and the padding's first 12 bytes.
    Its own inverse.
    """
    n = TRANSPORT_HEADER if kind is MessageType.TRANSPORT else len(message)
    return _xor(message[:n], keystream(key, padding[:NONCE_SIZE], n)) + message[n:]


def trailer_size(size: int) -> int:
    """A random trailer's length for a handshake datagram of ``size`` bytes."""
    return secrets.randbelow(UDP_WINDOW - size) if size < UDP_WINDOW else 0


# --- classification and rewriting -------------------------------------------


def classify(params: AmneziaParams, datagram: bytes, mask: int | None = None) -> MessageType | None:
    """The message type a receiver sees in ``datagram`` (``None``: dropped).

    ``mask``: the header protection's first four keystream bytes as a
    little-endian number, if the caller has them already.
    """
    size = len(datagram)
    if size < KEEPALIVE_LEN:
        return None
    if mask is None:
        key = params.header_protection_key
        mask = int.from_bytes(keystream(key, datagram[:NONCE_SIZE], 4), "little") if key else 0
    trailers = params.random_trailers
    for kind in _ORDER:
        padding = params.padding(kind)
        expected = padding + BASE_SIZE[kind]
        if size == expected or (size > expected and (trailers or kind is MessageType.TRANSPORT)):
            (value,) = struct.unpack_from("<I", datagram, padding)
            if (value ^ mask) in params.header(kind):
                return kind
    return None


def wireguard_type(datagram: bytes) -> MessageType | None:
    """The type of a plain WireGuard datagram (``None`` if it is not one)."""
    if len(datagram) < KEEPALIVE_LEN or datagram[1:4] != b"\x00\x00\x00":
        return None
    kind = datagram[0]
    if not 1 <= kind <= 4:
        return None
    wtype = MessageType(kind)
    if wtype is MessageType.TRANSPORT:
        # any length: WireGuard pads to 16 bytes only up to the MTU (calculatePaddingSize)
        return wtype
    return wtype if len(datagram) == BASE_SIZE[wtype] else None


def mac1_key(public: bytes) -> bytes:
    return blake2s(LABEL_MAC1, public)


def cookie_key(public: bytes) -> bytes:
    return blake2s(LABEL_COOKIE, public)


def _remac(message: bytearray, key: bytes, cookie: bytes | None) -> None:
    """Recompute mac1 (and mac2 when a cookie is known) after a type change."""
    n = len(message)
    message[n - 32 : n - 16] = mac(key, bytes(message[: n - 32]))
    if cookie is not None:
        message[n - 16 :] = mac(cookie, bytes(message[: n - 16]))
    else:
        message[n - 16 :] = bytes(16)


def _mac1_ok(message: bytes, key: bytes) -> bool:
    n = len(message)
    return hmac.compare_digest(mac(key, message[: n - 32]), message[n - 32 : n - 16])


class _Side:
    """What the rewriter knows about the messages one end sends."""

    __slots__ = ("cookie", "cookie_at", "mac1_pairs")

    def __init__(self) -> None:
        # mac1 as that end sent it -> mac1 as we forwarded it (the last few)
        self.mac1_pairs: dict[bytes, bytes] = {}
        self.cookie: bytes | None = None
        self.cookie_at = 0.0

    def remember(self, sent: bytes, forwarded: bytes) -> None:
        self.mac1_pairs[forwarded] = sent
        while len(self.mac1_pairs) > 4:
            del self.mac1_pairs[next(iter(self.mac1_pairs))]

    def fresh_cookie(self, now: float) -> bytes | None:
        if self.cookie is not None and now - self.cookie_at < COOKIE_LIFETIME:
            return self.cookie
        return None


class Rewriter:
    """One flow's translator between an AmneziaWG end and a WireGuard end.

    ``wireguard_public`` is the public key of the WireGuard device on our
    side; ``amnezia_publics`` returns the public keys the far (AmneziaWG)
    end may hold (every client's, on a server; the server's, on a client).
    The far key is learnt from the first message of ours whose mac1 it
    matches.
    """

    __slots__ = (
        "_amnezia",
        "_candidates",
        "_clock",
        "_far_key",
        "_fast",
        "_initiations",
        "_rng",
        "_trailer_candidates",
        "_wg",
        "_wg_indices",
        "_wg_key",
        "params",
    )

    def __init__(
        self,
        params: AmneziaParams,
        *,
        wireguard_public: bytes,
        amnezia_publics: Callable[[], Iterable[bytes]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.params = params
        self._wg_key = wireguard_public
        self._candidates = amnezia_publics
        self._far_key: bytes | None = None
        self._amnezia = _Side()  # messages the AmneziaWG end sent
        self._wg = _Side()  # messages the WireGuard end sent
        # sender indices the WireGuard end announced: the only receivers the
        # AmneziaWG end may address (so junk that looks like transport stops here)
        self._wg_indices: dict[int, None] = {}
        self._clock = clock
        self._initiations = 0  # sent to the far end: the value of a CPS <c> tag
        # the transport fast path: sizes that can only be transport, S4, H4's bounds
        handshake_sizes = {params.padding(t) + BASE_SIZE[t] for t in _ORDER[:3]}
        self._fast = (
            handshake_sizes,
            params.s4 + KEEPALIVE_LEN,
            params.s4,
            params.h4.lo,
            params.h4.hi,
        )
        # with random trailers, a datagram this long whose (unmasked) bytes at this
        # padding lie in this H range may be a handshake: (least size, padding, lo, hi)
        self._trailer_candidates = tuple(
            (params.padding(t) + BASE_SIZE[t], params.padding(t), params.header(t).lo,
             params.header(t).hi)
            for t in _ORDER[:3]
            if params.random_trailers
        )  # fmt: skip
        # header values are public (they only have to vary): a fast generator will do
        self._rng = random.Random(secrets.randbits(64))

    @property
    def wireguard_indices(self) -> dict[int, None]:
        """The sender indices our WireGuard end announced (the C path reads them live)."""
        return self._wg_indices

    def to_wireguard(self, datagram: bytes) -> bytes | None:
        """AmneziaWG datagram in, WireGuard datagram out; ``None`` drops it."""
        handshake_sizes, least, s4, lo, hi = self._fast
        key = self.params.header_protection_key
        size = len(datagram)
        if size >= least and size not in handshake_sizes:
            # classify() would find transport or nothing (unless random trailers make it
            # a possible handshake): the same checks, inline, as _awg.c does them
            if key:
                stream = keystream(key, datagram[:NONCE_SIZE], TRANSPORT_HEADER)
                header = _xor(datagram[s4 : s4 + TRANSPORT_HEADER], stream)
                mask = int.from_bytes(stream[:4], "little")
            else:
                header = datagram[s4 : s4 + TRANSPORT_HEADER]
                mask = 0
            if not any(
                size >= at_least
                and hlo <= int.from_bytes(datagram[pad : pad + 4], "little") ^ mask <= hhi
                for at_least, pad, hlo, hhi in self._trailer_candidates
            ):
                if not lo <= int.from_bytes(header[:4], "little") <= hi:
                    return None
                if int.from_bytes(header[4:8], "little") not in self._wg_indices:
                    return None
                return _TRANSPORT_TYPE + header[4:] + datagram[s4 + TRANSPORT_HEADER :]
        if size < KEEPALIVE_LEN:
            return None
        # the longest stretch of keystream a message can need: an initiation's
        stream = keystream(key, datagram[:NONCE_SIZE], INITIATION_LEN) if key else b""
        mask = int.from_bytes(stream[:4], "little")
        kind = classify(self.params, datagram, mask)
        if kind is None:
            return None
        padding = self.params.padding(kind)
        # the message without the padding (and, for a handshake, any random trailer)
        end = size if kind is MessageType.TRANSPORT else padding + BASE_SIZE[kind]
        wire = datagram[padding:end]
        if key:
            n = TRANSPORT_HEADER if kind is MessageType.TRANSPORT else len(wire)
            wire = _xor(wire[:n], stream) + wire[n:]
        message = bytearray(wire)
        message[0:4] = bytes((kind, 0, 0, 0))
        if kind is not MessageType.INITIATION:
            offset = 8 if kind is MessageType.RESPONSE else 4
            (receiver,) = struct.unpack_from("<I", message, offset)
            if receiver not in self._wg_indices:
                return None
        if kind is MessageType.TRANSPORT:
            return bytes(message)
        if kind is MessageType.COOKIE_REPLY:
            return self._cookie_reply(message, self._wg, self._far_key)
        if not _mac1_ok(wire, mac1_key(self._wg_key)):
            return None
        sent_mac1 = wire[-32:-16]
        has_mac2 = wire[-16:] != bytes(16)
        cookie = self._amnezia.fresh_cookie(self._clock()) if has_mac2 else None
        _remac(message, mac1_key(self._wg_key), cookie)
        self._amnezia.remember(sent_mac1, bytes(message[-32:-16]))
        return bytes(message)

    def to_amnezia(self, datagram: bytes) -> list[bytes]:
        """WireGuard datagram in, AmneziaWG datagrams out (empty: dropped)."""
        key = self.params.header_protection_key
        if datagram[:4] == _TRANSPORT_TYPE and len(datagram) >= KEEPALIVE_LEN:
            _, _, s4, lo, hi = self._fast
            header = self._rng.randint(lo, hi).to_bytes(4, "little")
            pad = os.urandom(s4)
            if key:
                head = header + datagram[4:TRANSPORT_HEADER]
                stream = keystream(key, pad[:NONCE_SIZE], TRANSPORT_HEADER)
                return [pad + _xor(head, stream) + datagram[TRANSPORT_HEADER:]]
            return [pad + header + datagram[4:]]
        kind = wireguard_type(datagram)
        if kind is None:
            return []
        message = bytearray(datagram)
        message[0:4] = struct.pack("<I", self.params.header(kind).pick())
        if kind is MessageType.COOKIE_REPLY:
            rewritten = self._cookie_reply(message, self._amnezia, self._wg_key)
            if rewritten is None:
                return []
            message = bytearray(rewritten)
        elif kind is not MessageType.TRANSPORT:
            (sender,) = struct.unpack_from("<I", datagram, 4)
            self._wg_indices[sender] = None
            while len(self._wg_indices) > 8:
                del self._wg_indices[next(iter(self._wg_indices))]
            far = self._far_public(datagram)
            if far is None:
                return []
            has_mac2 = datagram[-16:] != bytes(16)
            cookie = self._wg.fresh_cookie(self._clock()) if has_mac2 else None
            _remac(message, mac1_key(far), cookie)
            self._wg.remember(datagram[-32:-16], bytes(message[-32:-16]))
        out: list[bytes] = []
        if kind is MessageType.INITIATION:
            self._initiations += 1
            count = self._initiations
            out += [build_cps(t, counter=count) for t in self.params.signature_packets()]
            out += junk_packets(self.params)
        pad = os.urandom(self.params.padding(kind))
        body = protect(key, pad, bytes(message), kind) if key else bytes(message)
        trailer = b""
        if self.params.random_trailers and kind is not MessageType.TRANSPORT:
            trailer = os.urandom(trailer_size(len(pad) + len(body)))
        out.append(pad + body + trailer)
        return out

    def _far_public(self, datagram: bytes) -> bytes | None:
        if self._far_key is not None and _mac1_ok(datagram, mac1_key(self._far_key)):
            return self._far_key
        for key in self._candidates():
            if _mac1_ok(datagram, mac1_key(key)):
                self._far_key = key
                return key
        return None

    def _cookie_reply(
        self, message: bytearray, recipient: _Side, sender_key: bytes | None
    ) -> bytes | None:
        """Re-encrypt a cookie reply for the mac1 its recipient really sent.

        The reply's cookie is sealed with the mac1 of the message it answers
        as associated data; that is our rewritten mac1, so we open it with
        that one, keep the cookie (for mac2 on the recipient's next
        messages, which we rewrite) and seal it again under the mac1 the
        recipient computed.
        """
        if sender_key is None:
            return None
        key = cookie_key(sender_key)
        for forwarded, sent in reversed(recipient.mac1_pairs.items()):
            try:
                cookie = xaead_decrypt(key, bytes(message[8:32]), bytes(message[32:64]), forwarded)
            except HandshakeError:
                continue
            recipient.cookie, recipient.cookie_at = cookie, self._clock()
            nonce = os.urandom(24)
            sealed = xaead_encrypt(key, nonce, cookie, sent)
            return bytes(message[:8]) + nonce + sealed
        return None


def junk_packets(params: AmneziaParams) -> list[bytes]:
    """Jc datagrams of Jmin + rand(Jmax - Jmin) random bytes (JunkPackets)."""
    spread = params.jmax - params.jmin
    return [
        os.urandom(params.jmin + (secrets.randbelow(spread) if spread > 0 else 0))
        for _ in range(params.jc)
    ]
