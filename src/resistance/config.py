"""Settings objects, one per service, built from a TOML file and command-line flags.

Flags override the file.  Every value is checked here, so a service either
starts with a coherent configuration or refuses with one clear line.
Settings are passed explicitly to the service that uses them; nothing reads
module globals.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resistance.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoint(
    text: str, *, what: str = "address", default_port: int | None = None
) -> Endpoint:
    """Parse ``HOST:PORT``, ``[V6]:PORT`` or (with a default port) a bare host."""
    text = text.strip()
    host: str
    port_text: str | None
    bracketed = text.startswith("[")
    if bracketed:
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"bad {what} {text!r}: expected [IPv6]:PORT")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif text.count(":") > 1:
        raise ConfigError(f"bad {what} {text!r}: write IPv6 addresses as [ADDR]:PORT")
    else:
        host, port_text = text, None
    if port_text is None:
        if default_port is None:
            raise ConfigError(f"bad {what} {text!r}: expected HOST:PORT")
        port = default_port
    else:
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise ConfigError(f"bad {what} {text!r}: port must be 0-65535")
        port = int(port_text)
    if not host:
        raise ConfigError(f"bad {what} {text!r}: missing host")
    if bracketed or ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"bad {what} {text!r}: {host!r} is not an IPv6 address") from None
    return Endpoint(host, port)


def parse_user(text: str) -> tuple[str, str]:
    """``NAME:PASSWORD`` (the password may contain colons)."""
    name, sep, password = text.partition(":")
    if not sep or not name or not password:
        raise ConfigError(f"bad user {text!r}: expected NAME:PASSWORD")
    check_credential(name, password)
    return name, password


def check_credential(name: str, password: str) -> None:
    if len(name.encode()) > 255 or len(password.encode()) > 255:
        raise ConfigError(f"user {name[:32]!r}: RFC 1929 allows at most 255 bytes per field")


@dataclass(frozen=True, slots=True)
class NodeLimits:
    max_connections: int = 20000
    max_connections_per_ip: int = 512
    handshake_timeout: float = 10.0
    connect_timeout: float = 10.0
    dns_timeout: float = 5.0
    idle_timeout: float = 600.0
    bind_timeout: float = 60.0
    udp_idle_timeout: float = 300.0
    drain_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class NodeSettings:
    listen: tuple[Endpoint, ...] = (Endpoint("127.0.0.1", 1080),)
    tls_listen: tuple[Endpoint, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    users: Mapping[str, str] = field(default_factory=dict)
    no_auth: bool = False
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    allow_ports: tuple[str, ...] = ()
    deny_ports: tuple[str, ...] = ("25",)
    only: tuple[str, ...] = ()
    metrics: Endpoint | None = None
    public_host: str | None = None
    qr: bool = False
    log_destinations: bool = False
    hide_passwords: bool = False
    """The banner masks every password (links, socks5s:// URL, a generated user's)."""
    udp: bool = True
    bind: bool = True
    relay: str = "auto"
    workers: int = 1
    limits: NodeLimits = field(default_factory=NodeLimits)
    state_dir: Path | None = None
    config_file: Path | None = None
    mtproto: MTProtoSettings | None = None
    upstream: tuple[str, ...] = ()
    """Exits this node (a bridge) reaches everything through, as ``--upstream`` URLs."""
    upstream_warm: int = 2
    """Warm TLS connections a bridge keeps to the exit in use (0: none)."""


_LIMIT_FIELDS = {f.name: f.type for f in dataclasses.fields(NodeLimits)}
_NODE_KEYS = {
    "listen",
    "tls_listen",
    "tls_cert",
    "tls_key",
    "users",
    "no_auth",
    "allow",
    "deny",
    "allow_ports",
    "deny_ports",
    "only",
    "metrics",
    "public_host",
    "qr",
    "log_destinations",
    "hide_passwords",
    "udp",
    "bind",
    "relay",
    "workers",
    "limits",
    "state_dir",
    "mtproto_listen",
    "mtproto_user",
    "mtproto_users",
    "mtproto_domain",
    "mtproto_front",
    "mtproto_dc",
    "mtproto_modes",
    "mtproto_fast",
    "upstream",
    "upstream_warm",
}


def _as_list(value: Any, key: str) -> list[str]:
    if isinstance(value, str | int):
        return [str(value)]
    if isinstance(value, list) and all(isinstance(v, str | int) for v in value):
        return [str(v) for v in value]
    raise ConfigError(f"{key}: expected a string or a list of strings")


def _as_bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false")
    return value


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    node = data.get("node", data)
    if not isinstance(node, dict):
        raise ConfigError(f"config file {path}: [node] must be a table")
    return node


def node_settings(
    *, config_file: Path | None = None, overrides: Mapping[str, Any] | None = None
) -> NodeSettings:
    """Build :class:`NodeSettings` from an optional TOML file, then flags on top.

    ``overrides`` holds only the flags the user gave (``None`` values are ignored).
    """
    raw: dict[str, Any] = {}
    if config_file is not None:
        raw.update(read_config_file(config_file))
    unknown = set(raw) - _NODE_KEYS
    if unknown:
        raise ConfigError(f"config file {config_file}: unknown setting {sorted(unknown)[0]!r}")
    limits_raw = raw.pop("limits", {})
    if not isinstance(limits_raw, dict):
        raise ConfigError("limits: expected a table")
    for key, value in (overrides or {}).items():
        if value is None or value == () or value == []:
            continue
        if key in _LIMIT_FIELDS:
            limits_raw[key] = value
        elif key == "users":
            merged = dict(raw.get("users", {}))
            merged.update(value)
            raw["users"] = merged
        else:
            raw[key] = value
    return _build(raw, limits_raw, config_file)


def _build(
    raw: dict[str, Any], limits_raw: dict[str, Any], config_file: Path | None
) -> NodeSettings:
    limits_kwargs: dict[str, Any] = {}
    for key, value in limits_raw.items():
        if key not in _LIMIT_FIELDS:
            raise ConfigError(f"limits: unknown setting {key!r}")
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"limits.{key}: expected a positive number, got {value!r}")
        limits_kwargs[key] = int(value) if _LIMIT_FIELDS[key] in ("int", int) else float(value)
    limits = NodeLimits(**limits_kwargs)

    kwargs: dict[str, Any] = {"limits": limits, "config_file": config_file}
    if "listen" in raw:
        kwargs["listen"] = tuple(
            parse_endpoint(v, what="listen address") for v in _as_list(raw["listen"], "listen")
        )
    if "tls_listen" in raw:
        kwargs["tls_listen"] = tuple(
            parse_endpoint(v, what="TLS listen address")
            for v in _as_list(raw["tls_listen"], "tls_listen")
        )
    for key in ("tls_cert", "tls_key", "state_dir"):
        if key in raw:
            kwargs[key] = Path(str(raw[key]))
    users = raw.get("users", {})
    if not isinstance(users, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in users.items()
    ):
        raise ConfigError('users: expected a table of NAME = "PASSWORD"')
    for name, password in users.items():
        if not name or not password:
            raise ConfigError("users: names and passwords must not be empty")
        check_credential(name, password)
    kwargs["users"] = dict(users)
    for key in ("allow", "deny", "allow_ports", "deny_ports", "only"):
        if key in raw:
            kwargs[key] = tuple(_as_list(raw[key], key))
    for key in ("no_auth", "qr", "log_destinations", "hide_passwords", "udp", "bind"):
        if key in raw:
            kwargs[key] = _as_bool(raw[key], key)
    if raw.get("upstream"):
        # A bridge's hop to its exit is a SOCKS5 CONNECT: UDP and BIND cannot cross it.
        kwargs["upstream"] = tuple(_as_list(raw["upstream"], "upstream"))
        kwargs["udp"] = kwargs["bind"] = False
    if raw.get("metrics"):
        kwargs["metrics"] = parse_endpoint(str(raw["metrics"]), what="metrics address")
    if "public_host" in raw:
        kwargs["public_host"] = str(raw["public_host"])
    if "relay" in raw:
        if raw["relay"] not in ("auto", "splice", "copy"):
            raise ConfigError("relay: expected auto, splice or copy")
        kwargs["relay"] = raw["relay"]
    if "upstream_warm" in raw:
        warm = raw["upstream_warm"]
        if isinstance(warm, bool) or not isinstance(warm, int) or not 0 <= warm <= 16:
            raise ConfigError(f"upstream_warm: expected a whole number from 0 to 16, got {warm!r}")
        kwargs["upstream_warm"] = warm
    if "workers" in raw:
        workers = raw["workers"]
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 256:
            raise ConfigError(f"workers: expected a whole number from 1 to 256, got {workers!r}")
        kwargs["workers"] = workers
    if any(key.startswith("mtproto_") for key in raw):
        kwargs["mtproto"] = mtproto = mtproto_settings(raw)
        if mtproto.listen and "listen" not in raw:
            kwargs["listen"] = ()  # MTProto alone unless a SOCKS5 listener is asked for too
    settings = NodeSettings(**kwargs)
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    if settings.no_auth and settings.users:
        raise ConfigError("--no-auth and --user contradict each other: choose one")
    return settings


# --------------------------------------------------------------------------- MTProto

MTPROTO_MODES = ("classic", "dd", "ee")


@dataclass(frozen=True, slots=True)
class MTProtoUserSpec:
    """One MTProto user as configured: the secret may be left for the node to make."""

    name: str
    key: bytes | None = None
    quota_bytes: int | None = None
    expires: float | None = None
    """Unix time after which the user is refused."""
    max_connections: int | None = None
    max_addresses: int | None = None
    """Distinct client addresses the user may connect from at once."""


@dataclass(frozen=True, slots=True)
class MTProtoSettings:
    """The node's MTProto listener (``--mtproto-*``); off while ``listen`` is empty."""

    listen: tuple[Endpoint, ...] = ()
    users: tuple[MTProtoUserSpec, ...] = ()
    domain: str | None = None
    front: Endpoint | None = None
    dcs: Mapping[int, tuple[Endpoint, ...]] = field(default_factory=dict)
    modes: frozenset[str] | None = None
    """``None``: ee when a domain is set, else dd (see resistance.node.mtproto)."""
    fast: bool = True


_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6,
               "mib": 2**20, "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12,
               "tib": 2**40}  # fmt: skip


def parse_size(text: str, *, what: str = "size") -> int:
    """``10GiB``, ``500MB``, ``1e9`` style byte counts."""
    raw = text.strip().lower().replace(" ", "")
    number = raw.rstrip("kmgtib")
    unit = raw[len(number) :]
    try:
        value = float(number) * _SIZE_UNITS[unit]
    except (KeyError, ValueError):
        raise ConfigError(f"bad {what} {text!r}: expected a byte count like 10GiB") from None
    if value <= 0:
        raise ConfigError(f"bad {what} {text!r}: must be positive")
    return int(value)


def parse_date(text: str, *, what: str = "expiry") -> float:
    """``2027-01-31`` (end of that day, UTC) or ``2027-01-31T12:00:00+00:00``."""
    import datetime as dt

    try:
        if len(text.strip()) == 10:
            day = dt.date.fromisoformat(text.strip())
            when = dt.datetime.combine(day, dt.time(23, 59, 59), dt.UTC)
        else:
            when = dt.datetime.fromisoformat(text.strip())
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
    except ValueError:
        raise ConfigError(f"bad {what} {text!r}: expected YYYY-MM-DD") from None
    return when.timestamp()


def parse_mtproto_user(text: str) -> MTProtoUserSpec:
    """``NAME[:HEX32][:quota=10GiB,expires=2027-01-31,conns=8,ips=3]``."""
    name, _, rest = text.strip().partition(":")
    secret, _, extra = rest.partition(":")
    options: dict[str, str] = {}
    for item in filter(None, extra.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"bad MTProto user {name!r}: expected key=value, got {item!r}")
        options[key.strip()] = value.strip()
    return mtproto_user(name, secret or None, options)


def mtproto_user(name: str, secret: str | None, options: Mapping[str, Any]) -> MTProtoUserSpec:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise ConfigError(f"bad MTProto user name {name!r}: letters, digits, - _ . (1-64)")
    key = None
    if secret:
        from resistance.proto.faketls import parse_secret

        try:
            key = parse_secret(secret).key
        except ValueError as exc:
            raise ConfigError(f"MTProto user {name!r}: {exc}") from None
    unknown = set(options) - {"quota", "expires", "conns", "ips", "secret"}
    if unknown:
        raise ConfigError(f"MTProto user {name!r}: unknown option {sorted(unknown)[0]!r}")
    quota = parse_size(str(options["quota"]), what="quota") if "quota" in options else None
    expires = parse_date(str(options["expires"])) if "expires" in options else None
    counts: dict[str, int | None] = {"conns": None, "ips": None}
    for option in counts:
        if option in options:
            value = options[option]
            if isinstance(value, bool) or not str(value).isdigit() or int(value) < 1:
                raise ConfigError(
                    f"MTProto user {name!r}: {option} must be a positive whole number"
                )
            counts[option] = int(value)
    return MTProtoUserSpec(name, key, quota, expires, counts["conns"], counts["ips"])


def parse_mtproto_dc(text: str) -> tuple[int, Endpoint]:
    """``N=HOST:PORT``; N is a DC number (negative: media DC only)."""
    number, sep, address = text.partition("=")
    try:
        dc = int(number)
    except ValueError:
        dc = 0
    if not sep or dc == 0 or abs(dc) > 32767:
        raise ConfigError(f"bad MTProto DC {text!r}: expected N=HOST:PORT, e.g. 2=198.18.0.1:443")
    return dc, parse_endpoint(address, what=f"DC {dc} address", default_port=443)


def mtproto_settings(raw: Mapping[str, Any]) -> MTProtoSettings:
    """The MTProto part of the node's settings from its flat ``mtproto_*`` keys."""
    listen = tuple(
        parse_endpoint(v, what="MTProto listen address")
        for v in _as_list(raw.get("mtproto_listen", []), "mtproto_listen")
    )
    users: list[MTProtoUserSpec] = []
    table = raw.get("mtproto_users", {})
    if not isinstance(table, Mapping):
        raise ConfigError("mtproto_users: expected a table of NAME = SECRET or NAME = {...}")
    for name, value in table.items():
        if isinstance(value, str):
            users.append(mtproto_user(str(name), value or None, {}))
        elif isinstance(value, Mapping):
            users.append(mtproto_user(str(name), value.get("secret"), value))
        else:
            raise ConfigError(f"mtproto_users.{name}: expected a secret or a table")
    for text in _as_list(raw.get("mtproto_user", []), "mtproto_user"):
        users.append(parse_mtproto_user(text))
    names = [u.name for u in users]
    if len(set(names)) != len(names):
        raise ConfigError("MTProto user names must be unique")
    keys = [u.key for u in users if u.key is not None]
    if len(set(keys)) != len(keys):
        raise ConfigError("two MTProto users share a secret: each needs its own")
    domain = raw.get("mtproto_domain")
    if domain is not None:
        from resistance.proto.faketls import _check_domain

        try:
            _check_domain(str(domain))
        except ValueError as exc:
            raise ConfigError(f"mtproto_domain: {exc}") from None
        domain = str(domain).lower()
    front = raw.get("mtproto_front")
    dcs: dict[int, tuple[Endpoint, ...]] = {}
    for text in _as_list(raw.get("mtproto_dc", []), "mtproto_dc"):
        dc, endpoint = parse_mtproto_dc(text)
        dcs[dc] = (*dcs.get(dc, ()), endpoint)
    modes: frozenset[str] | None = None
    if raw.get("mtproto_modes"):
        items = [m.strip() for v in _as_list(raw["mtproto_modes"], "mtproto_modes")
                 for m in v.split(",") if m.strip()]  # fmt: skip
        bad = [m for m in items if m not in MTPROTO_MODES]
        if bad or not items:
            raise ConfigError(f"mtproto_modes: choose among classic, dd, ee (got {bad or items})")
        modes = frozenset(items)
        if "ee" in modes and domain is None:
            raise ConfigError("MTProto mode ee needs --mtproto-domain (the site it looks like)")
    fast = raw.get("mtproto_fast", True)
    return MTProtoSettings(
        listen=listen,
        users=tuple(users),
        domain=domain,
        front=parse_endpoint(str(front), what="MTProto front", default_port=443) if front else None,
        dcs=dcs,
        modes=modes,
        fast=_as_bool(fast, "mtproto_fast"),
    )
