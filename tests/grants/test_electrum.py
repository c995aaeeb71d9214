"""A real wallet signs our PSBT: Electrum, headless and offline, on regtest.

The wallet is restored from a fixed test seed; the watch-only descriptor is
derived from what Electrum itself reports (getmpk, convert_xkey, the root
fingerprint and derivation in its wallet file). The funding transactions are
made here and never mined: the PSBT carries them in full, which is all an
offline signer needs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import bdkpython as bdk
import pytest
from click.testing import CliRunner

from resistance.grants.cli import grants
from resistance.grants.files import load_round
from resistance.grants.model import RoundStatus, round_inputs_file_to_json

from .helpers import (
    ACCOUNT_TPUB,
    CHANGE_DESCRIPTOR,
    DESCRIPTOR,
    SEED_WORDS,
    funding_tx,
    sample_inputs,
    settings,
)

ELECTRUM = shutil.which("electrum")
pytestmark = pytest.mark.skipif(
    ELECTRUM is None,
    reason="Electrum is not installed (apt-get install -y --no-install-recommends electrum)",
)


class Electrum:
    def __init__(self, root: Path) -> None:
        self.dir = root
        self.wallet = root / "regtest" / "wallets" / "funder"
        self.wallet.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, *args: str, wallet: bool = True) -> str:
        assert ELECTRUM is not None
        cmd = [ELECTRUM, "--offline", "--regtest", "-D", str(self.dir)]
        if wallet:
            cmd += ["-w", str(self.wallet)]
        done = subprocess.run(
            [*cmd, *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()


@pytest.fixture(scope="module")
def electrum(tmp_path_factory: pytest.TempPathFactory) -> Electrum:
    e = Electrum(tmp_path_factory.mktemp("electrum"))
    e("restore", SEED_WORDS)
    return e


def descriptors_from(electrum: Electrum) -> tuple[str, str]:
    vpub = electrum("getmpk")
    tpub = electrum("convert_xkey", vpub, "standard", wallet=False)
    keystore = json.loads(electrum.wallet.read_text())["keystore"]
    assert keystore["type"] == "bip32" and keystore["seed_type"] == "segwit"
    path = keystore["derivation"].removeprefix("m/").replace("'", "h")
    origin = f"[{keystore['root_fingerprint']}/{path}]{tpub}"
    return f"wpkh({origin}/0/*)", f"wpkh({origin}/1/*)"


def test_descriptor_derived_from_electrum_matches_its_addresses(electrum: Electrum) -> None:
    receive, change = descriptors_from(electrum)
    assert (receive, change) == (DESCRIPTOR, CHANGE_DESCRIPTOR)
    assert ACCOUNT_TPUB in receive
    for desc, flag in ((receive, ()), (change, ("--change",))):
        theirs = json.loads(electrum("listaddresses", *flag))[:5]
        d = bdk.Descriptor(desc, bdk.NetworkKind.TEST)
        ours = [str(d.derive_address(i, bdk.Network.REGTEST)) for i in range(5)]
        assert ours == theirs


def test_electrum_signs_the_round_psbt_and_mark_paid_accepts_it(
    electrum: Electrum, tmp_path: Path
) -> None:
    receive, change = descriptors_from(electrum)
    addrs = json.loads(electrum("listaddresses"))
    # two funding transactions, never mined, paying receive addresses 0, 1 and 4
    tx_a = funding_tx([(addrs[0], 4_000_000), (addrs[1], 3_000_000)], b"a")
    tx_b = funding_tx([(addrs[4], 6_000_000)], b"b")
    utxos = []
    for hex_tx, vouts in (
        (tx_a, [(0, 4_000_000, 0), (1, 3_000_000, 1)]),
        (tx_b, [(0, 6_000_000, 4)]),
    ):
        txid = str(bdk.Transaction(bytes.fromhex(hex_tx)).compute_txid())
        for vout, value, index in vouts:
            utxos.append(
                {
                    "txid": txid,
                    "vout": vout,
                    "value": value,
                    "prev_tx_hex": hex_tx,
                    "derivation_index": index,
                }
            )
    (tmp_path / "utxos.json").write_text(json.dumps(utxos))
    inputs = round_inputs_file_to_json(settings(), sample_inputs(5))
    (tmp_path / "inputs.json").write_text(json.dumps(inputs))
    run = CliRunner().invoke
    r_json, psbt_file = str(tmp_path / "round.json"), str(tmp_path / "round.psbt")

    assert run(grants, ["compute", str(tmp_path / "inputs.json"), "--out", r_json]).exit_code == 0
    assert run(grants, ["approve", r_json]).exit_code == 0
    res = run(
        grants,
        [
            "psbt",
            r_json,
            "--descriptor",
            receive,
            "--change-descriptor",
            change,
            "--utxos",
            str(tmp_path / "utxos.json"),
            "--fee-rate",
            "3",
            "--network",
            "regtest",
            "--out",
            psbt_file,
        ],
    )
    assert res.exit_code == 0, res.output
    psbt_b64 = Path(psbt_file).read_text().strip()

    signed = electrum("signtransaction", psbt_b64)
    # Electrum returns the PSBT unchanged (exit 0) when it signed nothing
    assert not signed.startswith("cHNidP"), "Electrum signed nothing"
    tx = bdk.Transaction(bytes.fromhex(signed))
    assert all(txin.witness for txin in tx.input())
    unsigned = bdk.Psbt(psbt_b64).extract_tx_unchecked_fee_rate()
    assert str(tx.compute_txid()) == str(unsigned.compute_txid())  # same tx, now signed

    round_ = load_round(Path(r_json))
    payouts = round_.result.payouts()
    outs = [
        (str(bdk.Address.from_script(o.script_pubkey, bdk.Network.REGTEST)), o.value.to_sat())
        for o in tx.output()
    ]
    assert outs[:-1] == [(a.payout_address, a.amount_sat) for a in payouts]
    change_addr, change_value = outs[-1]
    assert change_addr == json.loads(electrum("listaddresses", "--change"))[0]
    psbt = bdk.Psbt(psbt_b64)
    values = {(u["txid"], u["vout"]): u["value"] for u in utxos}
    spent = sum(values[(str(i.previous_output.txid), i.previous_output.vout)] for i in tx.input())
    assert spent == 10_000_000  # largest first: 6M + 4M sat cover 9.95M sat and the fee
    assert change_value == spent - round_.result.paid_sat - psbt.fee()
    assert psbt.fee() <= round_.settings.fee_reserve_sat

    res = run(grants, ["mark-paid", r_json, "--tx", signed, "--change-descriptor", change])
    assert res.exit_code == 0, res.output
    paid = load_round(Path(r_json))
    assert paid.state.status is RoundStatus.PAID
    assert paid.state.txid == str(tx.compute_txid())
    res = run(grants, ["mark-paid", r_json, "--tx", signed, "--change-descriptor", change])
    assert res.exit_code == 2 and "already paid" in res.output
    assert run(grants, ["verify", r_json]).exit_code == 0
