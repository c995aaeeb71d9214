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

import click
from rich.console import Console
from rich.table import Table

from resistance.clikit import one_line_errors
from resistance.grants import export, files, payout, rounds
from resistance.grants.errors import RoundStateError, UtxoError
from resistance.grants.model import GrantRound, RoundStatus

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


@click.group(context_settings=CONTEXT)
def grants() -> None:
    """Grant rounds: awards from measurements, payouts a real wallet signs.

    \b
    A round moves draft -> approved -> paid(txid):
      resist grants compute inputs.json --out round.json
      resist grants verify round.json
      resist grants approve round.json
      resist grants psbt round.json --descriptor 'wpkh([fpr/84h/1h/0h]tpub…/0/*)' \\
          --change-descriptor 'wpkh([fpr/84h/1h/0h]tpub…/1/*)' --utxos utxos.json \\
          --fee-rate 2 --network regtest --out round.psbt
      (sign round.psbt in your wallet, e.g. electrum signtransaction)
      resist grants mark-paid round.json --tx SIGNED_HEX --change-descriptor '…/1/*'
    """


@grants.command(context_settings=CONTEXT)
@click.argument("inputs", type=ROUND_FILE)
@click.option("--out", "out", type=OUT_FILE, required=True, help="Round file to write.")
@_errors_in_one_line
def compute(inputs: Path, out: Path) -> None:
    """Compute a draft round from an inputs file (settings, rollups, carried amounts)."""
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
@_errors_in_one_line
def verify(round_file: Path) -> None:
    """Recompute the awards from the round's recorded inputs; exit 1 on any difference."""
    round_ = files.load_round(round_file)
    diffs = rounds.verify(round_)
    console = Console()
    if round_.inputs.signatures:
        console.print(
            f"note: {len(round_.inputs.signatures)} input signature(s) present, not checked yet"
        )
    else:
        console.print("note: inputs are not signed by a registry")
    if not diffs:
        console.print(f"OK: {_summary(round_)}")
        return
    table = Table(title=f"round {round_.settings.round_id}: {len(diffs)} difference(s)")
    for col in ("operator / round", "field", "recorded", "recomputed"):
        table.add_column(col)
    for d in diffs:
        table.add_row(d.what, d.field, d.recorded, d.recomputed)
    console.print(table)
    sys.exit(1)


@grants.command(context_settings=CONTEXT)
@click.argument("round_file", type=ROUND_FILE)
@click.option("--out", type=OUT_FILE, help="Write here instead of updating ROUND_FILE.")
@_errors_in_one_line
def approve(round_file: Path, out: Path | None) -> None:
    """Approve a draft round: its content is frozen under a digest."""
    round_ = rounds.approve(files.load_round(round_file))
    files.save_round(out or round_file, round_)
    click.echo(f"{_summary(round_)}; digest {round_.state.digest}")


@grants.command(context_settings=CONTEXT)
@click.argument("round_file", type=ROUND_FILE)
@click.option("--descriptor", required=True, help="Watch-only receive descriptor with key origin.")
@click.option("--change-descriptor", required=True, help="Watch-only change descriptor.")
@click.option(
    "--utxos",
    type=ROUND_FILE,
    required=True,
    help="JSON: [{txid, vout, value, prev_tx_hex, derivation_index[, keychain]}].",
)
@click.option("--fee-rate", type=int, required=True, help="Fee rate in sat/vB.")
@click.option("--network", type=NETWORKS, required=True)
@click.option("--out", type=OUT_FILE, required=True, help="PSBT file to write (base64).")
@_errors_in_one_line
def psbt(
    round_file: Path,
    descriptor: str,
    change_descriptor: str,
    utxos: Path,
    fee_rate: int,
    network: str,
    out: Path,
) -> None:
    """Write an unsigned PSBT paying every award of an approved round in one transaction."""
    round_ = files.load_round(round_file)
    try:
        utxo_text = utxos.read_text(encoding="utf-8")
    except OSError as exc:
        raise UtxoError(f"cannot read {utxos}: {exc.strerror}") from None
    built = payout.build_payout_psbt(
        round_,
        descriptor=descriptor,
        change_descriptor=change_descriptor,
        utxos=payout.load_utxos(utxo_text),
        fee_rate_sat_vb=fee_rate,
        network=network,
    )
    files.write_text_atomic(out, built.psbt_base64 + "\n")
    click.echo(
        f"wrote {out}: pays {built.paid_sat} sat to {len(round_.result.payouts())} operators, "
        f"fee {built.fee_sat} sat ({built.vsize} vB), change {built.change_sat} sat"
    )


@grants.command("electrum-list", context_settings=CONTEXT)
@click.argument("round_file", type=ROUND_FILE)
@click.option("--out", type=OUT_FILE)
@_errors_in_one_line
def electrum_list(round_file: Path, out: Path | None) -> None:
    """Electrum "pay to many" list: address, amount in BTC, one per line."""
    _emit(export.electrum_pay_to_many(files.load_round(round_file)), out)


@grants.command(context_settings=CONTEXT)
@click.argument("round_file", type=ROUND_FILE)
@click.option("--out", type=OUT_FILE)
@_errors_in_one_line
def bip21(round_file: Path, out: Path | None) -> None:
    """One BIP21 bitcoin: URI per payout."""
    uris = export.bip21_uris(files.load_round(round_file))
    _emit("".join(u + "\n" for u in uris), out)


@grants.command(context_settings=CONTEXT)
@click.argument("round_file", type=ROUND_FILE)
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv")
@click.option("--out", type=OUT_FILE)
@_errors_in_one_line
def report(round_file: Path, fmt: str, out: Path | None) -> None:
    """The awards as CSV or the round's result as JSON."""
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
    """Record the transaction paying an approved round, refusing one that does not pay exactly."""
    if (tx_hex is None) == (tx_file is None):
        raise click.UsageError("give exactly one of --tx and --tx-file")
    text = tx_hex if tx_hex is not None else tx_file.read_text() if tx_file else ""
    round_ = rounds.mark_paid(
        files.load_round(round_file), text, change_descriptor=change_descriptor
    )
    files.save_round(out or round_file, round_)
    click.echo(f"round {round_.settings.round_id} paid by {round_.state.txid}")
