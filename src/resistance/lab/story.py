"""The story the lab tells, step by step: blocked, through, blocked again, through, paid.

Each step acts only through what real users run — ``resist`` commands in the
namespaces, the registry's HTTP API, curl as the user's application, nft on
the censor — and returns what it observed, so the end-to-end tests assert on
it and ``resist lab demo`` narrates it.  Waits are bounded in time and count;
what they measure (block → first new connection) is reported, never asserted.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resistance.lab import censor, netns
from resistance.lab import topology as topo
from resistance.lab.errors import LabError
from resistance.lab.world import Lab, Say

CURL_SECONDS = 20.0
FUNCTIONAL_SECONDS = 90.0
BLOCKED_SECONDS = 120.0
FAILOVER_ATTEMPTS = 20
PROBES = (
    # name, country, control vantage, namespace role
    ("control-nl", topo.CONTROL_COUNTRY, True, "free"),
    ("inside-ru-1", topo.TARGET_COUNTRY, False, "censored"),
    ("inside-ru-2", topo.TARGET_COUNTRY, False, "censored"),
)
REGISTERED = re.compile(r"registered proxy (\d+)")
WIREGUARD_GO = re.compile(r"\(wireguard-go, pid (\d+)\)")
TLS_NOTE = " over TLS, its certificate pinned by the directory"
VPN_REGISTERED = re.compile(r"registered WireGuard endpoint \S+ as proxy (\d+)")


@dataclass
class StepResult:
    number: int
    title: str
    outcome: str
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class Fetch:
    ok: bool
    seconds: float
    body: str
    error: str


def node_name(n: int) -> str:
    """node-1..3 are the SOCKS5 nodes; 4 is the WireGuard server."""
    return "wireguard-4" if n > len(topo.NODE_ADDRS) else f"node-{n}"


def wait_until(check: Callable[[], Any], seconds: float, what: str, pause: float = 0.5) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise LabError(f"timed out after {seconds:g} s waiting for {what}")
        time.sleep(pause)


class Story:
    def __init__(self, lab: Lab, say: Say) -> None:
        self.lab = lab
        self.say = say
        self.t = lab.topology
        self.results: list[StepResult] = []

    # --- helpers ---------------------------------------------------------------------------

    def fetch_through_connect(self) -> Fetch:
        """The user's application: curl in the censored network via resist connect."""
        return self._curl(
            "--socks5-hostname", f"127.0.0.1:{topo.CONNECT_PORT}", max_time=CURL_SECONDS
        )

    def fetch_directly(self, seconds: float = 3.0) -> Fetch:
        return self._curl(max_time=seconds)

    def _curl(self, *extra: str, max_time: float) -> Fetch:
        import subprocess

        url = f"http://{topo.DATACENTRE_ADDR}:{topo.DATACENTRE_PORT}/"
        cmd = [*netns.exec_prefix(self.t.censored), "curl", "-sS", "--max-time", f"{max_time:g}"]
        started = time.monotonic()
        done = subprocess.run(
            [*cmd, *extra, url], capture_output=True, text=True, timeout=max_time + 10, check=False
        )
        took = time.monotonic() - started
        return Fetch(done.returncode == 0, took, done.stdout, done.stderr.strip())

    def proxy_status(self, proxy_id: int) -> dict[str, Any]:
        answer: dict[str, Any] = self.lab.api("GET", f"/api/v1/proxies/{proxy_id}/status")
        return answer

    def directory(self) -> dict[str, Any]:
        """Publish now, fetch the signed directory and verify it against the lab's keys."""
        import httpx

        from resistance.directory.document import verify_directory
        from resistance.directory.keys import trusted_key

        self.lab.api("POST", "/api/v1/directory/publish")

        def get() -> bytes:
            return httpx.get(self.t.directory_url, timeout=30).content

        data = netns.call_in(self.t.free, get)
        verified = verify_directory(
            data,
            trusted=[trusted_key(k) for k in self.lab.info["directory_keys"]],
            threshold=1,
            now=int(time.time()),
        )
        document: dict[str, Any] = verified.document
        return document

    def connect_status(self) -> dict[str, Any]:
        path = Path(self.lab.info["connect_state"]) / "connect-status.json"
        try:
            status: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return status

    def node_of(self, label: str | None) -> int | None:
        """Which node (1-3) an upstream label names."""
        for i, addr in enumerate(topo.NODE_ADDRS):
            if label and label.startswith(f"{addr}:"):
                return i + 1
        return None

    def _record(self, result: StepResult) -> StepResult:
        self.results.append(result)
        return result

    # --- the story -------------------------------------------------------------------------

    def step1_blocked_directly(self) -> StepResult:
        self.say("1. The user tries the Telegram data centre directly from the censored network.")
        before = censor.blocked(self.t.censor)["dropped_packets"]
        direct = self.fetch_directly()
        dropped = censor.blocked(self.t.censor)["dropped_packets"] - before
        free_side = netns.call_in(
            self.t.free, netns.tcp_open, topo.DATACENTRE_ADDR, topo.DATACENTRE_PORT, 3.0
        )
        self.say(
            f"   direct: {'reached' if direct.ok else 'failed'} after {direct.seconds:.1f} s "
            f"({direct.error or 'ok'}); the censor dropped {dropped} packets; "
            f"from the free side it {'answers' if free_side else 'does not answer'}"
        )
        return self._record(
            StepResult(
                1,
                "data centre unreachable directly",
                "blocked" if not direct.ok and free_side else "NOT blocked",
                {"direct_ok": direct.ok, "dropped_packets": dropped, "free_side_ok": free_side},
            )
        )

    def step2_register_and_measure(self) -> StepResult:
        self.say(
            "2. Four volunteers register their nodes (three SOCKS5, one WireGuard); probes "
            "inside and outside measure them."
        )
        from resistance.lab.funder import payee_address

        started = time.monotonic()
        proxies: dict[int, int] = {}
        for i, addr in enumerate(topo.NODE_ADDRS, start=1):
            signup = self.lab.api("POST", "/api/v1/operators", body={"name": f"volunteer-{i}"},
                                  admin=False)  # fmt: skip
            token = signup["token"]
            self.lab.api(
                "PUT",
                "/api/v1/operators/me/payout-address",
                token=token,
                body={"address": payee_address(i)},
            )
            out = netns.in_ns(
                self.t.free,
                *self.lab.resist_argv(),
                "registry", "register-node",
                "--registry", self.t.registry_url,
                "--public-host", addr,
                "--port", str(topo.NODE_PORT),
                "--tls-port", str(topo.NODE_TLS_PORT),
                "--public",
                "--state-dir", str(self.lab.dir / f"node-{i}"),
                env={"RESIST_REGISTRY_TOKEN": token},
            )  # fmt: skip
            match = REGISTERED.search(out)
            if not match:
                raise LabError(f"register-node said: {out.strip()}")
            proxies[i] = int(match.group(1))
            self.say(f"   volunteer-{i}: {out.strip()}")
        vpn_token = self._vpn_volunteer()
        probes = [
            self.lab.start_probe(name, country, control=control, censored=where == "censored")
            for name, country, control, where in PROBES
        ]
        self.say(
            "   probes: control-nl (NL, control) in the free network, inside-ru-1 and "
            "inside-ru-2 (RU) behind the censor"
        )
        # The WireGuard server lets in the probes' keys (handshake only), so it
        # registers once they have announced them.
        wait_until(
            lambda: all("WireGuard key" in Path(p.log).read_text() for p in probes),
            30,
            "the probes to announce their WireGuard keys",
        )
        out = netns.in_ns(
            self.t.free,
            *self.lab.resist_argv(),
            "vpn", "register", "--registry", self.t.registry_url, "--public",
            "--state-dir", str(self.lab.dir / "vpn"),
            env={"RESIST_REGISTRY_TOKEN": vpn_token},
        )  # fmt: skip
        match = VPN_REGISTERED.search(out)
        if not match:
            raise LabError(f"vpn register said: {out.strip()}")
        proxies[len(topo.NODE_ADDRS) + 1] = int(match.group(1))
        self.say(f"   volunteer-4: {out.strip().splitlines()[-1]}")
        self.lab.info["proxies"] = {str(k): v for k, v in proxies.items()}
        self.lab.save()

        def all_functional() -> bool:
            return all(self.proxy_status(pid)["status"] == "functional" for pid in proxies.values())

        wait_until(all_functional, FUNCTIONAL_SECONDS, "every node to be measured functional")
        document = self.directory()
        listed = {
            e["endpoint"]["host"]: e["status"] for e in document["proxies"] if "endpoint" in e
        }
        pins = {
            e["endpoint"]["host"]: e["tls"]["sha256"]
            for e in document["proxies"]
            if isinstance(e.get("tls"), dict) and "endpoint" in e
        }
        took = time.monotonic() - started
        self.say(
            f"   signed directory serial {document['serial']}: "
            + ", ".join(f"{h} {s}" for h, s in sorted(listed.items()))
            + f" ({took:.1f} s)"
        )
        ok = all(listed.get(a) == "functional" for a in (*topo.NODE_ADDRS, topo.VPN_ADDR))
        return self._record(
            StepResult(
                2,
                "nodes registered, measured, published",
                "3 SOCKS5 + 1 WireGuard functional in the signed directory"
                if ok
                else f"directory: {listed}",
                {
                    "serial": document["serial"],
                    "listed": listed,
                    "tls_pins": pins,
                    "seconds": round(took, 1),
                },
            )
        )

    def _vpn_volunteer(self) -> str:
        """Volunteer 4 turns the free network's 198.18.13.1 into a WireGuard server."""
        from resistance.lab.funder import payee_address

        signup = self.lab.api("POST", "/api/v1/operators", body={"name": "volunteer-4"},
                              admin=False)  # fmt: skip
        token: str = signup["token"]
        self.lab.api(
            "PUT",
            "/api/v1/operators/me/payout-address",
            token=token,
            body={"address": payee_address(4)},
        )
        state = str(self.lab.dir / "vpn")
        out = netns.in_ns(
            self.t.free,
            *self.lab.resist_argv(),
            "vpn", "init", "--endpoint", f"{topo.VPN_ADDR}:{topo.VPN_PORT}",
            "--netns", self.t.free, "--interface", self.t.wg_interface, "--state-dir", state,
        )  # fmt: skip
        self.say(f"   volunteer-4 runs WireGuard: {out.strip().splitlines()[0]}")
        started = WIREGUARD_GO.search(out)
        if started:  # wireguard-go (not the kernel module): the lab tracks it like the rest
            self.lab.adopt("wireguard-go", self.t.free, int(started.group(1)))
        return token

    def step3_connect(self) -> StepResult:
        self.say("3. The user starts resist connect with the directory and one trusted key.")
        self.lab.start_connect()
        fetch = self.fetch_through_connect()
        active = wait_until(
            lambda: self.connect_status().get("active"), 15, "resist connect to pick an upstream"
        )
        node = self.node_of(active)
        self.say(
            f"   curl through 127.0.0.1:{topo.CONNECT_PORT}: "
            f"{fetch.body.strip() if fetch.ok else fetch.error} ({fetch.seconds:.2f} s), "
            f"via node-{node}{TLS_NOTE if str(active).endswith('(TLS)') else ''}"
        )
        return self._record(
            StepResult(
                3,
                "through resist connect",
                f"reached via node-{node}" if fetch.ok else f"failed: {fetch.error}",
                {
                    "ok": fetch.ok,
                    "active_node": node,
                    "via_tls": str(active).endswith("(TLS)"),
                    "seconds": round(fetch.seconds, 2),
                },
            )
        )

    def step4_block_active(self) -> StepResult:
        active = self.node_of(self.connect_status().get("active"))
        if active is None:
            raise LabError("resist connect reports no active upstream")
        addr = topo.NODE_ADDRS[active - 1]
        self.say(f"4. The censor blocks node-{active} ({addr}), the node the user is using.")
        censor.block(self.t.censor, censor.ranges_of([addr]))
        blocked_at = time.monotonic()
        self.lab.info["blocked_node"] = active
        self.lab.info["blocked_at"] = int(time.time())
        self.lab.save()
        attempts: list[Fetch] = []
        first_ok: float | None = None
        while len(attempts) < FAILOVER_ATTEMPTS and first_ok is None:
            fetch = self.fetch_through_connect()
            attempts.append(fetch)
            if fetch.ok:
                first_ok = time.monotonic() - blocked_at
        if first_ok is not None:  # the status file is rewritten every 2 s
            with contextlib.suppress(LabError):
                wait_until(
                    lambda: self.node_of(self.connect_status().get("active")) not in (None, active),
                    10,
                    "the status file to show the new upstream",
                )
        now_active = self.node_of(self.connect_status().get("active"))
        failures = sum(1 for a in attempts if not a.ok)
        if first_ok is None:
            self.say(f"   no connection succeeded in {len(attempts)} attempts")
        else:
            self.say(
                f"   first new connection after the block succeeded in {first_ok:.2f} s "
                f"({failures} failed attempts seen by the application); now via node-{now_active}"
            )
        return self._record(
            StepResult(
                4,
                "censor blocks the node in use",
                f"through again in {first_ok:.2f} s via node-{now_active}"
                if first_ok is not None
                else "never through again",
                {
                    "blocked_node": active,
                    "block_to_success_s": round(first_ok, 3) if first_ok is not None else None,
                    "failed_attempts": failures,
                    "attempts": len(attempts),
                    "now_active": now_active,
                },
            )
        )

    def step5_verdict(self) -> StepResult:
        node = int(self.lab.info["blocked_node"])
        proxy_id = int(self.lab.info["proxies"][str(node)])
        self.say(f"5. The probes measure again: node-{node} fails inside RU, works from NL.")
        started = time.monotonic()
        status = wait_until(
            lambda: (s := self.proxy_status(proxy_id))["status"] == "blocked" and s,
            BLOCKED_SECONDS,
            f"node-{node} to be judged blocked",
        )
        took = time.monotonic() - started
        document = self.directory()
        listed = {
            e["endpoint"]["host"]: e["status"] for e in document["proxies"] if "endpoint" in e
        }
        from resistance.client.directory import usable

        addr = topo.NODE_ADDRS[node - 1]
        self.say(
            f"   verdict after {took:.1f} s: {status['status']} in "
            f"{', '.join(status['blocked_in'])}; "
            f"directory serial {document['serial']} lists {addr} as {listed.get(addr)}"
        )
        return self._record(
            StepResult(
                5,
                "judged blocked in RU, up elsewhere",
                f"directory: {listed.get(addr)}",
                {
                    "status": status["status"],
                    "blocked_in": status["blocked_in"],
                    "listed": listed,
                    "usable_in_ru": usable(str(listed.get(addr)), topo.TARGET_COUNTRY),
                    "usable_in_nl": usable(str(listed.get(addr)), topo.CONTROL_COUNTRY),
                    "seconds": round(took, 1),
                },
            )
        )

    def grants(self, *args: str) -> str:
        """``resist grants ARGS`` as the funder runs it, from the free network."""
        return netns.in_ns(
            self.t.free,
            *self.lab.resist_argv(),
            "grants",
            *args,
            env={"RESIST_ADMIN_TOKEN": self.lab.info["admin_token"]},
            timeout=180,
        )

    def step6_grants(self) -> StepResult:
        from resistance.grants.files import load_round
        from resistance.lab import funder

        self.say(
            "6. The funder pays for today's verified service: a round, a PSBT, Electrum signs."
        )
        day = time.strftime("%Y-%m-%d", time.gmtime())
        registry = ("--registry", self.t.registry_url)
        work = self.lab.dir / "funder"
        work.mkdir(parents=True, exist_ok=True)
        # Exponent 1: pay in proportion to verified service, so the lab's few minutes
        # show it (the default 20 makes flaky service worth almost nothing).
        self.grants(
            "round", "create", *registry, "--period", day, "--budget", "0.001BTC",
            "--country", topo.TARGET_COUNTRY, "--round-id", "lab", "--exponent", "1",
            "--fee-reserve", "5000sat", "--min-payout", "1000sat",
        )  # fmt: skip
        self.grants("round", "approve", "lab", *registry)
        round_file = work / "round.json"
        self.grants("round", "export", "lab", *registry, "--out", str(round_file))
        trust = [a for k in self.lab.info["directory_keys"] for a in ("--trust", k)]
        verified = self.grants("verify", str(round_file), *trust)
        round_ = load_round(round_file)
        utxos = work / "utxos.json"
        utxos.write_text(json.dumps(funder.funder_utxos([60_000, 70_000])))
        psbt_file = work / "round.psbt"
        self.grants(
            "psbt", str(round_file), "--descriptor", funder.DESCRIPTOR,
            "--change-descriptor", funder.CHANGE_DESCRIPTOR, "--utxos", str(utxos),
            "--fee-rate", "2", "--network", "regtest", "--out", str(psbt_file),
        )  # fmt: skip
        electrum = funder.Electrum(work / "electrum")
        electrum.restore()
        signed = electrum.sign(psbt_file.read_text().strip())
        (work / "signed.hex").write_text(signed + "\n")
        paid = self.grants(
            "round", "mark-paid", "lab", *registry, "--tx-file", str(work / "signed.hex"),
            "--change-descriptor", funder.CHANGE_DESCRIPTOR,
        )  # fmt: skip
        by_address = {funder.payee_address(i): i for i in (1, 2, 3, 4)}
        awards = {by_address[a.payout_address]: a.amount_sat for a in round_.result.awards}
        reach: dict[int, list[int]] = {}
        for r in round_.inputs.rows():
            node = by_address.get(r.payout_address)
            if node is not None:
                ok, tried = reach.setdefault(node, [0, 0])
                reach[node] = [ok + r.target_successes, tried + r.target_attempts]
        fractions = {n: ok / tried if tried else 0.0 for n, (ok, tried) in reach.items()}
        for n in sorted(awards):
            self.say(
                f"   {node_name(n)}: reached from RU in {fractions.get(n, 0):.0%} of checks -> "
                f"{awards[n]:,} sat"
            )
        verdict = "recomputed identically" if "OK:" in verified else "DIFFERS"
        self.say(f"   grants verify (registry signature checked): awards {verdict}")
        self.say(f"   Electrum signed; {paid.strip()}")
        return self._record(
            StepResult(
                6,
                "grant round paid, Electrum signed",
                ", ".join(f"{node_name(n)} {awards[n]:,} sat" for n in sorted(awards)),
                {
                    "awards": awards,
                    "reach_fraction": fractions,
                    "verified": "OK:" in verified,
                    "signed_tx": signed,
                    "paid": paid.strip(),
                    "round": round_,
                },
            )
        )

    def step7_telegram(self) -> StepResult:
        """A volunteer's MTProto proxy, registered and probed; the Telegram app gets through."""
        from resistance.lab import telegram
        from resistance.lab.funder import payee_address

        self.say(
            "7. A fifth volunteer runs an MTProto proxy (fake-TLS) for the Telegram apps; "
            "a Telegram-like client tries the data centre directly, then through its link."
        )
        started = time.monotonic()
        signup = self.lab.api("POST", "/api/v1/operators", body={"name": "volunteer-5"},
                              admin=False)  # fmt: skip
        token = signup["token"]
        self.lab.api("PUT", "/api/v1/operators/me/payout-address", token=token,
                     body={"address": payee_address(5)})  # fmt: skip
        prober = self.lab.api("GET", "/api/v1/mtproto/prober-secret", token=token)
        state = self.lab.dir / telegram.ROLE
        config, secret = telegram.write_node_config(state, bytes.fromhex(prober["key"]))
        with contextlib.suppress(LabError):  # already there when the step runs again
            netns.run("ip", "-n", self.t.free, "addr", "add", f"{telegram.MTPROTO_ADDR}/32",
                      "dev", "lo")  # fmt: skip
        self.lab.start(
            telegram.ROLE,
            self.t.free,
            ["node", "--config", str(config), "--state-dir", str(state)],
            ready=(telegram.MTPROTO_ADDR, telegram.MTPROTO_PORT),
        )
        view = self.lab.api(
            "POST", "/api/v1/mtproto/endpoints", token=token, body=telegram.registration()
        )
        proxy_id = int(view["proxy_id"])
        self.say(
            f"   volunteer-5: registered MTProto proxy {proxy_id} at "
            f"{telegram.MTPROTO_ADDR}:{telegram.MTPROTO_PORT} (ee, {telegram.MTPROTO_DOMAIN}); "
            "the registry got a resPQ through it with the volunteer's prober secret"
        )
        link = telegram.user_link(secret)

        def client(target: str) -> tuple[bool, str]:
            try:
                out = netns.in_ns(self.t.censored, *self.lab.resist_argv(), "lab", "telegram",
                                  "--within", "3", target)  # fmt: skip
                return True, out.strip()
            except LabError as exc:  # "COMMAND: what it printed": keep what it printed
                return False, str(exc).partition(": ")[2] or str(exc)

        direct_ok, direct = client(f"{topo.DATACENTRE_ADDR}:{topo.DATACENTRE_PORT}")
        via_ok, via = client(link)
        self.say(f"   directly: {direct}")
        self.say(f"   with the link {link[:48]}...: {via}")
        status = ""
        if any(p.role.startswith("probe-") for p in self.lab.processes):
            status = wait_until(
                lambda: (s := self.proxy_status(proxy_id)["status"]) == "functional" and s,
                FUNCTIONAL_SECONDS,
                "the probes to measure the MTProto proxy functional",
            )
            self.say(f"   the probes checked it the same way (inside RU and NL): {status}")
        took = time.monotonic() - started
        return self._record(
            StepResult(
                7,
                "the Telegram app through an MTProto proxy",
                "through with the tg://proxy link, blocked directly"
                if via_ok and not direct_ok
                else f"direct {direct_ok}, via proxy {via_ok}",
                {
                    "proxy_id": proxy_id,
                    "direct_ok": direct_ok,
                    "via_proxy_ok": via_ok,
                    "probe_status": status or None,
                    "seconds": round(took, 1),
                },
            )
        )

    def run_all(self) -> list[StepResult]:
        self.step1_blocked_directly()
        self.step2_register_and_measure()
        self.step3_connect()
        self.step4_block_active()
        self.step5_verdict()
        self.step6_grants()
        self.step7_telegram()
        return self.results
