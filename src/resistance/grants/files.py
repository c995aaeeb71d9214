"""Reading and writing round files: JSON in, JSON out, written atomically or not at all."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from resistance.grants.errors import InputError
from resistance.grants.model import (
    GrantRound,
    GrantSettings,
    RoundInputs,
    round_from_json,
    round_inputs_file_from_json,
    round_to_json,
)


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
    path = path.resolve()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_round(path: Path) -> GrantRound:
    return round_from_json(read_json(path))


def save_round(path: Path, round_: GrantRound) -> None:
    write_text_atomic(path, json.dumps(round_to_json(round_), indent=1, sort_keys=True) + "\n")


def load_inputs(path: Path) -> tuple[GrantSettings, RoundInputs]:
    return round_inputs_file_from_json(read_json(path))
