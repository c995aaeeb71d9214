"""What the two ``resist grants`` command groups share: option types and file helpers.

:mod:`resistance.grants.cli` works on round files, :mod:`resistance.grants.round_cli`
on rounds kept by a registry; both read transactions and write files alike.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from resistance.grants import files
from resistance.grants.errors import GrantsError
from resistance.grants.model import GrantRound

F = TypeVar("F", bound=Callable[..., Any])
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
ROUND_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
OUT_FILE = click.Path(dir_okay=False, writable=True, path_type=Path)
NETWORKS = click.Choice(["bitcoin", "testnet", "testnet4", "signet", "regtest"])


def emit(text: str, out: Path | None) -> None:
    if out is None:
        click.echo(text, nl=False)
    else:
        files.write_text_atomic(out, text)


def summary(round_: GrantRound) -> str:
    r = round_.result
    return (
        f"round {round_.settings.round_id} ({round_.state.status.value}): "
        f"{len(r.payouts())} payouts, {r.paid_sat} sat paid, {r.carried_out_sat} sat carried, "
        f"{r.returned_sat} sat returned, fee reserve {round_.settings.fee_reserve_sat} sat"
    )


def read_text(path: Path) -> str:
    """A text file the user named, or one clear error line."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise GrantsError(f"cannot read {path}: {exc.strerror}") from None


def tx_text(tx_hex: str | None, tx_file: Path | None) -> str:
    """The signed transaction's hex, from exactly one of --tx and --tx-file."""
    if (tx_hex is None) == (tx_file is None):
        raise click.UsageError("give exactly one of --tx and --tx-file")
    if tx_file is not None:
        return read_text(tx_file)
    assert tx_hex is not None
    return tx_hex
