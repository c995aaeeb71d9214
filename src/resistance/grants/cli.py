"""``resist grants``: compute, verify, approve and pay a grant round, working on files.

A thin layer: every command reads files, calls the pure functions of this
package and writes files (atomically, and nothing at all on error). The
package's own errors become one line on stderr and exit status 2; ``verify``
exits 1 when the recorded awards differ from the recomputed ones.  The
``round`` subgroup, for rounds kept by a registry, is in
:mod:`resistance.grants.round_cli`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from resistance.clikit import one_line_errors
from resistance.directory.keys import raw_public, trusted_key
from resistance.grants import bitcoind, export, files, payout, rounds, signing
from resistance.grants.cliopts import (
    CONTEXT,
    NETWORKS,
    OUT_FILE,
    ROUND_FILE,
    emit,
    read_text,
    summary,
    tx_text,
)
from resistance.grants.errors import RoundStateError
from resistance.grants.model import GrantRound, RoundStatus
from resistance.grants.round_cli import round_group


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
@click.argument("inputs", type=ROUND_FILE, required=False)
@click.option("--out", "out", type=OUT_FILE, help="Round file to write.")
@click.option(
    "--example", is_flag=True, help="Print a complete inputs file to start from, and exit."
)
@one_line_errors
def compute(inputs: Path | None, out: Path | None, example: bool) -> None:
    """Compute a draft round from an inputs file (settings, rollups, carried amounts).

    The inputs file is what a registry exports (`resist grants round export`) or
    one you write: --example prints one with every field.

    \b
    Examples:
      resist grants compute --example > inputs.json
      resist grants compute inputs.json --out round.json
    """
    if example:
        import json

        from resistance.grants.model import example_inputs_file

        click.echo(json.dumps(example_inputs_file(), indent=1))
        return
    if inputs is None or out is None:
        raise click.UsageError("give INPUTS and --out (or --example for a sample inputs file)")
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
    click.echo(summary(round_))


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
@one_line_errors
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
    round_ = files.load_round_streamed(round_file)  # /2 chunks read one at a time
    diffs = rounds.verify(round_)
    console = Console()
    unsigned = _check_signatures(console, round_, trust, threshold)
    if not diffs and not unsigned:
        console.print(f"OK: {summary(round_)}")
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
@one_line_errors
def approve(round_file: Path, out: Path | None) -> None:
    """Approve a draft round: its content is frozen under a digest.

    \b
    Example:
      resist grants approve round.json
    """
    round_ = rounds.approve(files.checked_round_file(round_file))  # a chunk at a time
    files.save_round(out or round_file, round_)
    click.echo(f"{summary(round_)}; digest {round_.state.digest}")


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
@one_line_errors
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
    round_ = files.checked_round_file(round_file)  # a chunk at a time
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
            funder = payout.load_utxos(read_text(utxos))
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
@one_line_errors
def electrum_list(round_file: Path, out: Path | None) -> None:
    """Electrum "pay to many" list: address, amount in BTC, one per line.

    \b
    Example:
      resist grants electrum-list round.json --out paytomany.txt
    """
    emit(export.electrum_pay_to_many(files.checked_round_file(round_file)), out)


@grants.command(context_settings=CONTEXT)
@click.argument("round_file", type=ROUND_FILE)
@click.option("--out", type=OUT_FILE)
@one_line_errors
def bip21(round_file: Path, out: Path | None) -> None:
    """One BIP21 bitcoin: URI per payout.

    \b
    Example:
      resist grants bip21 round.json
    """
    uris = export.bip21_uris(files.checked_round_file(round_file))
    emit("".join(u + "\n" for u in uris), out)


@grants.command(context_settings=CONTEXT)
@click.argument("round_file", type=ROUND_FILE)
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv")
@click.option("--out", type=OUT_FILE)
@one_line_errors
def report(round_file: Path, fmt: str, out: Path | None) -> None:
    """The awards as CSV or the round's result as JSON.

    \b
    Example:
      resist grants report round.json --format csv --out awards.csv
    """
    round_ = files.checked_round_file(round_file)
    emit(export.awards_csv(round_) if fmt == "csv" else export.report_json(round_), out)


@grants.command("mark-paid", context_settings=CONTEXT)
@click.argument("round_file", type=ROUND_FILE)
@click.option("--tx", "tx_hex", help="The signed transaction, hex.")
@click.option("--tx-file", type=ROUND_FILE, help="File holding the signed transaction, hex.")
@click.option("--change-descriptor", required=True, help="The funder's change descriptor.")
@click.option("--out", type=OUT_FILE, help="Write here instead of updating ROUND_FILE.")
@one_line_errors
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
        files.checked_round_file(round_file),
        tx_text(tx_hex, tx_file),
        change_descriptor=change_descriptor,
    )
    files.save_round(out or round_file, round_)
    click.echo(f"round {round_.settings.round_id} paid by {round_.state.txid}")


grants.add_command(round_group)
