"""Payouts a real wallet signs: an unsigned PSBT paying every award, and the check of the result.

Why bdkpython builds the PSBT
----------------------------
bdkpython (pinned 3.1.1) passed every BIP173/350 address vector and every
BIP174 vector tried on these machines, and its wallet does what a payout needs:
coin selection, fee by sat/vB, change to the descriptor's change branch, and
the PSBT fields hardware wallets need (BIP32 derivations on inputs and on the
change output, and the full previous transaction as ``non_witness_utxo`` next to
``witness_utxo`` for segwit v0 inputs). It needs no chain source for that: the
funder's UTXO file carries each full previous transaction, we check it (txid,
value, and that the output pays the descriptor at the stated derivation index)
and hand it to the wallet with ``Wallet.apply_unconfirmed_txs``. The wallet then
knows those outputs as its own, with the transaction to put in the PSBT. Outputs
of those transactions that are the funder's but not listed in the file are
marked unspendable, so only the listed UTXOs are spent. Coin selection is
largest-first and outputs keep the awards' order (change last), so the same
inputs give the same PSBT. embit was the alternative; it would need our own
coin selection and fee arithmetic, which BDK already gets right.

Nothing here ever sees a private key; signing happens in the funder's wallet
(Electrum, a hardware wallet, Bitcoin Core). ``check_payment`` decodes the
signed transaction and accepts it only if it pays exactly the approved awards
and everything else goes to the funder's change branch.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import bdkpython as bdk

from resistance.grants.errors import (
    AddressError,
    DescriptorError,
    FeeExceedsReserveError,
    InputError,
    InsufficientFundsError,
    PaymentMismatchError,
    PayoutError,
    RoundStateError,
    UtxoError,
)
from resistance.grants.model import MAX_SAT, Award, GrantRound, RoundStatus

_NETWORKS = {
    "bitcoin": bdk.Network.BITCOIN,
    "testnet": bdk.Network.TESTNET,
    "testnet4": bdk.Network.TESTNET4,
    "signet": bdk.Network.SIGNET,
    "regtest": bdk.Network.REGTEST,
}


def bdk_network(name: str) -> bdk.Network:
    try:
        return _NETWORKS[name]
    except KeyError:
        raise PayoutError(f"unknown network {name!r} (one of {', '.join(_NETWORKS)})") from None


def parse_address(text: str, network: str) -> bdk.Address:
    """Parse a payout address and check it belongs to ``network``."""
    net = bdk_network(network)
    try:
        addr = bdk.Address(text, net)
    except Exception as exc:  # bdk raises AddressParseError subclasses named after the fault
        reason = type(exc).__name__
        for other, other_net in _NETWORKS.items():
            try:
                bdk.Address(text, other_net)
            except Exception:
                continue
            raise AddressError(f"address {text!r} is for {other}, not {network}") from None
        raise AddressError(f"address {text!r} is not a valid address ({reason})") from None
    if not addr.is_valid_for_network(net):
        raise AddressError(f"address {text!r} is not valid for {network}")
    return addr


def check_addresses(round_: GrantRound) -> None:
    """Refuse a round with any payout address that is not valid on its network."""
    seen: set[str] = set()
    for a in round_.result.awards:
        if a.payout_address not in seen:
            parse_address(a.payout_address, round_.settings.network)
            seen.add(a.payout_address)


def check_payable(
    round_: GrantRound, *, network: str | None = None, fee_rate_sat_vb: int | None = None
) -> list[Award]:
    """The awards a payout must pay, once the round may be paid at all.

    Every way of paying (our PSBT, Bitcoin Core's wallet, a PSBT another wallet
    funded) asks the same: the round is approved and not yet paid, the funder's
    network is the round's, the fee rate is sane, and somebody is paid now.
    """
    if round_.state.status is not RoundStatus.APPROVED:
        raise RoundStateError(
            f"round {round_.settings.round_id} is {round_.state.status.value}; only an approved "
            "round is paid"
        )
    if network is not None and network != round_.settings.network:
        raise PayoutError(
            f"--network {network} does not match the round's network {round_.settings.network}"
        )
    if fee_rate_sat_vb is not None and not 1 <= fee_rate_sat_vb <= 10_000:
        raise PayoutError(f"fee rate must be between 1 and 10000 sat/vB: {fee_rate_sat_vb}")
    payouts = round_.result.payouts()
    if not payouts:
        raise PayoutError("the round pays nobody (every amount is carried or returned)")
    return payouts


def sat_to_btc(sat: int) -> str:
    """Exact decimal BTC with 8 decimals: 123456789 -> '1.23456789'."""
    if sat < 0:
        raise ValueError("negative amount")
    return f"{sat // 100_000_000}.{sat % 100_000_000:08d}"


# --- UTXO file --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FunderUtxo:
    """One UTXO of the funder, with the full previous transaction that created it."""

    txid: str
    vout: int
    value_sat: int
    prev_tx_hex: str
    derivation_index: int
    change: bool = False


def utxos_from_json(obj: Any) -> list[FunderUtxo]:
    """Parse the funder's UTXO file: a list (or ``{"utxos": [...]}``) of objects."""
    items = obj.get("utxos") if isinstance(obj, dict) else obj
    if not isinstance(items, list) or not items:
        raise UtxoError("UTXO file: expected a non-empty list of UTXOs")
    out = []
    for n, u in enumerate(items):
        where = f"utxos[{n}]"
        if not isinstance(u, dict):
            raise UtxoError(f"{where}: expected an object")
        try:
            txid, vout, value = u["txid"], u["vout"], u["value"]
            prev, index = u["prev_tx_hex"], u["derivation_index"]
        except KeyError as exc:
            raise UtxoError(f"{where}: missing field {exc.args[0]!r}") from None
        keychain = u.get("keychain", "external")
        if not (isinstance(txid, str) and isinstance(prev, str)):
            raise UtxoError(f"{where}: txid and prev_tx_hex must be hex strings")
        if type(vout) is not int or type(value) is not int or type(index) is not int:
            raise UtxoError(f"{where}: vout, value and derivation_index must be integers")
        if not 0 < value <= MAX_SAT or vout < 0 or not 0 <= index < 2**31:
            raise UtxoError(f"{where}: value, vout or derivation_index out of range")
        if keychain not in ("external", "internal"):
            raise UtxoError(f"{where}: keychain must be 'external' or 'internal'")
        out.append(FunderUtxo(txid.lower(), vout, value, prev, index, keychain == "internal"))
    return out


def load_utxos(text: str) -> list[FunderUtxo]:
    try:
        return utxos_from_json(json.loads(text))
    except json.JSONDecodeError as exc:
        raise UtxoError(f"UTXO file is not JSON: {exc}") from None


# --- the funder's wallet ----------------------------------------------------------------


def _descriptor(text: str, network: str, what: str) -> bdk.Descriptor:
    kind = bdk.NetworkKind.MAIN if network == "bitcoin" else bdk.NetworkKind.TEST
    if "[" not in text:
        raise DescriptorError(
            f"{what} descriptor has no key origin ([fingerprint/path]); hardware wallets "
            "need it to find their key"
        )
    if "prv" in text:
        raise DescriptorError(f"{what} descriptor holds a private key; give the watch-only one")
    try:
        desc = bdk.Descriptor(text, kind)
    except Exception as exc:
        raise DescriptorError(
            f"{what} descriptor is not valid for {network} ({type(exc).__name__}): {text}"
        ) from None
    if not desc.has_wildcard() or desc.is_multipath():
        raise DescriptorError(f"{what} descriptor must be a single ranged branch (…/0/* or …/1/*)")
    return desc


def change_address(change_descriptor: str, network: str, index: int) -> str:
    """The address at ``index`` of the funder's change branch."""
    desc = _descriptor(change_descriptor, network, "change")
    try:
        return str(desc.derive_address(index, bdk_network(network)))
    except Exception as exc:
        raise DescriptorError(
            f"cannot derive change address {index} ({type(exc).__name__})"
        ) from None


def _wallet(descriptor: str, change_descriptor: str, network: str) -> bdk.Wallet:
    d = _descriptor(descriptor, network, "receive")
    c = _descriptor(change_descriptor, network, "change")
    try:
        return bdk.Wallet(d, c, bdk_network(network), bdk.Persister.new_in_memory())
    except Exception as exc:
        raise DescriptorError(
            f"cannot build a wallet from these descriptors ({type(exc).__name__}); receive and "
            "change must be two different branches, e.g. …/0/* and …/1/*"
        ) from None


def _transaction(hex_text: str, where: str) -> bdk.Transaction:
    try:
        raw = bytes.fromhex(hex_text.strip())
    except ValueError:
        raise UtxoError(f"{where}: not hex") from None
    try:
        return bdk.Transaction(raw)
    except Exception as exc:
        raise UtxoError(f"{where}: not a transaction ({type(exc).__name__})") from None


def _load_utxos_into(wallet: bdk.Wallet, utxos: Sequence[FunderUtxo], network: str) -> None:
    net = bdk_network(network)
    seen: set[tuple[str, int]] = set()
    txs: dict[str, bdk.Transaction] = {}
    top: dict[bool, int] = {}
    for u in utxos:
        where = f"UTXO {u.txid}:{u.vout}"
        if (u.txid, u.vout) in seen:
            raise UtxoError(f"{where}: listed twice")
        seen.add((u.txid, u.vout))
        tx = _transaction(u.prev_tx_hex, f"{where} prev_tx_hex")
        if str(tx.compute_txid()) != u.txid:
            raise UtxoError(
                f"{where}: prev_tx_hex is transaction {tx.compute_txid()}, not {u.txid}"
            )
        outs = tx.output()
        if u.vout >= len(outs):
            raise UtxoError(f"{where}: the transaction has only {len(outs)} outputs")
        out = outs[u.vout]
        if out.value.to_sat() != u.value_sat:
            raise UtxoError(
                f"{where}: value is {out.value.to_sat()} sat, the file says {u.value_sat}"
            )
        keychain = bdk.KeychainKind.INTERNAL if u.change else bdk.KeychainKind.EXTERNAL
        expected = wallet.peek_address(keychain, u.derivation_index).address
        if out.script_pubkey.to_bytes() != expected.script_pubkey().to_bytes():
            try:
                pays = str(bdk.Address.from_script(out.script_pubkey, net))
            except Exception:
                pays = out.script_pubkey.to_bytes().hex()
            raise UtxoError(
                f"{where}: pays {pays}, but the descriptor's "
                f"{'change' if u.change else 'receive'} address {u.derivation_index} is {expected}"
            )
        top[u.change] = max(top.get(u.change, 0), u.derivation_index)
        txs[u.txid] = tx
    for change, index in top.items():
        kc = bdk.KeychainKind.INTERNAL if change else bdk.KeychainKind.EXTERNAL
        wallet.reveal_addresses_to(kc, index)
    wallet.apply_unconfirmed_txs(
        [bdk.UnconfirmedTx(tx=tx, last_seen=1) for _, tx in sorted(txs.items())]
    )


@dataclass(frozen=True, slots=True)
class PayoutPsbt:
    psbt_base64: str
    fee_sat: int
    inputs_sat: int
    paid_sat: int
    change_sat: int
    vsize: int


def build_payout_psbt(
    round_: GrantRound,
    *,
    descriptor: str,
    change_descriptor: str,
    utxos: Sequence[FunderUtxo],
    fee_rate_sat_vb: int,
    network: str,
) -> PayoutPsbt:
    """An unsigned PSBT (BIP174) paying every award of an approved round in one transaction."""
    payouts = check_payable(round_, network=network, fee_rate_sat_vb=fee_rate_sat_vb)
    wallet = _wallet(descriptor, change_descriptor, network)
    _load_utxos_into(wallet, utxos, network)
    listed = {(u.txid, u.vout) for u in utxos}
    unlisted = [
        lo.outpoint
        for lo in wallet.list_unspent()
        if (str(lo.outpoint.txid), lo.outpoint.vout) not in listed
    ]
    builder = (
        bdk.TxBuilder()
        .fee_rate(bdk.FeeRate.from_sat_per_vb(fee_rate_sat_vb))
        .ordering(bdk.TxOrdering.UNTOUCHED)
        .coin_selection(bdk.CoinSelectionAlgorithm.LARGEST_FIRST)
        .version(2)
    )
    if unlisted:
        builder = builder.unspendable(unlisted)
    for a in payouts:
        addr = parse_address(a.payout_address, network)
        builder = builder.add_recipient(addr.script_pubkey(), bdk.Amount.from_sat(a.amount_sat))
    paid = sum(a.amount_sat for a in payouts)
    available = sum(u.value_sat for u in utxos)
    short = InsufficientFundsError(
        f"the UTXOs hold {available} sat; the round pays {paid} sat plus the fee at "
        f"{fee_rate_sat_vb} sat/vB"
    )
    if available <= paid:
        raise short
    try:
        psbt = builder.finish(wallet)
    except bdk.CreateTxError.InsufficientFunds:
        raise short from None
    except bdk.CreateTxError as exc:
        if "insufficient funds" in str(exc).lower():
            raise short from None
        raise PayoutError(f"cannot build the transaction ({type(exc).__name__}: {exc})") from None
    fee = psbt.fee()
    reserve = round_.settings.fee_reserve_sat
    if fee > reserve:
        raise FeeExceedsReserveError(
            f"the fee at {fee_rate_sat_vb} sat/vB is {fee} sat, more than the round's fee "
            f"reserve of {reserve} sat (budget {round_.settings.budget_sat} sat); lower the fee "
            "rate or compute the round again with a larger reserve"
        )
    tx = psbt.extract_tx_unchecked_fee_rate()
    spent = sum(_psbt_input_values(psbt))
    return PayoutPsbt(
        psbt_base64=psbt.serialize(),
        fee_sat=fee,
        inputs_sat=spent,
        paid_sat=paid,
        change_sat=spent - paid - fee,
        vsize=tx.vsize(),
    )


def _psbt_input_values(psbt: bdk.Psbt) -> list[int]:
    values = []
    for inp in psbt.input():
        if inp.witness_utxo is None:
            raise PayoutError("internal: PSBT input without witness_utxo")
        values.append(inp.witness_utxo.value.to_sat())
    return values


# --- checking the signed transaction ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class PaymentCheck:
    txid: str
    change_outputs: tuple[tuple[int, int], ...]  # (output index, value)


def check_payment(
    round_: GrantRound,
    tx_hex: str,
    *,
    change_descriptor: str,
    change_lookahead: int = 1000,
) -> PaymentCheck:
    """Accept a signed transaction only if it pays exactly the approved awards.

    Every award paid now must have exactly one output with its address and
    amount; every other output must go to the funder's change branch (within
    ``change_lookahead`` indexes); every input must carry a signature.
    """
    text = tx_hex.strip()
    if text.startswith(("cHNidP", "70736274ff")):
        raise InputError(
            "this is a PSBT, not a signed transaction (a wallet that signed nothing returns "
            "the PSBT unchanged)"
        )
    try:
        tx = bdk.Transaction(bytes.fromhex(text))
    except ValueError:
        raise InputError("the transaction is not hex") from None
    except Exception as exc:
        raise InputError(f"not a transaction ({type(exc).__name__})") from None
    for n, txin in enumerate(tx.input()):
        if not txin.witness and not txin.script_sig.to_bytes():
            raise PaymentMismatchError(f"input {n} is not signed")
    change = check_outputs(
        round_, tx, change_descriptor=change_descriptor, change_lookahead=change_lookahead
    )
    return PaymentCheck(str(tx.compute_txid()), change)


def check_outputs(
    round_: GrantRound,
    tx: bdk.Transaction,
    *,
    change_descriptor: str,
    change_lookahead: int = 1000,
) -> tuple[tuple[int, int], ...]:
    """Each award paid now exactly once, everything else to the change branch; the change."""
    network = round_.settings.network
    change = _descriptor(change_descriptor, network, "change")
    try:
        wallet = bdk.Wallet.create_single(
            change, bdk_network(network), bdk.Persister.new_in_memory(), change_lookahead
        )
    except Exception as exc:
        raise DescriptorError(f"cannot use the change descriptor ({type(exc).__name__})") from None
    expected: Counter[tuple[bytes, int]] = Counter()
    labels: dict[tuple[bytes, int], str] = {}
    for a in round_.result.payouts():
        key = (parse_address(a.payout_address, network).script_pubkey().to_bytes(), a.amount_sat)
        expected[key] += 1
        labels[key] = f"{a.operator_id} ({a.payout_address}, {a.amount_sat} sat)"
    net = bdk_network(network)
    change_outputs = []
    for n, out in enumerate(tx.output()):
        key = (out.script_pubkey.to_bytes(), out.value.to_sat())
        if expected[key] > 0:
            expected[key] -= 1
            continue
        if wallet.derivation_of_spk(out.script_pubkey) is not None:
            change_outputs.append((n, key[1]))
            continue
        try:
            dest = str(bdk.Address.from_script(out.script_pubkey, net))
        except Exception:
            dest = key[0].hex()
        raise PaymentMismatchError(
            f"output {n} pays {key[1]} sat to {dest}, which is neither an approved award nor "
            "the funder's change branch"
        )
    missing = [labels[k] for k, c in sorted(expected.items()) if c > 0]
    if missing:
        raise PaymentMismatchError(f"the transaction does not pay: {'; '.join(missing)}")
    return tuple(change_outputs)


def check_funded_psbt(
    round_: GrantRound,
    psbt_base64: str,
    *,
    change_descriptor: str,
    fee_rate_sat_vb: int,
) -> PayoutPsbt:
    """Check a PSBT another wallet funded (Bitcoin Core's ``walletcreatefundedpsbt``).

    It must pay every award of the approved round exactly once and nothing
    else but change to the funder's change branch (found by its script, not
    its position: Core puts change anywhere), every input must say what it
    spends, and the fee must fit the round's fee reserve.
    """
    check_payable(round_, fee_rate_sat_vb=fee_rate_sat_vb)
    try:
        psbt = bdk.Psbt(psbt_base64)
    except Exception as exc:
        raise PayoutError(f"the funded PSBT does not parse ({type(exc).__name__})") from None
    tx = psbt.extract_tx_unchecked_fee_rate()
    change = check_outputs(round_, tx, change_descriptor=change_descriptor)
    for n, inp in enumerate(psbt.input()):
        if inp.witness_utxo is None and inp.non_witness_utxo is None:
            raise PayoutError(f"funded PSBT input {n} does not say what it spends")
        if not inp.bip32_derivation and not inp.tap_key_origins:
            raise PayoutError(
                f"funded PSBT input {n} has no BIP32 derivation; a hardware wallet cannot "
                "find its key (was bip32derivs off?)"
            )
    try:
        fee = psbt.fee()
    except Exception as exc:
        raise PayoutError(f"cannot compute the funded PSBT's fee ({type(exc).__name__})") from None
    reserve = round_.settings.fee_reserve_sat
    if fee > reserve:
        raise FeeExceedsReserveError(
            f"the funded transaction's fee is {fee} sat, more than the round's fee reserve of "
            f"{reserve} sat; lower the fee rate (was {fee_rate_sat_vb} sat/vB)"
        )
    paid = round_.result.paid_sat
    change_sat = sum(v for _, v in change)
    return PayoutPsbt(
        psbt_base64=psbt.serialize(),
        fee_sat=fee,
        inputs_sat=paid + change_sat + fee,
        paid_sat=paid,
        change_sat=change_sat,
        vsize=tx.vsize(),
    )
