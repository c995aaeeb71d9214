"""Inputs format /2: rows grouped per proxy in chunks, a signed manifest of their digests."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from resistance.directory.keys import public_key_text
from resistance.grants import rounds, signing
from resistance.grants.award import compute_result
from resistance.grants.cli import grants
from resistance.grants.errors import InputError
from resistance.grants.files import save_round
from resistance.grants.model import (
    CHUNK_COLUMNS,
    INPUTS_FORMAT_2,
    GrantSettings,
    RoundInputs,
    chunk_digest,
    chunked,
    inputs_from_json,
    inputs_to_json,
    round_inputs_file_from_json,
    round_inputs_file_to_json,
)

from .helpers import rollup, sample_inputs, settings
from .test_award_properties import PROPS, worlds

KEY = Ed25519PrivateKey.generate()
TRUST = ("--trust", public_key_text(KEY.public_key()))


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(grants, list(args))


def signed_v2(max_proxies: int = 3) -> tuple[GrantSettings, RoundInputs]:
    s = settings()
    return s, signing.sign_inputs(s, chunked(sample_inputs(), max_proxies), [KEY])


@pytest.fixture
def round_data(tmp_path: Path) -> dict[str, Any]:
    s, inputs = signed_v2()
    path = tmp_path / "round.json"
    save_round(path, rounds.compute_round(s, inputs))
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def write(tmp_path: Path, data: dict[str, Any]) -> str:
    path = tmp_path / "changed.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_chunks_hold_the_same_rows_grouped_per_proxy() -> None:
    one = sample_inputs()  # 8 proxies x 30 days
    two = chunked(one, max_proxies=3)
    assert two.chunks is not None and len(two.chunks) == 3  # 3 + 3 + 2 proxies
    assert Counter(two.rows()) == Counter(one.rollups)
    first = json.loads(two.chunks[0])
    assert len(first["proxies"]) == 3 and first["first_day"] == "2024-05-01"
    assert first["proxies"][0]["day"] == list(range(30))  # each proxy's fields once
    body = inputs_to_json(two)
    assert body["format"] == INPUTS_FORMAT_2
    assert body["manifest"] == [chunk_digest(c) for c in two.chunks]
    assert "rollups" not in body
    assert inputs_from_json(json.loads(json.dumps(body))) == two


@PROPS
@given(world=worlds(), size=st.integers(1, 4))
def test_v2_gives_the_same_awards_as_v1(
    world: tuple[GrantSettings, RoundInputs], size: int
) -> None:
    s, one = world
    two = inputs_from_json(json.loads(json.dumps(inputs_to_json(chunked(one, size)))))
    assert Counter(two.rows()) == Counter(one.rollups)
    assert two.carried_in == one.carried_in and two.prior_service_days == one.prior_service_days
    assert compute_result(s, two) == compute_result(s, one)


def test_cascade_fields_survive_chunking() -> None:
    r = dataclasses.replace(
        rollup("b1", "bridge-op"),
        exit_operator_id="exit-op",
        exit_network="192.0.2.0/24",
        exit_payout_address=rollup("x", "exit-op").payout_address,
    )
    inputs = RoundInputs((r, rollup("p2", "other", 3)))
    two = inputs_from_json(inputs_to_json(chunked(inputs, 1)))
    assert Counter(two.rows()) == Counter(inputs.rollups)


def test_signed_v2_round_verifies(tmp_path: Path, round_data: dict[str, Any]) -> None:
    res = invoke("verify", write(tmp_path, round_data), *TRUST)
    assert res.exit_code == 0, res.output
    assert "good" in res.output and "OK" in res.output


def test_signature_is_over_the_manifest_with_its_own_context() -> None:
    s, two = signed_v2()
    message = signing.signed_message(s, two)
    assert message.startswith(b"resist-grant-inputs/2\n")
    for digest in inputs_to_json(two)["manifest"]:
        assert digest.encode() in message
    assert two.chunks is not None and sum(map(len, two.chunks)) > 10 * len(message)  # not the rows
    # a /1 signature over the same rows does not pass for /2, nor the reverse
    one = signing.sign_inputs(s, sample_inputs(), [KEY])
    as_two = dataclasses.replace(two, signatures=one.signatures)
    assert not signing.check_signatures(s, as_two, [KEY.public_key()]).signers
    as_one = dataclasses.replace(one, signatures=two.signatures)
    assert not signing.check_signatures(s, as_one, [KEY.public_key()]).signers
    # carried amounts and prior service are signed too
    more = dataclasses.replace(two, prior_service_days={"p0-0": 3})
    assert not signing.check_signatures(s, more, [KEY.public_key()]).signers


def test_a_tampered_chunk_is_refused(tmp_path: Path, round_data: dict[str, Any]) -> None:
    chunk = json.loads(round_data["inputs"]["chunks"][1])
    chunk["proxies"][0]["target_successes"][0] = 0
    round_data["inputs"]["chunks"][1] = json.dumps(chunk)
    res = invoke("verify", write(tmp_path, round_data), *TRUST)
    assert res.exit_code == 2 and res.output.count("\n") == 1
    assert "chunks[1]: its SHA-256 does not match manifest[1]" in res.output
    # with the manifest fixed to match, the registry's signature no longer does
    round_data["inputs"]["manifest"][1] = chunk_digest(round_data["inputs"]["chunks"][1])
    res = invoke("verify", write(tmp_path, round_data), *TRUST)
    assert res.exit_code == 1 and "bad signature" in res.output and "FAILED" in res.output


def test_a_missing_chunk_is_refused(tmp_path: Path, round_data: dict[str, Any]) -> None:
    inputs = round_data["inputs"]
    del inputs["chunks"][2]
    res = invoke("verify", write(tmp_path, round_data), *TRUST)
    assert res.exit_code == 2 and "the manifest names 3 chunk(s) but 2 are present" in res.output
    del inputs["manifest"][2]  # dropped from the manifest too: not what the registry signed
    res = invoke("verify", write(tmp_path, round_data), *TRUST)
    assert res.exit_code == 1 and "bad signature" in res.output


def test_a_reordered_manifest_is_refused(tmp_path: Path, round_data: dict[str, Any]) -> None:
    inputs = round_data["inputs"]
    inputs["manifest"].reverse()
    res = invoke("verify", write(tmp_path, round_data), *TRUST)
    assert res.exit_code == 2 and "does not match manifest[0]" in res.output
    inputs["chunks"].reverse()  # chunks follow: the digests match, the signature does not
    res = invoke("verify", write(tmp_path, round_data), *TRUST)
    assert res.exit_code == 1 and "bad signature" in res.output


def test_a_truncated_file_is_one_clear_error(tmp_path: Path, round_data: dict[str, Any]) -> None:
    text = json.dumps(round_data)
    path = tmp_path / "cut.json"
    path.write_text(text[: len(text) // 2])
    res = invoke("verify", str(path))
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "is not JSON" in res.output


@pytest.mark.parametrize(
    ("chunk", "says"),
    [
        ('{"first_day": "2024-05-01", "proxies": [', "chunks[0] is not JSON"),
        ('{"first_day": "2024-05-01"}', "chunks[0].proxies: expected a JSON array"),
        ('{"first_day": "May", "proxies": []}', "first_day is not an ISO date"),
        ("[]", "chunks[0]: expected a JSON object"),
    ],
)
def test_a_malformed_chunk_is_one_clear_error(chunk: str, says: str) -> None:
    body = {"format": INPUTS_FORMAT_2, "manifest": [chunk_digest(chunk)], "chunks": [chunk]}
    with pytest.raises(InputError, match=says.replace("[", r"\[").replace("]", r"\]")):
        inputs_from_json(body)


def test_malformed_proxy_columns_are_refused() -> None:
    two = chunked(sample_inputs(1, 1))
    assert two.chunks is not None
    entry = json.loads(two.chunks[0])
    entry["proxies"][0]["throughput_kbps"].pop()
    short = json.dumps(entry)
    body = {"format": INPUTS_FORMAT_2, "manifest": [chunk_digest(short)], "chunks": [short]}
    with pytest.raises(InputError, match="one value per day"):
        inputs_from_json(body)
    entry["proxies"][0]["throughput_kbps"].append(-1)
    bad = json.dumps(entry)
    body = {"format": INPUTS_FORMAT_2, "manifest": [chunk_digest(bad)], "chunks": [bad]}
    with pytest.raises(InputError, match="throughput_kbps must be a non-negative integer"):
        inputs_from_json(body)
    with pytest.raises(InputError, match="unknown format"):
        inputs_from_json({"format": "resistance.grants.inputs/9", "rollups": []})


def test_compute_reads_a_v2_inputs_file(tmp_path: Path) -> None:
    s, two = signed_v2()
    path = tmp_path / "inputs.json"
    path.write_text(json.dumps(round_inputs_file_to_json(s, two)))
    assert round_inputs_file_from_json(json.loads(path.read_text())) == (s, two)
    out = tmp_path / "round.json"
    res = invoke("compute", str(path), "--out", str(out))
    assert res.exit_code == 0, res.output
    assert invoke("verify", str(out), *TRUST).exit_code == 0
    fresh = rounds.compute_round(s, sample_inputs())
    assert json.loads(out.read_text())["result"]["awards"] == [
        dataclasses.asdict(a) for a in fresh.result.awards
    ]


def test_the_rule_reads_v2_columns_without_rows() -> None:
    """/2 inputs hold no rows: the rule reads the chunks' columns (and gives /1's awards)."""
    s = settings(probation_days=3)
    one = dataclasses.replace(sample_inputs(), prior_service_days={"p0-0": 1, "p1-1": 5})
    two = chunked(one, 2)
    assert two.rollups == () and two.row_count() == len(one.rollups)
    assert compute_result(s, two) == compute_result(s, one)


def refused(s: GrantSettings, inputs: RoundInputs) -> str:
    with pytest.raises(InputError) as caught:
        compute_result(s, inputs)
    return str(caught.value)


@pytest.mark.parametrize(
    ("rows", "says"),
    [
        ((rollup("p", "a", 0), rollup("p", "a", 0)), "p 2024-05-01 RU: duplicate row"),
        ((rollup("p", "a", 30),), "outside the round's period"),
        ((rollup("p", "a", 0), rollup("p", "b", 1)), "rows disagree on operator"),
        (
            (rollup("p", "a", 0), rollup("q", "a", 1, payout=rollup("x", "z").payout_address)),
            "operator a: rows disagree on the payout address",
        ),
    ],
)
def test_v2_refuses_what_v1_refuses(rows: tuple[Any, ...], says: str) -> None:
    s, one = settings(), RoundInputs(rows)
    assert says in refused(s, one)
    assert says in refused(s, chunked(one, 1))


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"control_successes": [25]}, "more control successes than attempts"),
        ({"target_attempts": [True]}, "target_attempts must be a non-negative integer"),
        ({"day": [-1]}, "a day must be a non-negative integer"),
        ({"network": "198.51.100.7/24"}, "198.51.100.7/24 has host bits set"),
        ({"operator_id": ""}, "proxy_id, operator_id and payout_address are required"),
        ({"exit_operator_id": "x"}, "a cascade needs exit_operator_id"),
        ({"extra": 1}, "unknown fields ['extra']"),
        ({"day": [], **{c: [] for c in CHUNK_COLUMNS}}, "has at least one day"),
        ({"target_successes": [2**70]}, "more target-country successes than attempts"),
        ({"throughput_kbps": [1.5]}, "throughput_kbps must be a non-negative integer"),
    ],
)
def test_a_bad_entry_is_refused_as_its_row_would_be(change: dict[str, Any], says: str) -> None:
    two = chunked(RoundInputs((rollup("p", "a", 0),)))
    assert two.chunks is not None
    chunk = json.loads(two.chunks[0])
    chunk["proxies"][0] |= change
    text = json.dumps(chunk)
    body = {"format": INPUTS_FORMAT_2, "manifest": [chunk_digest(text)], "chunks": [text]}
    with pytest.raises(InputError) as caught:
        inputs_from_json(body)
    assert says in str(caught.value) and "chunks[0].proxies[0]" in str(caught.value)
