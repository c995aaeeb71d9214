"""TLS client contexts whose ClientHello looks like a browser's, and not always the same one.

Why.  A censor that fingerprints ClientHellos (JA3/JA4: the cipher-suite and
extension lists) recognises Python's default hello at once: OpenSSL's own
cipher order (AES-256 first, DHE suites, CBC-SHA384), its default groups
(x448, the ffdhe groups), no ALPN.  Every `resist connect` would send that
one hello, so one rule blocks them all (Russia did this to Telegram's
fake-TLS in 2026).  Here each TLS dial takes one of several contexts that
copy a browser's lists and vary between connections, so the client has no
single fingerprint and each variant is a hello real browsers send.

What it sets, through :mod:`ssl` and, for what :mod:`ssl` does not expose on
Python 3.11, through the same libssl that :mod:`ssl` uses (``ctypes`` on the
``SSL_CTX`` of the context, checked to be that context before any call):

* TLS 1.3 suites in the browser's order (``SSL_CTX_set_ciphersuites``) and
  its TLS 1.2 suites in its order (``set_ciphers``), with the legacy
  CBC tail varied per variant (browsers' lists differ there too);
* the browser's groups (``X25519:P-256:P-384`` for Chrome, plus ``P-521`` and
  the ffdhe groups for Firefox) and signature algorithms;
* ALPN ``h2, http/1.1``; OCSP status request and signed certificate
  timestamp extensions; the padding extension; no encrypt-then-mac.

Each hello names a server (:func:`server_name`): the node's own name, or the
name its certificate showed, or a fresh plausible one.

What still differs from Chrome, and why it cannot be fixed with the stdlib
:mod:`ssl` over OpenSSL 3.0: no GREASE values (OpenSSL has no GREASE; it is
BoringSSL's), the fixed OpenSSL extension order (Chrome permutes its
extensions per connection since version 110), the renegotiation indication
sent as the ``0x00ff`` cipher (SCSV) instead of the ``renegotiation_info``
extension, and no ``compress_certificate`` (OpenSSL 3.2+), ALPS, ECH GREASE
or X25519MLKEM768 key share (OpenSSL 3.5+).  JA4 sorts the lists, so the
order points do not count there; the missing extensions do.  When the
``SSL_CTX`` cannot be reached safely (another Python build) only what
:mod:`ssl` sets is applied, and :func:`full_profile` says so.
"""

from __future__ import annotations

import _ssl
import collections
import contextlib
import ctypes
import functools
import itertools
import logging
import random
import re
import ssl
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from resistance.node.tlscert import default_name

log = logging.getLogger("resistance.connect")

# libssl constants (openssl/ssl.h, OpenSSL 3.0)
_SSL_CTRL_SET_TLSEXT_STATUS_REQ_TYPE = 65
_SSL_CTRL_SET_GROUPS_LIST = 92
_SSL_CTRL_SET_SIGALGS_LIST = 98
_TLSEXT_STATUSTYPE_OCSP = 1
_SSL_OP_TLSEXT_PADDING = 1 << 4
_SSL_OP_NO_ENCRYPT_THEN_MAC = 1 << 19
_SSL_CT_VALIDATION_PERMISSIVE = 0

ALPN = ("h2", "http/1.1")


@dataclass(frozen=True, slots=True)
class BrowserProfile:
    name: str
    tls13: str
    tls12: tuple[str, ...]
    #: TLS 1.2 suites at the end of the list that variants may leave out.
    legacy: tuple[str, ...]
    groups: str
    sigalgs: str


CHROME = BrowserProfile(
    name="chrome",
    tls13="TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256",
    tls12=(
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ),
    legacy=(
        "ECDHE-RSA-AES128-SHA",
        "ECDHE-RSA-AES256-SHA",
        "AES128-GCM-SHA256",
        "AES256-GCM-SHA384",
        "AES128-SHA",
        "AES256-SHA",
    ),
    groups="X25519:P-256:P-384",
    sigalgs="ECDSA+SHA256:rsa_pss_rsae_sha256:RSA+SHA256:ECDSA+SHA384:rsa_pss_rsae_sha384:"
    "RSA+SHA384:rsa_pss_rsae_sha512:RSA+SHA512",
)

FIREFOX = BrowserProfile(
    name="firefox",
    tls13="TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384",
    tls12=(
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
    ),
    legacy=(
        "ECDHE-ECDSA-AES256-SHA",
        "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-RSA-AES128-SHA",
        "ECDHE-RSA-AES256-SHA",
        "AES128-GCM-SHA256",
        "AES256-GCM-SHA384",
        "AES128-SHA",
        "AES256-SHA",
    ),
    groups="X25519:P-256:P-384:P-521:ffdhe2048:ffdhe3072",
    sigalgs="ECDSA+SHA256:ECDSA+SHA384:ECDSA+SHA512:rsa_pss_rsae_sha256:rsa_pss_rsae_sha384:"
    "rsa_pss_rsae_sha512:RSA+SHA256:RSA+SHA384:RSA+SHA512:ECDSA+SHA1:RSA+SHA1",
)

PROFILES = (CHROME, FIREFOX)
#: How many legacy suites a variant may drop from the end of its profile's list.
MAX_DROPPED = 3


class _LibSSL:
    """The libssl functions :mod:`ssl` does not expose, bound once."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(_ssl.__file__)  # resolves through _ssl's own libssl
        lib.SSL_CTX_get_options.restype = ctypes.c_uint64
        lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        lib.SSL_CTX_set_ciphersuites.restype = ctypes.c_int
        lib.SSL_CTX_set_ciphersuites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.SSL_CTX_enable_ct.restype = ctypes.c_int
        lib.SSL_CTX_enable_ct.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self.lib = lib

    def ssl_ctx(self, ctx: ssl.SSLContext) -> int | None:
        """The context's ``SSL_CTX*``, or ``None`` unless it is provably that one.

        CPython keeps it as the first field after the object header; the proof
        is that libssl reads, at that pointer, options that change as the
        context's do.
        """
        if sys.implementation.name != "cpython" or not (3, 11) <= sys.version_info[:2] <= (3, 13):
            return None  # the PySSLContext layout below is CPython 3.11-3.13's
        pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
        if not pointer:
            return None
        before = ctx.options
        if self.lib.SSL_CTX_get_options(pointer) != before:
            return None
        ctx.options = before | ssl.OP_NO_TICKET
        same = self.lib.SSL_CTX_get_options(pointer) == ctx.options
        ctx.options = before
        return pointer if same and self.lib.SSL_CTX_get_options(pointer) == before else None

    def apply(self, pointer: int, profile: BrowserProfile) -> bool:
        lib = self.lib
        return all(
            (
                lib.SSL_CTX_set_ciphersuites(pointer, profile.tls13.encode()) == 1,
                lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, profile.groups.encode())
                == 1,
                lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_SET_SIGALGS_LIST, 0, profile.sigalgs.encode())
                == 1,
                lib.SSL_CTX_ctrl(
                    pointer, _SSL_CTRL_SET_TLSEXT_STATUS_REQ_TYPE, _TLSEXT_STATUSTYPE_OCSP, None
                )
                == 1,
                lib.SSL_CTX_enable_ct(pointer, _SSL_CT_VALIDATION_PERMISSIVE) == 1,
            )
        )


@functools.cache
def _libssl() -> _LibSSL | None:
    try:
        return _LibSSL()
    except (OSError, AttributeError) as exc:
        log.warning("browser-like TLS hello limited to what ssl sets: %s", exc)
        return None


def _make(profile: BrowserProfile, dropped: int) -> tuple[ssl.SSLContext, bool]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the dial checks the node's certificate pin itself
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    suites = profile.tls12 + profile.legacy[: len(profile.legacy) - dropped]
    ctx.set_ciphers(":".join(suites))
    ctx.set_alpn_protocols(list(ALPN))
    ctx.options |= _SSL_OP_TLSEXT_PADDING | _SSL_OP_NO_ENCRYPT_THEN_MAC
    lib = _libssl()
    pointer = lib.ssl_ctx(ctx) if lib is not None else None
    full = pointer is not None and lib is not None and lib.apply(pointer, profile)
    return ctx, full


@functools.cache
def variant(profile_index: int, dropped: int) -> ssl.SSLContext:
    """One variant's context, made once (a context costs ~130 µs; nobody changes it)."""
    ctx, full = _make(PROFILES[profile_index], dropped)
    if not full:
        log.warning("browser-like TLS hello: libssl settings unavailable, using ssl's only")
    return ctx


Variant = tuple[int, int]
"""A hello variant: (index into PROFILES, legacy suites dropped)."""
VARIANTS: tuple[Variant, ...] = tuple(
    (p, d) for p in range(len(PROFILES)) for d in range(MAX_DROPPED + 1)
)


#: Seconds a hello variant that a node's address did not answer is avoided there.
VARIANT_REST = 300.0
#: Addresses remembered with failed variants (oldest forgotten first).
MAX_FAILED = 4096
_FAILED: collections.OrderedDict[str, dict[Variant, float]] = collections.OrderedDict()
#: The client's turn of hello variants (one for all its dials: see :func:`pick_variant`).
_client_turn = itertools.count(random.randrange(len(VARIANTS)))
#: Each TLS listener's own turn of variants for probes: the index of the next one, by
#: listener (``host:port``); at most MAX_FAILED listeners, the one unused longest forgotten.
_TURNS: collections.OrderedDict[str, int] = collections.OrderedDict()


def next_variant(where: str) -> Variant:
    """The next hello variant in ``where``'s own turn (``where``: a TLS listener's key).

    Every variant comes round within len(VARIANTS) hellos to the same listener,
    whatever else the process dials in between, so a hello rule against one of
    the client's variants meets a probe's hello within a bounded number of
    rounds.  (One turn shared by every listener let a listener be skipped past
    the dropped variant round after round when the number of dials between
    two of its hellos varied.)  A listener first seen starts at a random variant.
    """
    turn = _TURNS.pop(where, None)
    if turn is None:
        turn = random.randrange(len(VARIANTS))
    _TURNS[where] = (turn + 1) % len(VARIANTS)
    while len(_TURNS) > MAX_FAILED:
        _TURNS.popitem(last=False)
    return VARIANTS[turn]


#: Seconds a dial's handshake may be in flight before its hello is suspected dropped.
HANGING = 0.5
#: Handshakes in flight, by address: (variant, started) per dial (see :func:`dialing`).
_IN_FLIGHT: dict[str, list[tuple[Variant, float]]] = {}


def pick_variant(where: str, now: float) -> Variant:
    """The hello variant for the next dial to ``where`` (``host:port``).

    The client's dials take variants in one turn, so a dial and the rival
    raced beside it (another upstream) never send the same hello; one that
    ``where`` did not answer within :data:`VARIANT_REST` seconds is passed
    over (a censor's hello rule drops the flows of one fingerprint), and so
    is one whose handshake there has hung :data:`HANGING` seconds and still
    runs.  When every other variant rests there, a resting one is taken
    rather than the hanging one: a dial raced beside a hanging dial to the
    same node (the last that works) must not send the hello the censor is
    dropping, which it did when slow handshakes cancelled under load had put
    every other variant to rest (the story's step 15: the user's request
    failed).  Only when every variant hangs there is a hanging one taken.
    """
    start = next(_client_turn) % len(VARIANTS)
    failed = _FAILED.get(where, {})
    hanging = {v for v, since in _IN_FLIGHT.get(where, ()) if now - since >= HANGING}
    turn = [VARIANTS[(start + i) % len(VARIANTS)] for i in range(len(VARIANTS))]
    for chosen in turn:
        if failed.get(chosen, 0.0) <= now and chosen not in hanging:
            return chosen
    for chosen in turn:
        if chosen not in hanging:
            return chosen
    return turn[0]


@contextlib.contextmanager
def dialing(where: str, chosen: Variant, now: float) -> Iterator[None]:
    """While inside, a handshake with ``chosen`` is in flight to ``where``
    (:func:`pick_variant` passes over it once it has hung)."""
    entry = (chosen, now)
    _IN_FLIGHT.setdefault(where, []).append(entry)
    try:
        yield
    finally:
        flights = _IN_FLIGHT.get(where, [])
        if entry in flights:
            flights.remove(entry)
        if not flights:
            _IN_FLIGHT.pop(where, None)


def variant_failed(where: str, chosen: Variant, now: float) -> None:
    """``where`` did not finish a handshake with ``chosen``: rest it there."""
    failed = _FAILED.pop(where, {})
    failed[chosen] = now + VARIANT_REST
    _FAILED[where] = failed
    while len(_FAILED) > MAX_FAILED:
        _FAILED.popitem(last=False)


def variant_worked(where: str, chosen: Variant) -> None:
    """A handshake with ``chosen`` went through at ``where``."""
    failed = _FAILED.get(where)
    if failed is not None:
        failed.pop(chosen, None)
        if not failed:
            del _FAILED[where]


def browser_context(rng: random.Random | None = None) -> ssl.SSLContext:
    """A client context for one dial: a browser's hello, a variant picked at random."""
    profile, dropped = (rng or random).choice(VARIANTS)
    return variant(profile, dropped)


#: Server names learned from nodes' certificates, by certificate pin (bounded).
MAX_NAMES = 4096
_NAMES: collections.OrderedDict[str, str] = collections.OrderedDict()
_HOST_NAME = re.compile(r"(?=.{4,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")


def server_name(host: str, pin: str | None) -> str:
    """The server name a dial's hello carries.

    Browsers always send one, and a hello without one is what a censor's active
    prober waits for (it then connects to the server itself).  A node dialled
    by name gets that name; a node dialled by address gets the name in its
    certificate once a handshake has shown it, and before that a fresh name of
    the shape nodes give their certificates (``www.<letters>.net``), never a
    fixed one a list could hold.
    """
    if _HOST_NAME.fullmatch(host.lower()):
        return host
    learned = _NAMES.get(pin) if pin else None
    return learned or default_name()


def learn_name(pin: str, der: bytes) -> str | None:
    """Remember the DNS name of the certificate with this pin; the name, if it has one."""
    if pin in _NAMES:
        return _NAMES[pin]
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_der_x509_certificate(der)
        try:
            names = cert.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value.get_values_for_type(x509.DNSName)
        except x509.ExtensionNotFound:
            names = []
        names += [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    except (ValueError, TypeError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
        return None  # a certificate whose names cannot be read names nothing
    name = next((n.lower() for n in names if _HOST_NAME.fullmatch(n.lower())), None)
    if name is not None:
        _NAMES[pin] = name
        while len(_NAMES) > MAX_NAMES:
            _NAMES.popitem(last=False)
    return name


@functools.cache
def full_profile() -> bool:
    """Whether the libssl settings (groups, TLS 1.3 order, status request, SCT) apply here."""
    return _make(CHROME, 0)[1]
