"""The payout PSBT: what a hardware wallet needs is in it, bad inputs are refused clearly."""

from __future__ import annotations

import dataclasses
import json

import bdkpython as bdk
import pytest

from resistance.grants import bitcoind, payout, rounds
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
from resistance.grants.model import RoundStatus

from .helpers import (
    CHANGE_DESCRIPTOR,
    DESCRIPTOR,
    FINGERPRINT,
    address,
    approved_round,
    embit_root,
    embit_sign,
    rollup,
    sample_inputs,
    settings,
    utxos_for,
    wallet_address,
)


def build(round_, utxos, fee_rate=2, **kw):  # type: ignore[no-untyped-def]
    args = {
        "descriptor": DESCRIPTOR,
        "change_descriptor": CHANGE_DESCRIPTOR,
        "utxos": payout.utxos_from_json(utxos),
        "fee_rate_sat_vb": fee_rate,
        "network": "regtest",
    }
    args.update(kw)
    return payout.build_payout_psbt(round_, **args)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def round_():  # type: ignore[no-untyped-def]
    return approved_round()


def test_psbt_carries_prev_txs_and_bip32_derivations(round_) -> None:  # type: ignore[no-untyped-def]
    utxos = utxos_for([3_000_000, 4_000_000, 5_000_000], first_index=2)
    built = build(round_, utxos)
    psbt = bdk.Psbt(built.psbt_base64)
    tx = psbt.extract_tx_unchecked_fee_rate()
    payouts = round_.result.payouts()
    assert len(payouts) == 4
    outs = [(o.script_pubkey.to_bytes(), o.value.to_sat()) for o in tx.output()]
    want = [
        (
            bdk.Address(a.payout_address, bdk.Network.REGTEST).script_pubkey().to_bytes(),
            a.amount_sat,
        )
        for a in payouts
    ]
    assert outs[: len(want)] == want  # awards in the round's order, then change
    assert len(outs) == len(want) + 1
    change_spk = bdk.Address(wallet_address(0, change=True), bdk.Network.REGTEST).script_pubkey()
    assert outs[-1] == (change_spk.to_bytes(), built.change_sat)
    assert built.inputs_sat == built.paid_sat + built.fee_sat + built.change_sat
    assert built.fee_sat <= round_.settings.fee_reserve_sat
    # Bitcoin Core's vsize, rounded up, at 2 sat/vB: BDK charges for it
    assert built.fee_sat >= 2 * tx.vsize() - 1
    by_txid = {u["txid"]: u for u in utxos}
    for inp, txin in zip(psbt.input(), tx.input(), strict=True):
        assert inp.non_witness_utxo is not None  # full previous transaction (segwit v0)
        assert str(inp.non_witness_utxo.compute_txid()) == str(txin.previous_output.txid)
        assert inp.witness_utxo is not None
        (origin,) = inp.bip32_derivation.values()
        assert origin.fingerprint == FINGERPRINT
        index = next(u["derivation_index"] for u in utxos if u["vout"] == txin.previous_output.vout)
        assert origin.path.to_u32_vec() == [0x80000000, 0, index]
        assert str(txin.previous_output.txid) in by_txid
    (change_origin,) = psbt.output()[-1].bip32_derivation.values()
    assert change_origin.fingerprint == FINGERPRINT
    assert change_origin.path.to_u32_vec() == [0x80000000, 1, 0]
    for out in psbt.output()[:-1]:
        assert not out.bip32_derivation  # awards are not ours


def test_a_hardware_wallet_like_signer_signs_every_input(round_) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("embit")
    built = build(round_, utxos_for([3_000_000, 4_000_000, 5_000_000]))
    n_inputs = len(bdk.Psbt(built.psbt_base64).input())
    signed, tx_hex = embit_sign(built.psbt_base64)
    assert signed == n_inputs and tx_hex
    paid = rounds.mark_paid(round_, tx_hex, change_descriptor=CHANGE_DESCRIPTOR)
    assert paid.state.status is RoundStatus.PAID
    assert paid.state.txid == str(bdk.Transaction(bytes.fromhex(tx_hex)).compute_txid())
    with pytest.raises(RoundStateError, match="already paid"):
        rounds.mark_paid(paid, tx_hex, change_descriptor=CHANGE_DESCRIPTOR)
    with pytest.raises(RoundStateError, match="cannot change"):
        rounds.amend(paid, settings=settings(budget_sat=100_000))


def test_embit_refuses_to_sign_without_the_derivation_paths(round_) -> None:  # type: ignore[no-untyped-def]
    """The control for the test above: embit signs only where the paths are right."""
    embit_psbt = pytest.importorskip("embit.psbt")
    built = build(round_, utxos_for([13_000_000]))
    psbt = embit_psbt.PSBT.from_string(built.psbt_base64)
    for inp in psbt.inputs:
        inp.bip32_derivations = {}
    assert psbt.sign_with(embit_root()) == 0


def test_fee_larger_than_the_reserve_is_refused(round_) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FeeExceedsReserveError, match="fee reserve of 50000 sat"):
        build(round_, utxos_for([13_000_000]), fee_rate=500)


def test_budget_smaller_than_the_fee_is_refused() -> None:
    tiny = approved_round(n_ops=1, budget_sat=20_000, fee_reserve_sat=100)
    with pytest.raises(FeeExceedsReserveError):
        build(tiny, utxos_for([1_000_000]), fee_rate=1)


def test_utxos_that_do_not_cover_the_round_are_refused(round_) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InsufficientFundsError, match="the UTXOs hold 9000000 sat"):
        build(round_, utxos_for([4_000_000, 5_000_000]))


def test_unlisted_outputs_of_the_same_tx_are_not_spent(round_) -> None:  # type: ignore[no-untyped-def]
    utxos = utxos_for([5_000_000, 20_000_000, 6_000_000])
    listed = [utxos[0], utxos[2]]  # the 20 BTC output is not offered
    with pytest.raises(InsufficientFundsError):
        build(round_, listed[:1])
    built = build(round_, listed)
    assert built.inputs_sat == 11_000_000


def test_wrong_network_and_invalid_addresses_are_refused() -> None:
    s = settings()
    rows = [rollup("a", "alice", 0, payout=address("alice", "bitcoin"))]
    inputs = dataclasses.replace(sample_inputs(1), rollups=tuple(rows))
    with pytest.raises(AddressError, match="is for bitcoin, not regtest"):
        rounds.compute_round(s, inputs)
    rows = [rollup("a", "alice", 0, payout="bcrt1qnotanaddress")]
    with pytest.raises(AddressError, match="not a valid address"):
        rounds.compute_round(s, dataclasses.replace(inputs, rollups=tuple(rows)))
    with pytest.raises(AddressError):
        payout.parse_address("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", "regtest")


def test_network_and_descriptor_mistakes_are_refused(round_) -> None:  # type: ignore[no-untyped-def]
    utxos = utxos_for([13_000_000])
    with pytest.raises(PayoutError, match="does not match the round's network"):
        build(round_, utxos, network="signet")
    no_origin = DESCRIPTOR.replace(f"[{FINGERPRINT}/0h]", "")
    with pytest.raises(DescriptorError, match="key origin"):
        build(round_, utxos, descriptor=no_origin)
    with pytest.raises(DescriptorError, match="not valid"):
        build(round_, utxos, descriptor="wpkh([00000000/0h]xpubnonsense/0/*)")
    with pytest.raises(DescriptorError, match="private key"):
        build(round_, utxos, descriptor="wpkh([00000000/0h]tprv8Zgx/0/*)")


def test_utxo_file_mistakes_are_refused(round_) -> None:  # type: ignore[no-untyped-def]
    (u,) = utxos_for([13_000_000])
    with pytest.raises(UtxoError, match="value is 13000000 sat"):
        build(round_, [{**u, "value": 14_000_000}])
    with pytest.raises(UtxoError, match="is transaction"):
        build(round_, [{**u, "txid": "00" * 32}])
    with pytest.raises(UtxoError, match="receive address 5"):
        build(round_, [{**u, "derivation_index": 5}])
    with pytest.raises(UtxoError, match="only 1 outputs"):
        build(round_, [{**u, "vout": 3}])
    with pytest.raises(UtxoError, match="not a transaction"):
        build(round_, [{**u, "prev_tx_hex": "00"}])
    with pytest.raises(UtxoError, match="listed twice"):
        build(round_, [u, u])
    with pytest.raises(UtxoError, match="missing field 'prev_tx_hex'"):
        build(round_, [{k: v for k, v in u.items() if k != "prev_tx_hex"}])
    with pytest.raises(UtxoError, match="not JSON"):
        payout.load_utxos("{")


def test_only_an_approved_round_is_paid() -> None:
    draft = rounds.compute_round(settings(), sample_inputs())
    with pytest.raises(RoundStateError, match="draft"):
        build(draft, utxos_for([13_000_000]))
    with pytest.raises(RoundStateError, match="approve it first"):
        rounds.mark_paid(draft, "00", change_descriptor=CHANGE_DESCRIPTOR)
    approved = rounds.approve(draft)
    with pytest.raises(RoundStateError, match="already approved"):
        rounds.approve(approved)
    with pytest.raises(RoundStateError, match="cannot change"):
        rounds.amend(approved, settings=settings(budget_sat=100_000))
    assert rounds.amend(draft, settings=settings(budget_sat=2_000_000)).result.pool_sat == 1_950_000


def test_every_way_of_paying_asks_the_same_of_the_round(round_) -> None:  # type: ignore[no-untyped-def]
    """Our PSBT, Bitcoin Core's wallet and a PSBT another wallet funded share one check."""

    class NoRpc:
        def __getattr__(self, name: str) -> None:
            raise AssertionError("Bitcoin Core was asked before the round was checked")

    ways = (
        lambda r, fee: build(r, utxos_for([13_000_000]), fee_rate=fee),
        lambda r, fee: payout.check_funded_psbt(
            r, "cHNidP8=", change_descriptor=CHANGE_DESCRIPTOR, fee_rate_sat_vb=fee
        ),
        lambda r, fee: bitcoind.fund_with_bitcoind(
            NoRpc(),  # type: ignore[arg-type]
            r,
            change_descriptor=CHANGE_DESCRIPTOR,
            fee_rate_sat_vb=fee,
        ),
    )
    draft = rounds.compute_round(settings(), sample_inputs())
    for pay in ways:
        with pytest.raises(RoundStateError, match="is draft; only an approved round is paid"):
            pay(draft, 2)
        with pytest.raises(PayoutError, match="between 1 and 10000 sat/vB: 0"):
            pay(round_, 0)
        with pytest.raises(PayoutError, match="between 1 and 10000 sat/vB: 10001"):
            pay(round_, 10_001)


def test_mark_paid_refuses_a_transaction_that_does_not_pay_exactly(round_) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("embit")
    utxos = utxos_for([13_000_000])
    # a round whose last award is 1 sat larger: signed, but not what was approved
    award = round_.result.awards[-1]
    bigger = dataclasses.replace(award, amount_sat=award.amount_sat + 1)
    other = dataclasses.replace(
        round_,
        result=dataclasses.replace(round_.result, awards=(*round_.result.awards[:-1], bigger)),
    )
    other = dataclasses.replace(
        other, state=dataclasses.replace(other.state, digest=other.digest())
    )
    _, tx_hex = embit_sign(build(other, utxos).psbt_base64)
    with pytest.raises(PaymentMismatchError, match="neither an approved award"):
        rounds.mark_paid(round_, tx_hex, change_descriptor=CHANGE_DESCRIPTOR)
    # a round with one award fewer: the missing award is named
    fewer = dataclasses.replace(
        round_, result=dataclasses.replace(round_.result, awards=round_.result.awards[:-1])
    )
    fewer = dataclasses.replace(
        fewer, state=dataclasses.replace(fewer.state, digest=fewer.digest())
    )
    _, tx_hex = embit_sign(build(fewer, utxos).psbt_base64)
    with pytest.raises(PaymentMismatchError, match=f"does not pay: {award.operator_id}"):
        rounds.mark_paid(round_, tx_hex, change_descriptor=CHANGE_DESCRIPTOR)
    # change to another branch than the funder's change branch is refused
    built = build(round_, utxos, change_descriptor=DESCRIPTOR.replace("/0/*", "/2/*"))
    _, tx_hex = embit_sign(built.psbt_base64)
    with pytest.raises(PaymentMismatchError, match="neither"):
        rounds.mark_paid(round_, tx_hex, change_descriptor=CHANGE_DESCRIPTOR)
    # unsigned, a PSBT, garbage
    psbt_b64 = build(round_, utxos).psbt_base64
    unsigned = bdk.Psbt(psbt_b64).extract_tx_unchecked_fee_rate().serialize().hex()
    with pytest.raises(PaymentMismatchError, match="input 0 is not signed"):
        rounds.mark_paid(round_, unsigned, change_descriptor=CHANGE_DESCRIPTOR)
    with pytest.raises(InputError, match="PSBT"):
        rounds.mark_paid(round_, psbt_b64, change_descriptor=CHANGE_DESCRIPTOR)
    with pytest.raises(InputError):
        rounds.mark_paid(round_, "zz", change_descriptor=CHANGE_DESCRIPTOR)


def test_same_inputs_give_the_same_psbt(round_) -> None:  # type: ignore[no-untyped-def]
    utxos = utxos_for([1_000_000, 9_000_000, 5_000_000])
    assert build(round_, utxos).psbt_base64 == build(round_, list(reversed(utxos))).psbt_base64
    assert json.loads(json.dumps(utxos)) == utxos
