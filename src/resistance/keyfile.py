"""Secret files in a state directory: load one, or make it on first use.

Every command that keeps a key (the node's identity, the probe's keys, the
registry's signing, ring and canary keys, WireGuard keys) keeps it the same
way, here:

* a new file is written whole or not at all (a temporary file, synced, then
  linked into place), mode 0600, and never over a file that is already there:
  two processes starting at once both end up with the one key that won;
* a file others can read is refused, as ssh refuses one;
* a file that cannot be read or parsed (truncated, garbled, the wrong kind of
  key) is a one-line :class:`ConfigError` naming the file, and the file is
  left as it is: a damaged key is never replaced by a new one behind the
  operator's back, since that would silently change the identity.

A format is a ``parse`` function (bytes to value, raising ``ValueError`` with
a short reason) and a ``new`` function (the bytes of a freshly made secret).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from resistance.errors import ConfigError

if TYPE_CHECKING:  # cryptography loads only when an Ed25519 key is used
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

T = TypeVar("T")

MAX_SIZE = 64 * 1024
"""No key file is larger; a larger file is not read (it is not one of ours)."""


def check_private_mode(path: Path) -> None:
    """Refuse a key file others can read (as ssh does)."""
    try:
        mode = os.stat(path).st_mode & 0o077
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror}") from None
    if mode:
        raise ConfigError(f"{path} is readable by others (mode {oct(mode)}): chmod 600 it")


def read_private(path: Path, parse: Callable[[bytes], T], *, what: str) -> T:
    """The value of an existing key file, checked for its mode and parsed.

    Raises a one-line :class:`ConfigError` naming ``path`` and ``what`` it
    should hold when the file is missing, unreadable, readable by others or
    damaged.
    """
    check_private_mode(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SIZE + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror}") from None
    if len(data) > MAX_SIZE:
        raise ConfigError(f"{path} is damaged: too large for a {what} file")
    try:
        return parse(data)
    except ValueError as exc:
        raise ConfigError(
            f"{path} is damaged: {_one_line(exc)}; it should hold a {what}"
            " (remove it to make a new one)"
        ) from None


def create_private(path: Path, data: bytes, *, what: str) -> bool:
    """Write a new key file (mode 0600) atomically; ``False`` if one is already there.

    The bytes go to a temporary file that is synced and then hard-linked to
    ``path``: the link fails if ``path`` exists, so an existing file, good or
    bad, is never overwritten, and a reader never sees half a key.
    """
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {path.parent}: {exc.strerror}") from None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    except OSError as exc:
        raise ConfigError(f"cannot write {what} file {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return True


def load_or_create(
    path: Path, *, parse: Callable[[bytes], T], new: Callable[[], bytes], what: str
) -> T:
    """The value kept in ``path``, which is made with ``new()`` on first use.

    An existing file is read as :func:`read_private` reads it, never
    replaced; see the module docstring.
    """
    return load_or_create_created(path, parse=parse, new=new, what=what)[0]


def load_or_create_created(
    path: Path, *, parse: Callable[[bytes], T], new: Callable[[], bytes], what: str
) -> tuple[T, bool]:
    """:func:`load_or_create`, and whether this call made the file."""
    if not path.exists():
        data = new()
        if create_private(path, data, what=what):
            return parse(data), True
    return read_private(path, parse, what=what), False


def create_new(path: Path, data: bytes, *, what: str) -> None:
    """Write a new key file, refusing to overwrite one already at ``path``."""
    if path.exists() or not create_private(path, data, what=what):
        raise ConfigError(f"{path} already exists: refusing to overwrite a key")


# -- formats -------------------------------------------------------------------


def parse_ed25519_pem(data: bytes) -> Ed25519PrivateKey:
    """An Ed25519 private key from unencrypted PKCS8 PEM."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError("not an unencrypted PKCS8 PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("not an Ed25519 private key")
    return key


def ed25519_pem(key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def new_ed25519_pem() -> bytes:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return ed25519_pem(Ed25519PrivateKey.generate())


def load_or_create_ed25519(path: Path, *, what: str = "Ed25519 private key") -> Ed25519PrivateKey:
    """An Ed25519 key kept as PKCS8 PEM in ``path``, made on first use."""
    return load_or_create(path, parse=parse_ed25519_pem, new=new_ed25519_pem, what=what)


def parse_hex32(data: bytes) -> bytes:
    """32 bytes written as 64 hex digits (and an optional newline)."""
    try:
        text = data.decode("ascii").strip()
        raw = bytes.fromhex(text)
    except ValueError:
        raise ValueError("expected 64 hex digits") from None
    if len(raw) != 32 or len(text) != 64:
        raise ValueError("expected 64 hex digits")
    return raw


def new_hex32() -> bytes:
    return (secrets.token_hex(32) + "\n").encode("ascii")


def parse_credential(data: bytes) -> tuple[str, str]:
    """A ``NAME:PASSWORD`` line (a user a command makes for itself)."""
    name, sep, password = data.decode("utf-8").strip().partition(":")
    if not sep or not name or not password or "\n" in password:
        raise ValueError("expected one NAME:PASSWORD line")
    return name, password


def credential_text(name: str, password: str) -> bytes:
    return f"{name}:{password}\n".encode()


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text[:200] or type(exc).__name__
