"""The censor's verdict program: reads held ClientHellos, decides, tells nftables.

This kernel has no NFQUEUE, so the censor cannot hand a packet to user space
and wait for a verdict.  Instead, while a watched rule (``sni``, ``hello``,
``active-probe``) is on, nftables drops the first segment of every TLS flow
that starts with a ClientHello (chain ``hold``) unless the flow is in the
``released`` set; this program sees the same segment on an AF_PACKET socket
(which taps packets before netfilter), parses it with :mod:`resistance.lab.dpi`
and puts the flow either in a drop set (``flows_sni``, ``flows_hello``) or in
``released``.  A released hello is sent on at once from a raw IP socket (its
own header, so the server sees the client's address; the table's output
chain marks the flow's first payload seen); should that fail, the client's
TCP retransmits it ~0.2 s later and nftables now knows the verdict.  Set
elements go through one long-lived ``nft -i``.  Exact,
with no race between the first packet and the decision.

Active probing: a ClientHello without a server name (browsers always send
one; a proxy dialled by address does not) makes the censor connect to the
server itself, from its own namespace: a browser-like TLS handshake with an
HTTP request, a replay of the client's hello, and random bytes.  If the
first does not get an HTTP answer, the server is not an ordinary website and
its address goes into ``probed4`` for ``probe_block_seconds``.  Probes run in
at most PROBE_WORKERS threads, each with timeouts, once per server per
PROBE_TTL.

A cut hello (its record longer than the first segment) is put back
together before the verdict (:class:`~resistance.lab.dpi.SplitHello`): the
``hold`` chain holds the flow's later segments as well and logs them to
NFLOG group ``censor.NFLOG_GROUP``, which this program reads; once the
record is whole (or bounded: MAX_SPLIT_SEGMENTS segments, SPLIT_SECONDS) it
is judged like any hello, and a released one is sent on segment by segment.
At most MAX_SPLIT flows wait so at once; a flow beyond that is judged on
its first segment, as before.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from resistance.lab import censor, dpi
from resistance.lab.errors import LabError
from resistance.paths import write_private

ETH_P_IP = 0x0800
SO_ATTACH_FILTER = 26
PACKET_OUTGOING = 4
PROBE_WORKERS = 4
PROBE_TIMEOUT = 3.0
PROBE_TTL = 300.0
MAX_PROBES_KEPT = 50
#: Flows decided recently (a retransmission seen again is not judged twice).
DECIDED_MAX = 10_000
#: Cut hellos being put back together at once, and how long one may wait for its rest.
MAX_SPLIT = 256
SPLIT_SECONDS = 2.0

# nfnetlink_log (linux/netfilter/nfnetlink_log.h)
NETLINK_NETFILTER = 12
_NFNL_SUBSYS_ULOG = 4
_NFULNL_MSG_PACKET = 0
_NFULNL_MSG_CONFIG = 1
_NFULA_CFG_CMD = 1
_NFULA_CFG_MODE = 2
_NFULNL_CFG_CMD_BIND = 1
_NFULNL_COPY_PACKET = 2
_NFULA_PAYLOAD = 9
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2


def _attr(kind: int, value: bytes) -> bytes:
    data = struct.pack("HH", 4 + len(value), kind) + value
    return data + bytes(-len(data) % 4)


def _config(group: int, *attrs: bytes) -> bytes:
    body = struct.pack("BBH", socket.AF_UNSPEC, 0, socket.htons(group)) + b"".join(attrs)
    kind = (_NFNL_SUBSYS_ULOG << 8) | _NFULNL_MSG_CONFIG
    return struct.pack("IHHII", 16 + len(body), kind, _NLM_F_REQUEST, 0, 0) + body


def open_nflog(group: int) -> socket.socket:
    """A netlink socket bound to NFLOG ``group``, copying whole packets."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.bind((0, 0))
    sock.send(_config(group, _attr(_NFULA_CFG_CMD, bytes([_NFULNL_CFG_CMD_BIND]))))
    mode = struct.pack("!IBB", 0xFFFF, _NFULNL_COPY_PACKET, 0)
    sock.send(_config(group, _attr(_NFULA_CFG_MODE, mode)))
    return sock


def nflog_packets(data: bytes) -> list[bytes]:
    """The IP packets in one read from an NFLOG socket (malformed messages skipped)."""
    packets = []
    at = 0
    while at + 16 <= len(data):
        length, kind = struct.unpack_from("IH", data, at)
        if length < 16 or at + length > len(data):
            break
        if kind == (_NFNL_SUBSYS_ULOG << 8) | _NFULNL_MSG_PACKET:
            pos, end = at + 20, at + length
            while pos + 4 <= end:
                alen, atype = struct.unpack_from("HH", data, pos)
                if alen < 4 or pos + alen > end:
                    break
                if atype & 0x3FFF == _NFULA_PAYLOAD:
                    packets.append(data[pos + 4 : pos + alen])
                pos += (alen + 3) & ~3
        at += (length + 3) & ~3
    return packets


# Classic BPF: IPv4, TCP, not a fragment, payload[0] == 0x16 and payload[5] == 0x01.
_FILTER = [
    (0x28, 0, 0, 12), (0x15, 0, 15, 0x0800),
    (0x30, 0, 0, 23), (0x15, 0, 13, 6),
    (0x28, 0, 0, 20), (0x45, 11, 0, 0x1FFF),
    (0xB1, 0, 0, 14),
    (0x50, 0, 0, 26), (0x54, 0, 0, 0xF0), (0x74, 0, 0, 2), (0x0C, 0, 0, 0), (0x07, 0, 0, 0),
    (0x50, 0, 0, 14), (0x15, 0, 3, 0x16),
    (0x50, 0, 0, 19), (0x15, 0, 1, 0x01),
    (0x06, 0, 0, 0xFFFF), (0x06, 0, 0, 0),
]  # fmt: skip

BROWSER_REQUEST = (
    "GET / HTTP/1.1\r\nHost: {host}\r\n"
    "User-Agent: Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) "
    "Gecko/20100101 Firefox/128.0\r\n"
    "Accept: text/html,application/xhtml+xml,*/*;q=0.8\r\nConnection: close\r\n\r\n"
)


def attach_filter(sock: socket.socket) -> None:
    code = b"".join(struct.pack("HBBI", *insn) for insn in _FILTER)
    buf = ctypes.create_string_buffer(code)
    prog = struct.pack("HL", len(_FILTER), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)


def server_name_listed(name: str | None, listed: list[str]) -> bool:
    """A name is blocked if it or a domain it is under is on the list."""
    if not name:
        return False
    return any(name == entry or name.endswith("." + entry) for entry in listed)


def _answer(data: bytes | None) -> str:
    if data is None:
        return "silent"
    if not data:
        return "closed"
    return f"{len(data)} bytes: {data[:16].hex()}"


def _exchange(addr: str, port: int, payload: bytes) -> bytes | None:
    """Send ``payload`` on a fresh TCP connection; what came back (None: nothing in time)."""
    with socket.create_connection((addr, port), timeout=PROBE_TIMEOUT) as s:
        s.sendall(payload)
        try:
            return s.recv(4096)
        except TimeoutError:
            return None
        except ConnectionResetError:
            return b""


def browser_probe(addr: str, port: int, server_name: str | None) -> tuple[bool, str]:
    """A browser-like TLS handshake and ``GET /``: (an ordinary website?, what was seen)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        with (
            socket.create_connection((addr, port), timeout=PROBE_TIMEOUT) as raw,
            ctx.wrap_socket(raw, server_hostname=server_name or None) as tls,
        ):
            tls.sendall(BROWSER_REQUEST.format(host=server_name or addr).encode())
            data = b""
            while len(data) < 4096 and b"\r\n" not in data:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                data += chunk
    except (OSError, ssl.SSLError) as exc:
        return False, f"no HTTPS answer: {type(exc).__name__}"
    status = data.split(b"\r\n", 1)[0][:60].decode("latin-1")
    return data.startswith(b"HTTP/1."), status or "no HTTP answer"


class Watcher:
    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.caught: dict[str, int] = {"sni": 0, "hello": 0, "active-probe": 0}
        self.judged = 0
        self.probes: list[dict[str, Any]] = []
        self.probed: dict[tuple[str, int], float] = {}
        self.decided: dict[tuple[str, int, str, int], float] = {}
        #: Cut hellos waiting for their rest: flow -> (the hello so far, give-up time).
        self.split: dict[tuple[str, int, str, int], tuple[dpi.SplitHello, float]] = {}
        self.lock = threading.Lock()
        #: Held while the stats file is written (see :meth:`write_stats`).
        self.stats_lock = threading.Lock()
        self.pool = ThreadPoolExecutor(PROBE_WORKERS, thread_name_prefix="probe")
        self.settings = censor.Settings()
        self.settings_mtime = -1.0
        self.stop = threading.Event()
        #: IPPROTO_RAW: the packet's own IP header (the client's source address) is
        #: sent; opened at the first released hello.
        self.raw: socket.socket | None = None
        self.nft_lock = threading.Lock()
        self.nft_proc: subprocess.Popen[str] | None = None

    def reload(self) -> censor.Settings:
        try:
            mtime = censor.settings_path(self.namespace).stat().st_mtime
        except OSError:
            return self.settings
        if mtime != self.settings_mtime:
            self.settings = censor.load_settings(self.namespace)
            self.settings_mtime = mtime
        return self.settings

    def write_stats(self) -> None:
        """The counts and the probes' records to the stats file, as they are now.

        The main thread (after each verdict) and the probe threads all write it:
        one at a time, each its own fresh snapshot.  Unserialised, two writers
        shared the temporary file (the second's rename found it gone: an
        exception that ended the program, after which every held hello stayed
        dropped), and a snapshot taken before a probe's record could be written
        after it, losing the record."""
        with self.stats_lock:
            with self.lock:
                stats = {
                    "pid": os.getpid(),
                    "judged": self.judged,
                    "caught": dict(self.caught),
                    "probes": list(self.probes),
                }
            write_private(censor.stats_path(self.namespace), json.dumps(stats, indent=1))

    def nft(self, statement: str) -> None:
        """One nft statement, through a long-lived ``nft -i`` (a fresh nft per verdict
        costs ~10 ms; interactive nft applies each line as it comes)."""
        with self.nft_lock:
            for _ in range(2):
                if self.nft_proc is None or self.nft_proc.poll() is not None:
                    self.nft_proc = subprocess.Popen(
                        ["nft", "-i"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
                    )
                assert self.nft_proc.stdin is not None
                try:
                    self.nft_proc.stdin.write(statement + "\n")
                    self.nft_proc.stdin.flush()
                    return
                except OSError as exc:
                    print(f"nft went away ({exc}); starting it again", flush=True)
                    self.nft_proc = None

    def add_flow(self, set_name: str, flow: tuple[str, int, str, int]) -> None:
        src, sport, dst, dport = flow
        self.nft(
            f"add element inet {censor.TABLE} {set_name} {{ {src} . {sport} . {dst} . {dport} }}"
        )

    def reinject(self, frame: bytes, dst: str) -> None:
        """Send a released hello on towards the server from here, instead of letting
        the client wait ~0.2 s to retransmit it (the output chain marks it seen)."""
        total = int.from_bytes(frame[16:18], "big")
        try:
            if self.raw is None:
                self.raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            self.raw.sendto(dpi.with_tcp_checksum(frame[14 : 14 + total]), (dst, 0))
        except OSError as exc:
            print(f"cannot pass on the hello to {dst}: {exc}", flush=True)

    def judge(self, seg: dpi.TcpSegment, frame: bytes) -> None:
        now = time.monotonic()
        if self.decided.get(seg.flow, 0.0) > now or seg.flow in self.split:
            return  # decided, or a retransmission of a cut hello's first segment
        try:
            hello = dpi.parse_client_hello(seg.payload)
        except dpi.HelloError:
            self.decide(seg, [frame], None)
            return
        if not hello.complete and len(self.split) < MAX_SPLIT:
            split = dpi.SplitHello(seg, frame)
            if not split.full:  # (a record that is whole holds all this hello will show)
                self.split[seg.flow] = (split, now + SPLIT_SECONDS)
                return
        self.decide(seg, [frame], hello)

    def more(self, seg: dpi.TcpSegment, frame: bytes) -> None:
        """A later segment of a held flow (from NFLOG): the rest of a cut hello."""
        waiting = self.split.get(seg.flow)
        if waiting is None or not waiting[0].add(seg, frame):
            return
        if waiting[0].full:
            self.finish(seg.flow)

    def finish(self, flow: tuple[str, int, str, int]) -> None:
        split, _ = self.split.pop(flow)
        first = dpi.TcpSegment(*flow, bytes(split.data), split.first_seq)
        try:
            hello = split.hello()
        except dpi.HelloError:
            self.decide(first, split.frames, None)
            return
        self.decide(first, split.frames, hello)

    def expire(self) -> None:
        """Cut hellos whose rest did not come in time: judged on what came."""
        now = time.monotonic()
        for flow in [f for f, (_, until) in self.split.items() if until <= now]:
            self.finish(flow)

    def decide(
        self, seg: dpi.TcpSegment, frames: list[bytes], hello: dpi.ClientHello | None
    ) -> None:
        """Release or condemn ``seg``'s flow (``hello`` None: not a hello, released)."""
        now = time.monotonic()
        if len(self.decided) > DECIDED_MAX:
            self.decided = {k: v for k, v in self.decided.items() if v > now}
            if len(self.decided) > DECIDED_MAX:  # the newest half is kept
                self.decided = dict(list(self.decided.items())[DECIDED_MAX // 2 :])
        # a condemned flow's segments come again (the kernel retransmits them):
        # each flow is judged and counted once while nftables holds its verdict
        self.decided[seg.flow] = now + censor.FLOW_TIMEOUT
        if hello is None:
            for frame in frames:
                self.reinject(frame, seg.dst)
            self.add_flow("released", seg.flow)
            return
        settings = self.reload()
        on = set(settings.on)
        verdict = "released"
        if "sni" in on and server_name_listed(hello.server_name, settings.sni):
            verdict = "flows_sni"
        elif "hello" in on and hello.fingerprints() & set(settings.fingerprints):
            verdict = "flows_hello"
        if verdict == "released":
            for frame in frames:
                self.reinject(frame, seg.dst)
        self.add_flow(verdict, seg.flow)
        print(
            f"{seg.src}:{seg.sport} > {seg.dst}:{seg.dport} sni={hello.server_name} "
            f"ja4={hello.ja4()}{f' ({len(frames)} segments)' if len(frames) > 1 else ''}: "
            f"{verdict}",
            flush=True,
        )
        with self.lock:
            self.judged += 1
            if verdict != "released":
                self.caught[verdict.removeprefix("flows_")] += 1
        if verdict == "released" and "active-probe" in on and hello.server_name is None:
            self.maybe_probe(seg.dst, seg.dport, seg.payload, settings.probe_block_seconds)
        self.write_stats()

    def maybe_probe(self, addr: str, port: int, first: bytes, block_seconds: int) -> None:
        now = time.monotonic()
        with self.lock:
            if self.probed.get((addr, port), 0.0) > now:
                return
            self.probed[(addr, port)] = now + PROBE_TTL
        self.pool.submit(self.probe, addr, port, first, block_seconds)

    def probe(self, addr: str, port: int, first: bytes, block_seconds: int) -> None:
        """Probe one server; its record is written before its address is blocked, so
        whoever sees the block finds the evidence.  An error is printed, never lost
        in the pool (the server may be probed again once PROBE_TTL has passed)."""
        try:
            self._probe(addr, port, first, block_seconds)
        except Exception as exc:  # a thread of the pool: nobody else would see it
            print(f"probing {addr}:{port} failed: {type(exc).__name__}: {exc}", flush=True)

    def _probe(self, addr: str, port: int, first: bytes, block_seconds: int) -> None:
        website, seen = browser_probe(addr, port, None)
        evidence: dict[str, Any] = {"address": addr, "port": port, "browser": seen}
        for name, payload in (("replay", first), ("random", os.urandom(64))):
            try:
                evidence[name] = _answer(_exchange(addr, port, payload))
            except OSError as exc:
                evidence[name] = f"no connection: {type(exc).__name__}"
        evidence["verdict"] = "website" if website else "blocked"
        evidence["at"] = int(time.time())
        with self.lock:
            if not website:
                self.caught["active-probe"] += 1
            self.probes = [*self.probes, evidence][-MAX_PROBES_KEPT:]
        self.write_stats()
        print(f"probed {addr}:{port}: {evidence['verdict']} ({seen})", flush=True)
        if not website:
            self.nft(
                f"add element inet {censor.TABLE} probed4 {{ {addr} timeout {block_seconds}s }}"
            )

    def _read_packets(self, sock: socket.socket) -> None:
        for _ in range(64):
            try:
                frame, address = sock.recvfrom(65535)
            except BlockingIOError:
                return
            if address[2] == PACKET_OUTGOING:
                continue
            seg = dpi.parse_ipv4_tcp(frame)
            if seg is not None and seg.payload:
                self.judge(seg, frame)

    def _read_nflog(self, nflog: socket.socket) -> None:
        for _ in range(64):
            try:
                data = nflog.recv(1 << 17)
            except BlockingIOError:
                return
            for packet in nflog_packets(data):
                frame = bytes(14) + packet  # as AF_PACKET gives it: a link header first
                seg = dpi.parse_ipv4_tcp(frame)
                if seg is not None and seg.payload:
                    self.more(seg, frame)

    def run(self) -> None:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
        attach_filter(sock)
        sock.settimeout(0.5)
        # what arrived before the filter was attached: drop it unread
        sock.setblocking(False)
        try:
            while sock.recv(65535):
                pass
        except BlockingIOError:
            pass
        sock.setblocking(False)
        nflog = open_nflog(censor.NFLOG_GROUP)
        nflog.setblocking(False)
        self.write_stats()
        print(f"censor verdict program watching {self.namespace}", flush=True)
        while not self.stop.is_set():
            ready, _, _ = select.select([sock, nflog], [], [], 0.5)
            try:
                if sock in ready:
                    self._read_packets(sock)
                if nflog in ready:
                    self._read_nflog(nflog)
                if self.split:
                    self.expire()
            except Exception:
                # Dead, this program would leave every TLS flow's first hello held
                # (dropped) for as long as the rule is on: say what went wrong, go on.
                traceback.print_exc()
                sys.stdout.flush()
        nflog.close()
        sock.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.nft_proc is not None and self.nft_proc.stdin is not None:
            self.nft_proc.stdin.close()
            self.nft_proc.wait(10)


def main(namespace: str) -> None:
    if not os.path.exists(censor.settings_path(namespace)):
        raise LabError(f"no censor settings for {namespace}: `resist lab up` installs the censor")
    watcher = Watcher(namespace)
    signal.signal(signal.SIGTERM, lambda *_: watcher.stop.set())
    watcher.run()
