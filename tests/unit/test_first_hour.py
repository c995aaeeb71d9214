"""Issue 19, the first hour: what a newcomer meets first reads well and says enough.

The top-level command list is not cut with "...", every `resist node` option has a
help text, httpx's per-request INFO lines stay out of default output, the client's
status is saved as soon as a dial's outcome changes it, and the grants inputs
file has a complete example and names every missing field at once.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from resistance.cli import main
from resistance.client.upstreams import Upstream, UpstreamPool
from resistance.clikit import setup_logging
from resistance.grants.errors import InputError
from resistance.grants.model import (
    REQUIRED_ROLLUP,
    REQUIRED_SETTINGS,
    example_inputs_file,
    round_inputs_file_from_json,
)
from resistance.grants.rounds import compute_round


def test_the_command_list_is_not_cut() -> None:
    result = CliRunner().invoke(main, ["--help"], terminal_width=80)
    assert result.exit_code == 0
    listing = result.output.split("Commands:")[1]
    assert "..." not in listing and "…" not in listing
    # The longest summary is shown whole (wrapped onto a second line).
    flat = " ".join(result.output.split())
    assert "keeps working while upstream proxies get blocked." in flat


def test_every_node_option_says_what_it_does() -> None:
    node = main.get_command(click.Context(main), "node")
    assert node is not None
    bare = [p.name for p in node.params if isinstance(p, click.Option) and not p.help]
    assert bare == []
    result = CliRunner().invoke(main, ["node", "--help"])
    flat = " ".join(result.output.split())
    for text in ("--allow-port PORT[-PORT] Allow only these", "--idle-timeout S Close"):
        assert text in flat


@pytest.mark.parametrize("verbose", [0, 1, 2])
def test_httpx_request_lines_are_never_shown(verbose: int) -> None:
    """No "HTTP Request: GET ..." lines at any verbosity: request URLs and, at debug,
    headers may carry tokens (issue 26: no secret at any verbosity); warnings still show."""
    setup_logging(verbose)
    try:
        assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
        assert logging.getLogger("httpx").isEnabledFor(logging.WARNING)
    finally:
        setup_logging(0)


def test_debug_logs_of_the_package_show_at_the_highest_verbosity() -> None:
    """`resist node -v` (verbosity 2) shows the refusal reasons logged at debug."""
    setup_logging(2)
    try:
        assert logging.getLogger("resistance.node").isEnabledFor(logging.DEBUG)
    finally:
        setup_logging(0)


def test_every_outcome_changes_the_pool_version() -> None:
    """The status writer saves when the version moves, so `connect status` right after
    a request shows its outcome."""
    a = Upstream.from_url("socks5://u:p@127.0.0.1:1")
    pool = UpstreamPool([a])
    seen = [pool.version]
    pool.succeeded(a, 0.01)
    seen.append(pool.version)
    pool.used(a)
    seen.append(pool.version)
    pool.failed(a, "refused")
    seen.append(pool.version)
    assert seen == sorted(set(seen)), seen


def test_the_example_inputs_file_computes_a_round() -> None:
    result = CliRunner().invoke(main, ["grants", "compute", "--example"])
    assert result.exit_code == 0, result.output
    example = json.loads(result.output)
    assert example == example_inputs_file()
    settings, inputs = round_inputs_file_from_json(example)
    computed = compute_round(settings, inputs)
    assert len(computed.result.payouts()) == 2


def test_compute_without_inputs_says_how() -> None:
    result = CliRunner().invoke(main, ["grants", "compute"])
    assert result.exit_code == 2 and "--example" in result.output


@given(
    st.sets(st.sampled_from(REQUIRED_SETTINGS), min_size=1),
    st.sets(st.sampled_from(REQUIRED_ROLLUP)),
)
def test_every_missing_field_is_named_at_once(
    drop_settings: set[str], drop_rollup: set[str]
) -> None:
    example = example_inputs_file()
    for name in drop_settings:
        del example["settings"][name]
    for name in drop_rollup:
        del example["rollups"][0][name]
    with pytest.raises(InputError) as caught:
        round_inputs_file_from_json(example)
    message = str(caught.value)
    assert message.startswith("settings: missing ") and "\n" not in message
    named = message.removeprefix("settings: missing ").split(" (")[0].split(", ")
    assert named == [n for n in REQUIRED_SETTINGS if n in drop_settings]


@given(st.sets(st.sampled_from(REQUIRED_ROLLUP), min_size=1))
def test_a_rollups_missing_fields_are_named_at_once(drop: set[str]) -> None:
    example = example_inputs_file()
    for name in drop:
        del example["rollups"][1][name]
    with pytest.raises(InputError) as caught:
        round_inputs_file_from_json(example)
    named = str(caught.value).removeprefix("rollups[1]: missing ").split(" (")[0].split(", ")
    assert named == [n for n in REQUIRED_ROLLUP if n in drop]


def test_an_empty_inputs_file_names_both_parts() -> None:
    with pytest.raises(InputError, match=r"^inputs file: missing settings, rollups \("):
        round_inputs_file_from_json({})


def test_the_lab_wallet_writes_coins_its_descriptor_can_spend(tmp_path: Path) -> None:
    import bdkpython as bdk

    from resistance.lab import funder

    utxos = tmp_path / "utxos.json"
    result = CliRunner().invoke(
        main, ["lab", "wallet", "--utxos", str(utxos), "--sat", "30000", "--sat", "40000"]
    )
    assert result.exit_code == 0, result.output
    assert f"descriptor: {funder.DESCRIPTOR}" in result.output
    coins = json.loads(utxos.read_text())
    assert [c["value"] for c in coins] == [30000, 40000]
    assert [c["derivation_index"] for c in coins] == [0, 1]
    tx = bdk.Transaction(bytes.fromhex(coins[0]["prev_tx_hex"]))
    assert str(tx.compute_txid()) == coins[0]["txid"]
    paid = [
        str(bdk.Address.from_script(out.script_pubkey, bdk.Network.REGTEST)) for out in tx.output()
    ]
    assert paid == [funder.wallet_address(0), funder.wallet_address(1)]
