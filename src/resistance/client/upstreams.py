"""The client's upstream proxies, their health, and the order to try them in.

Theory of operation: the upstream that last worked stays in use ("sticky"),
so an application's connections do not hop between exits without a reason.
When a dial through it fails, the failure is recorded and the next
upstream is tried at once; an upstream that keeps failing is put aside with
exponential backoff (2 s, 4 s, 8 s ... at most 5 minutes) and only tried
again after that, or when nothing else is left; among those resting, the
ones whose last failure came fastest are tried first (a refusal costs the
application nothing, a silent upstream costs a timeout).  An upstream that
failed its identity check (a certificate that is not its pin, a challenge
not signed by the key the directory names) is *lying*, not merely down: it
is sidelined for 30 minutes, doubling to a day, ranks after every honest
upstream even when its time is up, and no later success wipes that record
(a censor's proxy can answer correctly whenever it likes).  Among the others the order
is by measured handshake latency (an exponentially weighted mean), untested
upstreams after measured ones, ties by the order they were given in.
A pool that prefers TLS puts every available TLS upstream before every
plain one (before even the sticky one): a TLS handshake costs a round trip
more, but it hides the SOCKS5 handshake and its password from a censor's
DPI, so latency must not talk the client out of it.
Bridges (domestic nodes relaying to an exit abroad, issue 24) go last among
the available upstreams: a bridge's domestic address is precious, and a
censor that sees it used where nodes abroad still work learns it for
nothing.  Where the network is whitelisted they go first: the pool takes it
to be whitelisted once a bridge got through while every other upstream was
failing (a whitelist cuts off everything abroad), and not any more once any
other upstream gets through again.
With a :class:`~resistance.client.ladder.Ladder` (what got through in the
network the client sits in), its rank comes right after the backoff: what
got through here first, then the untried, then what failed here, each in
the ladder's transport order; every success and failure is told to it.
Nothing here does I/O: the session and the health checker report outcomes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from resistance.errors import ConfigError
from resistance.links import parse_mtproto_link, parse_mtproto_secret, parse_socks_url
from resistance.proto.faketls import ProxySecret

BACKOFF_FIRST = 2.0
BACKOFF_MAX = 300.0
#: How long a failed identity check sidelines an upstream, first and at most.
SIDELINE_FIRST = 1800.0
SIDELINE_MAX = 86400.0
LATENCY_WEIGHT = 0.3


@dataclass(frozen=True, slots=True)
class Upstream:
    """One proxy the client can go through."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    public_key: str | None = None  # the node's identity key, when a directory gave it
    name: str = ""
    tls_sha256: str | None = None  # SOCKS5 inside TLS, to a certificate with this SHA-256
    #: An MTProto proxy (the ladder's MTProto rung) opened by this secret, in hex.
    mtproto_secret: str | None = None
    #: A bridge: a domestic node that relays to an exit (the directory says so).
    bridge: bool = False

    @property
    def mtproto(self) -> ProxySecret | None:
        """The MTProto proxy's secret, if this upstream is one (it carries only DC traffic)."""
        return None if self.mtproto_secret is None else parse_mtproto_secret(self.mtproto_secret)

    @property
    def label(self) -> str:
        """How status output names it (never with the password)."""
        if self.name:
            return self.name
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.mtproto_secret is not None:
            return f"{host}:{self.port} (MTProto)"
        return f"{host}:{self.port}" + (" (TLS)" if self.tls_sha256 is not None else "")

    @classmethod
    def from_url(cls, url: str) -> Upstream:
        """``socks5://``, ``socks5s://…#sha256=PIN``, or an MTProto proxy link
        (``tg://proxy?…``, ``https://t.me/proxy?…``, ``mtproto://SECRET@HOST:PORT``)."""
        scheme = url.strip().partition(":")[0].lower()
        if scheme in ("tg", "mtproto", "http", "https"):
            mt = parse_mtproto_link(url)
            return cls(mt.host, mt.port, mtproto_secret=mt.secret.to_hex())
        proxy = parse_socks_url(url)
        pin = None
        if proxy.scheme == "socks5s":
            fragment = url.partition("#")[2]
            pin = fragment.removeprefix("sha256=").replace(":", "").lower()
            if not fragment.startswith("sha256=") or len(pin) != 64 or not _is_hex(pin):
                raise ConfigError(
                    f"{url.split('@')[-1]}: socks5s:// needs the node's certificate pinned as "
                    "#sha256=<64 hex digits>"
                )
        return cls(proxy.host, proxy.port, proxy.username, proxy.password, tls_sha256=pin)


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


class TransportMemory(Protocol):
    """What the pool needs of :class:`~resistance.client.ladder.Ladder`."""

    def rank(self, upstream: Upstream) -> tuple[int, int]: ...

    def record(self, upstream: Upstream, *, ok: bool, error: str = "") -> None: ...


@dataclass(slots=True)
class Health:
    """What the client knows of one upstream from its own use and checks."""

    successes: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    latency: float | None = None
    down_until: float = 0.0
    last_error: str = ""
    last_change: float = field(default_factory=time.monotonic)
    #: Seconds the last failed attempt took (how much a retry of it costs).
    fail_seconds: float | None = None
    #: Failed identity checks: never reset by a success.
    lies: int = 0
    sidelined_until: float = 0.0

    def available(self, now: float) -> bool:
        return now >= self.down_until and now >= self.sidelined_until


class UpstreamPool:
    def __init__(
        self,
        upstreams: Iterable[Upstream],
        *,
        prefer_tls: bool = False,
        ladder: TransportMemory | None = None,
    ) -> None:
        self.prefer_tls = prefer_tls
        self.ladder = ladder
        self.upstreams: list[Upstream] = []
        self.health: dict[Upstream, Health] = {}
        self.active: Upstream | None = None
        #: Whether the network looks whitelisted (see the module docstring).
        self.whitelisted = False
        #: The active upstream that just failed, so moving off it counts as a switch.
        self._dropped: Upstream | None = None
        self.switches = 0
        #: Bumped by every success, use and failure: the status writer saves on a change.
        self.version = 0
        self.replace(upstreams)

    def replace(self, upstreams: Iterable[Upstream]) -> None:
        """A new list (from a fresh directory); known upstreams keep their health."""
        fresh = list(dict.fromkeys(upstreams))
        self.health = {u: self.health.get(u) or Health() for u in fresh}
        self.upstreams = fresh
        if self.active not in self.health:
            self.active = None

    def order(self, now: float | None = None) -> list[Upstream]:
        """The upstreams to try, best first; those in backoff come last."""
        now = time.monotonic() if now is None else now
        index = {u: i for i, u in enumerate(self.upstreams)}

        ladder = self.ladder

        def key(u: Upstream) -> tuple[int, int, float, int, int, int, int, int, float, int]:
            h = self.health[u]
            resting = 0 if h.available(now) else 1
            lying = 1 if h.lies else 0
            # Among those resting, what failed fastest costs least to try again.
            cost = (h.fail_seconds or 0.0) if resting else 0.0
            bridge = (0 if u.bridge else 1) if self.whitelisted else (1 if u.bridge else 0)
            learned, rung = ladder.rank(u) if ladder is not None else (0, 0)
            plain = (
                1 if self.prefer_tls and u.tls_sha256 is None and u.mtproto_secret is None else 0
            )
            sticky = 0 if u == self.active else 1
            latency = h.latency if h.latency is not None else float("inf")
            return (resting, lying, cost, bridge, learned, rung, plain, sticky, latency, index[u])

        return sorted(self.upstreams, key=key)

    def succeeded(
        self, upstream: Upstream, latency: float | None, *, now: float | None = None
    ) -> None:
        h = self.health.get(upstream)
        if h is None:
            return
        if self.ladder is not None:
            self.ladder.record(upstream, ok=True)
        if not upstream.bridge:
            self.whitelisted = False
        elif not self.whitelisted:
            others = [self.health[u] for u in self.upstreams if not u.bridge]
            self.whitelisted = bool(others) and all(o.consecutive_failures for o in others)
        self.version += 1
        h.successes += 1
        if h.consecutive_failures or h.down_until:
            h.last_change = time.monotonic() if now is None else now
        h.consecutive_failures = 0
        h.down_until = 0.0  # but not sidelined_until nor lies: a success does not undo a lie
        h.fail_seconds = None
        if latency is not None:
            h.latency = (
                latency
                if h.latency is None
                else (1 - LATENCY_WEIGHT) * h.latency + LATENCY_WEIGHT * latency
            )

    def used(self, upstream: Upstream) -> None:
        """A connection went through ``upstream``: it becomes the sticky one."""
        self.version += 1
        if upstream != self.active:
            if self.active is not None or self._dropped not in (None, upstream):
                self.switches += 1
            self.active = upstream
        self._dropped = None

    def failed(
        self,
        upstream: Upstream,
        error: str,
        *,
        now: float | None = None,
        seconds: float | None = None,
        lying: bool = False,
    ) -> None:
        """``upstream`` failed after ``seconds``; ``lying``: it failed its identity check."""
        h = self.health.get(upstream)
        if h is None:
            return
        if self.ladder is not None:
            self.ladder.record(upstream, ok=False, error=error)
        now = time.monotonic() if now is None else now
        self.version += 1
        h.failures += 1
        h.consecutive_failures += 1
        h.last_error = error
        h.last_change = now
        if seconds is not None:
            h.fail_seconds = seconds
        h.down_until = now + min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (h.consecutive_failures - 1))
        if lying:
            h.lies += 1
            h.sidelined_until = now + min(SIDELINE_MAX, SIDELINE_FIRST * 2 ** (h.lies - 1))
        if upstream == self.active:
            self._dropped, self.active = upstream, None
