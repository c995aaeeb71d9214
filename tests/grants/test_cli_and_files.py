"""The round file and `resist grants`: reproducible, refusing, writing nothing on error."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from resistance.grants import export, rounds
from resistance.grants.cli import grants
from resistance.grants.files import load_round, save_round
from resistance.grants.model import (
    InputSignature,
    round_from_json,
    round_inputs_file_to_json,
    round_to_json,
)
from resistance.grants.payout import sat_to_btc

from .helpers import (
    CHANGE_DESCRIPTOR,
    DESCRIPTOR,
    approved_round,
    embit_sign,
    sample_inputs,
    settings,
    utxos_for,
)


@pytest.fixture
def inputs_file(tmp_path: Path) -> Path:
    path = tmp_path / "inputs.json"
    path.write_text(json.dumps(round_inputs_file_to_json(settings(), sample_inputs())))
    return path


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(grants, list(args))


def test_round_file_round_trips_and_digest_is_stable() -> None:
    r = approved_round()
    signed = dataclasses.replace(r.inputs, signatures=(InputSignature("k1", "ed25519", "ab"),))
    r = dataclasses.replace(r, inputs=signed)
    again = round_from_json(json.loads(json.dumps(round_to_json(r))))
    assert again == r and again.digest() == r.digest()


def test_compute_then_verify(inputs_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "round.json"
    res = invoke("compute", str(inputs_file), "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "4 payouts" in res.output
    res = invoke("verify", str(out))
    assert res.exit_code == 0 and "OK" in res.output and "not signed" in res.output


def test_verify_reports_every_difference_and_exits_1(inputs_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "round.json"
    invoke("compute", str(inputs_file), "--out", str(out))
    data = json.loads(out.read_text())
    data["result"]["awards"][1]["amount_sat"] += 1000
    data["result"]["awards"][1]["share_sat"] += 1000
    data["inputs"]["rollups"][0]["target_successes"] = 0
    out.write_text(json.dumps(data))
    res = invoke("verify", str(out))
    assert res.exit_code == 1
    assert "difference" in res.output and "op1" in res.output and "amount_sat" in res.output
    diffs = rounds.verify(load_round(out))
    assert {(d.what, d.field) for d in diffs} >= {("op1", "amount_sat"), ("op0", "weight")}


def test_verify_catches_an_approved_round_changed_after_approval(tmp_path: Path) -> None:
    path = tmp_path / "round.json"
    r = approved_round()
    save_round(path, r)
    data = json.loads(path.read_text())
    data["settings"]["min_payout_sat"] = 20_000  # recomputes the same, but not what was approved
    path.write_text(json.dumps(data))
    diffs = rounds.verify(load_round(path))
    assert [d.field for d in diffs] == ["digest"]
    assert invoke("verify", str(path)).exit_code == 1


def test_errors_are_one_line_exit_2_and_write_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "inputs.json"
    data = round_inputs_file_to_json(settings(), sample_inputs())
    data["settings"]["fee_reserve_sat"] = 10**9
    bad.write_text(json.dumps(data))
    out = tmp_path / "round.json"
    res = invoke("compute", str(bad), "--out", str(out))
    assert res.exit_code == 2 and "error: fee reserve" in res.output
    assert not out.exists()
    bad.write_text("{")
    assert invoke("compute", str(bad), "--out", str(out)).exit_code == 2
    assert not out.exists()


def test_psbt_command_writes_nothing_on_error(tmp_path: Path) -> None:
    path = tmp_path / "round.json"
    save_round(path, approved_round())
    utxos = tmp_path / "utxos.json"
    utxos.write_text(json.dumps(utxos_for([1_000_000])))
    psbt = tmp_path / "round.psbt"
    args = [
        "psbt",
        str(path),
        "--descriptor",
        DESCRIPTOR,
        "--change-descriptor",
        CHANGE_DESCRIPTOR,
        "--utxos",
        str(utxos),
        "--network",
        "regtest",
        "--out",
        str(psbt),
    ]
    res = invoke(*args, "--fee-rate", "2")
    assert res.exit_code == 2 and "UTXOs hold 1000000 sat" in res.output
    assert not psbt.exists()
    utxos.write_text(json.dumps(utxos_for([20_000_000])))
    res = invoke(*args, "--fee-rate", "1000")
    assert res.exit_code == 2 and "fee reserve" in res.output and not psbt.exists()
    res = invoke(*args, "--fee-rate", "2")
    assert res.exit_code == 0 and psbt.read_text().startswith("cHNidP")


def test_full_cycle_with_a_signed_transaction(tmp_path: Path) -> None:
    pytest.importorskip("embit")
    path = tmp_path / "round.json"
    save_round(path, approved_round())
    utxos = tmp_path / "utxos.json"
    utxos.write_text(json.dumps(utxos_for([20_000_000])))
    psbt = tmp_path / "round.psbt"
    res = invoke(
        "psbt",
        str(path),
        "--descriptor",
        DESCRIPTOR,
        "--change-descriptor",
        CHANGE_DESCRIPTOR,
        "--utxos",
        str(utxos),
        "--network",
        "regtest",
        "--fee-rate",
        "2",
        "--out",
        str(psbt),
    )
    assert res.exit_code == 0, res.output
    _, tx_hex = embit_sign(psbt.read_text().strip())
    (tmp_path / "tx.hex").write_text(tx_hex)
    res = invoke(
        "mark-paid",
        str(path),
        "--tx-file",
        str(tmp_path / "tx.hex"),
        "--change-descriptor",
        CHANGE_DESCRIPTOR,
    )
    assert res.exit_code == 0, res.output
    assert load_round(path).state.txid in res.output
    res = invoke("mark-paid", str(path), "--tx", tx_hex, "--change-descriptor", CHANGE_DESCRIPTOR)
    assert res.exit_code == 2 and "already paid" in res.output
    assert invoke("approve", str(path)).exit_code == 2


def test_electrum_list_bip21_and_reports(tmp_path: Path) -> None:
    r = approved_round()
    path = tmp_path / "round.json"
    save_round(path, r)
    payouts = r.result.payouts()
    res = invoke("electrum-list", str(path))
    lines = res.output.splitlines()
    assert lines == [f"{a.payout_address}, {sat_to_btc(a.amount_sat)}" for a in payouts]
    for line, a in zip(lines, payouts, strict=True):
        whole, frac = line.split(", ")[1].split(".")
        assert len(frac) == 8 and int(whole) * 10**8 + int(frac) == a.amount_sat
    res = invoke("bip21", str(path))
    uris = res.output.splitlines()
    assert len(uris) == len(payouts)
    assert uris[0].startswith(f"bitcoin:{payouts[0].payout_address}?amount=")
    assert "label=Digital%20Resistance%20grant%202024-05-ru" in uris[0]
    rows = list(csv.DictReader(io.StringIO(invoke("report", str(path)).output)))
    assert [int(row["amount_sat"]) for row in rows] == [a.amount_sat for a in r.result.awards]
    body = json.loads(invoke("report", str(path), "--format", "json").output)
    check = body["budget_check"]
    assert (
        check["paid_sat"]
        + check["carried_out_sat"]
        + check["fee_reserve_sat"]
        + check["returned_sat"]
        == check["budget_sat"] + check["carried_in_sat"]
    )


@pytest.mark.parametrize(
    ("sat", "btc", "bip21"),
    [
        (0, "0.00000000", "0"),
        (1, "0.00000001", "0.00000001"),
        (10_000, "0.00010000", "0.0001"),
        (100_000_000, "1.00000000", "1"),
        (2_100_000_000_000_000, "21000000.00000000", "21000000"),
        (123_456_789, "1.23456789", "1.23456789"),
    ],
)
def test_amount_strings_are_exact(sat: int, btc: str, bip21: str) -> None:
    assert sat_to_btc(sat) == btc
    assert export.bip21_amount(sat) == bip21


def test_compute_does_not_overwrite_an_approved_round(inputs_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "round.json"
    assert invoke("compute", str(inputs_file), "--out", str(out)).exit_code == 0
    assert invoke("compute", str(inputs_file), "--out", str(out)).exit_code == 0  # draft: ok
    assert invoke("approve", str(out)).exit_code == 0
    before = out.read_text()
    res = invoke("compute", str(inputs_file), "--out", str(out))
    assert res.exit_code == 2 and "final" in res.output
    assert out.read_text() == before
