"""`resist grants psbt --bitcoind`: Core's UTXOs or Core's funded PSBT, checked, over loopback."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import bdkpython as bdk
import pytest
from click.testing import CliRunner

from resistance.grants import bitcoind, rounds
from resistance.grants.cli import grants
from resistance.grants.errors import PayoutError
from resistance.grants.files import save_round
from resistance.grants.model import GrantRound, RoundStatus
from resistance.grants.payout import sat_to_btc

from .helpers import (
    CHANGE_DESCRIPTOR,
    DESCRIPTOR,
    FINGERPRINT,
    approved_round,
    embit_sign,
    rollup,
    settings,
    wallet_address,
)

pytest.importorskip("embit")

from .bitcoind_standin import PASSWORD, USER, StandIn


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with StandIn() as s:
        yield s


@pytest.fixture(scope="module")
def round_() -> GrantRound:
    return approved_round()


@pytest.fixture
def round_file(tmp_path: Path, round_: GrantRound) -> Path:
    path = tmp_path / "round.json"
    save_round(path, round_)
    return path


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(grants, list(args))


def psbt_args(round_file: Path, out: Path, *extra: str) -> list[str]:
    return [
        "psbt", str(round_file), "--change-descriptor", CHANGE_DESCRIPTOR, "--fee-rate", "2",
        "--network", "regtest", "--out", str(out), *extra,
    ]  # fmt: skip


def test_key_origins() -> None:
    prefixes = {
        bitcoind.branch_prefix(DESCRIPTOR): False,
        bitcoind.branch_prefix(CHANGE_DESCRIPTOR): True,
    }
    assert prefixes == {f"{FINGERPRINT}/0h/0": False, f"{FINGERPRINT}/0h/1": True}
    assert bitcoind.origin_index(f"wpkh([{FINGERPRINT}/0'/0/7]02ab)#x", prefixes) == (7, False)
    assert bitcoind.origin_index(f"wpkh([{FINGERPRINT.upper()}/0h/1/2]02ab)", prefixes) == (2, True)
    assert bitcoind.origin_index("wpkh([deadbeef/0h/0/7]02ab)", prefixes) is None
    assert bitcoind.origin_index(f"wpkh([{FINGERPRINT}/0h/0/7h]02ab)", prefixes) is None
    with pytest.raises(PayoutError, match="key origin"):
        bitcoind.branch_prefix("wpkh(tpubD6NzVbkrYhZ4/0/*)")


def test_psbt_from_core_utxos_is_the_psbt_from_the_same_utxo_file(
    standin: StandIn, round_file: Path, tmp_path: Path
) -> None:
    from_core = tmp_path / "core.psbt"
    res = invoke(
        *psbt_args(round_file, from_core, "--descriptor", DESCRIPTOR, "--bitcoind", standin.url())
    )
    assert res.exit_code == 0, res.output
    assert "5 UTXOs from bitcoind (1 of other keys skipped)" in res.output
    methods = [m for m, _ in standin.calls]
    assert methods[0] == "listunspent" and "getrawtransaction" in methods  # the fallback
    utxo_file = tmp_path / "utxos.json"
    utxo_file.write_text(
        json.dumps(
            [
                {"txid": u["txid"], "vout": u["vout"], "value": int(u["amount"] * 100_000_000),
                 "prev_tx_hex": standin.tx1 if u["txid"] == standin.txid1 else standin.tx2,
                 "derivation_index": int(u["desc"].split("]")[0].rsplit("/", 1)[1]),
                 "keychain": "internal" if "/1/" in u["desc"].split("]")[0] else "external"}
                for u in standin.unspent if FINGERPRINT in u["desc"]
            ]
        )
    )  # fmt: skip
    from_file = tmp_path / "file.psbt"
    args = ["--descriptor", DESCRIPTOR, "--utxos", str(utxo_file)]
    res = invoke(*psbt_args(round_file, from_file, *args))
    assert res.exit_code == 0, res.output
    assert from_core.read_text() == from_file.read_text()
    psbt = bdk.Psbt(from_core.read_text().strip())
    assert all(inp.non_witness_utxo is not None for inp in psbt.input())


def test_cookie_file_wallet_path_and_core_errors(
    standin: StandIn, round_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.psbt"
    cookie = tmp_path / ".cookie"
    cookie.write_text(f"{USER}:{PASSWORD}")
    ok = invoke(*psbt_args(round_file, out, "--descriptor", DESCRIPTOR, "--bitcoind",
                           standin.cookie_url(), "--rpc-cookie", str(cookie)))  # fmt: skip
    assert ok.exit_code == 0, ok.output
    out.unlink()
    cases = [
        (standin.url(password="wrong"), "refused the credentials"),
        (standin.url(wallet="nope"), "Requested wallet does not exist or is not loaded (code -18)"),
        (standin.cookie_url(), "user:pass"),
        ("ftp://127.0.0.1:1/", "must look like"),
        (f"http://u:p@127.0.0.1:{standin.port}/other/path", "/wallet/NAME"),
    ]
    for url, fragment in cases:
        res = invoke(*psbt_args(round_file, out, "--descriptor", DESCRIPTOR, "--bitcoind", url))
        assert res.exit_code == 2, (url, res.output)
        assert fragment in res.output and res.output.count("\n") == 1, res.output
        assert PASSWORD not in res.output and "wrong" not in res.output
    assert not out.exists()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    res = invoke(*psbt_args(round_file, out, "--descriptor", DESCRIPTOR,
                            "--bitcoind", f"http://u:p@127.0.0.1:{closed}"))  # fmt: skip
    assert res.exit_code == 2 and "cannot reach bitcoind" in res.output
    both = invoke(*psbt_args(round_file, out, "--descriptor", DESCRIPTOR, "--bitcoind",
                             standin.url(), "--rpc-cookie", str(cookie)))  # fmt: skip
    assert both.exit_code == 2 and "either in the URL or with --rpc-cookie" in both.output


def test_usage_errors(standin: StandIn, round_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.psbt"
    for extra, why in (
        ([], "exactly one of --utxos and --bitcoind"),
        (["--utxos", str(round_file), "--bitcoind", standin.url()], "exactly one of"),
        (["--utxos", str(round_file), "--fund-with-bitcoind"], "need --bitcoind"),
        (["--bitcoind", standin.url()], "--descriptor is needed unless --fund-with-bitcoind"),
        (
            ["--bitcoind", standin.url(), "--descriptor", DESCRIPTOR, "--change-index", "3"],
            "--change-index goes with --fund-with-bitcoind",
        ),
    ):
        res = invoke(*psbt_args(round_file, out, *extra))
        assert res.exit_code == 2 and "Usage:" in res.output and why in res.output, (
            extra,
            res.output,
        )
    assert not out.exists()


def test_fund_with_bitcoind_pays_every_award_and_a_signer_signs_it(
    standin: StandIn, round_file: Path, round_: GrantRound, tmp_path: Path
) -> None:
    out = tmp_path / "funded.psbt"
    res = invoke(*psbt_args(round_file, out, "--bitcoind", standin.url(), "--fund-with-bitcoind"))
    assert res.exit_code == 0, res.output
    assert "funded by bitcoind" in res.output
    ((method, params),) = standin.calls
    assert method == "walletcreatefundedpsbt"
    _, outputs, _, options, bip32derivs = params
    # amounts go as exact decimal strings, never as floats
    want = [{a.payout_address: sat_to_btc(a.amount_sat)} for a in round_.result.payouts()]
    assert outputs == want
    assert options["fee_rate"] == 2 and bip32derivs is True and "changeAddress" not in options
    signed, tx_hex = embit_sign(out.read_text().strip())
    assert signed and tx_hex
    paid = rounds.mark_paid(round_, tx_hex, change_descriptor=CHANGE_DESCRIPTOR)
    assert paid.state.status is RoundStatus.PAID


def test_fund_with_bitcoind_sends_change_to_the_given_index(
    standin: StandIn, round_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "funded.psbt"
    args = ["--bitcoind", standin.url(), "--fund-with-bitcoind", "--change-index", "5"]
    res = invoke(*psbt_args(round_file, out, *args))
    assert res.exit_code == 0, res.output
    ((_, params),) = standin.calls
    assert params[3]["changeAddress"] == wallet_address(5, change=True)
    tx = bdk.Psbt(out.read_text().strip()).extract_tx_unchecked_fee_rate()
    change_spk = bdk.Address(wallet_address(5, change=True), bdk.Network.REGTEST).script_pubkey()
    assert change_spk.to_bytes() in [o.script_pubkey.to_bytes() for o in tx.output()]


@pytest.mark.parametrize(
    ("mode", "fragment"),
    [
        ("drop_award", "does not pay"),
        ("wrong_amount", "neither an approved award"),
        ("extra_output", "neither an approved award"),
        ("foreign_change", "neither an approved award"),
        ("no_derivs", "no BIP32 derivation"),
    ],
)
def test_a_funded_psbt_that_does_not_pay_exactly_is_refused(
    standin: StandIn, round_file: Path, tmp_path: Path, mode: str, fragment: str
) -> None:
    standin.mode = mode
    out = tmp_path / "funded.psbt"
    res = invoke(*psbt_args(round_file, out, "--bitcoind", standin.url(), "--fund-with-bitcoind"))
    assert res.exit_code == 2, res.output
    assert fragment in res.output and res.output.count("\n") == 1
    assert not out.exists()


def test_a_funded_psbt_over_the_fee_reserve_is_refused(
    standin: StandIn, round_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "funded.psbt"
    args = psbt_args(round_file, out, "--bitcoind", standin.url(), "--fund-with-bitcoind")
    args[args.index("--fee-rate") + 1] = "500"
    res = invoke(*args)
    assert res.exit_code == 2 and "fee reserve" in res.output
    assert not out.exists()


def test_core_refuses_duplicate_addresses_so_we_say_so_first(standin: StandIn) -> None:
    rows = tuple(
        rollup(f"p{o}", f"op{o}", d, network=f"198.51.{o}.0/24", payout=wallet_address(90))
        for o in range(2)
        for d in range(30)
    )
    from resistance.grants.model import RoundInputs

    same = rounds.approve(rounds.compute_round(settings(), RoundInputs(rows)))
    rpc = bitcoind.BitcoindRpc.from_url(standin.url())
    with pytest.raises(PayoutError, match="same address"):
        bitcoind.fund_with_bitcoind(
            rpc, same, change_descriptor=CHANGE_DESCRIPTOR, fee_rate_sat_vb=2
        )
    assert standin.calls == []
