"""``resist grants round``: grant rounds kept by a registry, driven over its admin API.

Each command is one API call (:mod:`resistance.grants.remote`); the registry
builds, signs and stores the round, and ``export`` writes it as a round file
for the file commands of :mod:`resistance.grants.cli`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
from rich.console import Console
from rich.table import Table

from resistance.clikit import one_line_errors
from resistance.grants import amounts, files, payout, remote
from resistance.grants.cliopts import CONTEXT, OUT_FILE, ROUND_FILE, F, summary, tx_text


def _registry_options(func: F) -> F:
    func = click.option(
        "--token",
        required=True,
        envvar="RESIST_ADMIN_TOKEN",
        help="The registry's admin token [env RESIST_ADMIN_TOKEN].",
    )(func)
    func = click.option(
        "--registry", "registry_url", required=True, metavar="URL", help="Registry URL."
    )(func)
    return func


def _settings_options(func: F) -> F:
    options = [
        click.option(
            "--fee-reserve", metavar="AMOUNT", help="Kept for the payout's fee [50000sat]."
        ),
        click.option(
            "--min-payout",
            metavar="AMOUNT",
            help="Smaller amounts are carried to the operator's next round [10000sat].",
        ),
        click.option(
            "--exponent",
            type=click.IntRange(1, 64),
            help="Performance exponent: (availability x reachability)^N [20].",
        ),
        click.option(
            "--probation-days",
            type=click.IntRange(0, 36_600),
            help="A new proxy's first days of service earn nothing [0].",
        ),
        click.option(
            "--operator-cap", metavar="PCT", help="Most of the pool one operator gets [100]."
        ),
        click.option(
            "--network-cap", metavar="PCT", help="Most of the pool one /24 network gets [100]."
        ),
        click.option(
            "--capacity-reference-kbps",
            type=click.IntRange(0, 1_000_000_000),
            help="Throughput worth full weight; 0 turns the capacity factor off [0].",
        ),
        click.option(
            "--min-attempts",
            type=click.IntRange(1, 1_000_000),
            help="Attempts a day needs from each side to count [1].",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _settings_body(
    *,
    budget: str | None,
    fee_reserve: str | None,
    min_payout: str | None,
    exponent: int | None,
    probation_days: int | None,
    operator_cap: str | None,
    network_cap: str | None,
    capacity_reference_kbps: int | None,
    min_attempts: int | None,
) -> dict[str, Any]:
    """The settings given on the command line, parsed exactly (absent ones left out)."""
    body: dict[str, Any] = {}
    if budget is not None:
        body["budget_sat"] = amounts.parse_amount(budget, what="budget")
    if fee_reserve is not None:
        body["fee_reserve_sat"] = amounts.parse_amount(fee_reserve, what="fee reserve")
    if min_payout is not None:
        body["min_payout_sat"] = amounts.parse_amount(min_payout, what="minimum payout")
    if operator_cap is not None:
        body["operator_cap_bp"] = amounts.parse_percent_bp(operator_cap, what="operator cap")
    if network_cap is not None:
        body["network_cap_bp"] = amounts.parse_percent_bp(network_cap, what="network cap")
    for name, value in (
        ("performance_exponent", exponent),
        ("probation_days", probation_days),
        ("capacity_reference_kbps", capacity_reference_kbps),
        ("min_attempts", min_attempts),
    ):
        if value is not None:
            body[name] = value
    return body


def _btc(sat: int) -> str:
    return f"{sat:,} sat ({payout.sat_to_btc(sat)} BTC)"


def _wide_console() -> Console:
    """A console that does not squeeze addresses when the output is a file or a pipe."""
    console = Console()
    return console if console.is_terminal else Console(width=200)


def _print_round(view: dict[str, Any]) -> None:
    console = _wide_console()
    table = Table(
        title=(
            f"round {view['round_id']} ({view['status']}): {view['target_country']} "
            f"{view['period_start']}..{view['period_end']}, budget {_btc(view['budget_sat'])}; "
            "amounts in sat"
        )
    )
    table.add_column("operator", overflow="fold", min_width=8)
    table.add_column("payout address", overflow="fold", min_width=14)
    for col in ("proxies", "days", "share", "carried in", "paid now", "carried out"):
        table.add_column(col, justify="right", no_wrap=True)
    for a in view["awards"]:
        table.add_row(
            a["operator_id"],
            a["payout_address"],
            str(a["proxies"]),
            str(a["service_days"]),
            f"{a['share_sat']:,}",
            f"{a['carried_in_sat']:,}",
            f"{a['amount_sat']:,}",
            f"{a['carried_out_sat']:,}",
        )
    console.print(table)
    console.print(
        f"{view['payouts']} payouts, {_btc(view['paid_sat'])} paid now; "
        f"{view['carried_in_sat']:,} sat carried in, {view['carried_out_sat']:,} sat carried "
        f"out, {view['returned_sat']:,} sat returned, fee reserve "
        f"{view['settings']['fee_reserve_sat']:,} sat; {view['rollups']} daily rollups, "
        f"signed by {', '.join(view['signatures']) or 'no key'}"
    )
    if view.get("skipped_operators"):
        console.print(
            f"left out (no payout address): {', '.join(view['skipped_operators'])}",
        )
    if view.get("digest"):
        console.print(f"digest {view['digest']}")
    _warn_if_empty(view)
    if view.get("txid"):
        console.print(f"paid by {view['txid']}")


def _warn_if_empty(view: dict[str, Any]) -> None:
    """A round that pays nobody is almost always a mistake (no probes ran, wrong period
    or country, no payout addresses): say so before the funder approves it."""
    if view.get("payouts") or view.get("status") == "paid":
        return
    if not view.get("rollups"):
        why = (
            f"no measurements from {view['target_country']} in "
            f"{view['period_start']}..{view['period_end']} (did probes run there?)"
        )
    else:
        why = "no operator earned a payout (no payout address, or all below the minimum)"
    then = "approving it pays nobody" if view.get("status") == "draft" else "it pays nobody"
    click.echo(
        f"warning: this round pays nothing: {why}; the whole budget is returned and {then}",
        err=True,
    )


def _round_path(round_id: str, action: str = "") -> str:
    return f"{remote.ROUNDS_PATH}/{quote(round_id, safe='')}{action}"


@click.group(name="round", context_settings=CONTEXT)
def round_group() -> None:
    """Grant rounds kept by a registry (admin): create, approve, export, mark paid.

    \b
    The registry builds each round's inputs from its own measurements (control
    vantages x vantages in the target country, per day), snapshots payout
    addresses, carries amounts below the minimum payout to the next round, and
    signs the inputs with its directory keys.  Example:
      resist grants round create --registry URL --token ADMIN --period 2026-10 --budget 2.0BTC
      resist grants round show 2026-10-RU --registry URL --token ADMIN
      resist grants round approve 2026-10-RU --registry URL --token ADMIN
      resist grants round export 2026-10-RU --registry URL --token ADMIN --out round.json
      resist grants verify round.json --trust REGISTRY_KEY
      resist grants psbt round.json … --out round.psbt   (sign it in your wallet)
      resist grants round mark-paid 2026-10-RU --registry URL --token ADMIN --tx-file signed.hex \\
          --change-descriptor '…/1/*'
    """


@round_group.command(context_settings=CONTEXT)
@_registry_options
@click.option(
    "--period",
    required=True,
    help="YYYY-MM, YYYY-MM-DD or START..END (UTC days, both included).",
)
@click.option("--budget", required=True, help="2.0BTC, 0.5 btc, 150000sat or 150000 (sat).")
@click.option("--country", default="RU", show_default=True, help="Target country (ISO code).")
@click.option("--round-id", help="The round's name [default: PERIOD-COUNTRY, e.g. 2026-11-RU].")
@_settings_options
@one_line_errors
def create(
    registry_url: str,
    token: str,
    period: str,
    budget: str,
    country: str,
    round_id: str | None,
    **settings: Any,
) -> None:
    """Create a draft round for a period from the registry's measurements.

    \b
    Example:
      resist grants round create --registry URL --token ADMIN --period 2026-10 --budget 2.0BTC \\
          --country RU --operator-cap 10 --network-cap 5
    """
    start, end = amounts.parse_period(period)
    body: dict[str, Any] = {
        "period_start": start.isoformat(),
        "period_end": end.isoformat(),
        "target_country": country.upper(),
        **_settings_body(budget=budget, **settings),
    }
    if round_id is not None:
        body["round_id"] = round_id
    view = remote.call(registry_url, remote.ROUNDS_PATH, token=token, method="POST", body=body)
    _print_round(view)


@round_group.command(name="list", context_settings=CONTEXT)
@_registry_options
@one_line_errors
def list_(registry_url: str, token: str) -> None:
    """Every round the registry keeps.

    \b
    Example:
      resist grants round list --registry URL --token ADMIN
    """
    answer = remote.call(registry_url, remote.ROUNDS_PATH, token=token)
    table = Table(title="grant rounds")
    for col in ("round", "status", "country", "period", "budget sat", "paid sat", "txid"):
        table.add_column(col)
    for r in answer.get("rounds", []):
        table.add_row(
            r["round_id"],
            r["status"],
            r["target_country"],
            f"{r['period_start']}..{r['period_end']}",
            f"{r['budget_sat']:,}",
            f"{r['paid_sat']:,}",
            r["txid"] or "",
        )
    _wide_console().print(table)


@round_group.command(context_settings=CONTEXT)
@click.argument("round_id")
@_registry_options
@one_line_errors
def show(round_id: str, registry_url: str, token: str) -> None:
    """A round's awards, as a table.

    \b
    Example:
      resist grants round show 2026-10-RU --registry URL --token ADMIN
    """
    _print_round(remote.call(registry_url, _round_path(round_id), token=token))


@round_group.command(context_settings=CONTEXT)
@click.argument("round_id")
@_registry_options
@click.option("--budget", help="A new budget (2.0BTC, 150000sat…).")
@_settings_options
@one_line_errors
def recompute(
    round_id: str, registry_url: str, token: str, budget: str | None, **settings: Any
) -> None:
    """Recompute a draft from fresh measurements and addresses, optionally with new settings.

    \b
    Example:
      resist grants round recompute 2026-10-RU --registry URL --token ADMIN --exponent 10
    """
    body = _settings_body(budget=budget, **settings)
    view = remote.call(
        registry_url, _round_path(round_id, "/recompute"), token=token, method="POST", body=body
    )
    _print_round(view)


@round_group.command(name="approve", context_settings=CONTEXT)
@click.argument("round_id")
@_registry_options
@one_line_errors
def approve_remote(round_id: str, registry_url: str, token: str) -> None:
    """Approve a draft: it is frozen from then on (a later payout address change is not seen).

    \b
    Example:
      resist grants round approve 2026-10-RU --registry URL --token ADMIN
    """
    view = remote.call(
        registry_url, _round_path(round_id, "/approve"), token=token, method="POST", body={}
    )
    _print_round(view)


@round_group.command(name="export", context_settings=CONTEXT)
@click.argument("round_id")
@_registry_options
@click.option("--out", type=OUT_FILE, required=True, help="Round file to write.")
@one_line_errors
def export_(round_id: str, registry_url: str, token: str, out: Path) -> None:
    """Write the round file (inputs signed by the registry) for verify, psbt and the rest.

    The file is written whole and checked, or not at all. An export slower than
    64 kB/s on average past its first 120 s is stopped (a registry dripping bytes).

    \b
    Example:
      resist grants round export 2026-10-RU --registry URL --token ADMIN --out round.json
    """
    # written as it arrives, checked (chunks against the manifest, one at a time), then
    # put in place: a round over 100,000 proxies is never held whole
    parts = remote.stream(registry_url, _round_path(round_id, "/export"), token=token)
    round_ = files.write_parts_atomic(out, parts, files.checked_round_file)
    click.echo(
        f"wrote {out}: {summary(round_)}; inputs signed by "
        f"{', '.join(s.key_id for s in round_.inputs.signatures) or 'no key'}"
    )


@round_group.command(name="mark-paid", context_settings=CONTEXT)
@click.argument("round_id")
@_registry_options
@click.option("--tx", "tx_hex", help="The signed transaction, hex.")
@click.option("--tx-file", type=ROUND_FILE, help="File holding the signed transaction, hex.")
@click.option("--change-descriptor", required=True, help="The funder's change descriptor.")
@one_line_errors
def mark_paid_remote(
    round_id: str,
    registry_url: str,
    token: str,
    tx_hex: str | None,
    tx_file: Path | None,
    change_descriptor: str,
) -> None:
    """Record the transaction paying an approved round; refused unless it pays exactly.

    \b
    Example:
      resist grants round mark-paid 2026-10-RU --registry URL --token ADMIN \\
          --tx-file signed.hex --change-descriptor 'wpkh(…/1/*)'
    """
    tx_hex = tx_text(tx_hex, tx_file)
    view = remote.call(
        registry_url,
        _round_path(round_id, "/mark-paid"),
        token=token,
        method="POST",
        body={"tx_hex": tx_hex.strip(), "change_descriptor": change_descriptor},
    )
    click.echo(f"round {view['round_id']} paid by {view['txid']}")


@round_group.command(name="delete", context_settings=CONTEXT)
@click.argument("round_id")
@_registry_options
@one_line_errors
def delete_remote(round_id: str, registry_url: str, token: str) -> None:
    """Delete a draft round (approved and paid rounds are kept).

    \b
    Example:
      resist grants round delete 2026-10-RU --registry URL --token ADMIN
    """
    remote.call(registry_url, _round_path(round_id), token=token, method="DELETE")
    click.echo(f"deleted draft {round_id}")
