"""Where `resist connect` gets its upstreams: signed directories from any mirror.

Theory of operation: the sources (URLs or files, mirrors of one directory)
are tried in turn with short timeouts.  A fetched file counts only once it
verifies: enough distinct trusted keys, inside its validity window, and not
older than the last directory this client accepted (kept on disk, so a
censor replaying an old directory is refused even across restarts).  The
accepted file is cached; when no source answers, the cache is used if it is
still valid, so the client starts offline.  The next refresh is due at the
directory's fresh-until time, and sooner (with backoff) while sources fail.
The transport is never trusted: a mirror on any host serves the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from resistance.client.ladder import pair_key, transport_of
from resistance.client.upstreams import Upstream
from resistance.directory.document import (
    MAX_FILE_BYTES,
    DirectoryError,
    VerifiedDirectory,
    load_trust_state,
    save_trust_state,
    verify_directory,
)
from resistance.directory.entry import DirectoryEntry, parse_entry
from resistance.errors import ConfigError
from resistance.paths import write_private

log = logging.getLogger("resistance.connect")

CACHE_FILE = "directory-cache.json"
#: Seconds a directory may claim to start in the future: the registry's clock
#: may run ahead of ours, and a directory published in the second we fetch it
#: starts after the moment we looked at the clock.
CLOCK_SKEW = 60
UNUSABLE = frozenset({"down", "disabled"})


@dataclass(frozen=True, slots=True)
class DirectoryConfig:
    sources: tuple[str, ...]
    trusted: tuple[Ed25519PublicKey, ...]
    threshold: int
    state_dir: Path
    fetch_seconds: float = 5.0
    country: str | None = None


def fetch(source: str, *, seconds: float) -> bytes:
    """The bytes at a URL or in a file, at most the largest directory allowed."""
    if source.startswith(("http://", "https://")):
        with (
            httpx.Client(timeout=seconds, follow_redirects=True) as client,
            client.stream("GET", source) as response,
        ):
            if response.status_code != 200:
                raise DirectoryError(f"{source} answered HTTP {response.status_code}")
            data = b""
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > MAX_FILE_BYTES:
                    raise DirectoryError(f"{source} sent more than {MAX_FILE_BYTES} bytes")
            return data
    try:
        with open(source, "rb") as f:
            return f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise DirectoryError(f"cannot read {source}: {exc.strerror}") from None


def usable(status: str, country: str | None) -> bool:
    """Whether a proxy with this directory status can serve a user in ``country``.

    ``blocked:CC`` is blocked only in CC; a client that does not say where it
    is treats every blocked proxy as unusable, which is the safe guess for
    someone behind a block.
    """
    kind, _, where = status.partition(":")
    if kind in UNUSABLE:
        return False
    if kind == "blocked":
        return country is not None and where.upper() != country.upper()
    return True


TRANSPORTS = ("auto", "tls", "plain")


def entry_upstreams(entry: DirectoryEntry, transport: str = "auto") -> list[Upstream]:
    """The upstreams one entry gives: its TLS listener, its plain port, or both.

    ``auto`` lists the TLS listener first and keeps the plain port as a
    fallback (and for UDP, which cannot go through TLS); ``tls`` only the TLS
    listener (nothing for a node without one); ``plain`` only the plain port.
    """
    user, password, key = entry.username, entry.password, entry.node_key
    found: list[Upstream] = []
    if entry.tls is not None and transport in ("auto", "tls"):
        found.append(
            Upstream(entry.host, entry.tls.port, user, password, key, tls_sha256=entry.tls.sha256)
        )
    if transport in ("auto", "plain"):
        found.append(Upstream(entry.host, entry.port, user, password, key))
    return found


def upstreams_from(
    document: dict[str, Any], *, country: str | None = None, transport: str = "auto"
) -> list[Upstream]:
    """The SOCKS5 upstreams a directory lists as usable from ``country``."""
    if transport not in TRANSPORTS:
        raise ConfigError(f"transport must be one of {', '.join(TRANSPORTS)}, not {transport!r}")
    entries = document.get("proxies")
    found: list[Upstream] = []
    for value in entries if isinstance(entries, list) else []:
        entry = parse_entry(value)
        if entry is None or "socks5" not in entry.protocols:
            continue
        if usable(entry.status, country):
            ups = entry_upstreams(entry, transport)
        else:
            # Blocked where the user is, by what stopped its plain port: a transport a
            # probe saw get through beside that failure still serves (TLS past a
            # SOCKS5 fingerprint rule), a cascade's bridge's as any node's.
            through = transports_past_a_block(value)
            ups = [u for u in entry_upstreams(entry, transport) if transport_of(u) in through]
        if value.get("bridge") is True:  # a cascade's bridge (issue 24)
            ups = [dataclasses.replace(u, bridge=True) for u in ups]
        found += ups
    return found


def transports_past_a_block(value: Any, main: str = "socks5") -> set[str]:
    """The transports some probe vantage saw get through while the same vantage saw
    the node's ``main`` transport fail (the directory's ``measurements.reach``)."""
    measurements = value.get("measurements") if isinstance(value, dict) else None
    reach = measurements.get("reach") if isinstance(measurements, dict) else None
    through: set[str] = set()
    for seen in reach.values() if isinstance(reach, dict) else ():
        if isinstance(seen, dict) and seen.get(main) not in (None, "ok"):
            through |= {t for t, v in seen.items() if t != main and v == "ok"}
    return through


#: Hints kept from one directory at most (one per transport of each listed node).
MAX_HINTS = 4096


def reach_hints(document: dict[str, Any], network: str) -> dict[str, str]:
    """What the directory's probes saw from ``network`` (a probe vantage's name):
    per transport of each node (:func:`~resistance.client.ladder.pair_key`), ``ok``
    or the mechanism that stopped it (see :mod:`resistance.probe.diagnose`)."""
    hints: dict[str, str] = {}
    entries = document.get("proxies")
    for value in entries if isinstance(entries, list) else []:
        measurements = value.get("measurements") if isinstance(value, dict) else None
        reach = measurements.get("reach") if isinstance(measurements, dict) else None
        seen = reach.get(network) if isinstance(reach, dict) else None
        entry = parse_entry(value) if isinstance(seen, dict) else None
        if entry is None or not isinstance(seen, dict):
            continue
        for upstream in entry_upstreams(entry):
            verdict = seen.get(transport_of(upstream))
            if isinstance(verdict, str) and len(verdict) <= 32 and len(hints) < MAX_HINTS:
                hints[pair_key(upstream)] = verdict
    return hints


def fetch_assigned(url: str, *, seconds: float, transport: str = "auto") -> list[Upstream]:
    """The non-public proxies the registry hands this network today.

    Unlike the directory, this answer is not signed: it is only as trustworthy
    as the HTTPS connection it came over, so it adds upstreams and never
    replaces the directory's.
    """
    try:
        answer = json.loads(fetch(url, seconds=seconds))
    except ValueError as exc:
        raise DirectoryError(f"{url}: not a JSON assignment ({exc})") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("proxies"), list):
        raise DirectoryError(f"{url}: not an assignment (no proxies list)")
    return upstreams_from({"proxies": answer["proxies"]}, transport=transport)


@dataclass(slots=True)
class UpstreamSources:
    """Where the pool's upstreams come from; combined in a fixed order."""

    manual: list[Upstream]
    listed: list[Upstream]
    assigned: list[Upstream]

    def combined(self) -> list[Upstream]:
        return [*self.manual, *self.listed, *self.assigned]


class DirectoryClient:
    def __init__(self, config: DirectoryConfig) -> None:
        if not config.sources:
            raise ConfigError("a directory needs at least one source")
        if not config.trusted:
            raise ConfigError("give at least one --trust KEY to accept a directory")
        self.config = config
        self.current: VerifiedDirectory | None = None
        self.failures = 0
        self.last_error = ""

    def _accept(self, data: bytes, now: int | None) -> VerifiedDirectory:
        state = load_trust_state(self.config.state_dir)
        verified = verify_directory(
            data,
            trusted=self.config.trusted,
            threshold=self.config.threshold,
            now=int(time.time()) if now is None else now,
            last_serial=state.serial,
            last_digest=state.digest,
            skew=CLOCK_SKEW,
        )
        save_trust_state(self.config.state_dir, verified)
        return verified

    def refresh(self, *, now: int | None = None) -> VerifiedDirectory:
        """Fetch and verify from the first source that gives a good directory.

        Falls back to the cached directory; raises :class:`DirectoryError` when
        neither works (the message names each source's reason).
        """
        reasons = []
        for source in self.config.sources:
            try:
                data = fetch(source, seconds=self.config.fetch_seconds)
                verified = self._accept(data, now)
            except (DirectoryError, httpx.HTTPError) as exc:
                reasons.append(f"{source}: {exc}")
                log.warning("directory from %s refused: %s", source, exc)
                continue
            write_private(self.config.state_dir / CACHE_FILE, data.decode("utf-8"))
            self.current = verified
            self.failures = 0
            return verified
        self.failures += 1
        cache = self.config.state_dir / CACHE_FILE
        if cache.exists():
            try:
                verified = self._accept(cache.read_bytes(), now)
            except DirectoryError as exc:
                reasons.append(f"cache: {exc}")
            else:
                self.current = verified
                return verified
        self.last_error = "; ".join(reasons)
        raise DirectoryError(f"no usable directory ({self.last_error})")

    def next_refresh_in(self, *, now: int | None = None) -> float:
        """Seconds until the next refresh: at fresh-until, sooner after failures."""
        now = int(time.time()) if now is None else now
        if self.failures or self.current is None:
            return float(min(600, 15 * 2 ** min(self.failures, 6)))
        fresh_until = int(self.current.document["fresh_until"])
        return float(max(30, min(3600, fresh_until - now)))
