"""`resist lab`: build the censorship lab, tell its story, tear it down."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from resistance.clikit import CONTEXT, one_line_errors
from resistance.config import parse_endpoint
from resistance.lab import censor, netns
from resistance.lab import topology as topo
from resistance.lab.errors import LabError
from resistance.lab.world import Lab, require_root
from resistance.paths import resolve_state_dir

NAME = click.option(
    "--name",
    default="rlab",
    show_default=True,
    help="Lab name (namespaces are NAME-censored, NAME-censor, NAME-free, NAME-domestic).",
)
STATE = click.option(
    "--state-dir", type=click.Path(path_type=Path), help="Where the lab keeps its record and logs."
)


def _lab(name: str, state_dir: Path | None) -> Lab:
    try:
        topo.Topology(name)
    except ValueError as exc:
        raise LabError(str(exc)) from None
    return Lab.load(resolve_state_dir(state_dir) / "lab" / name, name)


@click.group(context_settings=CONTEXT)
def lab() -> None:
    """A censorship lab in network namespaces: a censored network, a censor, a free world.

    \b
    Root only.  Everything lives in 198.18.0.0/15 inside the lab's own
    namespaces; nothing touches the host's network.  Examples:
      sudo resist lab demo          the whole story, narrated, then torn down
      sudo resist lab up            build it and leave it running
      sudo resist lab block 198.18.10.1
      sudo ip netns exec rlab-censored curl --socks5-hostname 127.0.0.1:1080 ...
      sudo resist lab down          remove every namespace and process it made
    """


@lab.command(context_settings=CONTEXT)
@NAME
@STATE
@one_line_errors
def up(name: str, state_dir: Path | None) -> None:
    """Build the lab: namespaces, censor, data centre stand-in, registry and three nodes.

    \b
    Example:
      sudo resist lab up && sudo resist lab status
    """
    world = _lab(name, state_dir)
    world.up(say=click.echo)
    click.echo(f"lab {name} is up; record and logs in {world.dir}")


@lab.command(context_settings=CONTEXT)
@NAME
@STATE
@one_line_errors
def down(name: str, state_dir: Path | None) -> None:
    """Stop every process the lab started and delete its namespaces.

    \b
    Example:
      sudo resist lab down --name rlab
    """
    require_root()
    stopped, removed = _lab(name, state_dir).down()
    click.echo(f"lab {name} is down: {stopped} processes stopped, {removed} namespaces removed")


@lab.command(context_settings=CONTEXT)
@NAME
@STATE
@one_line_errors
def status(name: str, state_dir: Path | None) -> None:
    """What runs in the lab, and what the censor blocks.

    \b
    Example:
      sudo resist lab status
    """
    require_root()
    report = _lab(name, state_dir).status()
    console = Console()
    table = Table(title=f"lab {name}")
    for col in ("what", "where", "state"):
        table.add_column(col)
    for ns, present in report["namespaces"].items():
        table.add_row("namespace", ns, "present" if present else "absent")
    for p in report["processes"]:
        table.add_row(
            p["role"], p["namespace"], f"pid {p['pid']} {'running' if p['alive'] else 'gone'}"
        )
    c = report.get("censor")
    if c:
        state = c.get("error") or (
            f"{c['dropped_packets']} packets dropped by ip; rules on: "
            f"{', '.join(c.get('rules_on', [])) or 'none'} (`resist lab censor status`)"
        )
        table.add_row("censor", f"{name}-censor", state)
    console.print(table)


def _censor_of(name: str) -> str:
    """The censor namespace of a lab that is up."""
    require_root()
    try:
        censor_ns = topo.Topology(name).censor
    except ValueError as exc:
        raise LabError(str(exc)) from None
    if censor_ns not in netns.namespaces():
        raise LabError(f"lab {name} is not up (`resist lab up --name {name}` builds it)")
    return censor_ns


def _ranges(prefixes: tuple[str, ...], files: tuple[Path, ...]) -> list[tuple[int, int]]:
    ranges = censor.ranges_of(prefixes)
    for f in files:
        try:
            data = f.read_bytes()
        except OSError as exc:
            raise LabError(f"cannot read {f}: {exc.strerror}") from None
        found, count, skipped = censor.ranges_from_file(data, str(f))
        click.echo(f"{f}: {count} prefixes, {skipped} bad lines skipped")
        ranges += found
    if not ranges:
        raise click.UsageError("give addresses/prefixes or --file")
    return ranges


@lab.command(context_settings=CONTEXT)
@click.argument("prefixes", nargs=-1)
@click.option(
    "--file",
    "files",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="A blocklist in either format `resist registry import-blocklist` reads.",
)
@NAME
@one_line_errors
def block(prefixes: tuple[str, ...], files: tuple[Path, ...], name: str) -> None:
    """Make the censor drop traffic to and from addresses or prefixes.

    \b
    Examples:
      sudo resist lab block 198.18.10.1
      sudo resist lab block --file dump.csv      (Roskomnadzor's registry dump)
    """
    censor_ns = _censor_of(name)
    ranges = _ranges(prefixes, files)
    started = time.monotonic()
    merged = censor.block(censor_ns, ranges)
    took = time.monotonic() - started
    click.echo(f"blocked {len(ranges)} prefixes ({merged} ranges) in {took:.1f} s")


@lab.command(context_settings=CONTEXT)
@click.argument("prefixes", nargs=-1, required=True)
@NAME
@one_line_errors
def unblock(prefixes: tuple[str, ...], name: str) -> None:
    """Lift a block made with `resist lab block` (exactly as it was given).

    \b
    Example:
      sudo resist lab unblock 198.18.10.1
    """
    censor.unblock(_censor_of(name), censor.ranges_of(prefixes))
    click.echo(f"unblocked {len(prefixes)} prefixes")


@lab.command(context_settings=CONTEXT)
@NAME
@STATE
@click.option("--keep", is_flag=True, help="Leave the lab up afterwards.")
@click.option(
    "--escalate",
    is_flag=True,
    help="After steps 1-3 and a cascade (7) the censor escalates (ip, socks5, sni, hello, "
    "freeze, active-probe, whitelist, the hop's hello); recovery time and the probes' "
    "verdicts per step.",
)
@one_line_errors
def demo(name: str, state_dir: Path | None, keep: bool, escalate: bool) -> None:
    """Run the whole story with narration, then a table of what happened.

    Builds the lab, then: the data centre is blocked; volunteers register
    nodes and probes measure them; the user gets through with resist connect;
    the censor blocks the node in use and the user keeps getting through; the
    probes judge it blocked; a grant round pays the nodes and Electrum signs; a
    volunteer's MTProto proxy gets a Telegram-like client through.

    With --escalate: steps 1-3, a cascade registered (7: an exit abroad, a
    bridge on domestic hosting), then today's censor switches on its rules one
    after another (steps 8-15) while the user's curl keeps being timed until it
    gets through, and the probes name the mechanism that blocked each node; the
    whitelist (14) is survived through the bridge by the application and the
    Telegram-like client, and the bridge's hop survives its hello being dropped
    (15).

    \b
    Example:
      sudo resist lab demo
      sudo resist lab demo --escalate --name esc
    """
    from resistance.lab.escalate import EscalatingStory

    world = _lab(name, state_dir)
    console = Console()

    def say(text: str) -> None:
        console.print(text, soft_wrap=True, highlight=False)

    started = time.monotonic()
    world.up(say=say)
    try:
        story = EscalatingStory(world, say)
        if escalate:
            story.run_escalation()
        else:
            story.run_all()
    finally:
        if not keep:
            stopped, removed = world.down()
            say(f"lab torn down: {stopped} processes stopped, {removed} namespaces removed")
    table = Table(title=f"the story in {time.monotonic() - started:.0f} s")
    for col in ("step", "what", "outcome"):
        table.add_column(col)
    for r in story.results:
        table.add_row(str(r.number), r.title, r.outcome)
    console.print(table)
    if escalate:
        console.print(escalation_table(story.escalations))
    if keep:
        console.print(f"the lab is still up: `resist lab down --name {name}` removes it")
    console.print(dashboard_line(world.topology, keep=keep), soft_wrap=True, highlight=False)


def dashboard_line(topology: topo.Topology, *, keep: bool) -> str:
    """Where the registry's dashboard is inside the lab (it lives as long as the lab)."""
    url = f"{topology.registry_url}/ui/"
    if keep:
        return (
            f"dashboard: {url} (inside the lab's free network, e.g. "
            f"`ip netns exec {topology.free} chromium --headless --no-sandbox "
            f"--screenshot=dashboard.png {url}`)"
        )
    return f"dashboard: {url} while the lab was up; run with --keep to browse it"


def escalation_table(steps: list[Any]) -> Table:
    """Step, rule, seconds to recovery, and the probes' verdict per blocked node."""
    table = Table(title="the censor escalates (recovery target < 3 s)")
    for col in ("step", "rule", "recovery s", "verdicts (probes inside RU)"):
        table.add_column(col)
    for s in steps:
        seconds = "not survived" if s.recovered_s is None else f"{s.recovered_s:.2f}"
        if s.telegram_s is not None or s.via_bridge:
            telegram = "not survived" if s.telegram_s is None else f"{s.telegram_s:.2f}"
            seconds = f"{seconds} (Telegram {telegram}), via the bridge"
        verdicts = "; ".join(f"node-{n}: {v}" for n, v in s.verdicts.items()) or "none blocked"
        table.add_row(str(s.number), f"{s.rule} ({s.note})", seconds, verdicts)
    return table


@lab.command(context_settings=CONTEXT, hidden=True)
@click.option("--listen", required=True, metavar="HOST:PORT")
@one_line_errors
def datacentre(listen: str) -> None:
    """Serve the data centre stand-in (the lab starts it inside the free network)."""
    from resistance.lab.datacentre import serve

    asyncio.run(serve(parse_endpoint(listen, what="listen address")))


# --- `resist lab censor`: the DPI censor's rules ---------------------------------------------

RULE_NAMES = click.Choice([*censor.RULES, "all"])


@lab.group("censor", context_settings=CONTEXT)
def censor_group() -> None:
    """Switch the censor's rules on and off, set their lists, see what they caught.

    \b
    Rules: ip (prefix blocklist), socks5, wireguard, openvpn (handshake
    fingerprints), sni (TLS server names), hello (JA3/JA4 fingerprints),
    freeze (flows stop after N bytes), whitelist (only listed prefixes
    pass), active-probe (the censor probes servers itself), all.
    Examples:
      sudo resist lab censor on socks5 wireguard openvpn
      sudo resist lab censor on sni --sni blocked.example
      sudo resist lab censor on freeze --prefix 198.18.10.0/24 --freeze-bytes 16384
      sudo resist lab censor status
    """


def _lists(
    rules: list[str],
    sni: tuple[str, ...],
    fingerprints: tuple[str, ...],
    prefixes: tuple[str, ...],
    freeze_bytes: int | None,
    probe_block: int | None,
) -> dict[str, object]:
    """The lists given on the command line, each to the rules it is for."""
    targets = [r for r in rules if r in censor.PREFIX_RULES]
    if prefixes and not targets:
        raise click.UsageError("--prefix goes with one of the rules ip, freeze, whitelist")
    lists: dict[str, object] = {"sni": sni, "fingerprints": fingerprints}
    if "freeze" in targets:
        lists["freeze_prefixes"] = prefixes
    if "whitelist" in targets:
        lists["whitelist"] = prefixes
    lists["freeze_bytes"] = freeze_bytes
    lists["probe_block_seconds"] = probe_block
    return lists


@censor_group.command("on", context_settings=CONTEXT)
@click.argument("rules", nargs=-1, required=True, type=RULE_NAMES, metavar="RULE...")
@click.option(
    "--sni",
    multiple=True,
    metavar="NAME",
    help="A server name (and its subdomains) the sni rule blocks.",
)
@click.option(
    "--fingerprint",
    "fingerprints",
    multiple=True,
    metavar="HASH",
    help="A JA3 hash or JA4 fingerprint the hello rule blocks.",
)
@click.option(
    "--prefix",
    "prefixes",
    multiple=True,
    metavar="CIDR",
    help="A prefix for the ip, freeze or whitelist rule named.",
)
@click.option(
    "--freeze-bytes",
    type=click.IntRange(1),
    help="Bytes from the server after which a flow freezes (default 16384).",
)
@click.option(
    "--probe-block",
    type=click.IntRange(1),
    metavar="SECONDS",
    help="How long an actively probed server stays blocked.",
)
@click.option(
    "--replace",
    is_flag=True,
    help="The lists given replace the rule's list instead of adding to it.",
)
@NAME
@one_line_errors
def censor_on(
    rules: tuple[str, ...],
    sni: tuple[str, ...],
    fingerprints: tuple[str, ...],
    prefixes: tuple[str, ...],
    freeze_bytes: int | None,
    probe_block: int | None,
    replace: bool,
    name: str,
) -> None:
    """Switch censor rules on, with their lists and limits (kept until changed).

    \b
    Examples:
      sudo resist lab censor on all
      sudo resist lab censor on sni --sni blocked.example --sni t.me
      sudo resist lab censor on hello --fingerprint t13i181000_85036bcba153_d41ae481755e
      sudo resist lab censor on whitelist --prefix 198.18.3.1/32
    """
    censor_ns = _censor_of(name)
    names = censor.expand(rules)
    lists = _lists(names, sni, fingerprints, prefixes, freeze_bytes, probe_block)
    if "ip" in names and prefixes:
        censor.block(censor_ns, censor.ranges_of(prefixes))
    settings = censor.enable(censor_ns, *names, replace=replace, **lists)
    click.echo(f"censor rules on: {', '.join(settings.on) or 'none'}")


@censor_group.command("off", context_settings=CONTEXT)
@click.argument("rules", nargs=-1, required=True, type=RULE_NAMES, metavar="RULE...")
@NAME
@one_line_errors
def censor_off(rules: tuple[str, ...], name: str) -> None:
    """Switch censor rules off (their lists stay, for when they are on again).

    \b
    Examples:
      sudo resist lab censor off sni hello
      sudo resist lab censor off all
    """
    settings = censor.disable(_censor_of(name), *rules)
    click.echo(f"censor rules on: {', '.join(settings.on) or 'none'}")


@censor_group.command("status", context_settings=CONTEXT)
@NAME
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@one_line_errors
def censor_status(name: str, as_json: bool) -> None:
    """The censor's rules: which are on, what each caught, and its lists and limits.

    \b
    Example:
      sudo resist lab censor status
    """
    import json

    rep = censor.report(_censor_of(name))
    if as_json:
        click.echo(json.dumps(rep, indent=1))
        return
    s = rep["settings"]
    settings_of = {
        "ip": "prefixes: `resist lab block` / `nft list set inet resist_censor blocked4`",
        "socks5": "05 N + N methods as a flow's first payload",
        "wireguard": "UDP, 148 bytes, type 1 + 3 zero bytes",
        "openvpn": "hard reset client v2/v3, first payload (TCP) or packet (UDP)",
        "sni": "names: " + (", ".join(s["sni"]) or "(none)"),
        "hello": "fingerprints: " + (", ".join(s["fingerprints"]) or "(none)"),
        "freeze": f"after {s['freeze_bytes']} bytes from: "
        + (", ".join(s["freeze_prefixes"]) or "(no prefix)"),
        "whitelist": "only: " + (", ".join(s["whitelist"]) or "(nothing)"),
        "active-probe": f"TLS without SNI; blocks for {s['probe_block_seconds']} s",
    }
    table = Table(title=f"censor of lab {name}")
    for col in ("rule", "on", "caught", "packets dropped", "lists and limits"):
        table.add_column(col)
    for rule, r in rep["rules"].items():
        table.add_row(
            rule, "on" if r["on"] else "off", str(r["caught"]), str(r["dropped"]),
            settings_of[rule],
        )  # fmt: skip
    console = Console()
    console.print(table)
    watcher = "running" if rep["watcher"] else "not running"
    console.print(f"verdict program: {watcher}; {rep['held']} ClientHellos held for a verdict")
    for p in rep["probes"][-10:]:
        console.print(
            f"probed {p['address']}:{p['port']}: {p['verdict']} (browser: {p['browser']}; "
            f"replay: {p['replay']}; random: {p['random']})",
            highlight=False,
        )


@censor_group.command("watch", context_settings=CONTEXT, hidden=True)
@click.option("--namespace", required=True)
@one_line_errors
def censor_watch(namespace: str) -> None:
    """Run the censor's verdict program (the lab starts it inside the censor namespace)."""
    from resistance.lab.censorwatch import main

    main(namespace)


@lab.command(context_settings=CONTEXT)
@click.argument("target")
@click.option("--within", type=float, default=5.0, show_default=True, help="Seconds per step.")
@one_line_errors
def telegram(target: str, within: float) -> None:
    """A Telegram-like client: ask a data centre for resPQ, directly or through a proxy.

    TARGET is a tg://proxy?... link (or https://t.me/proxy?..., mtproto://SECRET@HOST:PORT)
    to go through an MTProto proxy as the app does (fake-TLS or obfuscated2, then
    req_pq_multi), or HOST:PORT of a data centre to try directly.  No account is used.
    Exits 1 when no resPQ comes back.

    \b
    Examples:
      sudo ip netns exec rlab-censored resist lab telegram 198.18.100.1:443
      resist lab telegram 'tg://proxy?server=198.18.14.1&port=443&secret=ee...'
    """
    from resistance.lab.telegram import run_client

    ok, line = run_client(target, within=within)
    click.echo(line)
    if not ok:
        raise SystemExit(1)


@lab.command(context_settings=CONTEXT)
@click.option(
    "--utxos",
    "utxos_file",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="Where to write the trial coins (for `resist grants psbt --utxos`).",
)
@click.option(
    "--sat",
    "amounts",
    type=click.IntRange(1000, 10**15),
    multiple=True,
    default=(2_000_000,),
    show_default=True,
    help="A coin's value; repeatable.",
)
@one_line_errors
def wallet(utxos_file: Path, amounts: tuple[int, ...]) -> None:
    """The lab funder's regtest wallet: its seed, descriptors, and made-up coins.

    For trying a round's payout on one machine without a chain: the seed is
    published (regtest only, never real money), the coins come from a funding
    transaction that was never mined, and Electrum signs offline with the seed.

    \b
    Example:
      resist lab wallet --utxos utxos.json
      electrum --regtest --offline -D wallet restore "SEED WORDS"
    """
    import json

    from resistance.lab import funder

    coins = funder.funder_utxos(list(amounts))
    utxos_file.write_text(json.dumps(coins, indent=1) + "\n")
    click.echo(f"seed (regtest only, published): {funder.SEED_WORDS}")
    click.echo(f"descriptor: {funder.DESCRIPTOR}")
    click.echo(f"change descriptor: {funder.CHANGE_DESCRIPTOR}")
    click.echo(
        f"wrote {utxos_file}: {len(coins)} made-up coin{'s' if len(coins) != 1 else ''} of "
        f"{sum(amounts):,} sat on {funder.wallet_address(0)}"
    )
