"""Where `resist` keeps state: keys, databases, queues.

Every command that keeps state takes ``--state-dir``; without it the state
lives in ``$RESIST_HOME`` or the platform's user data directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from resistance.errors import ConfigError


def resolve_state_dir(option: str | os.PathLike[str] | None) -> Path:
    """The state directory to use, created with mode 0700 if missing."""
    if option:
        path = Path(option)
    elif os.environ.get("RESIST_HOME"):
        path = Path(os.environ["RESIST_HOME"])
    else:
        path = Path(platformdirs.user_data_dir("resistance", appauthor=False))
    path = path.expanduser()
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create state directory {path}: {exc.strerror}") from None
    if not path.is_dir():
        raise ConfigError(f"state directory {path} is not a directory")
    return path


def write_atomic(path: Path, data: bytes, *, mode: int, tmp: Path | None = None) -> None:
    """Write a whole file or nothing: to a temporary file, synced, then renamed over ``path``.

    A reader (or a crash) never sees half a key, directory or spool batch.
    """
    tmp = tmp or path.with_name(path.name + ".tmp")
    write_synced(tmp, data, mode=mode)
    os.replace(tmp, path)


def write_synced(path: Path, data: bytes, *, mode: int, exclusive: bool = False) -> None:
    """Write a whole file and sync it to disk; ``exclusive``: only a file not there yet."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private(path: Path, data: str) -> None:
    """Write a file only its owner can read, atomically (never a half-written secret)."""
    write_atomic(path, data.encode(), mode=0o600)
