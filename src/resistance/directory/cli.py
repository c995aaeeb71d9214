"""`resist directory`: check and co-sign signed directory files offline."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from resistance.clikit import CONTEXT, one_line_errors
from resistance.directory.document import (
    DirectoryError,
    cosign,
    load_trust_state,
    save_trust_state,
    verify_directory,
)
from resistance.directory.keys import (
    create_private_key,
    key_id,
    load_private_key,
    public_key_text,
    trusted_key,
)
from resistance.errors import ConfigError
from resistance.paths import resolve_state_dir, write_private


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


@click.group(context_settings=CONTEXT)
def directory() -> None:
    """Verify and co-sign signed directories (works offline, on any copy).

    \b
    Examples:
      resist directory verify directory.json --trust 3q2-7w... --threshold 1
      resist directory cosign directory.json --key authority2.pem
    """


@directory.command(context_settings=CONTEXT)
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--trust",
    "trust",
    multiple=True,
    required=True,
    metavar="KEY",
    help="A trusted authority key: base64url text, or a file with it or a PEM key; repeatable.",
)
@click.option("--threshold", type=click.IntRange(1), default=1, show_default=True)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    help="Where the last accepted serial is remembered (rollback protection).",
)
@click.option("--now", type=click.IntRange(0), hidden=True, help="Pretend it is this unix time.")
@one_line_errors
def verify(
    file: Path, trust: tuple[str, ...], threshold: int, state_dir: Path | None, now: int | None
) -> None:
    """Check a directory: K distinct trusted signatures, validity window, no rollback.

    Prints the serial and signers and remembers the serial in the state
    directory; exits 1 (with one line saying why) if the file is refused.

    \b
    Example:
      resist directory verify directory.json --trust KEY1 --trust KEY2 --threshold 2
    """
    keys = [trusted_key(spec) for spec in trust]
    state = resolve_state_dir(state_dir)
    last = load_trust_state(state)
    try:
        verified = verify_directory(
            _read(file),
            trusted=keys,
            threshold=threshold,
            now=int(time.time()) if now is None else now,
            last_serial=last.serial,
            last_digest=last.digest,
        )
    except DirectoryError as exc:
        click.echo(f"resist: refused: {exc}", err=True)
        sys.exit(1)
    save_trust_state(state, verified)
    click.echo(
        f"ok: serial {verified.serial}, {len(verified.document['proxies'])} proxies, "
        f"signed by {', '.join(verified.signers)}"
    )


@directory.command(name="cosign", context_settings=CONTEXT)
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--key",
    "key_file",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="The co-signing authority's Ed25519 private key (PKCS8 PEM, mode 0600).",
)
@click.option(
    "--out", type=click.Path(path_type=Path, dir_okay=False), help="Write here, not over FILE."
)
@one_line_errors
def cosign_command(file: Path, key_file: Path, out: Path | None) -> None:
    """Add this authority's signature to a directory file, offline.

    Verify the document first: the signature says "I vouch for this content".

    \b
    Example:
      resist directory cosign directory.json --key ~/.resist/authority.pem
    """
    key = load_private_key(key_file)
    try:
        data = cosign(_read(file), key)
    except DirectoryError as exc:
        raise ConfigError(str(exc)) from None
    target = out or file
    try:
        write_private(target, data.decode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {exc.strerror}") from None
    click.echo(f"signed by {key_id(key.public_key())} into {target}")


@directory.command(context_settings=CONTEXT)
@click.argument("key_file", type=click.Path(path_type=Path, dir_okay=False))
@one_line_errors
def keygen(key_file: Path) -> None:
    """Make an authority key (mode 0600) and print its public key to pin.

    \b
    Example:
      resist directory keygen ~/.resist/authority.pem
    """
    key = create_private_key(key_file)
    click.echo(public_key_text(key.public_key()))
