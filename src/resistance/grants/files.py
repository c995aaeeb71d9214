"""Reading and writing round files: JSON in, JSON out, written atomically or not at all."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import ijson

from resistance.grants.errors import InputError
from resistance.grants.model import (
    INPUTS_FORMAT_2,
    GrantRound,
    GrantSettings,
    RoundInputs,
    StoredChunks,
    inputs_to_json,
    round_from_json,
    round_inputs_file_from_json,
    round_to_json,
)

T = TypeVar("T")


def read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not JSON: {exc}") from None


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename: whole or not at all."""
    write_parts_atomic(path, (text.encode("utf-8"),), lambda _tmp, _path: None)


def write_parts_atomic(path: Path, parts: Iterable[bytes], check: Callable[[Path, Path], T]) -> T:
    """Write ``parts`` as they come to a temporary file beside ``path``, ``check`` it, and
    only then rename it to ``path``: whole and checked, or not at all (``path`` is left
    as it was). Holds one part at a time. Returns what ``check(temporary, path)``
    returned: it reads the temporary file, and what it returns must refer to ``path``
    (the temporary file is gone once the call returns)."""
    path = path.resolve()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for part in parts:
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        checked = check(Path(tmp), path)
        os.replace(tmp, path)
        return checked
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def checked_round_file(path: Path, final: Path | None = None) -> GrantRound:
    """The round in ``path``, everything in it checked as ``load_round`` checks it (each
    /2 chunk against the manifest, each entry), reading one chunk at a time. Its /2
    chunks are read again from ``final`` (default ``path``): where the file will be
    once checked (``write_parts_atomic`` renames it there)."""
    round_, source = _round_streamed(path)
    for _ in round_.inputs.groups():
        pass
    if source is not None and final is not None:
        source.path = final
    return round_


def load_round(path: Path) -> GrantRound:
    return round_from_json(read_json(path))


#: Bytes ijson reads from a round file at a time, at most: about a chunk. With its
#: 64 kB default, reading a file of 100 chunks of ~1 MB took 1.8 s of CPU, with 1 MB
#: 0.5 s (its C parser copes badly with a string split over many reads).
READ_BUFFER = 1 << 20


def _read_buffer(f: Any) -> int:
    """ijson's read size for the open file ``f``: 1/64 of it, from 64 kB to READ_BUFFER
    (a small file is read as before, a big one's ~1 MB chunks in few reads)."""
    return max(1 << 16, min(READ_BUFFER, os.fstat(f.fileno()).st_size // 64))


#: Where a round file keeps its /2 chunks, as ijson names the place.
_CHUNKS = "inputs.chunks"
_CHUNK = "inputs.chunks.item"


def load_round_streamed(path: Path) -> GrantRound:
    """The round in ``path`` with its /2 chunks left in the file: everything else is
    read in one pass that skips the chunks' texts (only counting them), and the chunks
    are read, one at a time, whenever the round's inputs are iterated
    (:class:`~resistance.grants.model.StoredChunks`, each checked against the manifest
    as it is read). So verifying a round over 100,000 proxies holds one chunk, not a
    file of ~100 MB parsed whole. A /1 round, or a file whose chunks are not a list of
    texts, is read whole by :func:`load_round` (with its errors)."""
    return _round_streamed(path)[0]


class _ChunkFile:
    """Where a round's /2 chunks are read from: the round file, as it is named now."""

    __slots__ = ("path",)

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self) -> Iterator[Any]:
        return _chunk_texts(self.path)


def _round_streamed(path: Path) -> tuple[GrantRound, _ChunkFile | None]:
    """:func:`load_round_streamed`, and where its chunks are read (None: read whole)."""
    head, count = _round_head(path)
    inputs = head.get("inputs") if isinstance(head, dict) else None
    if (
        count is None
        or not isinstance(inputs, dict)
        or inputs.get("format") != INPUTS_FORMAT_2
        or not isinstance(inputs.get("manifest"), list)
    ):
        return load_round(path), None
    del inputs["chunks"]
    listed = inputs["manifest"]
    if len(listed) != count:
        raise InputError(
            f"inputs: the manifest names {len(listed)} chunk(s) but {count} are present"
        )
    source = _ChunkFile(path)
    return round_from_json(head, StoredChunks(source, listed)), source


def _round_head(path: Path) -> tuple[Any, int | None]:
    """The file's JSON with ``inputs.chunks`` as an empty list, and how many chunks it
    holds; ``(None, None)`` when its chunks are not a list of texts, or when ijson's
    dotted prefix could name something else than the one ``inputs.chunks`` a JSON
    parser keeps (a key with a dot, such as a top-level ``"inputs.chunks.item"``; a
    second ``chunks`` list, of which the last wins): then the whole file is read, and
    says what is wrong, as it always did."""
    builder = ijson.ObjectBuilder()
    count = 0
    lists = 0
    try:
        with path.open("rb") as f:
            for prefix, event, value in ijson.parse(f, use_float=True, buf_size=_read_buffer(f)):
                if prefix == _CHUNK and event == "string":
                    count += 1
                    continue
                if event == "map_key" and "." in value and prefix in ("", "inputs"):
                    return None, None  # its prefixes could pass for the chunks'
                if prefix == _CHUNKS and event == "start_array":
                    lists += 1
                    if lists > 1:
                        return None, None  # duplicate keys: the last list is the one
                if prefix.startswith(_CHUNK) or (
                    prefix == _CHUNKS and event not in ("start_array", "end_array")
                ):
                    return None, None
                builder.event(event, value)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    except ijson.JSONError as exc:
        raise _not_json(path, exc) from None
    head = builder.value
    inputs = head.get("inputs") if isinstance(head, dict) else None
    if not isinstance(inputs, dict) or not isinstance(inputs.get("chunks"), list):
        return None, None
    return head, count


def _not_json(path: Path, exc: Exception) -> InputError:
    """One line (the C parser's message points at the place over several)."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return InputError(f"{path} is not JSON: {first or type(exc).__name__}")


def _chunk_texts(path: Path) -> Iterator[Any]:
    """The file's chunks, one at a time (read again from the start at each call)."""
    try:
        with path.open("rb") as f:
            yield from ijson.items(f, _CHUNK, use_float=True, buf_size=_read_buffer(f))
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    except ijson.JSONError as exc:
        raise _not_json(path, exc) from None


def save_round(path: Path, round_: GrantRound) -> None:
    """Write the round file (atomically). A round whose /2 chunks are read from a file
    (:func:`load_round_streamed`) is written a chunk at a time, the same bytes as the
    whole text: approving a round over 100,000 proxies never holds its ~100 MB."""
    if not isinstance(round_.inputs.chunks, StoredChunks):
        text = json.dumps(round_to_json(round_), indent=1, sort_keys=True) + "\n"
        write_text_atomic(path, text)
        return
    write_parts_atomic(path, _round_file_parts(round_), lambda _tmp, _path: None)


#: Stands for the chunks in the text of the rest of a round (a string no JSON
#: string value it holds can be: its NUL is escaped as \u0000 in JSON's text).
_CHUNKS_HERE = "\x00the chunks go here\x00"


def _round_file_parts(round_: GrantRound) -> Iterator[bytes]:
    """``json.dumps(round_to_json(round_), indent=1, sort_keys=True) + "\\n"`` in parts,
    one per /2 chunk (``inputs.chunks`` is a list two levels down: its items are
    indented by three spaces, its closing bracket by two)."""
    assert round_.inputs.chunks is not None
    body = round_to_json(replace(round_, inputs=replace(round_.inputs, chunks=())))
    body["inputs"] = inputs_to_json(round_.inputs, with_chunks=False) | {"chunks": _CHUNKS_HERE}
    head = json.dumps(body, indent=1, sort_keys=True) + "\n"
    before, after = head.split(json.dumps(_CHUNKS_HERE), 1)
    yield before.encode()
    empty = True
    for text in round_.inputs.chunks:
        yield (("[\n   " if empty else ",\n   ") + json.dumps(text)).encode()
        empty = False
    yield (("[]" if empty else "\n  ]") + after).encode()


def load_inputs(path: Path) -> tuple[GrantSettings, RoundInputs]:
    return round_inputs_file_from_json(read_json(path))
