"""A funder's round file read a chunk at a time: ``files.load_round_streamed``, the
streamed digest, and ``resist grants verify`` holding far less than the file."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from resistance.directory.keys import public_key_text
from resistance.grants import award, files, rounds, signing
from resistance.grants.cli import grants
from resistance.grants.errors import InputError
from resistance.grants.model import (
    GrantRound,
    GrantSettings,
    RoundInputs,
    RoundState,
    StoredChunks,
    canonical_json,
    chunk_text,
    chunked,
    inputs_to_json,
    result_to_json,
    round_to_json,
    settings_to_json,
)

from .helpers import START, address, sample_inputs, settings
from .test_award_properties import PROPS, worlds

KEY = Ed25519PrivateKey.generate()
TRUST = ("--trust", public_key_text(KEY.public_key()))


def whole_digest(r: GrantRound) -> str:
    """The digest as it was computed before: one canonical text of everything."""
    body = {
        "settings": settings_to_json(r.settings),
        "inputs": inputs_to_json(r.inputs),
        "result": result_to_json(r.result),
    }
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


@PROPS
@given(world=worlds(), size=st.one_of(st.none(), st.integers(1, 4)))
def test_the_streamed_digest_is_the_whole_texts(
    world: tuple[GrantSettings, RoundInputs], size: int | None
) -> None:
    s, inputs = world
    if size is not None:
        inputs = chunked(inputs, size)
    r = rounds.compute_round(s, signing.sign_inputs(s, inputs, [KEY]))
    assert r.digest() == whole_digest(r)


def test_an_id_that_looks_like_the_chunks_key_does_not_move_them() -> None:
    s = settings()
    inputs = dataclasses.replace(
        chunked(sample_inputs(), 3), prior_service_days={'"chunks":[]': 1, "chunks": 2}
    )
    r = rounds.compute_round(s, inputs)
    assert r.digest() == whole_digest(r)


def save(tmp_path: Path, r: GrantRound, name: str = "round.json") -> Path:
    path = tmp_path / name
    files.save_round(path, r)
    return path


def test_the_round_an_export_returns_reads_its_chunks_where_the_file_is(
    tmp_path: Path,
) -> None:
    """``write_parts_atomic(..., checked_round_file)`` checks a temporary file, renames it,
    and returns the round: its chunks are read from the file's final name (they pointed
    at the temporary one, gone by then)."""
    s = settings()
    inputs = chunked(sample_inputs(), 2)
    r = rounds.approve(rounds.compute_round(s, signing.sign_inputs(s, inputs, [KEY])))
    source = save(tmp_path, r, "exported.json")
    out = tmp_path / "round.json"
    got = files.write_parts_atomic(out, [source.read_bytes()], files.checked_round_file)
    assert isinstance(got.inputs.chunks, StoredChunks)
    assert list(got.inputs.chunks) == list(files.load_round(out).inputs.chunks or ())
    assert rounds.verify(got) == []
    assert got.digest() == r.state.digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported.json", "round.json"]


@pytest.mark.parametrize("chunks", [None, 1, 3])
def test_a_streamed_round_is_the_round(tmp_path: Path, chunks: int | None) -> None:
    s = settings()
    inputs = sample_inputs() if chunks is None else chunked(sample_inputs(), chunks)
    r = rounds.approve(rounds.compute_round(s, signing.sign_inputs(s, inputs, [KEY])))
    path = save(tmp_path, r)
    streamed = files.load_round_streamed(path)
    whole = files.load_round(path)
    assert isinstance(streamed.inputs.chunks, StoredChunks) == (chunks is not None)
    assert streamed.digest() == whole.digest() == r.state.digest
    assert list(streamed.inputs.chunks or ()) == list(whole.inputs.chunks or ())
    assert (streamed.settings, streamed.result, streamed.state) == (
        whole.settings,
        whole.result,
        whole.state,
    )
    assert signing.check_signatures(s, streamed.inputs, [KEY.public_key()]).signers
    assert rounds.verify(streamed) == []


def test_an_approved_round_whose_chunks_were_swapped_is_refused(tmp_path: Path) -> None:
    s = settings()
    inputs = signing.sign_inputs(s, chunked(sample_inputs(), 3), [KEY])
    r = rounds.approve(rounds.compute_round(s, inputs))
    data: dict[str, Any] = json.loads(save(tmp_path, r).read_text())
    for key in ("chunks", "manifest"):  # consistently: every digest matches its chunk
        data["inputs"][key][0], data["inputs"][key][1] = (
            data["inputs"][key][1],
            data["inputs"][key][0],
        )
    path = tmp_path / "swapped.json"
    path.write_text(json.dumps(data))
    res = CliRunner().invoke(grants, ["verify", str(path), *TRUST])
    assert res.exit_code == 1 and "digest" in res.output and "bad signature" in res.output


def big_round(days: int, proxies: int) -> GrantRound:
    """``proxies`` proxies over ``days`` days, one proxy per chunk, signed and approved:
    a file that is big for its few proxies (the tally holds proxies, not days)."""
    s = settings(period_end=START + dt.timedelta(days=days - 1))
    chunks = []
    for p in range(proxies):
        op = f"op{p % 7}"
        entry = {
            "proxy_id": f"p{p}", "operator_id": op, "network": f"198.51.{p % 200}.0/24",
            "payout_address": address(op), "country": "RU", "day": list(range(days)),
            "control_attempts": [24] * days, "control_successes": [24] * days,
            "target_attempts": [24] * days,
            "target_successes": [24 - (d + p) % 5 for d in range(days)],
            "throughput_kbps": [(d * 37 + p) % 4000 for d in range(days)],
        }  # fmt: skip
        chunks.append(chunk_text(START, [entry]))
    inputs = signing.sign_inputs(s, RoundInputs((), chunks=tuple(chunks)), [KEY])
    return rounds.approve(rounds.compute_round(s, inputs))


def peak_bytes(work: Any) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(tmp_path_factory.mktemp("big"), big_round(days=2_000, proxies=200))


def test_verify_holds_far_less_than_the_file(
    big_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(award, "BATCH_ROWS", 2_000)  # a batch of rows, not of the file
    path = big_file
    size = path.stat().st_size
    assert size > 8_000_000

    def verify() -> None:
        res = CliRunner().invoke(grants, ["verify", str(path), *TRUST])
        assert res.exit_code == 0 and "OK" in res.output, res.output

    verify()  # once first: what it imports is not what it holds
    streamed = peak_bytes(verify)
    whole = peak_bytes(lambda: rounds.verify(files.load_round(path)))
    assert whole > size  # reading it whole holds the file, and more
    assert streamed < size / 5, (streamed, size)


def test_an_export_is_kept_only_whole_and_checked(big_file: Path, tmp_path: Path) -> None:
    """``resist grants round export`` writes the answer as it arrives and keeps it only
    once every chunk matched the manifest (holding a part and a chunk at a time)."""
    size = big_file.stat().st_size

    def parts() -> Any:
        with big_file.open("rb") as f:
            while block := f.read(1 << 16):
                yield block

    out = tmp_path / "round.json"
    files.write_parts_atomic(out, parts(), files.checked_round_file)  # imports, once
    peak = peak_bytes(lambda: files.write_parts_atomic(out, parts(), files.checked_round_file))
    assert out.read_bytes() == big_file.read_bytes()
    assert peak < size / 5, (peak, size)
    data = json.loads(big_file.read_text())
    chunk = json.loads(data["inputs"]["chunks"][3])
    chunk["proxies"][0]["target_successes"][0] = 0
    data["inputs"]["chunks"][3] = json.dumps(chunk)
    with pytest.raises(InputError, match=r"chunks\[3\]: its SHA-256 does not match"):
        files.write_parts_atomic(out, [json.dumps(data).encode()], files.checked_round_file)
    assert out.read_bytes() == big_file.read_bytes()  # the file there is left as it was
    assert [p.name for p in tmp_path.iterdir()] == ["round.json"]  # no temporary left


def _moved_chunk(tmp_path: Path, how: str) -> Path:
    """A round file whose first chunk was taken out of ``inputs.chunks`` and put where
    only a streaming parser that goes by ijson's dotted prefixes would still find it: a
    top-level key spelt ``inputs.chunks.item``, or a second ``chunks`` key before the
    real one (JSON's last duplicate wins)."""
    s = settings()
    inputs = chunked(sample_inputs(), 3)
    r = rounds.approve(rounds.compute_round(s, signing.sign_inputs(s, inputs, [KEY])))
    obj = json.loads(save(tmp_path, r).read_text())
    first = obj["inputs"]["chunks"].pop(0)
    if how == "dotted key":
        text = json.dumps({"inputs.chunks.item": first, **obj})
    else:
        text = json.dumps(obj).replace(
            '"inputs": {', '"inputs": {"chunks": [' + json.dumps(first) + "], ", 1
        )
    path = tmp_path / f"moved-{how.replace(' ', '-')}.json"
    path.write_text(text)
    return path


@pytest.mark.parametrize("how", ["dotted key", "duplicate key"])
def test_a_chunk_outside_the_inputs_chunks_is_not_read(tmp_path: Path, how: str) -> None:
    """What the whole-file reading refuses, the streamed reading refuses alike: both read
    the chunks of the one ``inputs.chunks`` a JSON parser sees, not text found elsewhere
    under the same ijson prefix."""
    path = _moved_chunk(tmp_path, how)
    with pytest.raises(InputError) as whole:
        files.load_round(path)
    assert "the manifest names 3 chunk(s) but 2 are present" in str(whole.value)
    with pytest.raises(InputError) as streamed:
        rounds.verify(files.load_round_streamed(path))
    assert str(streamed.value) == str(whole.value)


def whole_text(r: GrantRound) -> str:
    """The round file as it was always written: one ``json.dumps`` of everything."""
    return json.dumps(round_to_json(r), indent=1, sort_keys=True) + "\n"


@pytest.mark.parametrize("chunks", [None, 1, 3, 0])
def test_a_streamed_round_is_saved_as_the_same_bytes(tmp_path: Path, chunks: int | None) -> None:
    s = settings()
    if chunks == 0:  # /2 inputs without a single chunk
        inputs = RoundInputs((), chunks=())
    else:
        inputs = sample_inputs() if chunks is None else chunked(sample_inputs(), chunks)
    r = rounds.compute_round(s, signing.sign_inputs(s, inputs, [KEY]))
    for round_ in (r, rounds.approve(r)):
        path = save(tmp_path, round_)
        streamed = files.load_round_streamed(path)
        again = tmp_path / "again.json"
        files.save_round(again, streamed)
        assert again.read_text() == path.read_text() == whole_text(round_)


@pytest.fixture(scope="module")
def big_draft(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = big_round(days=800, proxies=200)  # ~3.4 MB
    return save(tmp_path_factory.mktemp("draft"), dataclasses.replace(r, state=RoundState()))


@pytest.mark.parametrize(
    "command",
    [["approve"], ["report", "--format", "csv"], ["report", "--format", "json"],
     ["electrum-list"], ["bip21"]],
)  # fmt: skip
def test_the_funders_commands_hold_far_less_than_the_file(
    big_draft: Path, tmp_path: Path, command: list[str]
) -> None:
    """``approve``, ``report``, ``electrum-list`` and ``bip21`` read a /2 round a chunk
    at a time (each checked, as ``verify`` does) and write what they wrote before."""
    size = big_draft.stat().st_size
    out = tmp_path / "out"
    whole = files.load_round(big_draft)
    if command == ["approve"]:
        expected = whole_text(rounds.approve(whole))
    else:
        args = [command[0], str(big_draft), *command[1:]]
        expected = CliRunner().invoke(grants, args).output  # to stdout, as it was

    def run() -> None:
        res = CliRunner().invoke(
            grants, [command[0], str(big_draft), *command[1:], "--out", str(out)]
        )
        assert res.exit_code == 0, res.output

    run()  # once first: what it imports is not what it holds
    assert out.read_text() == expected
    peak = peak_bytes(run)
    assert peak < size / 5, (peak, size)


def test_a_funders_command_refuses_a_chunk_that_does_not_match(tmp_path: Path) -> None:
    s = settings()
    r = rounds.compute_round(s, signing.sign_inputs(s, chunked(sample_inputs(), 3), [KEY]))
    data = json.loads(save(tmp_path, r).read_text())
    chunk = json.loads(data["inputs"]["chunks"][1])
    chunk["proxies"][0]["target_successes"][0] = 0
    data["inputs"]["chunks"][1] = json.dumps(chunk)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    before = path.read_bytes()
    for command in (["approve"], ["report"], ["electrum-list"], ["bip21"]):
        res = CliRunner().invoke(grants, [command[0], str(path)])
        assert res.exit_code != 0 and "chunks[1]: its SHA-256 does not match" in res.output, (
            command, res.output,
        )  # fmt: skip
    assert path.read_bytes() == before
