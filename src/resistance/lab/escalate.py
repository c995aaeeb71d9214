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

The whitelist cannot be survived with what exists (no domestic bridge): the
step shows the application failing and says so.  Times are reported, never
asserted.
"""

from __future__ import annotations

import contextlib
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from resistance.lab import censor, netns
from resistance.lab import topology as topo
from resistance.lab.errors import LabError
from resistance.lab.story import Story, wait_until

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

    @property
    def correct(self) -> bool:
        return bool(self.verdicts) and all(self.expected in v for v in self.verdicts.values())


class EscalatingStory(Story):
    """Steps 8-14: the censor escalates; :meth:`run_escalation` runs 1-3 first."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.escalations: list[Escalation] = []

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
        self, number: int, rule: str, blocked: list[int], expected: str, act: Callable[[], str]
    ) -> Escalation:
        before = self.active_node()
        note = act()
        recovered = recovery(self._request)
        if recovered is not None and before in blocked:  # the status file lags up to 2 s
            with contextlib.suppress(LabError):
                wait_until(lambda: self.active_node() not in (None, before), 6, "the new upstream")
        via = self.active_node()
        step = Escalation(number, rule, blocked, expected, recovered, via=via, note=note)
        if recovered is None:
            self.say(f"   the application did NOT get through again ({RECOVERY_ATTEMPTS} tries)")
        else:
            self.say(
                f"   the application reached the data centre again after {recovered:.2f} s, "
                f"now via node-{via}{' over TLS' if self.via_tls() else ''}"
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
        listed = [f"{topo.REGISTRY_ADDR}/32"]
        self.say(
            f"14. Whitelist: only traffic to or from {', '.join(listed)} (the registry, a "
            "domestic service here) passes; every node is abroad."
        )
        nodes = list(range(1, len(topo.NODE_ADDRS) + 1))
        step = self._escalate(
            14, "whitelist", nodes, "whitelisted-out",
            lambda: (
                censor.enable(self.t.censor, "whitelist", whitelist=listed),
                ", ".join(listed),
            )[1],
        )  # fmt: skip
        if step.recovered_s is None:
            self.say(
                "   not survivable with what exists: every node is outside the whitelist and "
                "there is no domestic bridge yet"
            )
        return step

    def run_escalation(self) -> list[Escalation]:
        self.step1_blocked_directly()
        self.step2_register_and_measure()
        self.step3_connect()
        for step in (
            self.step8_ip, self.step9_socks5, self.step10_sni, self.step11_hello,
            self.step12_freeze, self.step13_active_probe, self.step14_whitelist,
        ):  # fmt: skip
            step()
        return self.escalations
