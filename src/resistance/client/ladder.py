"""The client's ladder: per network it sits in, which transport of which node got through.

Theory of operation.  A node may offer several transports (its TLS listener,
its plain SOCKS5 port, its MTProto fake-TLS port), and a
censor blocks them differently: a fingerprint rule kills plain SOCKS5 and
leaves TLS alone, an IP rule kills every transport of one node.  What gets
through depends on the network the user sits in (home, mobile, a café), so
the client remembers it per network:

* :data:`TRANSPORTS` is the ladder, one entry per transport, best
  disguised first.  Untried, the client climbs it in that order.
* :class:`Ladder` keeps, for the current network, each (node, transport)
  pair's last success and last failure.  :meth:`Ladder.rank` puts what got
  through here first, then the untried, then what failed here last; inside
  each group the ladder's order holds.  A failure is never permanent: the
  pool's backoff retries it, and one success moves it back up.
* A directory's ``reach`` (what the registry's probes in a network of the
  same name saw, :func:`~resistance.client.directory.reach_hints`) orders
  what the client has not tried itself: a transport the probes got through
  before the untried, one they saw blocked after them; the client's own
  experience always comes first.  Hints are not stored (the next directory
  brings them again).
* The memory is a small JSON file in the state directory, written
  atomically whenever a pair's state changes (works ↔ failed), bounded to
  :data:`MAX_NETWORKS` networks of :data:`MAX_ENTRIES` pairs each (the
  least recently used go first); a damaged file is set aside and the
  client starts from the ladder's order.

The network's name is given (``--network``) or derived from the default
route: the interface, the gateway, and the gateway's hardware address, so
two home routers both at 192.168.1.1 are two networks.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resistance.client.upstreams import Upstream
from resistance.errors import ConfigError
from resistance.paths import write_private

log = logging.getLogger("resistance.connect")

LADDER_FILE = "ladder.json"
FORMAT = "resist-ladder/1"
MAX_NETWORKS = 32
MAX_ENTRIES = 256
MAX_ERROR = 120
MAX_FILE_BYTES = 1 << 20
NETWORK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@-]{0,79}")


@dataclass(frozen=True, slots=True)
class Transport:
    name: str
    description: str
    #: False: a documented slot the client cannot use yet (why in ``note``).
    usable: bool = True
    note: str = ""


TRANSPORTS: tuple[Transport, ...] = (
    Transport("tls", "SOCKS5 inside TLS, with a browser's ClientHello (client/hello.py)"),
    Transport(
        "mtproto-faketls",
        "an app's data-centre connections re-framed onto an MTProto proxy, fake-TLS for ee "
        "secrets (client/mtrung.py)",
        note="carries only obfuscated2 to Telegram's data centres; other connections skip it",
    ),
    Transport("socks5", "plain SOCKS5 (last: its greeting is a fingerprint)"),
)
_RANK = {t.name: i for i, t in enumerate(TRANSPORTS)}


def transport_of(upstream: Upstream) -> str:
    if upstream.mtproto_secret is not None:
        return "mtproto-faketls"
    return "tls" if upstream.tls_sha256 is not None else "socks5"


def pair_key(upstream: Upstream) -> str:
    """One transport of one node: the transport, its address, and the node's key if known."""
    host = f"[{upstream.host}]" if ":" in upstream.host else upstream.host
    key = f"{transport_of(upstream)} {host}:{upstream.port}"
    return f"{key} {upstream.public_key}" if upstream.public_key else key


WORKS, UNTRIED, FAILED = "works", "untried", "failed"
_STATE_RANK = {WORKS: 0, UNTRIED: 2, FAILED: 4}


@dataclass(slots=True)
class Learned:
    ok_at: float = 0.0
    fail_at: float = 0.0
    successes: int = 0
    failures: int = 0
    error: str = ""

    @property
    def state(self) -> str:
        if self.fail_at > self.ok_at:
            return FAILED
        return WORKS if self.ok_at > 0 else UNTRIED

    @property
    def last(self) -> float:
        return max(self.ok_at, self.fail_at)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok_at": round(self.ok_at, 1),
            "fail_at": round(self.fail_at, 1),
            "successes": self.successes,
            "failures": self.failures,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, raw: Any) -> Learned:
        if not isinstance(raw, dict):
            raise ValueError("an entry is an object")
        ok_at, fail_at = raw.get("ok_at", 0), raw.get("fail_at", 0)
        successes, failures = raw.get("successes", 0), raw.get("failures", 0)
        error = raw.get("error", "")
        if not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in (ok_at, fail_at)
        ):
            raise ValueError("times are numbers")
        if not all(type(v) is int and v >= 0 for v in (successes, failures)):
            raise ValueError("counts are non-negative integers")
        if not isinstance(error, str):
            raise ValueError("error is text")
        return cls(float(ok_at), float(fail_at), successes, failures, error[:MAX_ERROR])


def check_network_name(name: str) -> str:
    if not NETWORK_NAME.fullmatch(name):
        raise ConfigError(
            f"network name {name[:40]!r}: 1-80 letters, digits and ._:/@- (e.g. home-wifi)"
        )
    return name


def network_from_route(route_table: str, arp_table: str = "") -> str | None:
    """The network's name from ``/proc/net/route`` and ``/proc/net/arp`` text, if routed."""
    best: tuple[int, str, str] | None = None
    for line in route_table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 7 or fields[1] != "00000000" or fields[7:8] != ["00000000"]:
            continue
        try:
            raw_gateway = bytes.fromhex(fields[2])[::-1]
            metric = int(fields[6])
        except ValueError:
            continue
        if len(raw_gateway) != 4:
            continue
        candidate = (metric, fields[0], ".".join(str(b) for b in raw_gateway))
        if best is None or candidate < best:
            best = candidate
    if best is None:
        return None
    _, iface, gateway = best
    mac = ""
    for line in arp_table.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 6 and fields[0] == gateway and fields[5] == iface:
            mac = fields[3].lower()
    name = f"{iface}/{gateway}" + (f"@{mac}" if mac and mac != "00:00:00:00:00:00" else "")
    return name if NETWORK_NAME.fullmatch(name) else None


def current_network(explicit: str | None = None) -> str:
    """``explicit`` if given, else a name from the default route, else ``unrouted``."""
    if explicit:
        return check_network_name(explicit)
    try:
        route = Path("/proc/net/route").read_text()
    except OSError:
        return "unrouted"
    try:
        arp = Path("/proc/net/arp").read_text()
    except OSError:
        arp = ""
    return network_from_route(route, arp) or "unrouted"


class Ladder:
    """What got through, per network; ranks upstreams for the current one."""

    def __init__(
        self,
        path: Path | None,
        network: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.network = check_network_name(network)
        self.clock = clock
        self.networks: dict[str, dict[str, Learned]] = {}
        self.saves = 0
        #: pair key -> what the directory's probes in this network saw (``ok`` or why not).
        self.hints: dict[str, str] = {}
        if path is not None:
            self._load(path)
        self.here = self.networks.setdefault(self.network, {})

    # --- ranking ----------------------------------------------------------------------

    def state(self, upstream: Upstream) -> str:
        learned = self.here.get(pair_key(upstream))
        return learned.state if learned else UNTRIED

    def rank(self, upstream: Upstream) -> tuple[int, int]:
        """Sort key: what got through here first, then untried (those the probes saw
        get through, then the rest, then those they saw blocked), then failed; inside
        each, the ladder's order."""
        state = _STATE_RANK[self.state(upstream)]
        if state == _STATE_RANK[UNTRIED]:
            hint = self.hints.get(pair_key(upstream))
            state += 0 if hint is None else (-1 if hint == "ok" else 1)
        return state, _RANK.get(transport_of(upstream), len(_RANK))

    def hint(self, hints: dict[str, str]) -> None:
        """Take a fresh directory's view of this network (replaces the last one)."""
        self.hints = dict(hints)

    # --- learning ---------------------------------------------------------------------

    def record(self, upstream: Upstream, *, ok: bool, error: str = "") -> None:
        key = pair_key(upstream)
        learned = self.here.get(key)
        if learned is None:
            if len(self.here) >= MAX_ENTRIES:
                oldest = min(self.here, key=lambda k: self.here[k].last)
                del self.here[oldest]
            learned = self.here[key] = Learned()
        before = learned.state
        now = self.clock()
        if ok:
            learned.ok_at = max(now, learned.fail_at + 1e-3)
            learned.successes += 1
        else:
            learned.fail_at = max(now, learned.ok_at + 1e-3)
            learned.failures += 1
            learned.error = error[:MAX_ERROR]
        if learned.state != before:
            if ok:
                log.info("network %s: %s gets through", self.network, key)
            else:
                log.info("network %s: %s stopped getting through (%s)", self.network, key, error)
            self.save()

    # --- the file ---------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "networks": {
                net: {key: learned.to_json() for key, learned in entries.items()}
                for net, entries in self.networks.items()
            },
        }

    def save(self) -> None:
        if self.path is None:
            return
        if len(self.networks) > MAX_NETWORKS:
            by_use = sorted(
                (n for n in self.networks if n != self.network),
                key=lambda n: max((e.last for e in self.networks[n].values()), default=0.0),
            )
            for stale in by_use[: len(self.networks) - MAX_NETWORKS]:
                del self.networks[stale]
        try:
            write_private(self.path, json.dumps(self.to_json(), separators=(",", ":")))
            self.saves += 1
        except OSError as exc:
            log.warning("cannot save what the ladder learned to %s: %s", self.path, exc)

    def _load(self, path: Path) -> None:
        try:
            with path.open("rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot read %s (%s): starting from the ladder's order", path, exc)
            return
        try:
            if len(data) > MAX_FILE_BYTES:
                raise ValueError("file too large")
            self.networks = parse_ladder(json.loads(data))
        except ValueError as exc:
            aside = path.with_name(path.name + ".damaged")
            log.warning("%s is damaged (%s): set aside as %s", path, exc, aside.name)
            try:
                path.replace(aside)
            except OSError:
                pass
            self.networks = {}

    # --- status -----------------------------------------------------------------------

    def rows(self, upstreams: list[Upstream]) -> list[dict[str, Any]]:
        """One row per upstream in the current network, in the order they are tried."""
        rows = []
        now = self.clock()
        for upstream in sorted(upstreams, key=self.rank):
            learned = self.here.get(pair_key(upstream))
            rows.append(
                {
                    "upstream": upstream.label,
                    "transport": transport_of(upstream),
                    "state": learned.state if learned else UNTRIED,
                    "ok_ago": _ago(now, learned.ok_at) if learned else None,
                    "fail_ago": _ago(now, learned.fail_at) if learned else None,
                    "error": learned.error if learned else "",
                    "probes": self.hints.get(pair_key(upstream)),
                }
            )
        return rows


def _ago(now: float, at: float) -> float | None:
    return round(max(0.0, now - at), 1) if at > 0 else None


def parse_ladder(raw: Any) -> dict[str, dict[str, Learned]]:
    """The networks in a ladder file; raises ``ValueError`` for anything else."""
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} file")
    networks = raw.get("networks")
    if not isinstance(networks, dict) or len(networks) > MAX_NETWORKS + 1:
        raise ValueError("networks must be an object of at most a few dozen networks")
    out: dict[str, dict[str, Learned]] = {}
    for name, entries in networks.items():
        if not NETWORK_NAME.fullmatch(name) or not isinstance(entries, dict):
            raise ValueError("a network is a name and an object of entries")
        if len(entries) > MAX_ENTRIES:
            raise ValueError("too many entries in one network")
        out[name] = {str(k)[:200]: Learned.from_json(v) for k, v in entries.items()}
    return out
