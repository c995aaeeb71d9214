"""The story under today's censor: the rules switch on one after another.

``resist lab demo --escalate`` runs the first three steps of the story (the
data centre blocked, nodes registered and measured, the user through with
``resist connect``), then the censor escalates as TSPU did, one rule per
step, every earlier rule staying on: the address of the node in use, the
SOCKS5 greeting's fingerprint, the server name the client's hello carries to
the node in use, the fingerprint of that hello, a freeze of the node in use
after 16 KB, active probing, and last a whitelist.  After each step the
user's application (curl through resist connect) is timed until it reaches
the data centre again, and a probe round's verdict for each node the step
blocked is read from the signed directory (``reach``: per probe network and
transport, ``ok`` or the mechanism the probe's controls named).

Before the censor escalates, two more volunteers set up a cascade (step 7,
:mod:`resistance.lab.cascade`): an exit abroad that no list names and a
bridge on domestic hosting relaying to it, both registered (the bridge as
the exit's, with its user there), so the directory lists the bridge and
``resist connect`` learns it (last on its ladder while nodes abroad work).
The whitelist (14) lists the registry and the domestic hosting prefix: every
node abroad is cut off, and both users get through bridge → exit: the
application through ``resist connect``, the Telegram-like client through the
bridge's MTProto proxy.  The bridge's first hop transport, plain SOCKS5, has
been fingerprinted since step 9, so it takes SOCKS5 inside TLS.  Then (15)
the censor fingerprints the hello the bridge's hop carries; the bridge meets
it, and takes another hello for the same connection, no error reaching
either user.  Times are reported, never asserted.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from resistance.lab import cascade, censor, netns
from resistance.lab import topology as topo
from resistance.lab.errors import LabError
from resistance.lab.story import FUNCTIONAL_SECONDS, REGISTERED, StepResult, Story, wait_until

#: Attempts (each one application request, bounded by its own timeout) to get through.
RECOVERY_ATTEMPTS = 20
#: Seconds to wait for a probe round to show a blocked node's verdict in the directory.
VERDICT_SECONDS = 60.0
#: ... and for a hello rule, which drops one of len(VARIANTS) hello variants: each probe
#: takes the variants in turn per listener (client.hello.next_variant), so it meets the
#: dropped one within 8 rounds, and a round with the socks5 rule on takes its step
#: timeouts; 60 s was short of that on a loaded machine (the story's test flaked).
HELLO_VERDICT_SECONDS = 180.0
#: The probes inside the censored network (lab.story.PROBES).
INSIDE = ("inside-ru-1", "inside-ru-2")
#: The transport a rule's verdict is read on (None: any; ip and whitelist stop all).
#: The freeze is read on TLS: the socks5 rule stops the plain check before any freeze,
#: and the probes' big-transfer control runs over the node's TLS listener.
RULE_TRANSPORT = {"socks5": "socks5", "sni": "tls", "hello": "tls", "freeze": "tls", "ip": "all"}
JA4 = re.compile(r"> (\S+):(\d+) sni=(\S+) ja4=(\S+): released")
#: A hello the censor's verdict program judged: source, destination, JA4, verdict.
HELLO = re.compile(r"(\S+):\d+ > (\S+):(\d+) sni=\S+ ja4=(\S+)(?: \(\d+ segments\))?: (\w+)")
#: The bridge's log when a hop transport failed (labels never carry credentials).
HOP_FAILED = re.compile(
    r"upstream (\S+?)( \(TLS\))? failed \(.*\); trying (?:the next|another hello)"
)
#: Seconds for the user's resist connect to learn the bridge from the directory
#: (the lab's directory is fresh for 30 s; the bridge must be measured first).
LEARN_SECONDS = 120.0
#: Requests through the cascade after the hop's hello is dropped: the bridge takes its
#: hellos in one turn of len(VARIANTS), so its dials meet the dropped one within a few.
HOP_REQUESTS = 24


def recovery(request: Callable[[], bool], attempts: int = RECOVERY_ATTEMPTS) -> float | None:
    """Seconds from now until ``request()`` (one application request; False or an
    OSError when it failed) succeeds, or None if it never did in ``attempts``."""
    started = time.monotonic()
    for _ in range(attempts):
        try:
            if request():
                return time.monotonic() - started
        except OSError:
            continue
    return None


def nameless_hello(addr: str) -> bool:
    """A TLS hello naming no server to addr's TLS port, as a client dialling by
    address without a name sends it (what the censor's prober waits for)."""
    import asyncio

    from resistance.probe.controls import tls_attempt

    return asyncio.run(tls_attempt(addr, topo.NODE_TLS_PORT, None, 3.0)).ok


@dataclass
class Escalation:
    number: int
    rule: str
    blocked: list[int]
    expected: str
    recovered_s: float | None
    verdicts: dict[int, str] = field(default_factory=dict)
    via: int | None = None
    note: str = ""
    probes: list[dict[str, Any]] = field(default_factory=list)
    #: The Telegram-like client's time to recovery (the cascade's steps), None: never.
    telegram_s: float | None = None
    via_bridge: bool = False
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def correct(self) -> bool:
        return bool(self.verdicts) and all(self.expected in v for v in self.verdicts.values())


class EscalatingStory(Story):
    """Steps 8-14: the censor escalates; :meth:`run_escalation` runs 1-3 first."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.escalations: list[Escalation] = []
        #: The tg://proxy link of the cascade's bridge (step 7).
        self.bridge_link: str | None = None
        #: What the Telegram-like client said when it last failed.
        self.telegram_error = ""

    # --- helpers ---------------------------------------------------------------------------

    def active_label(self) -> str | None:
        """The upstream in use: the status's ``active``, or between connections the
        first ladder row that works (what the next connection takes)."""
        status = self.connect_status()
        if status.get("active"):
            return str(status["active"])
        for row in status.get("ladder", []):
            if row.get("state") == "works":
                return str(row["upstream"])
        return None

    def active_node(self) -> int | None:
        return self.node_of(self.active_label())

    def via_tls(self) -> bool:
        return str(self.active_label()).endswith("(TLS)")

    def via_bridge(self) -> bool:
        return str(self.active_label()).startswith(f"{topo.BRIDGE_ADDR}:")

    def via_text(self) -> str:
        tls = " over TLS" if self.via_tls() else ""
        if self.via_bridge():
            return f"now via the bridge ({topo.BRIDGE_ADDR}, domestic){tls}"
        node = self.active_node()
        if node is None:  # the status file (rewritten every 2 s) names none yet
            return "(the status file names no upstream yet)"
        return f"now via node-{node}{tls}"

    def telegram_via_bridge(self) -> bool:
        """The Telegram-like client in the censored network, with the bridge's link."""
        if self.bridge_link is None:
            return False
        try:
            netns.in_ns(self.t.censored, *self.lab.resist_argv(), "lab", "telegram",
                        "--within", "10", self.bridge_link)  # fmt: skip
        except LabError as exc:
            self.telegram_error = str(exc).partition(": ")[2] or str(exc)
            return False
        return True

    def hop_failures(self) -> list[tuple[str, bool]]:
        """The bridge's hop failures so far: (upstream label, over TLS), oldest first."""
        try:
            text = self.lab.log_text(cascade.BRIDGE_ROLE)
        except (LabError, OSError):
            return []
        return [(m.group(1), bool(m.group(2))) for m in HOP_FAILED.finditer(text)]

    def hellos(self, src: str, dst: str, port: int) -> list[tuple[str, str]]:
        """(JA4, verdict) of every hello the censor judged from src to dst:port."""
        try:
            text = censor.log_path(self.t.censor).read_text(errors="replace")
        except OSError:
            return []
        return [
            (m.group(4), m.group(5))
            for m in HELLO.finditer(text)
            if m.group(1) == src and m.group(2) == dst and int(m.group(3)) == port
        ]

    def node_names(self, node: int) -> list[str]:
        """The DNS names in node's TLS certificate (what the client's hello names once
        it has seen it), read from the free side."""
        from cryptography import x509

        addr = topo.NODE_ADDRS[node - 1]
        pem = netns.call_in(
            self.t.free, ssl.get_server_certificate, (addr, topo.NODE_TLS_PORT), timeout=30
        )
        cert = x509.load_pem_x509_certificate(pem.encode())
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            return [str(n) for n in san.value.get_values_for_type(x509.DNSName)]
        except x509.ExtensionNotFound:
            return []

    def last_client_ja4(self, addr: str) -> str | None:
        """The fingerprint of the last hello the censor let through to addr's TLS port."""
        try:
            text = censor.log_path(self.t.censor).read_text(errors="replace")
        except OSError:
            return None
        found = None
        for m in JA4.finditer(text):
            if m.group(1) == addr and int(m.group(2)) == topo.NODE_TLS_PORT:
                found = m.group(4)
        return found

    def reach_of(self, node: int) -> dict[str, dict[str, str]]:
        addr = topo.NODE_ADDRS[node - 1]
        for entry in self.directory().get("proxies", []):
            if entry.get("endpoint", {}).get("host") == addr:
                reach: dict[str, dict[str, str]] = entry.get("measurements", {}).get("reach", {})
                return reach
        return {}

    def verdict(
        self,
        node: int,
        expected: str,
        transport: str | None = None,
        seconds: float = VERDICT_SECONDS,
    ) -> str:
        """A probe round's verdict on node from inside, as the directory shows it
        (``transport mechanism`` pairs): waits (bounded) for the expected mechanism on
        ``transport`` (on any, if None; on every one, if "all"), else reports what it
        shows."""
        seen = ""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            reach = self.reach_of(node)
            inside = [reach[n] for n in INSIDE if n in reach]
            seen = "; ".join(", ".join(f"{t} {m}" for t, m in sorted(v.items())) for v in inside)
            for v in inside:
                if transport == "all":
                    found = bool(v) and set(v.values()) == {expected}
                else:
                    found = v.get(transport) == expected if transport else expected in v.values()
                if found:
                    return ", ".join(f"{t} {m}" for t, m in sorted(v.items()))
            time.sleep(2)
        return seen or "no verdict"

    def _request(self) -> bool:
        return self.fetch_through_connect().ok

    def _escalate(
        self,
        number: int,
        rule: str,
        blocked: list[int],
        expected: str,
        act: Callable[[], str],
        *,
        telegram: bool = False,
    ) -> Escalation:
        before = self.active_node()
        note = act()
        recovered = recovery(self._request)
        if recovered is not None and before in blocked:  # the status file lags up to 2 s
            with contextlib.suppress(LabError):
                wait_until(lambda: self.active_label() is not None and self.active_node() != before,
                           6, "the new upstream")  # fmt: skip
        via = self.active_node()
        step = Escalation(number, rule, blocked, expected, recovered, via=via, note=note)
        step.via_bridge = self.via_bridge()
        if recovered is None:
            self.say(f"   the application did NOT get through again ({RECOVERY_ATTEMPTS} tries)")
        else:
            self.say(
                f"   the application reached the data centre again after {recovered:.2f} s, "
                + self.via_text()
            )
        if telegram:
            step.telegram_s = recovery(self.telegram_via_bridge, attempts=10)
            if step.telegram_s is None:
                self.say("   the Telegram-like client did NOT get a resPQ through the bridge")
            else:
                self.say(
                    f"   the Telegram-like client got a resPQ from the data centre through the "
                    f"bridge's MTProto proxy after {step.telegram_s:.2f} s"
                )
        for node in blocked:
            wait = HELLO_VERDICT_SECONDS if rule == "hello" else VERDICT_SECONDS
            step.verdicts[node] = self.verdict(node, expected, RULE_TRANSPORT.get(rule), wait)
            self.say(f"   probes inside RU on node-{node}: {step.verdicts[node]}")
        self.escalations.append(step)
        return step

    # --- the steps -------------------------------------------------------------------------

    def step8_ip(self) -> Escalation:
        node = self.active_node() or 1
        addr = topo.NODE_ADDRS[node - 1]
        self.say(f"8. IP: the censor blocks node-{node} ({addr}), the node in use.")

        def act() -> str:
            censor.block(self.t.censor, censor.ranges_of([addr]))
            return f"{addr}/32"

        return self._escalate(8, "ip", [node], "blocked-ip", act)

    def step9_socks5(self) -> Escalation:
        self.say("9. Fingerprint: every flow that starts with a SOCKS5 greeting is dropped.")
        blocked = [n for n in range(1, len(topo.NODE_ADDRS) + 1) if n != self._ip_blocked()]
        return self._escalate(
            9, "socks5", blocked, "blocked-fingerprint",
            lambda: (censor.enable(self.t.censor, "socks5"), "SOCKS5 greeting")[1],
        )  # fmt: skip

    def _ip_blocked(self) -> int | None:
        return self.escalations[0].blocked[0] if self.escalations else None

    def step10_sni(self) -> Escalation:
        node = self.active_node() or 2
        names = self.node_names(node)
        self.say(
            f"10. SNI: the censor lists the name node-{node}'s hellos carry "
            f"({', '.join(names) or 'none'})."
        )
        return self._escalate(
            10, "sni", [node], "blocked-sni",
            lambda: (censor.enable(self.t.censor, "sni", sni=names), ", ".join(names))[1],
        )  # fmt: skip

    def step11_hello(self) -> Escalation:
        node = self.active_node() or 3
        addr = topo.NODE_ADDRS[node - 1]
        ja4 = self.last_client_ja4(addr)
        if ja4 is None:
            raise LabError(f"the censor saw no hello of the client to {addr}")
        self.say(f"11. Hello: the censor drops hellos with the client's current fingerprint {ja4}.")
        return self._escalate(
            11, "hello", [node], "blocked-fingerprint",
            lambda: (censor.enable(self.t.censor, "hello", fingerprints=[ja4]), ja4)[1],
        )  # fmt: skip

    def step12_freeze(self) -> Escalation:
        node = self.active_node() or 1
        addr = topo.NODE_ADDRS[node - 1]
        self.say(f"12. Freeze: flows from node-{node} ({addr}) stop after 16 KB.")
        step = self._escalate(
            12, "freeze", [node], "frozen",
            lambda: (
                censor.enable(self.t.censor, "freeze", freeze_prefixes=[f"{addr}/32"]),
                f"{addr}/32 after 16 KB",
            )[1],
        )  # fmt: skip
        if not any("frozen" in v for v in step.verdicts.values()):
            self.say("   the probes did not name the freeze in time")
        return step

    def step13_active_probe(self) -> Escalation:
        self.say(
            "13. Active probing: a hello naming no server sends the censor's prober to the "
            "server (a browser's hello and GET /, a replay, random bytes); what is not an "
            "ordinary website is blocked.  An old client dials each node by address."
        )
        before = len(censor.report(self.t.censor)["probes"])

        def act() -> str:
            censor.enable(self.t.censor, "active-probe", probe_block_seconds=600)
            for addr in topo.NODE_ADDRS:
                netns.call_in(self.t.censored, nameless_hello, addr, timeout=30)
            with contextlib.suppress(LabError):
                wait_until(
                    lambda: len(censor.report(self.t.censor)["probes"]) - before >= 2,
                    20,
                    "the censor's prober",
                )
            return "nameless hellos' servers probed"

        step = self._escalate(13, "active-probe", [], "probed", act)
        probes = censor.report(self.t.censor)["probes"][before:]
        step.probes = probes
        judged = ", ".join(
            f"node-{topo.NODE_ADDRS.index(p['address']) + 1}: {p['verdict']} ({p['browser']})"
            for p in probes
            if p.get("address") in topo.NODE_ADDRS
        )
        self.say(f"   the censor's prober judged {judged or 'no server'}")
        hit = sorted(
            topo.NODE_ADDRS.index(p["address"]) + 1
            for p in probes
            if p.get("verdict") == "blocked" and p.get("address") in topo.NODE_ADDRS
        )
        for node in hit:
            step.blocked.append(node)
            step.verdicts[node] = self.verdict(node, "probed")
            self.say(f"   probes inside RU on node-{node}: {step.verdicts[node]}")
        return step

    def step14_whitelist(self) -> Escalation:
        listed = [f"{topo.REGISTRY_ADDR}/32", topo.DOMESTIC_NET]
        self.say(
            f"14. Whitelist: only traffic to or from {topo.REGISTRY_ADDR}/32 (the registry, a "
            f"domestic service here) and {topo.DOMESTIC_NET} (domestic hosting) passes; every "
            "node abroad is cut off, the cascade's bridge is domestic."
        )
        nodes = list(range(1, len(topo.NODE_ADDRS) + 1))
        step = self._escalate(
            14, "whitelist", nodes, "whitelisted-out",
            lambda: (
                censor.enable(self.t.censor, "whitelist", whitelist=listed),
                ", ".join(listed),
            )[1],
            telegram=True,
        )  # fmt: skip
        # Counted since the bridge started: the probes' checks through it have crossed
        # the hop since step 7, and met the socks5 rule on it from step 9 on.
        failed = self.hop_failures()
        plain = sum(1 for _, tls in failed if not tls)
        step.figures["hop_plain_failures"] = plain
        step.figures["hop_tls_failures"] = len(failed) - plain
        tls_hellos = self.hellos(topo.BRIDGE_ADDR, cascade.EXIT_ADDR, topo.NODE_TLS_PORT)
        step.figures["hop_tls_hellos"] = len(tls_hellos)
        self.say(
            f"   the bridge's hop: plain SOCKS5 to the exit failed {plain} time(s) so far (its "
            f"greeting is fingerprinted since step 9), so the bridge took SOCKS5 inside TLS "
            f"({len(tls_hellos)} hop hello(s) released by the censor so far)"
        )
        return step

    def step15_hop_hello(self) -> Escalation:
        """The hop's own transport fingerprinted: the hello the bridge last sent its exit."""
        seen = self.hellos(topo.BRIDGE_ADDR, cascade.EXIT_ADDR, topo.NODE_TLS_PORT)
        released = [ja4 for ja4, verdict in seen if verdict == "released"]
        if not released:
            raise LabError("the censor saw no hello of the bridge to its exit")
        ja4 = released[-1]
        self.say(
            f"15. The hop fingerprinted: the censor drops the hello the bridge's hop to its exit "
            f"carried ({ja4}), domestic hosting talking to foreign hosting."
        )
        before = len(seen)
        hop_before = len(self.hop_failures())

        def dropped() -> int:
            judged = self.hellos(topo.BRIDGE_ADDR, cascade.EXIT_ADDR, topo.NODE_TLS_PORT)
            return sum(1 for j, v in judged[before:] if j == ja4 and v != "released")

        step = self._escalate(
            15, "hello", [], "blocked-fingerprint",
            lambda: (censor.enable(self.t.censor, "hello", fingerprints=[ja4]), f"hop {ja4}")[1],
            telegram=True,
        )  # fmt: skip
        # Until one of the bridge's dials has met the dropped hello (its hellos come in one
        # turn, the probes' checks through the bridge dialling too), every request of both
        # users must still get through: the bridge retries with another hello.
        requests = app_failed = telegram_failed = 0
        errors: list[str] = []
        while requests < HOP_REQUESTS and not dropped():
            requests += 1
            fetch = self.fetch_through_connect()
            if not fetch.ok:
                app_failed += 1
                errors.append(f"application: {fetch.error}")
            if not self.telegram_via_bridge():
                telegram_failed += 1
                errors.append(f"telegram: {self.telegram_error}")
        hop = self.hop_failures()[hop_before:]
        step.figures.update(
            hop_hellos_dropped=dropped(),
            requests=requests,
            failed_requests=app_failed + telegram_failed,
            application_failed=app_failed,
            telegram_failed=telegram_failed,
            errors=errors,
            hop_retries=len(hop),
        )
        self.say(
            f"   the censor dropped {dropped()} of the bridge's hop hellos; the bridge's "
            f"dials pass over that hello from then on: {requests} requests of each user "
            f"after the rule, {app_failed} of the application's and {telegram_failed} of "
            "Telegram's failed"
        )
        for error in errors:
            self.say(f"   {error}")
        return step

    def step7_cascade(self) -> StepResult:
        """Two more volunteers: an exit abroad (on no list) and a bridge on domestic hosting."""
        from resistance.lab.funder import payee_address

        self.say(
            "7. Two more volunteers set up a cascade: an exit abroad (volunteer-6, an address "
            "on no list) and a bridge on domestic hosting (volunteer-7) relaying everything "
            "to it, with an MTProto proxy for the Telegram app; both register."
        )
        started = time.monotonic()
        hop_password = secrets.token_urlsafe(16)
        with contextlib.suppress(LabError):  # already there when the step runs again
            netns.run("ip", "-n", self.t.free, "addr", "add", f"{cascade.EXIT_ADDR}/32",
                      "dev", "lo")  # fmt: skip
        tokens: dict[int, str] = {}
        # Each volunteer signs up from where it is: the bridge's operator from the
        # domestic network (the registry limits sign-ups per network).
        for i, where in ((6, self.t.free), (7, self.t.domestic)):
            signup = self.lab.api("POST", "/api/v1/operators", body={"name": f"volunteer-{i}"},
                                  admin=False, namespace=where)  # fmt: skip
            tokens[i] = signup["token"]
            self.lab.api("PUT", "/api/v1/operators/me/payout-address", token=tokens[i],
                         body={"address": payee_address(i)}, namespace=where)  # fmt: skip
        exit_dir = self.lab.dir / cascade.EXIT_ROLE
        config, pin = cascade.exit_config(exit_dir, hop_password)
        self.lab.start(
            cascade.EXIT_ROLE, self.t.free,
            ["node", "--config", str(config), "--state-dir", str(exit_dir)],
            ready=(cascade.EXIT_ADDR, topo.NODE_PORT),
        )  # fmt: skip
        out = netns.in_ns(
            self.t.free, *self.lab.resist_argv(), "registry", "register-node",
            "--registry", self.t.registry_url, "--public-host", cascade.EXIT_ADDR,
            "--port", str(topo.NODE_PORT), "--as-exit", "--state-dir", str(exit_dir),
            env={"RESIST_REGISTRY_TOKEN": tokens[6]},
        )  # fmt: skip
        match = REGISTERED.search(out)
        if not match:
            raise LabError(f"register-node (exit) said: {out.strip()}")
        exit_id = int(match.group(1))
        self.say(f"   volunteer-6 (exit): {out.strip().splitlines()[0]}")
        bridge_dir = self.lab.dir / cascade.BRIDGE_ROLE
        config, secret = cascade.bridge_config(bridge_dir, hop_password, pin)
        self.lab.start(
            cascade.BRIDGE_ROLE, self.t.domestic,
            ["node", "--config", str(config), "--state-dir", str(bridge_dir)],
            ready=(topo.BRIDGE_ADDR, topo.NODE_PORT),
        )  # fmt: skip
        out = netns.in_ns(
            self.t.domestic, *self.lab.resist_argv(), "registry", "register-node",
            "--registry", self.t.registry_url, "--public-host", topo.BRIDGE_ADDR,
            "--port", str(topo.NODE_PORT), "--tls-port", str(topo.NODE_TLS_PORT), "--public",
            "--exit", str(exit_id), "--state-dir", str(bridge_dir),
            env={"RESIST_REGISTRY_TOKEN": tokens[7],
                 "RESIST_EXIT_USER": f"{cascade.HOP_USER}:{hop_password}"},
        )  # fmt: skip
        match = REGISTERED.search(out)
        if not match:
            raise LabError(f"register-node (bridge) said: {out.strip()}")
        bridge_id = int(match.group(1))
        self.say(f"   volunteer-7 (bridge of proxy {exit_id}): {out.strip().splitlines()[0]}")
        self.bridge_link = cascade.telegram_link(secret)
        self.lab.info.setdefault("proxies", {}).update({"exit": exit_id, "bridge": bridge_id})
        self.lab.save()
        status = wait_until(
            lambda: (s := self.proxy_status(bridge_id)["status"]) == "functional" and s,
            FUNCTIONAL_SECONDS,
            "the probes to measure the bridge functional",
        )
        document = self.directory()
        entry: dict[str, Any] = next(
            (e for e in document.get("proxies", [])
             if e.get("endpoint", {}).get("host") == topo.BRIDGE_ADDR),
            {},
        )  # fmt: skip
        exit_published = cascade.EXIT_ADDR in json.dumps(document)

        def learned() -> bool:
            return any(
                str(row.get("upstream", "")).startswith(f"{topo.BRIDGE_ADDR}:")
                for row in self.connect_status().get("ladder", [])
            )

        with contextlib.suppress(LabError):
            wait_until(learned, LEARN_SECONDS, "resist connect to learn the bridge", pause=2)
        took = time.monotonic() - started
        self.say(
            f"   the probes measured the bridge (whole path, through the exit): {status}; "
            f"directory serial {document['serial']} lists {topo.BRIDGE_ADDR} as a bridge: "
            f"{entry.get('bridge') is True}; the exit's address published: {exit_published}; "
            f"resist connect learned the bridge: {learned()} ({took:.1f} s)"
        )
        return self._record(
            StepResult(
                7,
                "a cascade: bridge listed, exit never",
                "bridge listed and learned, exit unpublished"
                if entry.get("bridge") is True and not exit_published and learned()
                else "cascade NOT set up as it should",
                {
                    "exit_id": exit_id,
                    "bridge_id": bridge_id,
                    "bridge_listed": entry.get("bridge") is True,
                    "exit_published": exit_published,
                    "learned": learned(),
                    "seconds": round(took, 1),
                },
            )
        )

    def run_escalation(self) -> list[Escalation]:
        self.step1_blocked_directly()
        self.step2_register_and_measure()
        self.step3_connect()
        self.step7_cascade()
        for step in (
            self.step8_ip, self.step9_socks5, self.step10_sni, self.step11_hello,
            self.step12_freeze, self.step13_active_probe, self.step14_whitelist,
            self.step15_hop_hello,
        ):  # fmt: skip
            step()
        return self.escalations
