"""`resist probe`: the measuring agent, a one-off check, and the probe's key."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click

from resistance.clikit import CONTEXT, one_line_errors, setup_logging
from resistance.errors import ConfigError
from resistance.paths import resolve_state_dir


@click.group(context_settings=CONTEXT)
def probe() -> None:
    """Measure proxies the way users use them, from inside and outside the block.

    \b
    Examples:
      resist probe key --state-dir /var/lib/resist-probe
      resist probe wg-key --state-dir /var/lib/resist-probe
      resist probe run --registry https://reg.example --token rst_... \\
          --vantage msk-1 --country RU
      resist probe check socks5://alice:s3cret@203.0.113.7:1080 --registry https://reg.example
      resist probe status --registry https://reg.example --token rst_ADMIN
    """


@probe.command(context_settings=CONTEXT)
@click.option("--state-dir", type=click.Path(path_type=Path), help="The probe's state directory.")
@one_line_errors
def key(state_dir: Path | None) -> None:
    """Print this probe's public key (made on first use); give it to the registry's admin.

    \b
    Example:
      resist probe key --state-dir /var/lib/resist-probe
    """
    from resistance.directory.keys import public_key_text
    from resistance.probe.keys import load_or_create_probe_key

    click.echo(public_key_text(load_or_create_probe_key(resolve_state_dir(state_dir)).public_key()))


@probe.command("wg-key", context_settings=CONTEXT)
@click.option("--state-dir", type=click.Path(path_type=Path), help="The probe's state directory.")
@one_line_errors
def wg_key(state_dir: Path | None) -> None:
    """Print this probe's WireGuard public key (made on first use).

    `probe run` announces it to the registry by itself; operators of WireGuard
    endpoints add it with `resist vpn register` (or by hand with `resist vpn
    add-probe`), and only then is the probe sent to check their endpoints.

    \b
    Example:
      resist probe wg-key --state-dir /var/lib/resist-probe
    """
    from resistance.probe.keys import load_or_create_wireguard_key

    click.echo(load_or_create_wireguard_key(resolve_state_dir(state_dir)).public_text)


@probe.command(context_settings=CONTEXT)
@click.option("--registry", "registry_url", required=True, metavar="URL", help="Registry URL.")
@click.option("--token", required=True, envvar="RESIST_PROBE_TOKEN", help="This probe's token.")
@click.option("--vantage", required=True, metavar="NAME", help="This vantage's account name.")
@click.option("--country", required=True, metavar="CC", help="Where it measures from (RU, DE…).")
@click.option("--state-dir", type=click.Path(path_type=Path), help="Key, spool, assignment.")
@click.option("--source", metavar="IP", help="Local address to connect from (multi-homed hosts).")
@click.option("--dns", metavar="HOST:PORT",
              help="Resolve proxies registered by name with this DNS server (default: the "
              "host's); inside a censored network, the ISP's shows poisoning.")  # fmt: skip
@click.option("--concurrency", type=click.IntRange(1, 10_000), default=128, show_default=True)
@click.option("--step-timeout", type=click.FloatRange(min=0, min_open=True), default=5.0,
              show_default=True, metavar="S",
              help="Idle timeout of each step of a check; a step still unfinished after "
              "twice this is cut off as slow (a check ends within 9 S + 20 s).")  # fmt: skip
@click.option("--rounds", type=click.IntRange(1), help="Stop after this many rounds.")
@click.option("--min-round", type=click.FloatRange(min=0), default=1.0, show_default=True,
              metavar="S", help="Never start rounds closer together than this.")  # fmt: skip
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@one_line_errors
def run(
    registry_url: str,
    token: str,
    vantage: str,
    country: str,
    state_dir: Path | None,
    source: str | None,
    dns: str | None,
    concurrency: int,
    step_timeout: float,
    rounds: int | None,
    min_round: float,
    verbose: int,
) -> None:
    """Run the measuring agent until SIGTERM.

    It pulls its assignment, checks every proxy at its (random) time, signs
    each batch of results with its own key and uploads it.  Batches wait on
    disk while the registry is unreachable and are sent when it is back; a
    restart loses nothing.  The token may come from $RESIST_PROBE_TOKEN.

    \b
    Example:
      resist probe run --registry https://reg.example --token rst_... \\
          --vantage msk-1 --country RU --state-dir /var/lib/resist-probe
    """
    from resistance.net.resolve import dns_server
    from resistance.probe.agent import AgentSettings, run_agent
    from resistance.probe.runner import CheckSettings

    setup_logging(verbose + 1)
    settings = AgentSettings(
        registry=registry_url,
        token=token,
        vantage=vantage,
        country=country.upper(),
        state_dir=resolve_state_dir(state_dir),
        source=source,
        concurrency=concurrency,
        check=CheckSettings(step_timeout=step_timeout),
        rounds=rounds,
        min_round_seconds=min_round,
        dns=dns_server(dns) if dns else None,
    )
    sys.exit(run_agent(settings))


@probe.command(context_settings=CONTEXT)
@click.argument("proxy_url")
@click.option("--canary", metavar="HOST:PORT", help="A canary to reach through the proxy.")
@click.option("--canary-key", metavar="KEY", help="The canary's public key (verifies its answer).")
@click.option("--registry", "registry_url", metavar="URL", help="Learn canary and key from here.")
@click.option("--step-timeout", type=click.FloatRange(min=0, min_open=True), default=5.0,
              show_default=True, metavar="S",
              help="Idle timeout of each step; a step still unfinished after twice this "
              "is cut off as slow.")  # fmt: skip
@click.option(
    "--other-port",
    "other_ports",
    multiple=True,
    type=click.IntRange(1, 65535),
    metavar="PORT",
    help="Control: another port of the same host (its TLS port).",
)
@click.option(
    "--control",
    metavar="URL",
    help="Control: the same check through this proxy (socks5://USER:PASS@HOST:PORT, one that "
    "is up and on no censor's list).",
)
@click.option(
    "--listed",
    metavar="HOST:PORT",
    help="Control: a host the network is known to let through (for a whitelist).",
)
@click.option(
    "--outside",
    type=click.Choice(["ok", "failed"]),
    help="Control: what a check from outside the censored network saw.",
)
@one_line_errors
def check(
    proxy_url: str,
    canary: str | None,
    canary_key: str | None,
    registry_url: str | None,
    step_timeout: float,
    other_ports: tuple[int, ...],
    control: str | None,
    listed: str | None,
    outside: str | None,
) -> None:
    """Check one proxy now, step by step, and print the verdict.

    Without a canary the check ends after authentication; with one it goes
    through the proxy and back, and with the canary's key (or --registry)
    it verifies that the answer really came from the canary.  A failed check
    runs the control experiments given (--other-port, --control, --listed,
    --outside) and names the mechanism: down, blocked-ip,
    blocked-fingerprint, frozen (with the byte count), whitelisted-out,
    or inconclusive.  Exit status 0 when every step passed, 1 otherwise.

    \b
    Examples:
      resist probe check socks5://alice:s3cret@203.0.113.7:1080
      resist probe check socks5://alice:s3cret@203.0.113.7:1080 --registry https://reg.example
      resist probe check socks5://u:p@127.0.0.1:1080 --canary 127.0.0.1:9900 --canary-key KEY
      resist probe check 'tg://proxy?server=203.0.113.7&port=443&secret=ee...'
      resist probe check socks5://u:p@203.0.113.7:1080 --other-port 443 \\
          --control socks5://u:p@198.51.100.9:1080 --outside ok
    """
    from rich.console import Console
    from rich.table import Table

    from resistance.config import parse_endpoint
    from resistance.directory.keys import parse_public_key
    from resistance.links import parse_socks_url
    from resistance.probe.check import StepOutcome
    from resistance.probe.net import SocketNetwork
    from resistance.probe.runner import Canary, CheckSettings, Target, run_check

    if not proxy_url.strip().lower().startswith("socks5"):  # tg://proxy, t.me/proxy, mtproto://
        raise SystemExit(_check_mtproto(proxy_url, step_timeout))
    proxy = parse_socks_url(proxy_url)
    if registry_url and not canary:
        canary, canary_key = _registry_canary(registry_url)
    target_canary = None
    if canary:
        endpoint = parse_endpoint(canary, what="canary address")
        public = None
        if canary_key:
            try:
                public = parse_public_key(canary_key)
            except ValueError as exc:
                raise ConfigError(f"bad canary key: {exc}") from None
        target_canary = Canary(endpoint.host, endpoint.port, public)
    console = Console()

    def show(outcome: StepOutcome) -> None:
        mark = "[green]ok[/]" if outcome.passed else f"[red]{outcome.failure}[/]"
        extra = f" {outcome.detail}" if outcome.detail else ""
        console.print(f"  {outcome.step.value:<9} {mark} {outcome.micros / 1000:8.1f} ms{extra}")

    console.print(f"checking {proxy.host}:{proxy.port}")
    result = asyncio.run(
        run_check(
            Target(proxy.host, proxy.port, proxy.username, proxy.password),
            target_canary,
            SocketNetwork(),
            CheckSettings(step_timeout=step_timeout),
            on_step=show,
        )
    )
    table = Table("measure", "value")
    t = result.timings
    for name, value, unit in (
        ("TCP connect", t.tcp_us, "ms"),
        ("ready to send (TCP + SOCKS5)", t.connect_us, "ms"),
        ("time to first byte", t.ttfb_us, "ms"),
    ):
        table.add_row(name, "—" if value is None else f"{value / 1000:.1f} {unit}")
    table.add_row("throughput", "—" if t.throughput_kbps is None else f"{t.throughput_kbps} kbit/s")
    console.print(table)
    if target_canary is None:
        console.print("[yellow]no canary: checked up to authentication only[/]")
    elif target_canary.public_key is None and result.verdict.ok:
        console.print("[yellow]canary answer not verified (give --canary-key or --registry)[/]")
    style = "green" if result.verdict.ok else "red"
    console.print(f"verdict: [{style}]{result.verdict}[/]")
    if not result.verdict.ok:
        _explain(console, result, target_canary, step_timeout, other_ports, control, listed,
                 outside)  # fmt: skip
    sys.exit(0 if result.verdict.ok else 1)


@probe.command(context_settings=CONTEXT)
@click.option("--registry", "registry_url", required=True, metavar="URL", help="Registry URL.")
@click.option("--token", required=True, envvar="RESIST_ADMIN_TOKEN", help="The admin token.")
@click.option("--offset", type=click.IntRange(0, 2**31), default=0, help="Skip this many probes.")
@click.option("--limit", type=click.IntRange(1, 500), default=100, show_default=True,
              help="Show at most this many probes.")  # fmt: skip
@one_line_errors
def status(registry_url: str, token: str, offset: int, limit: int) -> None:
    """The probe fleet as the registry sees it (admin).

    Per probe: its vantage network (the controls together, or its country),
    whether it is live (a batch within 1.5 rounds; a silent probe's proxies go
    to the next probes of its network), its share of the active proxies, its
    last batch and assignment pull, and how often its latest result went
    against the majority of its peers on the same proxy: a probe outvoted too
    often is flagged as lying or broken.

    \b
    Example:
      resist probe status --registry https://reg.example --token rst_ADMIN --limit 50
    """
    from rich.console import Console
    from rich.table import Table

    from resistance.registry.client import call_registry

    answer = call_registry(
        registry_url, f"/api/v1/probes/status?offset={offset}&limit={limit}", token=token
    )
    now = answer["now"]
    table = Table(
        title=f"{answer['total']} probes, {answer['active_proxies']} active proxies, "
        f"{answer['replicas']} probes per proxy and network, rounds of {answer['round_seconds']} s"
    )
    for name in ("id", "probe", "network", "state", "share", "last batch", "last pull"):
        table.add_column(name, justify="right" if name in ("id", "share") else "left")
    table.add_column("outvoted", justify="right")
    table.add_column("flag")
    for p in answer["probes"]:
        rate = p["disagreement"]
        outvoted = "—" if rate is None else f"{rate:.0%} of {p['compared']}"
        table.add_row(
            str(p["probe_id"]),
            p["name"],
            p["network"],
            "live" if p["live"] else "silent",
            str(p["share"]),
            _ago(now, p["last_batch_at"]),
            _ago(now, p["last_assignment_at"]),
            outvoted,
            "FLAGGED: not voting" if p["flagged"] else "",
        )
    Console(width=160).print(table)
    shown = len(answer["probes"])
    if offset + shown < answer["total"]:
        click.echo(f"probes {offset + 1}-{offset + shown} of {answer['total']}; "
                   f"next: --offset {offset + shown}")  # fmt: skip


def _ago(now: int, at: int | None) -> str:
    if at is None:
        return "never"
    seconds = max(now - at, 0)
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def _explain(
    console: Any,
    result: Any,
    canary: Any,
    step_timeout: float,
    other_ports: tuple[int, ...],
    control: str | None,
    listed: str | None,
    outside: str | None,
) -> None:
    """Run the controls given beside a failed check and print the mechanism they name."""
    from resistance.config import parse_endpoint
    from resistance.links import parse_socks_url
    from resistance.probe.controls import Controls, diagnose_check, tcp_attempt
    from resistance.probe.net import SocketNetwork
    from resistance.probe.runner import CheckSettings, Target

    control_target = None
    if control:
        proxy = parse_socks_url(control)
        control_target = Target(proxy.host, proxy.port, proxy.username, proxy.password)
    listed_at = parse_endpoint(listed, what="listed host") if listed else None
    settings = CheckSettings(step_timeout=step_timeout)

    async def run() -> Any:
        network = SocketNetwork()
        listed_ok = False
        if listed_at is not None:
            reached = await tcp_attempt(network, listed_at.host, listed_at.port, step_timeout)
            listed_ok = reached.ok
        controls = Controls(
            other_ports=other_ports,
            control=control_target,
            outside_ok=None if outside is None else outside == "ok",
        )
        return await diagnose_check(
            result, canary=canary, network=network, settings=settings, controls=controls,
            listed_ok=listed_ok,
        )  # fmt: skip

    evidence, diagnosis = asyncio.run(run())
    for name, attempt in evidence.to_json().items():
        if isinstance(attempt, dict) and name != "main":
            state = "ok" if attempt["ok"] else f"{attempt['stage']}: {attempt['failure']}"
            console.print(f"  control {name:<13} {state}")
    console.print(f"why: [bold]{diagnosis}[/]")


def _registry_canary(url: str) -> tuple[str, str]:
    import httpx

    try:
        response = httpx.get(url.rstrip("/") + "/api/v1/probe/canary", timeout=10)
        body = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise ConfigError(f"cannot ask {url} for its canary: {exc}") from None
    if response.status_code != 200 or not isinstance(body, dict):
        raise ConfigError(f"registry has no canary ({response.status_code})")
    host = str(body.get("host", ""))
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{body.get('port')}", str(body.get("public_key", ""))


def _check_mtproto(link: str, step_timeout: float) -> int:
    """``check`` for an MTProto proxy link: as the app connects, up to a data centre's resPQ."""
    from resistance.links import MODE_NAMES, parse_mtproto_link
    from resistance.probe.mtproto import run_mtproto_check
    from resistance.probe.runner import CheckSettings, Target

    proxy = parse_mtproto_link(link)
    mode = MODE_NAMES[proxy.secret.mode]
    click.echo(f"checking MTProto proxy {proxy.host}:{proxy.port} ({mode})")
    target = Target(proxy.host, proxy.port, None, None, 0, "mtproto", None,
                    proxy.secret.to_hex())  # fmt: skip
    result = asyncio.run(run_mtproto_check(target, CheckSettings(step_timeout=step_timeout)))
    for outcome in result.outcomes:
        mark = "ok" if outcome.passed else str(outcome.failure)
        extra = f" {outcome.detail}" if outcome.detail else ""
        click.echo(f"  {outcome.step.value:<9} {mark} {outcome.micros / 1000:8.1f} ms{extra}")
    click.echo(str(result.verdict))
    return 0 if result.verdict.ok else 1
