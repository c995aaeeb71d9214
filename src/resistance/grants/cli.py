"""``resist grants``: compute, verify, approve and pay a grant round, working on files.

A thin layer: every command reads files, calls the pure functions of this
package and writes files (atomically, and nothing at all on error). The
package's own errors become one line on stderr and exit status 2; ``verify``
exits 1 when the recorded awards differ from the recomputed ones.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import click
from rich.console import Console
from rich.table import Table

from resistance.clikit import one_line_errors
from resistance.directory.keys import raw_public, trusted_key
from resistance.grants import amounts, bitcoind, export, files, payout, remote, rounds, signing
from resistance.grants.errors import GrantsError, RoundStateError
from resistance.grants.model import GrantRound, RoundStatus, round_from_json

F = TypeVar("F", bound=Callable[..., Any])
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
ROUND_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
OUT_FILE = click.Path(dir_okay=False, writable=True, path_type=Path)
NETWORKS = click.Choice(["bitcoin", "testnet", "testnet4", "signet", "regtest"])


_errors_in_one_line = one_line_errors


def _emit(text: str, out: Path | None) -> None:
    if out is None:
        click.echo(text, nl=False)
    else:
        files.write_text_atomic(out, text)


def _summary(round_: GrantRound) -> str:
    r = round_.result
    return (
        f"round {round_.settings.round_id} ({round_.state.status.value}): "
        f"{len(r.payouts())} payouts, {r.paid_sat} sat paid, {r.carried_out_sat} sat carried, "
        f"{r.returned_sat} sat returned, fee reserve {round_.settings.fee_reserve_sat} sat"
    )


def _read_text(path: Path) -> str:
    """A text file the user named, or one clear error line."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise GrantsError(f"cannot read {path}: {exc.strerror}") from None


def _tx_text(tx_hex: str | None, tx_file: Path | None) -> str:
    """The signed transaction's hex, from exactly one of --tx and --tx-file."""
    if (tx_hex is None) == (tx_file is None):
        raise click.UsageError("give exactly one of --tx and --tx-file")
    if tx_file is not None:
        return _read_text(tx_file)
    assert tx_hex is not None
    return tx_hex


@click.group(context_settings=CONTEXT)
def grants() -> None:
    """Grant rounds: awards from measurements, payouts a real wallet signs.

    \b
    A round moves draft -> approved -> paid(txid). Example, on files:
      resist grants compute inputs.json --out round.json
      resist grants verify round.json
      resist grants approve round.json
      resist grants psbt round.json --descriptor 'wpkh([fpr/84h/1h/0h]tpub…/0/*)' \\
          --change-descriptor 'wpkh([fpr/84h/1h/0h]tpub…/1/*)' --utxos utxos.json \\
          --fee-rate 2 --network regtest --out round.psbt
      (sign round.psbt in your wallet, e.g. electrum signtransaction)
      resist grants mark-paid round.json --tx SIGNED_HEX --change-descriptor '…/1/*'

    \b
    Rounds kept by a registry (inputs from its measurements, signed by it):
      resist grants round create --registry URL --token ADMIN --period 2026-10 --budget 2.0BTC
      resist grants round export 2026-10-RU --registry URL --token ADMIN --out round.json
      resist grants verify round.json --trust REGISTRY_KEY
    """


@grants.command(context_settings=CONTEXT)
@click.argument("inputs", type=ROUND_FILE)
@click.option("--out", "out", type=OUT_FILE, required=True, help="Round file to write.")
@_errors_in_one_line
def compute(inputs: Path, out: Path) -> None:
    """Compute a draft round from an inputs file (settings, rollups, carried amounts).

    \b
    Example:
      resist grants compute inputs.json --out round.json
    """
    if out.exists():
        existing = files.load_round(out)
        if existing.state.status is not RoundStatus.DRAFT:
            raise RoundStateError(
                f"{out} holds round {existing.settings.round_id}, "
                f"{existing.state.status.value}; it is final and is not overwritten"
            )
    settings, round_inputs = files.load_inputs(inputs)
    round_ = rounds.compute_round(settings, round_inputs)
    files.save_round(out, round_)
    click.echo(_summary(round_))


@grants.command(context_settings=CONTEXT)
@click.argument("round_file", type=ROUND_FILE)
@click.option(
    "--trust",
    multiple=True,
    metavar="KEY",
    help="A trusted registry key: base64url text, or a file with it or a PEM key; repeatable.",
)
@click.option(
    "--threshold",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="How many distinct trusted keys must have signed the inputs.",
)
@_errors_in_one_line
def verify(round_file: Path, trust: tuple[str, ...], threshold: int) -> None:
    """Recompute the awards from the round's recorded inputs; exit 1 on any difference.

    With --trust, also check the registry's signatures over the inputs
    (measurements, carried amounts, prior service) against the given keys,
    as `resist directory verify` does; a missing or bad signature then exits 1.
    The registry's keys: GET /api/v1/directory/keys.

    \b
    Example:
      resist grants verify round.json --trust 3q2-7w... --threshold 1
    """
    round_ = files.load_round(round_file)
    diffs = rounds.verify(round_)
    console = Console()
    unsigned = _check_signatures(console, round_, trust, threshold)
    if not diffs and not unsigned:
        console.print(f"OK: {_summary(round_)}")
        return
    if diffs:
        table = Table(title=f"round {round_.settings.round_id}: {len(diffs)} difference(s)")
        for col in ("operator / round", "field", "recorded", "recomputed"):
            table.add_column(col)
        for d in diffs:
            table.add_row(d.what, d.field, d.recorded, d.recomputed)
        console.print(table)
    sys.exit(1)


def _check_signatures(
    console: Console, round_: GrantRound, trust: tuple[str, ...], threshold: int
) -> bool:
    """Print what the signatures say; True when --trust was given and they do not suffice."""
    count = len(round_.inputs.signatures)
    if not trust:
        if count:
            console.print(
                f"note: {count} registry signature(s) over the inputs, not checked "
                "(give --trust KEY to check them)"
            )
        else:
            console.print("note: inputs are not signed by a registry")
        return False
    keys = [trusted_key(spec) for spec in trust]
    distinct = {raw_public(k) for k in keys}
    if threshold > len(distinct):
        raise click.UsageError(
            f"--threshold {threshold} needs at least that many distinct --trust keys, "
            f"got {len(distinct)}"
        )
    report = signing.check_signatures(round_.settings, round_.inputs, keys)
    if report.entries:
        table = Table(title="registry signatures over the inputs")
        for col in ("key id", "algorithm", "outcome"):
            table.add_column(col)
        for e in report.entries:
            table.add_row(e.key_id, e.algorithm, e.outcome)
        console.print(table)
    if len(report.signers) >= threshold:
        console.print(
            f"signatures: inputs signed by {len(report.signers)} trusted key(s): "
            f"{', '.join(report.signers)}"
        )
        return False
    if not count:
        console.print("FAILED: the inputs carry no registry signature")
    else:
        console.print(
            f"FAILED: the inputs have good signatures from {len(report.signers)} trusted "
            f"key(s), {threshold} required"
        )
    return True


@grants.command(context_settings=CONTEXT)
@click.argument("round_file", type=ROUND_FILE)
@click.option("--out", type=OUT_FILE, help="Write here instead of updating ROUND_FILE.")
@_errors_in_one_line
def approve(round_file: Path, out: Path | None) -> None:
    """Approve a draft round: its content is frozen under a digest.

    \b
    Example:
      resist grants approve round.json
    """
    round_ = rounds.approve(files.load_round(round_file))
    files.save_round(out or round_file, round_)
    click.echo(f"{_summary(round_)}; digest {round_.state.digest}")


@grants.command(context_settings=CONTEXT)
@click.argument("round_file", type=ROUND_FILE)
@click.option(
    "--descriptor",
    help="Watch-only receive descriptor with key origin (not used with --fund-with-bitcoind).",
)
@click.option("--change-descriptor", required=True, help="Watch-only change descriptor.")
@click.option(
    "--utxos",
    type=ROUND_FILE,
    help="JSON: [{txid, vout, value, prev_tx_hex, derivation_index[, keychain]}].",
)
@click.option(
    "--bitcoind",
    "bitcoind_url",
    metavar="URL",
    help="Take the UTXOs from Bitcoin Core: http://user:pass@host:port[/wallet/NAME].",
)
@click.option(
    "--rpc-cookie",
    type=ROUND_FILE,
    help="Bitcoin Core's .cookie file, instead of user:pass in the --bitcoind URL.",
)
@click.option(
    "--fund-with-bitcoind",
    is_flag=True,
    help="Let Core's wallet choose coins and add change (walletcreatefundedpsbt); "
    "the PSBT is then checked.",
)
@click.option(
    "--minconf",
    type=click.IntRange(0),
    default=1,
    show_default=True,
    help="With --bitcoind: confirmations a UTXO needs.",
)
@click.option(
    "--change-index",
    type=click.IntRange(0, 2**31 - 1),
    help="With --fund-with-bitcoind: change to this index of --change-descriptor "
    "[default: the wallet's own change address].",
)
@click.option("--fee-rate", type=int, required=True, help="Fee rate in sat/vB.")
@click.option("--network", type=NETWORKS, required=True)
@click.option("--out", type=OUT_FILE, required=True, help="PSBT file to write (base64).")
@_errors_in_one_line
def psbt(
    round_file: Path,
    descriptor: str | None,
    change_descriptor: str,
    utxos: Path | None,
    bitcoind_url: str | None,
    rpc_cookie: Path | None,
    fund_with_bitcoind: bool,
    minconf: int,
    change_index: int | None,
    fee_rate: int,
    network: str,
    out: Path,
) -> None:
    """Write an unsigned PSBT paying every award of an approved round in one transaction.

    The funder's coins come from a UTXO file (--utxos) or from Bitcoin Core
    (--bitcoind): either its UTXOs, with BDK choosing coins as for a file, or
    with --fund-with-bitcoind a PSBT Core funds itself, accepted only if it pays
    every award exactly and nothing else but change.

    \b
    Examples:
      resist grants psbt round.json --descriptor 'wpkh([fpr/84h/1h/0h]tpub…/0/*)' \\
          --change-descriptor 'wpkh([fpr/84h/1h/0h]tpub…/1/*)' --utxos utxos.json \\
          --fee-rate 2 --network regtest --out round.psbt
      resist grants psbt round.json --bitcoind http://rpc:pw@127.0.0.1:18443/wallet/funder \\
          --fund-with-bitcoind --change-descriptor '…/1/*' --fee-rate 2 --network regtest \\
          --out round.psbt
    """
    if (utxos is None) == (bitcoind_url is None):
        raise click.UsageError("give exactly one of --utxos and --bitcoind")
    if bitcoind_url is None and (rpc_cookie or fund_with_bitcoind or change_index is not None):
        raise click.UsageError(
            "--rpc-cookie, --fund-with-bitcoind and --change-index need --bitcoind"
        )
    if change_index is not None and not fund_with_bitcoind:
        raise click.UsageError("--change-index goes with --fund-with-bitcoind")
    if not fund_with_bitcoind and descriptor is None:
        raise click.UsageError("--descriptor is needed unless --fund-with-bitcoind")
    round_ = files.load_round(round_file)
    source = ""
    if bitcoind_url is not None and fund_with_bitcoind:
        payout.check_payable(round_, network=network)
        rpc = bitcoind.BitcoindRpc.from_url(bitcoind_url, cookie_file=rpc_cookie)
        change_address = (
            payout.change_address(change_descriptor, network, change_index)
            if change_index is not None
            else None
        )
        built = bitcoind.fund_with_bitcoind(
            rpc,
            round_,
            change_descriptor=change_descriptor,
            fee_rate_sat_vb=fee_rate,
            change_address=change_address,
        )
        source = ", funded by bitcoind"
    else:
        assert descriptor is not None
        if bitcoind_url is not None:
            rpc = bitcoind.BitcoindRpc.from_url(bitcoind_url, cookie_file=rpc_cookie)
            got = bitcoind.funder_utxos(
                rpc, descriptor=descriptor, change_descriptor=change_descriptor, minconf=minconf
            )
            funder = got.utxos
            source = f", {len(funder)} UTXOs from bitcoind" + (
                f" ({got.skipped} of other keys skipped)" if got.skipped else ""
            )
        else:
            assert utxos is not None
            funder = payout.load_utxos(_read_text(utxos))
        built = payout.build_payout_psbt(
            round_,
            descriptor=descriptor,
            change_descriptor=change_descriptor,
            utxos=funder,
            fee_rate_sat_vb=fee_rate,
            network=network,
        )
    files.write_text_atomic(out, built.psbt_base64 + "\n")
    click.echo(
        f"wrote {out}: pays {built.paid_sat} sat to {len(round_.result.payouts())} operators, "
        f"fee {built.fee_sat} sat ({built.vsize} vB), change {built.change_sat} sat{source}"
    )
    bare = bitcoind.segwit_v0_inputs_without_prev_tx(built.psbt_base64)
    if bare:
        click.echo(
            f"note: segwit v0 input(s) {bare} lack the full previous transaction; some "
            "hardware wallets refuse to sign them",
            err=True,
        )


@grants.command("electrum-list", context_settings=CONTEXT)
@click.argument("round_file", type=ROUND_FILE)
@click.option("--out", type=OUT_FILE)
@_errors_in_one_line
def electrum_list(round_file: Path, out: Path | None) -> None:
    """Electrum "pay to many" list: address, amount in BTC, one per line.

    \b
    Example:
      resist grants electrum-list round.json --out paytomany.txt
    """
    _emit(export.electrum_pay_to_many(files.load_round(round_file)), out)


@grants.command(context_settings=CONTEXT)
@click.argument("round_file", type=ROUND_FILE)
@click.option("--out", type=OUT_FILE)
@_errors_in_one_line
def bip21(round_file: Path, out: Path | None) -> None:
    """One BIP21 bitcoin: URI per payout.

    \b
    Example:
      resist grants bip21 round.json
    """
    uris = export.bip21_uris(files.load_round(round_file))
    _emit("".join(u + "\n" for u in uris), out)


@grants.command(context_settings=CONTEXT)
@click.argument("round_file", type=ROUND_FILE)
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv")
@click.option("--out", type=OUT_FILE)
@_errors_in_one_line
def report(round_file: Path, fmt: str, out: Path | None) -> None:
    """The awards as CSV or the round's result as JSON.

    \b
    Example:
      resist grants report round.json --format csv --out awards.csv
    """
    round_ = files.load_round(round_file)
    _emit(export.awards_csv(round_) if fmt == "csv" else export.report_json(round_), out)


@grants.command("mark-paid", context_settings=CONTEXT)
@click.argument("round_file", type=ROUND_FILE)
@click.option("--tx", "tx_hex", help="The signed transaction, hex.")
@click.option("--tx-file", type=ROUND_FILE, help="File holding the signed transaction, hex.")
@click.option("--change-descriptor", required=True, help="The funder's change descriptor.")
@click.option("--out", type=OUT_FILE, help="Write here instead of updating ROUND_FILE.")
@_errors_in_one_line
def mark_paid(
    round_file: Path,
    tx_hex: str | None,
    tx_file: Path | None,
    change_descriptor: str,
    out: Path | None,
) -> None:
    """Record the transaction paying an approved round, refusing one that does not pay exactly.

    \b
    Example:
      resist grants mark-paid round.json --tx-file signed.hex --change-descriptor 'wpkh(…/1/*)'
    """
    round_ = rounds.mark_paid(
        files.load_round(round_file), _tx_text(tx_hex, tx_file), change_descriptor=change_descriptor
    )
    files.save_round(out or round_file, round_)
    click.echo(f"round {round_.settings.round_id} paid by {round_.state.txid}")


# --- rounds kept by a registry ----------------------------------------------------------


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
    if view.get("txid"):
        console.print(f"paid by {view['txid']}")


def _round_path(round_id: str, action: str = "") -> str:
    return f"{remote.ROUNDS_PATH}/{quote(round_id, safe='')}{action}"


@grants.group(name="round", context_settings=CONTEXT)
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
@_errors_in_one_line
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
@_errors_in_one_line
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
@_errors_in_one_line
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
@_errors_in_one_line
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
@_errors_in_one_line
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
@_errors_in_one_line
def export_(round_id: str, registry_url: str, token: str, out: Path) -> None:
    """Write the round file (inputs signed by the registry) for verify, psbt and the rest.

    \b
    Example:
      resist grants round export 2026-10-RU --registry URL --token ADMIN --out round.json
    """
    answer = remote.call(registry_url, _round_path(round_id, "/export"), token=token)
    round_ = round_from_json(answer)
    files.save_round(out, round_)
    click.echo(
        f"wrote {out}: {_summary(round_)}; inputs signed by "
        f"{', '.join(s.key_id for s in round_.inputs.signatures) or 'no key'}"
    )


@round_group.command(name="mark-paid", context_settings=CONTEXT)
@click.argument("round_id")
@_registry_options
@click.option("--tx", "tx_hex", help="The signed transaction, hex.")
@click.option("--tx-file", type=ROUND_FILE, help="File holding the signed transaction, hex.")
@click.option("--change-descriptor", required=True, help="The funder's change descriptor.")
@_errors_in_one_line
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
    tx_hex = _tx_text(tx_hex, tx_file)
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
@_errors_in_one_line
def delete_remote(round_id: str, registry_url: str, token: str) -> None:
    """Delete a draft round (approved and paid rounds are kept).

    \b
    Example:
      resist grants round delete 2026-10-RU --registry URL --token ADMIN
    """
    remote.call(registry_url, _round_path(round_id), token=token, method="DELETE")
    click.echo(f"deleted draft {round_id}")
