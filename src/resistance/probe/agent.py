"""`resist probe run`: the long-running agent of one vantage.

Theory of operation.  Two named tasks run until SIGTERM/SIGINT:

* **rounds** pulls the assignment (which proxies, when each is due inside
  the round, where the canary is) and keeps a copy on disk, so it goes on
  measuring while the registry is unreachable.  A bounded pool of workers
  checks each proxy at its due time; finished results go to the batcher,
  which signs every ``batch_size`` of them with the probe's key and writes
  the batch to the spool *before* any upload is tried.
* **uploader** sends spooled batches oldest first.  Confirmed (stored, or
  already stored: the registry is idempotent by batch id) removes the file;
  a transient failure (network, 5xx, 429, 401/403) backs off exponentially
  with jitter up to ``max_backoff``; a refusal for good (422, 409, 413) moves
  the file to ``spool/rejected`` with the reason.

No proxy can hold a round: each check ends within its cap (see
:mod:`resistance.probe.runner`), and the agent bounds each check with its
diagnosis by :func:`check_limit` besides; a check cut off there is recorded
as failed with reason ``slow`` at the step it had reached.  So a round ends
by its last due time plus ``check_limit`` for each check a worker waits
behind (with the default 128 workers, one), and its results are signed and
spooled then, whatever some proxies do.

On SIGTERM the round is cancelled (checks in flight are dropped, never
half-recorded), results already made are signed and spooled, and the
uploader gets ``drain_seconds`` to send what it can; the rest waits on disk
for the next start.  Memory is bounded by the worker count and one batch,
whatever the number of proxies.

WireGuard endpoints in the assignment are checked by a handshake from the
probe's own WireGuard key (:mod:`resistance.probe.wireguard`), which the
agent announces to the registry until it has been accepted once; operators
add announced keys as probe peers when they register, and the registry
sends a probe only to the WireGuard endpoints that added its key.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import logging
import random
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from resistance.config import Endpoint
from resistance.directory.keys import parse_public_key, public_key_text
from resistance.errors import ConfigError
from resistance.net.resolve import (
    MAX_ADDRESSES,
    NameServerResolver,
    ResolveError,
    Resolver,
    is_ip_literal,
    pin,
    resolve_all,
    system_resolver,
)
from resistance.paths import write_private
from resistance.probe.batch import MAX_RESULTS, new_batch_id, result_json, sign_batch
from resistance.probe.check import Failure, Step, StepOutcome, Timings, verdict
from resistance.probe.controls import (
    MAX_OTHER_PORTS,
    Controls,
    diagnose_check,
    main_attempt,
    tls_reach,
)
from resistance.probe.diagnose import Attempt
from resistance.probe.keys import load_or_create_probe_key, load_or_create_wireguard_key
from resistance.probe.mtproto import run_mtproto_check
from resistance.probe.net import Network, SocketNetwork
from resistance.probe.runner import (
    Canary,
    CheckResult,
    CheckSettings,
    Target,
    attributable,
    canary_answers,
    check_cap,
    required_steps,
    run_check,
)
from resistance.probe.spool import Spool
from resistance.probe.wireguard import key_announcement, run_wireguard_check
from resistance.vpn.noise import HandshakeError

log = logging.getLogger("resistance.probe")

ASSIGNMENT_FILE = "assignment.json"
SPOOL_DIR = "spool"
ASSIGNMENT_PATH = "/api/v1/probe/assignment"
UPLOAD_PATH = "/api/v1/probe/batches"
WIREGUARD_KEY_PATH = "/api/v1/probe/wireguard-key"
PROBER_KEY_PATH = "/api/v1/wireguard/prober-key"
ROUNDS_TASK = "probe-rounds"
UPLOADER_TASK = "probe-uploader"


@dataclass(frozen=True, slots=True)
class AgentSettings:
    registry: str
    token: str
    vantage: str
    country: str
    state_dir: Path
    source: str | None = None
    concurrency: int = 128
    check: CheckSettings = field(default_factory=CheckSettings)
    batch_size: int = MAX_RESULTS
    #: A round never restarts sooner than this after the previous one started.
    min_round_seconds: float = 1.0
    max_backoff: float = 60.0
    http_timeout: float = 15.0
    drain_seconds: float = 5.0
    #: Stop after this many rounds (None: run until signalled).
    rounds: int | None = None
    #: The DNS server that resolves proxies registered by name (None: the host's resolver).
    dns: Endpoint | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= MAX_RESULTS:
            raise ConfigError(f"batch size must be 1-{MAX_RESULTS}")
        if not 1 <= self.concurrency <= 10_000:
            raise ConfigError("concurrency must be 1-10000")
        if len(self.country) != 2 or not self.country.isalpha() or not self.country.isupper():
            raise ConfigError(f"country must be two capital letters, not {self.country!r}")


@dataclass(frozen=True, slots=True)
class Assignment:
    vantage: str
    country: str
    round_seconds: int
    canary: Canary | None
    targets: tuple[tuple[int, Target], ...]  # (due_ms, target), sorted by due
    #: A proxy that is up and unlisted, for control checks (see :mod:`.controls`).
    control: Target | None = None
    #: Per proxy id: the other ports of its host, and the control vantages' latest view.
    hints: dict[int, tuple[tuple[int, ...], bool | None]] = field(default_factory=dict)


def parse_assignment(raw: Any) -> Assignment:
    """The registry's assignment; raises ``ValueError`` if it is not one."""
    if not isinstance(raw, dict):
        raise ValueError("assignment is not an object")
    canary_raw = raw.get("canary")
    canary = None
    if isinstance(canary_raw, dict):
        canary = Canary(
            str(canary_raw["host"]),
            int(canary_raw["port"]),
            parse_public_key(str(canary_raw["public_key"])),
        )
    targets = []
    hints: dict[int, tuple[tuple[int, ...], bool | None]] = {}
    control = None
    control_raw = raw.get("control_proxy")
    if isinstance(control_raw, dict):
        control = Target(
            str(control_raw["host"]),
            int(control_raw["port"]),
            str(control_raw["username"]),
            str(control_raw["password"]),
        )
    for p in raw["proxies"]:
        protocol = str(p.get("protocol", "socks5"))
        wg_key = p.get("wg_public_key")
        if protocol in ("wireguard", "amneziawg") and not isinstance(wg_key, str):
            raise ValueError("a WireGuard target without its server key")
        awg = p.get("amnezia")
        if protocol == "amneziawg" and not isinstance(awg, dict):
            raise ValueError("an AmneziaWG target without its parameters")
        mt_secret = p.get("mtproto_secret")
        if protocol == "mtproto" and not isinstance(mt_secret, str):
            raise ValueError("an MTProto target without its secret")
        target = Target(
            str(p["host"]),
            int(p["port"]),
            str(p["username"]),
            str(p["password"]),
            int(p["proxy_id"]),
            protocol,
            wg_key if protocol in ("wireguard", "amneziawg") else None,
            mt_secret if protocol == "mtproto" else None,
            awg if protocol == "amneziawg" else None,
            _addresses(p.get("addresses")),
        )
        targets.append((int(p["due_ms"]), target))
        ports = p.get("control_ports") or []
        outside = p.get("outside_ok")
        if not isinstance(ports, list) or not isinstance(outside, bool | None):
            raise ValueError("control_ports is a list and outside_ok a boolean or null")
        hints[target.proxy_id] = (tuple(int(x) for x in ports[:MAX_OTHER_PORTS]), outside)
    targets.sort(key=lambda item: item[0])
    return Assignment(
        str(raw["vantage"]), str(raw["country"]), int(raw["round_seconds"]), canary,
        tuple(targets), control, hints,
    )  # fmt: skip


def _addresses(value: Any) -> tuple[str, ...]:
    """A name target's proven addresses (IP literals), or ``()`` for an address target."""
    if value is None:
        return ()
    if not isinstance(value, list) or not value or not all(is_ip_literal(str(a)) for a in value):
        raise ValueError("addresses is a non-empty list of IP addresses")
    return tuple(str(a) for a in value[:MAX_ADDRESSES])


async def pinned(target: Target, resolver: Resolver, *, within: float) -> tuple[Target, str | None]:
    """The target to measure, with a name's address pinned for the whole measurement,
    and ``None``; or the target and why nothing may be dialled (the name did not
    resolve, or resolves to no proven address: see :mod:`resistance.net.resolve`)."""
    if not target.addresses or is_ip_literal(target.host):
        return target, None
    try:
        resolved = await resolve_all(target.host, resolver, within=within)
    except ResolveError as exc:
        return target, f"dns: {exc}"
    address = pin(resolved, target.addresses)
    if address is None:
        return target, (
            f"dns: {target.host} resolves to {', '.join(resolved)}, none of the proven "
            f"{', '.join(target.addresses)}: the operator must register it again"
        )
    return dataclasses.replace(target, host=address, name=target.host), None


def unresolved(target: Target, canary: Canary | None, why: str, *, at: int) -> CheckResult:
    """A measurement that dialled nothing: failed at its first step, ``unreachable``."""
    if target.protocol in ("wireguard", "amneziawg"):
        required: tuple[Step, ...] = (Step.HANDSHAKE,)
    elif target.protocol == "mtproto":
        required = (Step.TCP, Step.RESPQ)
    else:
        required = required_steps(target, canary)
    outcomes = [StepOutcome(required[0], Failure.UNREACHABLE, why[:200])]
    return CheckResult(
        target=target,
        at=at,
        outcomes=outcomes,
        verdict=verdict(outcomes, required=required),
        timings=Timings(),
        required=required,
    )


class Upload(enum.Enum):
    DONE = "done"
    RETRY = "retry"
    REJECTED = "rejected"


class RegistryLink:
    """The agent's HTTP client for its registry."""

    def __init__(self, settings: AgentSettings) -> None:
        self.base = settings.registry.rstrip("/")
        self.client = httpx.AsyncClient(
            timeout=settings.http_timeout,
            headers={"Authorization": f"Bearer {settings.token}"},
        )

    async def assignment(self) -> Any:
        response = await self.client.get(self.base + ASSIGNMENT_PATH)
        if response.status_code in (401, 403):
            raise ConfigError(f"registry refused the probe token ({_error(response)})")
        response.raise_for_status()
        return response.json()

    async def prober_key(self) -> str | None:
        """The registry's WireGuard prober key (what the announcement's proof is made with)."""
        try:
            response = await self.client.get(self.base + PROBER_KEY_PATH)
            key = response.json().get("public_key") if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        return key if isinstance(key, str) else None

    async def announce_wireguard_key(self, body: dict[str, object]) -> str | None:
        """Tell the registry our WireGuard key (signed); None when accepted, else why not."""
        try:
            response = await self.client.put(self.base + WIREGUARD_KEY_PATH, json=body)
        except httpx.HTTPError as exc:
            return f"registry unreachable: {type(exc).__name__}"
        if response.status_code == 200:
            return None
        return f"HTTP {response.status_code}: {_error(response)}"

    async def upload(self, data: bytes) -> tuple[Upload, str]:
        try:
            response = await self.client.post(
                self.base + UPLOAD_PATH,
                content=data,
                headers={"Content-Type": "application/json"},
            )
        except httpx.HTTPError as exc:
            return Upload.RETRY, f"registry unreachable: {type(exc).__name__}"
        code = response.status_code
        if code in (200, 201):
            return Upload.DONE, "stored" if code == 201 else "already stored"
        if code in (401, 403, 408, 429) or code >= 500:
            return Upload.RETRY, f"HTTP {code}: {_error(response)}"
        return Upload.REJECTED, f"HTTP {code}: {_error(response)}"

    async def close(self) -> None:
        await self.client.aclose()


def _error(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase
    return str(body.get("error", "")) if isinstance(body, dict) else response.reason_phrase


@dataclass(slots=True)
class RoundStats:
    checked: int = 0
    ok: int = 0
    seconds: float = 0.0


class Agent:
    def __init__(
        self,
        settings: AgentSettings,
        *,
        network: Network | None = None,
        link: RegistryLink | None = None,
    ) -> None:
        self.settings = settings
        self.state_dir = settings.state_dir
        self.key = load_or_create_probe_key(settings.state_dir)
        self.probe_key = public_key_text(self.key.public_key())
        self.wg_key = load_or_create_wireguard_key(settings.state_dir)
        self.wg_announced = False
        self.spool = Spool(settings.state_dir / SPOOL_DIR)
        self.network = network or SocketNetwork(settings.source)
        self.link = link or RegistryLink(settings)
        #: How targets registered by name are resolved, per measurement (tests inject theirs).
        self.resolver: Resolver = (
            NameServerResolver(settings.dns.host, settings.dns.port)
            if settings.dns is not None
            else system_resolver
        )
        self.pending: list[dict[str, Any]] = []
        self.spooled = asyncio.Event()
        self.stop = asyncio.Event()
        self.rounds_done = 0
        self.batches_made = 0
        self.last_round = RoundStats()
        #: This round's check of the control proxy (see :meth:`_control_check`).
        self.control_task: asyncio.Task[CheckResult] | None = None

    # --- batches ----------------------------------------------------------------------

    def add_result(self, result: dict[str, Any]) -> None:
        self.pending.append(result)
        if len(self.pending) >= self.settings.batch_size:
            self.flush()

    def flush(self) -> None:
        """Sign what is pending into a batch and spool it."""
        if not self.pending:
            return
        results, self.pending = self.pending, []
        batch_id = new_batch_id()
        data = sign_batch(
            key=self.key,
            probe_key=self.probe_key,
            batch_id=batch_id,
            vantage=self.settings.vantage,
            country=self.settings.country,
            created_at=int(time.time()),
            results=results,
        )
        self.spool.put(batch_id, data)
        self.batches_made += 1
        log.info("signed batch %s (%d results)", batch_id, len(results))
        self.spooled.set()

    # --- assignment -------------------------------------------------------------------

    async def fetch_assignment(self) -> Assignment | None:
        cache = self.state_dir / ASSIGNMENT_FILE
        try:
            raw = await self.link.assignment()
            assignment = parse_assignment(raw)
            write_private(cache, json.dumps(raw))
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            log.warning("cannot get an assignment (%s); using the last one", type(exc).__name__)
            try:
                assignment = parse_assignment(json.loads(cache.read_text()))
            except (OSError, ValueError, KeyError, TypeError):
                return None
        if (assignment.vantage, assignment.country) != (
            self.settings.vantage,
            self.settings.country,
        ):
            raise ConfigError(
                f"this token belongs to vantage {assignment.vantage} ({assignment.country}), "
                f"not {self.settings.vantage} ({self.settings.country})"
            )
        return assignment

    # --- one round --------------------------------------------------------------------

    async def _canary_alive(self, assignment: Assignment) -> bool:
        if assignment.canary is None:
            return True
        return await canary_answers(
            assignment.canary, self.network, seconds=self.settings.check.step_timeout
        )

    async def run_round(self, assignment: Assignment) -> RoundStats:
        """Check every assigned proxy once; results go to batches at the end.

        The canary is asked directly before and after: if it is silent before,
        no proxy can be judged and the round is skipped; if it fell silent
        during the round, failures at its end are dropped, not blamed on proxies.
        """
        stats = RoundStats()
        started = time.monotonic()
        if not await self._canary_alive(assignment):
            log.warning("the canary does not answer: round skipped (no proxy can be judged)")
            stats.seconds = time.monotonic() - started
            return stats
        results: list[CheckResult] = []
        queue: asyncio.Queue[Target | None] = asyncio.Queue(maxsize=self.settings.concurrency)
        workers = min(self.settings.concurrency, max(1, len(assignment.targets)))

        async def produce() -> None:
            for due_ms, target in assignment.targets:
                delay = started + due_ms / 1000 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await queue.put(target)
            for _ in range(workers):
                await queue.put(None)

        async def work() -> None:
            while (target := await queue.get()) is not None:
                result = await self._bounded_check(target, assignment)
                stats.checked += 1
                stats.ok += result.verdict.ok
                results.append(result)

        self._take_control_task()
        tasks = [asyncio.create_task(produce(), name="probe-schedule")]
        tasks += [asyncio.create_task(work(), name=f"probe-worker-{i}") for i in range(workers)]
        try:
            await asyncio.gather(*tasks)
        finally:
            control = self._take_control_task()
            for task in tasks:
                task.cancel()
            if control is not None:
                control.cancel()
                await asyncio.gather(control, return_exceptions=True)
            await asyncio.gather(*tasks, return_exceptions=True)
            try:
                alive = await self._canary_alive(assignment)
            except asyncio.CancelledError:
                # Stopping: keep only what cannot be the canary's fault.
                self._keep(results, alive=False)
                raise
            self._keep(results, alive=alive)
        stats.seconds = time.monotonic() - started
        return stats

    async def _bounded_check(self, target: Target, assignment: Assignment) -> CheckResult:
        """One proxy's check with its diagnosis, cut off at :func:`check_limit`."""
        settings = self.settings.check
        seen: list[StepOutcome] = []
        started = time.monotonic()
        limit = check_limit(settings)
        target, why = await pinned(target, self.resolver, within=settings.step_timeout)
        if why is not None:
            log.info("proxy %d: not measured: %s", target.proxy_id, why)
            return unresolved(target, assignment.canary, why, at=int(time.time()))
        try:
            async with asyncio.timeout(limit):
                if target.protocol in ("wireguard", "amneziawg"):
                    return await run_wireguard_check(
                        target, self.wg_key.private, settings, source=self.settings.source
                    )
                if target.protocol == "mtproto":
                    return await run_mtproto_check(target, settings, source=self.settings.source)
                result = await run_check(
                    target, assignment.canary, self.network, settings,
                    on_step=seen.append, probe_key=self.probe_key,
                )  # fmt: skip
                await self._diagnose(result, assignment)
                return result
        except TimeoutError:
            log.warning("proxy %d: check cut off after %g s", target.proxy_id, limit)
            return cut_off(target, assignment.canary, seen, started_at=started, seconds=limit)

    def _take_control_task(self) -> asyncio.Task[CheckResult] | None:
        task, self.control_task = self.control_task, None
        return task

    async def _control_check(self, assignment: Assignment) -> Attempt | None:
        """The control proxy's check, made once per round for every failing proxy."""
        if assignment.control is None:
            return None
        if self.control_task is None:
            self.control_task = asyncio.create_task(
                run_check(assignment.control, assignment.canary, self.network, self.settings.check),
                name="probe-control-check",
            )
        return main_attempt(await asyncio.shield(self.control_task))

    async def _diagnose(self, result: CheckResult, assignment: Assignment) -> None:
        """Name the mechanism of a failed SOCKS5 check from control experiments, and
        measure the node's TLS listener beside it (its reach as a second transport)."""
        proxy_id = result.target.proxy_id
        ports, outside = assignment.hints.get(proxy_id, ((), None))
        if not result.verdict.ok:
            controls = Controls(
                other_ports=ports,
                control=assignment.control,
                control_seen=await self._control_check(assignment),
                outside_ok=outside,
            )
            result.evidence, result.diagnosis = await diagnose_check(
                result,
                canary=assignment.canary,
                network=self.network,
                settings=self.settings.check,
                controls=controls,
                listed_ok=assignment.canary is not None,  # the round runs only if it answered
            )
            log.info("proxy %d: %s", proxy_id, result.diagnosis)
        if ports:
            result.transports["tls"] = await tls_reach(
                result,
                ports[0],
                seconds=self.settings.check.step_timeout,
                outside_ok=outside,
                source=self.settings.source,
                canary=assignment.canary,
                settings=self.settings.check,
                plain_evidence=result.evidence,
            )

    def _keep(self, results: list[CheckResult], *, alive: bool) -> None:
        """Batch the results that can be attributed to their proxies."""
        kept = [r for r in results if attributable(r, canary_alive=alive)]
        if len(kept) < len(results):
            log.warning(
                "the canary fell silent during the round: %d failures at its end dropped",
                len(results) - len(kept),
            )
        for result in kept:
            self.add_result(result_json(result))

    async def announce_wireguard_key(self) -> None:
        """Announce the WireGuard key once per run (retried each round until accepted)."""
        if self.wg_announced:
            return
        prober = await self.link.prober_key()
        if prober is None:
            log.warning("cannot read the registry's WireGuard prober key; will retry")
            return
        try:
            body = key_announcement(
                self.key, self.wg_key, probe_key=self.probe_key, prober_key=prober,
                at=int(time.time()),
            )  # fmt: skip
        except (ConfigError, HandshakeError) as exc:
            log.warning("the registry's WireGuard prober key is unusable (%s); will retry", exc)
            return
        refused = await self.link.announce_wireguard_key(body)
        if refused is None:
            self.wg_announced = True
            log.info("WireGuard key %s announced", self.wg_key.public_text)
        else:
            log.warning("cannot announce the WireGuard key (%s); will retry", refused)

    async def rounds(self) -> None:
        backoff = 1.0
        while not self.stop.is_set():
            await self.announce_wireguard_key()
            assignment = await self.fetch_assignment()
            if assignment is None:
                await self._sleep(backoff)
                backoff = min(backoff * 2, self.settings.max_backoff)
                continue
            backoff = 1.0
            started = time.monotonic()
            self.last_round = await self.run_round(assignment)
            self.flush()
            self.rounds_done += 1
            log.info(
                "round %d: %d proxies checked, %d functional, %.1f s",
                self.rounds_done, self.last_round.checked, self.last_round.ok,
                self.last_round.seconds,
            )  # fmt: skip
            if self.settings.rounds is not None and self.rounds_done >= self.settings.rounds:
                return
            period = max(assignment.round_seconds, self.settings.min_round_seconds)
            await self._sleep(started + period - time.monotonic())

    async def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), seconds)

    # --- uploads ----------------------------------------------------------------------

    async def upload_pending(self) -> bool:
        """Send spooled batches oldest first; False when one must be retried later."""
        for path in self.spool.pending():
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            outcome, why = await self.link.upload(data)
            batch_id = Spool.batch_id(path)
            if outcome is Upload.DONE:
                self.spool.done(path)
                log.info("uploaded batch %s (%s)", batch_id, why)
            elif outcome is Upload.REJECTED:
                self.spool.reject(path, why)
                log.error("registry refused batch %s for good: %s", batch_id, why)
            else:
                log.warning("upload of batch %s failed (%s); will retry", batch_id, why)
                return False
        return True

    async def uploader(self) -> None:
        backoff = 1.0
        while not self.stop.is_set():
            self.spooled.clear()
            if await self.upload_pending():
                backoff = 1.0
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.spooled.wait(), 5.0)
            else:
                await self._sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, self.settings.max_backoff)

    async def drain(self, seconds: float) -> bool:
        """Try to empty the spool within ``seconds``; True if it is empty."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                for _attempt in range(int(seconds / 0.5) + 1):
                    if await self.upload_pending():
                        return True
                    await asyncio.sleep(0.5)
        return not self.spool.pending()

    # --- whole life -------------------------------------------------------------------

    async def run(self) -> int:
        rounds = asyncio.create_task(self.rounds(), name=ROUNDS_TASK)
        uploader = asyncio.create_task(self.uploader(), name=UPLOADER_TASK)
        stopping = asyncio.create_task(self.stop.wait(), name="probe-stop")
        try:
            await asyncio.wait({rounds, stopping}, return_when=asyncio.FIRST_COMPLETED)
            self.stop.set()
            rounds.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rounds  # re-raises what ended it (a refused token, say)
            self.flush()
            uploader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await uploader
            if not await self.drain(self.settings.drain_seconds):
                left = len(self.spool.pending())
                log.warning("%d batch(es) wait in the spool for the next start", left)
        finally:
            self.stop.set()
            for task in (rounds, uploader, stopping):
                task.cancel()
            await asyncio.gather(rounds, uploader, stopping, return_exceptions=True)
            await self.link.close()
        return 0


def run_agent(settings: AgentSettings) -> int:
    """Run the agent until SIGTERM/SIGINT (or its round count); the process's exit code."""

    async def main() -> int:
        agent = Agent(settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.stop.set)
        log.info("probe %s (%s) key %s", settings.vantage, settings.country, agent.probe_key)
        return await agent.run()

    return asyncio.run(main())


def check_limit(settings: CheckSettings) -> float:
    """The longest the agent waits for one proxy's check and its diagnosis: the
    check's cap twice (the diagnosis repeats the check once) and a step more."""
    return 2 * check_cap(settings) + settings.step_timeout


def cut_off(
    target: Target,
    canary: Canary | None,
    seen: Sequence[StepOutcome],
    *,
    started_at: float,
    seconds: float,
) -> CheckResult:
    """The result of a check the agent stopped: failed ``slow`` at the step it had reached."""
    if target.protocol == "wireguard":
        required: tuple[Step, ...] = (Step.HANDSHAKE,)
    elif target.protocol == "mtproto":
        required = (Step.TCP, Step.RESPQ)
    else:
        required = required_steps(target, canary)
    passed = [o for o in seen if o.passed]
    done = {o.step for o in passed}
    if seen and not seen[-1].passed:  # the check itself ended; its diagnosis did not
        outcomes = list(seen)
    else:
        step = next((s for s in required if s not in done), required[-1])
        outcomes = [*passed, StepOutcome(step, Failure.SLOW, f"check cut off after {seconds:g} s")]
    at = int(time.time() - (time.monotonic() - started_at))
    return CheckResult(
        target=target,
        at=at,
        outcomes=outcomes,
        verdict=verdict(outcomes, required=required),
        timings=Timings(),
        required=required,
    )


def targets_from(entries: Sequence[Target]) -> Assignment:
    """An assignment of ``entries``, all due at once (benchmarks, one-off checks)."""
    return Assignment("", "", 0, None, tuple((0, t) for t in entries))
