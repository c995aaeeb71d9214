"""The registry's signature over a round's inputs: made, checked by `grants verify --trust`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from resistance.directory.keys import key_id, private_pem, public_key_text
from resistance.grants import rounds, signing
from resistance.grants.cli import grants
from resistance.grants.files import save_round
from resistance.grants.model import GrantRound, round_to_json

from .helpers import sample_inputs, settings

KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()


def signed_round(*keys: Ed25519PrivateKey) -> GrantRound:
    s = settings()
    return rounds.compute_round(s, signing.sign_inputs(s, sample_inputs(), keys))


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(grants, list(args))


@pytest.fixture
def round_file(tmp_path: Path) -> Path:
    path = tmp_path / "round.json"
    save_round(path, signed_round(KEY))
    return path


def test_sign_and_check() -> None:
    r = signed_round(KEY, OTHER)
    first, _ = r.inputs.signatures
    assert first.key_id == key_id(KEY.public_key()) and first.algorithm == "ed25519"
    report = signing.check_signatures(r.settings, r.inputs, [KEY.public_key()])
    assert report.signers == (first.key_id,)
    assert [e.outcome for e in report.entries] == ["good", "untrusted key"]
    # the signature covers the inputs and the round's id, country and period, not the budget
    richer = dataclasses.replace(r.settings, budget_sat=r.settings.budget_sat * 2)
    assert signing.check_signatures(richer, r.inputs, [KEY.public_key()]).signers
    for changed in (
        dataclasses.replace(r.settings, round_id="2024-06-ru"),
        dataclasses.replace(r.settings, target_country="IR"),
    ):
        report = signing.check_signatures(changed, r.inputs, [KEY.public_key()])
        assert not report.signers and report.entries[0].outcome == "bad signature"
    fewer = dataclasses.replace(r.inputs, rollups=r.inputs.rollups[1:])
    assert not signing.check_signatures(r.settings, fewer, [KEY.public_key()]).signers


def test_verify_without_trust_says_signatures_are_not_checked(round_file: Path) -> None:
    res = invoke("verify", str(round_file))
    assert res.exit_code == 0, res.output
    assert "not checked" in res.output and "OK" in res.output


def test_verify_with_trust_checks_them(round_file: Path, tmp_path: Path) -> None:
    res = invoke("verify", str(round_file), "--trust", public_key_text(KEY.public_key()))
    assert res.exit_code == 0, res.output
    assert "good" in res.output and key_id(KEY.public_key()) in res.output
    pem = tmp_path / "registry.pem"
    pem.write_text(private_pem(KEY))
    text_file = tmp_path / "registry.key"
    text_file.write_text(public_key_text(KEY.public_key()) + "\n")
    for spec in (str(pem), str(text_file)):
        assert invoke("verify", str(round_file), "--trust", spec).exit_code == 0


def test_an_untrusted_signer_fails(round_file: Path) -> None:
    res = invoke("verify", str(round_file), "--trust", public_key_text(OTHER.public_key()))
    assert res.exit_code == 1
    assert "untrusted key" in res.output and "FAILED" in res.output


def test_tampered_inputs_are_detected_even_with_a_recomputed_result(
    round_file: Path, tmp_path: Path
) -> None:
    data = json.loads(round_file.read_text())
    data["inputs"]["rollups"][0]["target_successes"] = 0
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(data))
    trust = ("--trust", public_key_text(KEY.public_key()))
    res = invoke("verify", str(tampered), *trust)
    assert res.exit_code == 1 and "bad signature" in res.output and "difference" in res.output
    # Recompute the result so the awards match the forged inputs: only the signature tells.
    from resistance.grants.files import load_round

    forged = load_round(tampered)
    forged = rounds.compute_round(forged.settings, forged.inputs)
    save_round(tampered, forged)
    assert invoke("verify", str(tampered)).exit_code == 0  # no --trust: cannot tell
    res = invoke("verify", str(tampered), *trust)
    assert res.exit_code == 1
    assert "bad signature" in res.output and "FAILED" in res.output
    assert "difference" not in res.output


def test_unsigned_inputs_fail_with_trust(tmp_path: Path) -> None:
    path = tmp_path / "round.json"
    path.write_text(json.dumps(round_to_json(rounds.compute_round(settings(), sample_inputs()))))
    res = invoke("verify", str(path), "--trust", public_key_text(KEY.public_key()))
    assert res.exit_code == 1 and "no registry signature" in res.output


def test_thresholds(tmp_path: Path) -> None:
    one, both = tmp_path / "one.json", tmp_path / "both.json"
    save_round(one, signed_round(KEY))
    save_round(both, signed_round(KEY, OTHER))
    trust = [
        "--trust",
        public_key_text(KEY.public_key()),
        "--trust",
        public_key_text(OTHER.public_key()),
    ]
    assert invoke("verify", str(both), *trust, "--threshold", "2").exit_code == 0
    res = invoke("verify", str(one), *trust, "--threshold", "2")
    assert res.exit_code == 1 and "2 required" in res.output
    # a key listed twice counts once
    dup = ["--trust", public_key_text(KEY.public_key())] * 2
    res = invoke("verify", str(both), *dup, "--threshold", "2")
    assert res.exit_code == 2 and "distinct" in res.output


def test_a_bad_trusted_key_is_one_line(round_file: Path) -> None:
    res = invoke("verify", str(round_file), "--trust", "not-a-key")
    assert res.exit_code == 2
    assert res.output.count("\n") == 1 and "bad trusted key" in res.output


def test_signing_with_the_json_is_signing_then_converting() -> None:
    """The registry signs and converts a round's inputs in one pass: the same signatures,
    and the JSON ``inputs_to_json`` makes of the signed inputs."""
    from resistance.grants.model import inputs_to_json

    s = settings()
    unsigned = dataclasses.replace(signing.sign_inputs(s, sample_inputs(), [OTHER]), signatures=())
    signed, body = signing.sign_inputs_json(s, unsigned, [KEY, OTHER])
    assert signed == signing.sign_inputs(s, unsigned, [KEY, OTHER])
    assert body == inputs_to_json(signed)
    assert signing.check_signatures(s, signed, [KEY.public_key()]).signers == (
        key_id(KEY.public_key()),
    )
