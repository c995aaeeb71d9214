"""The lab's censor: nftables rules on the router namespace, each switchable alone.

``ip`` is Roskomnadzor's 2018 block: interval sets of blocked prefixes,
dropped (no reset, no ICMP) in both directions, so a client dialling a
blocked proxy sees a connect that hangs, the hard case for failover.
Prefixes come from the files ``resist registry import-blocklist`` reads,
merged into disjoint ranges and loaded with ``nft -f`` in one transaction
whatever the size; later blocks use ``auto-merge`` so they may overlap.

The rules of the censor people live under now (TSPU, 2023-2026):

* ``socks5``, ``openvpn`` (TCP): the flow's *first payload* (conntrack mark
  bit SEEN is set once one went by) starts with a SOCKS5 greeting (``05 N``
  and at least N method bytes, whatever follows: a client may send its
  credentials and request in the same write), or is an OpenVPN hard reset
  v2/v3 whose 2-byte length agrees with the segment.  nft cannot add header
  lengths, so a set lists every (IP length, TCP data offset, count) that fits
  (for SOCKS5 an interval of IP lengths: the greeting's up to the largest).
  A caught flow gets a mark and every later packet of it, both ways, is
  dropped.
* ``wireguard``, ``openvpn`` (UDP): a 148-byte handshake initiation
  (type 1 and three zero bytes), a reset as a flow's first datagram.  The
  flow goes into a set with a timeout (a dropped first packet leaves no
  conntrack entry to mark).
* ``sni``, ``hello``, ``active-probe``: need parsing, so
  :mod:`resistance.lab.censorwatch` decides (this kernel has no NFQUEUE):
  the ``hold`` chain drops a flow's first ClientHello until the verdict
  program has put the flow in ``released`` or a drop set; a hello cut over
  several segments holds its later segments too and hands them to the
  program over NFLOG, which puts the hello back together before deciding.
* ``freeze``: replies from listed prefixes past N bytes (conntrack's count,
  headers included) are dropped; the flow stays open, data stops.
* ``whitelist``: a packet passes only if one end is on the list.

Which rules are on and their lists live in CONFIG_DIR/NAMESPACE.json
(:class:`Settings`); :func:`enable` / :func:`disable` / :func:`report` are
the Python API (`resist lab censor on|off|status` call them).  The payload
rules see IPv4 only (the lab is IPv4).
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from resistance.lab import netns
from resistance.lab.errors import LabError
from resistance.paths import write_private
from resistance.registry.blocklist import V4_OFFSET, merge_ranges, parse_blocklist, parse_prefix

TABLE = "resist_censor"
#: Elements per ``add element`` statement when loading a large list.
CHUNK = 20_000


#: Every rule the censor knows, in the order its chains run.
RULES = (
    "whitelist", "ip", "active-probe", "socks5", "wireguard", "openvpn", "sni", "hello", "freeze",
)  # fmt: skip
#: Rules a Python verdict program (resistance.lab.censorwatch) decides.
WATCHED = frozenset({"sni", "hello", "active-probe"})
#: Rules whose lists are address prefixes.
PREFIX_RULES = frozenset({"ip", "freeze", "whitelist"})
#: Conntrack mark bits: a flow's first payload went by; a flow a rule condemned.
SEEN = 0x1
#: A flow whose first ClientHello segment waits for the verdict program: its later
#: segments (a hello cut in two) wait too, and go to it over NFLOG group NFLOG_GROUP,
#: while the server has sent nothing but its SYN-ACK (once a released hello reached
#: it, the client's next bytes pass even before ``released`` holds the flow).
HELD = 0x2
NFLOG_GROUP = 18
#: (UDP flows are kept in sets instead: a flow whose first packet is dropped
#: never gets a conntrack entry to carry a mark.)
MARKS = {"socks5": 0x100, "openvpn": 0x400, "freeze": 0x800}
DEFAULT_FREEZE_BYTES = 16 * 1024
#: How long a condemned flow stays in a drop set, and a probed address in its block set.
FLOW_TIMEOUT = 600
DEFAULT_PROBE_BLOCK = 3600
#: OpenVPN P_CONTROL_HARD_RESET_CLIENT_V2 (7) and _V3 (10), key id 0: opcode << 3.
OPENVPN_RESETS = (7 << 3, 10 << 3)
#: Lengths of an OpenVPN hard reset's payload (after TCP's 2-byte length): 14 bytes
#: bare, up to the size of one with a tls-crypt-v2 client key.
OPENVPN_LENGTHS = range(14, 1300)
FLOW = "ip saddr . tcp sport . ip daddr . tcp dport"
UFLOW = "ip saddr . udp sport . ip daddr . udp dport"
UBACK = "ip daddr . udp dport . ip saddr . udp sport"
BACK = "ip daddr . tcp dport . ip saddr . tcp sport"


def counter_name(rule: str, what: str) -> str:
    return f"{rule.replace('-', '_')}_{what}"


def _tcp_doffs() -> range:
    """TCP data offsets (header length / 4) a segment may have: 20 to 60 bytes."""
    return range(5, 16)


def socks5_shapes() -> list[str]:
    """``ip length . tcp byte 12 . method count`` of every segment whose payload starts
    with a SOCKS5 greeting: 05, N in 1..255, then at least N methods (a client's
    credentials and request may follow in the same segment).  nft cannot add the IP
    header, TCP header and N, so the set lists every combination, the IP length as
    an interval from the bare greeting's up to the largest packet."""
    return [
        f"{20 + 4 * d + 2 + n}-65535 . {d << 4:#x} . {n}"
        for d in _tcp_doffs()
        for n in range(1, 256)
    ]


def openvpn_tcp_shapes() -> list[str]:
    """``ip length . tcp byte 12 . length prefix`` of a segment that holds exactly one
    OpenVPN packet behind its 2-byte length (the length agrees with the segment)."""
    return [
        f"{20 + 4 * d + 2 + n} . {d << 4:#x} . {n}" for d in _tcp_doffs() for n in OPENVPN_LENGTHS
    ]


def _chunks(items: list[str], size: int = 2000) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def ruleset() -> str:
    """The censor's table: the sets, counters and one chain per rule.  The ``forward``
    chain jumps to the chains of the rules that are on (see :func:`forward_chain`);
    a fresh table has only ``ip`` on, as the lab always had."""
    counters = "".join(
        f"    counter {counter_name(rule, what)} {{ }}\n"
        for rule in RULES
        for what in ("caught", "dropped")
        if rule != "ip"
    )
    flows = "type ipv4_addr . inet_service . ipv4_addr . inet_service; flags timeout; "
    flows += f"timeout {FLOW_TIMEOUT}s;"
    return f"""table inet {TABLE} {{
    set blocked4 {{ type ipv4_addr; flags interval; auto-merge; }}
    set blocked6 {{ type ipv6_addr; flags interval; auto-merge; }}
    set freeze4 {{ type ipv4_addr; flags interval; auto-merge; }}
    set white4 {{ type ipv4_addr; flags interval; auto-merge; }}
    set probed4 {{ type ipv4_addr; flags timeout; }}
    set released {{ {flows} }}
    set flows_sni {{ {flows} }}
    set udp_wireguard {{ {flows} flags dynamic; }}
    set udp_openvpn {{ {flows} flags dynamic; }}
    set flows_hello {{ {flows} }}
    set socks5_shapes {{ typeof ip length . @th,96,8 . @ih,8,8; flags interval; }}
    set openvpn_shapes {{ typeof ip length . @th,96,8 . @ih,0,16; }}
{counters}    counter hold_held {{ }}
    chain rule_ip {{
        ip daddr @blocked4 counter drop
        ip saddr @blocked4 counter drop
        ip6 daddr @blocked6 counter drop
        ip6 saddr @blocked6 counter drop
    }}
    chain rule_whitelist {{
        ip daddr != @white4 ip saddr != @white4 counter name whitelist_dropped drop
        meta nfproto ipv6 counter name whitelist_dropped drop
    }}
    chain rule_active-probe {{
        ip daddr @probed4 counter name active_probe_dropped drop
        ip saddr @probed4 counter name active_probe_dropped drop
    }}
    chain rule_socks5 {{
        ct mark & {MARKS["socks5"]:#x} == {MARKS["socks5"]:#x} counter name socks5_dropped drop
        meta l4proto tcp ct direction original ct mark & {SEEN:#x} == 0 ip hdrlength 5 @ih,0,8 0x05 ip length . @th,96,8 . @ih,8,8 @socks5_shapes ct mark set ct mark | {MARKS["socks5"]:#x} counter name socks5_caught drop
    }}
    chain rule_wireguard {{
        {UFLOW} @udp_wireguard counter name wireguard_dropped drop
        {UBACK} @udp_wireguard counter name wireguard_dropped drop
        udp length 156 @ih,0,32 0x01000000 add @udp_wireguard {{ {UFLOW} }} counter name wireguard_caught drop
    }}
    chain rule_openvpn {{
        ct mark & {MARKS["openvpn"]:#x} == {MARKS["openvpn"]:#x} counter name openvpn_dropped drop
        {UFLOW} @udp_openvpn counter name openvpn_dropped drop
        {UBACK} @udp_openvpn counter name openvpn_dropped drop
        meta l4proto udp ct state new udp length >= {8 + OPENVPN_LENGTHS.start} @ih,0,8 {{ {OPENVPN_RESETS[0]:#x}, {OPENVPN_RESETS[1]:#x} }} add @udp_openvpn {{ {UFLOW} }} counter name openvpn_caught drop
        meta l4proto tcp ct direction original ct mark & {SEEN:#x} == 0 ip hdrlength 5 @ih,16,8 {{ {OPENVPN_RESETS[0]:#x}, {OPENVPN_RESETS[1]:#x} }} ip length . @th,96,8 . @ih,0,16 @openvpn_shapes ct mark set ct mark | {MARKS["openvpn"]:#x} counter name openvpn_caught drop
    }}
    chain rule_sni {{
        ct mark & {SEEN:#x} == 0 {FLOW} @flows_sni counter name sni_dropped drop
        ct mark & {SEEN:#x} == 0 {BACK} @flows_sni counter name sni_dropped drop
    }}
    chain rule_hello {{
        ct mark & {SEEN:#x} == 0 {FLOW} @flows_hello counter name hello_dropped drop
        ct mark & {SEEN:#x} == 0 {BACK} @flows_hello counter name hello_dropped drop
    }}
    chain hold {{
        meta l4proto tcp ct direction original ct mark & {SEEN:#x} == 0 @ih,0,8 0x16 @ih,40,8 0x01 {FLOW} != @released ct mark set ct mark | {HELD:#x} counter name hold_held drop
        meta l4proto tcp ct direction original ct mark & {SEEN | HELD:#x} == {HELD:#x} ct reply packets < 2 @ih,0,8 0-255 {FLOW} != @released log group {NFLOG_GROUP} counter name hold_held drop
    }}
    chain rule_freeze {{
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
    }}
    chain output {{
        type filter hook output priority filter; policy accept;
        meta l4proto tcp ct direction original @ih,0,8 0x16 @ih,40,8 0x01 ct mark set ct mark | {SEEN:#x}
    }}
}}
"""  # noqa: E501


def shape_statements() -> Iterator[str]:
    for name, shapes in (
        ("socks5_shapes", socks5_shapes()),
        ("openvpn_shapes", openvpn_tcp_shapes()),
    ):
        for chunk in _chunks(shapes):
            yield f"add element inet {TABLE} {name} {{ {', '.join(chunk)} }}\n"


def freeze_chain(limit: int) -> str:
    """The freeze rule for a byte limit: replies past ``limit`` bytes (counted as
    conntrack does, IP headers included) from a listed prefix are dropped; the
    first such packet of a flow counts the flow as caught."""
    mark = f"{MARKS['freeze']:#x}"
    match = f"meta l4proto tcp ct direction reply ip saddr @freeze4 ct reply bytes > {limit}"
    return (
        f"flush chain inet {TABLE} rule_freeze\n"
        f"add rule inet {TABLE} rule_freeze {match} ct mark & {mark} == 0 "
        f"ct mark set ct mark | {mark} counter name freeze_caught\n"
        f"add rule inet {TABLE} rule_freeze {match} counter name freeze_dropped drop\n"
    )


def forward_chain(on: Iterable[str]) -> str:
    """Statements that make ``forward`` jump to the chains of the rules that are on.
    With a watched rule on, TLS ClientHellos wait in ``hold`` until the verdict
    program releases or condemns their flow.  Last, a flow's first payload in the
    original direction marks it, so the first-payload rules look only at that."""
    enabled = set(on)
    lines = [f"flush chain inet {TABLE} forward\n"]
    for rule in RULES:
        if rule in enabled:
            lines.append(f"add rule inet {TABLE} forward jump rule_{rule}\n")
        if rule == "hello" and enabled & WATCHED:
            lines.append(f"add rule inet {TABLE} forward jump hold\n")
    lines.append(
        f"add rule inet {TABLE} forward meta l4proto tcp ct direction original "
        f"ct mark & {SEEN:#x} == 0 @ih,0,8 0-255 ct mark set ct mark | {SEEN:#x}\n"
    )
    return "".join(lines)


def _element(first: int, last: int) -> tuple[str, str]:
    """``(set, element)`` for one merged range, in nft's syntax."""
    if first >= V4_OFFSET:
        a = ipaddress.IPv4Address(first - V4_OFFSET)
        b = ipaddress.IPv4Address(last - V4_OFFSET)
        name = "blocked4"
    else:
        a6, b6 = ipaddress.IPv6Address(first), ipaddress.IPv6Address(last)
        return "blocked6", (str(a6) if a6 == b6 else f"{a6}-{b6}")
    return name, (str(a) if a == b else f"{a}-{b}")


def element_statements(ranges: Iterable[tuple[int, int]]) -> Iterator[str]:
    """``add element`` statements for these ranges, merged, at most CHUNK per statement."""
    return _statements(merge_ranges(ranges))


def _statements(merged: Iterable[tuple[int, int]]) -> Iterator[str]:
    pending: dict[str, list[str]] = {"blocked4": [], "blocked6": []}
    for first, last in merged:
        name, element = _element(first, last)
        batch = pending[name]
        batch.append(element)
        if len(batch) >= CHUNK:
            yield f"add element inet {TABLE} {name} {{ {', '.join(batch)} }}\n"
            batch.clear()
    for name, batch in pending.items():
        if batch:
            yield f"add element inet {TABLE} {name} {{ {', '.join(batch)} }}\n"


def ranges_of(prefixes: Iterable[str]) -> list[tuple[int, int]]:
    """Parse addresses/prefixes given on the command line; one bad one is an error."""
    found = []
    for text in prefixes:
        try:
            found.append(parse_prefix(text))
        except ValueError as exc:
            raise LabError(f"cannot block {text[:60]!r}: {exc}") from None
    return found


def ranges_from_file(data: bytes, source: str) -> tuple[list[tuple[int, int]], int, int]:
    """(ranges, prefixes read, bad lines skipped) from a blocklist file's bytes."""
    ranges, report = parse_blocklist(data, source)
    if report.prefixes == 0:
        raise LabError(f"{source} holds no address or prefix ({report.skipped} bad lines)")
    return ranges, report.prefixes, report.skipped


# --- the rules' settings, kept beside the namespace ---------------------------------------

#: Where each censor's settings and its verdict program's counts live (root's /run:
#: gone at reboot, like the namespaces they describe).
CONFIG_DIR = Path(os.environ.get("RESIST_CENSOR_DIR", "/run/resistance-censor"))
WATCHER_READY = 20.0


@dataclass
class Settings:
    """What is in force: the rules that are on and each rule's lists and limits."""

    on: list[str] = field(default_factory=lambda: ["ip"])
    sni: list[str] = field(default_factory=list)
    fingerprints: list[str] = field(default_factory=list)
    freeze_prefixes: list[str] = field(default_factory=list)
    freeze_bytes: int = DEFAULT_FREEZE_BYTES
    whitelist: list[str] = field(default_factory=list)
    probe_block_seconds: int = DEFAULT_PROBE_BLOCK
    watcher: dict[str, int] | None = None


def settings_path(namespace: str) -> Path:
    return CONFIG_DIR / f"{namespace}.json"


def stats_path(namespace: str) -> Path:
    return CONFIG_DIR / f"{namespace}.stats.json"


def log_path(namespace: str) -> Path:
    return CONFIG_DIR / f"{namespace}.log"


def load_settings(namespace: str) -> Settings:
    try:
        raw = json.loads(settings_path(namespace).read_text())
    except FileNotFoundError:
        return Settings()
    except (OSError, ValueError) as exc:
        raise LabError(f"cannot read {settings_path(namespace)}: {exc}") from None
    known = {f.name for f in fields(Settings)}
    return Settings(**{k: v for k, v in raw.items() if k in known})


def save_settings(namespace: str, settings: Settings) -> None:
    CONFIG_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(settings_path(namespace), json.dumps(asdict(settings), indent=1))


def forget(namespace: str) -> None:
    """Remove a censor's settings, counts and verdict log (its namespace is gone)."""
    for path in (settings_path(namespace), stats_path(namespace), log_path(namespace)):
        path.unlink(missing_ok=True)


def install(namespace: str) -> None:
    """Load the censor's table (only ``ip`` on) and start from fresh settings; the
    project's own client's hello fingerprints (with and without SNI) are on the
    ``hello`` list from the start."""
    from resistance.lab.dpi import own_client_fingerprints

    script = ruleset() + "".join(shape_statements())
    script += freeze_chain(DEFAULT_FREEZE_BYTES) + forward_chain(["ip"])
    netns.in_ns(namespace, "nft", "-f", "-", input=script)
    # ct bytes (the freeze rule) count only with conntrack accounting on
    netns.in_ns(namespace, "sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1")
    forget(namespace)
    save_settings(namespace, Settings(fingerprints=own_client_fingerprints()))


def expand(rules: Iterable[str]) -> list[str]:
    """Rule names as given (``all`` is every rule); an unknown one is an error."""
    found: list[str] = []
    for rule in rules:
        if rule == "all":
            found += [r for r in RULES if r not in found]
        elif rule in RULES:
            if rule not in found:
                found.append(rule)
        else:
            raise LabError(f"no censor rule {rule!r} (rules: {', '.join(RULES)}, all)")
    return found


def _names(values: Iterable[str]) -> list[str]:
    names = []
    for value in values:
        name = value.strip().lower().rstrip(".")
        if not name or len(name) > 253 or not name.isascii() or " " in name:
            raise LabError(f"not a server name: {value[:60]!r}")
        names.append(name)
    return names


def _fingerprints(values: Iterable[str]) -> list[str]:
    found = []
    for value in values:
        v = value.strip().lower()
        ja3 = len(v) == 32 and all(c in "0123456789abcdef" for c in v)
        ja4 = len(v) == 36 and v[0] in "tqd" and v[10] == "_" and v[23] == "_"
        if not (ja3 or ja4):
            raise LabError(f"not a JA3 (32 hex digits) or JA4 fingerprint: {value[:60]!r}")
        found.append(v)
    return found


def _prefixes(values: Iterable[str]) -> list[str]:
    found = []
    for value in values:
        try:
            net = ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            raise LabError(f"not an address or prefix: {value[:60]!r}") from None
        if net.version != 4:
            raise LabError(f"the censor's payload rules are IPv4 only: {value[:60]!r}")
        found.append(str(net))
    return found


def _merge(old: list[str], new: list[str], replace: bool) -> list[str]:
    return list(new) if replace else old + [v for v in new if v not in old]


def configure(
    settings: Settings,
    *,
    sni: Iterable[str] = (),
    fingerprints: Iterable[str] = (),
    freeze_prefixes: Iterable[str] = (),
    freeze_bytes: int | None = None,
    whitelist: Iterable[str] = (),
    probe_block_seconds: int | None = None,
    replace: bool = False,
) -> Settings:
    """The settings with these lists added (or, with ``replace``, put instead of the
    lists given).  Every value is checked first: a bad one changes nothing."""
    names, prints = _names(sni), _fingerprints(fingerprints)
    frozen, white = _prefixes(freeze_prefixes), _prefixes(whitelist)
    if freeze_bytes is not None and not 1 <= freeze_bytes <= 1 << 40:
        raise LabError("the freeze size must be between 1 byte and 1 TiB")
    if probe_block_seconds is not None and not 1 <= probe_block_seconds <= 86400 * 30:
        raise LabError("a probed address is blocked for 1 s to 30 days")
    new = Settings(**asdict(settings))
    if names or (replace and sni != ()):
        new.sni = _merge(new.sni, names, replace)
    if prints:
        new.fingerprints = _merge(new.fingerprints, prints, replace)
    if frozen:
        new.freeze_prefixes = _merge(new.freeze_prefixes, frozen, replace)
    if white:
        new.whitelist = _merge(new.whitelist, white, replace)
    if freeze_bytes is not None:
        new.freeze_bytes = freeze_bytes
    if probe_block_seconds is not None:
        new.probe_block_seconds = probe_block_seconds
    return new


def _set_script(name: str, prefixes: list[str]) -> str:
    script = f"flush set inet {TABLE} {name}\n"
    if prefixes:
        script += f"add element inet {TABLE} {name} {{ {', '.join(prefixes)} }}\n"
    return script


def apply(namespace: str, settings: Settings) -> Settings:
    """Make the censor in ``namespace`` do what ``settings`` say, in one nft
    transaction; the verdict program runs exactly while a watched rule is on."""
    if settings.watcher and not _watcher_alive(settings.watcher):
        settings.watcher = None
    watched = WATCHED & set(settings.on)
    if watched and settings.watcher is None:
        save_settings(namespace, settings)  # the program reads its lists from there
        settings.watcher = _start_watcher(namespace)
    script = _set_script("freeze4", settings.freeze_prefixes)
    script += _set_script("white4", settings.whitelist)
    script += freeze_chain(settings.freeze_bytes) + forward_chain(settings.on)
    netns.in_ns(namespace, "nft", "-f", "-", input=script)
    if not watched and settings.watcher is not None:
        _stop_watcher(settings.watcher)
        settings.watcher = None
    save_settings(namespace, settings)
    return settings


def enable(namespace: str, *rules: str, replace: bool = False, **lists: Any) -> Settings:
    """Switch rules on (``all`` is every rule), adding the lists and limits given:
    ``sni``, ``fingerprints``, ``freeze_prefixes``, ``freeze_bytes``, ``whitelist``,
    ``probe_block_seconds``.  The Python API the probes' tests drive the lab with."""
    names = expand(rules)
    settings = configure(load_settings(namespace), replace=replace, **lists)
    settings.on = [r for r in RULES if r in settings.on or r in names]
    return apply(namespace, settings)


def disable(namespace: str, *rules: str) -> Settings:
    names = set(expand(rules))
    settings = load_settings(namespace)
    settings.on = [r for r in settings.on if r not in names]
    return apply(namespace, settings)


def _watcher_alive(watcher: dict[str, int]) -> bool:
    return netns.process_start_ticks(watcher["pid"]) == watcher["ticks"]


def _start_watcher(namespace: str) -> dict[str, int]:
    import subprocess
    import sys
    import time

    CONFIG_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    stats_path(namespace).unlink(missing_ok=True)
    argv = [sys.executable, "-m", "resistance", "lab", "censor", "watch", "--namespace", namespace]
    with log_path(namespace).open("ab") as log:
        child = subprocess.Popen(
            [*netns.exec_prefix(namespace), *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    watcher = {"pid": child.pid, "ticks": netns.process_start_ticks(child.pid) or 0}
    deadline = time.monotonic() + WATCHER_READY
    while time.monotonic() < deadline:
        if child.poll() is not None:
            lines = log_path(namespace).read_text(errors="replace").strip().splitlines()
            raise LabError(f"the censor's verdict program exited: {lines[-1] if lines else '?'}")
        if read_stats(namespace).get("pid") == child.pid:
            return watcher
        time.sleep(0.05)
    _stop_watcher(watcher)
    raise LabError(f"the censor's verdict program was not ready in {WATCHER_READY:g} s")


def _stop_watcher(watcher: dict[str, int]) -> None:
    import signal
    import time

    if not _watcher_alive(watcher):
        return
    os.kill(watcher["pid"], signal.SIGTERM)
    deadline = time.monotonic() + 5.0
    while _watcher_alive(watcher) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _watcher_alive(watcher):
        os.kill(watcher["pid"], signal.SIGKILL)


def read_stats(namespace: str) -> dict[str, Any]:
    try:
        data = json.loads(stats_path(namespace).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def report(namespace: str) -> dict[str, Any]:
    """What is in force and what each rule caught: flows (or hellos, or probed
    servers) caught and packets dropped, per rule, plus every list and limit."""
    settings = load_settings(namespace)
    text = netns.in_ns(namespace, "nft", "-j", "list", "counters", "table", "inet", TABLE)
    counters: dict[str, int] = {}
    for item in json.loads(text).get("nftables", []):
        if "counter" in item:
            counters[item["counter"]["name"]] = int(item["counter"].get("packets", 0))
    stats = read_stats(namespace)
    caught = stats.get("caught", {})
    rules: dict[str, dict[str, Any]] = {}
    for rule in RULES:
        if rule == "ip":
            ip = blocked(namespace)["dropped_packets"]
            rules[rule] = {"on": rule in settings.on, "caught": ip, "dropped": ip}
            continue
        found = counters.get(counter_name(rule, "caught"), 0) + int(caught.get(rule, 0))
        rules[rule] = {
            "on": rule in settings.on,
            "caught": found,
            "dropped": counters.get(counter_name(rule, "dropped"), 0),
        }
    watcher = settings.watcher
    return {
        "rules": rules,
        "settings": asdict(settings),
        "held": counters.get("hold_held", 0),
        "watcher": bool(watcher and _watcher_alive(watcher)),
        "probes": stats.get("probes", []),
    }


def block(namespace: str, ranges: Iterable[tuple[int, int]]) -> int:
    """Add ranges to the blocklist in one nft transaction (all or nothing); returns
    how many ranges they merged into (a million-line dump is sorted once)."""
    merged = merge_ranges(ranges)
    script = "".join(_statements(merged))
    if script:
        netns.in_ns(namespace, "nft", "-f", "-", input=script, timeout=600)
    return len(merged)


def unblock(namespace: str, ranges: Iterable[tuple[int, int]]) -> None:
    script = "".join(
        s.replace("add element", "delete element", 1) for s in element_statements(ranges)
    )
    if script:
        netns.in_ns(namespace, "nft", "-f", "-", input=script)


def blocked(namespace: str, *, elements: bool = False) -> dict[str, int]:
    """Packets the censor dropped and, with ``elements``, how many ranges each set holds.

    Counting elements makes nft print every one of them (two minutes for a
    million), so by default the sets are listed tersely, without contents.
    """
    cmd = ["nft", "-j", "list", "table", "inet", TABLE]
    if not elements:
        cmd.insert(1, "-t")
    text = netns.in_ns(namespace, *cmd, timeout=600)
    counts = {"dropped_packets": 0}
    for item in json.loads(text).get("nftables", []):
        if "set" in item and elements:
            s = item["set"]
            counts[s["name"]] = len(s.get("elem", []))
        elif "rule" in item and item["rule"].get("chain") == "rule_ip":
            for expr in item["rule"].get("expr", []):
                if isinstance(expr.get("counter"), dict):
                    counts["dropped_packets"] += int(expr["counter"].get("packets", 0))
    return counts
