"""Where `resist` keeps state: keys, databases, queues.

Every command that keeps state takes ``--state-dir``; without it the state
lives in ``$RESIST_HOME`` or the platform's user data directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import platformdirs

from resistance.errors import ConfigError

#: The layout of a state directory this release reads and writes.  A release that
#: changes the layout bumps it and adds the step from the one before to MIGRATIONS.
STATE_FORMAT = 1
STATE_FORMAT_FILE = "state-format"


def _stamp_only(path: Path) -> None:
    """Format 0 (before formats were recorded) has the layout of format 1."""


#: Format N -> the step that brings a state directory from format N to N + 1.
MIGRATIONS: dict[int, Callable[[Path], None]] = {0: _stamp_only}


def check_state_format(
    path: Path,
    *,
    current: int = STATE_FORMAT,
    migrations: Mapping[int, Callable[[Path], None]] = MIGRATIONS,
) -> int:
    """Bring the state directory at ``path`` to format ``current``, or refuse it.

    A new (empty) directory is stamped with ``current``; one with files but no
    stamp predates formats (0).  An older format is migrated step by step, the
    stamp written after each step, so an interrupted upgrade resumes; a newer
    one (written by a later release) is refused rather than misread.  Returns
    the format found.
    """
    stamp = path / STATE_FORMAT_FILE
    try:
        text = stamp.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        text = None
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"cannot read {stamp}: {exc}") from None
    if text is None:
        found = 0 if any(path.iterdir()) else current
    elif text.isdigit():
        found = int(text)
    else:
        raise ConfigError(f"{stamp} does not hold a state format number: {text[:40]!r}")
    if found > current:
        raise ConfigError(
            f"state directory {path} has format {found}, written by a newer release; this one "
            f"reads format {current}: upgrade resist, or give another --state-dir"
        )
    for step in range(found, current):
        migrate = migrations.get(step)
        if migrate is None:
            raise ConfigError(f"state directory {path} has format {step}, too old to migrate")
        migrate(path)
        _stamp(stamp, step + 1)
    if text is None and found == current:
        _stamp(stamp, current)
    return found


def _stamp(stamp: Path, format_: int) -> None:
    try:
        write_atomic(stamp, f"{format_}\n".encode(), mode=0o600)
    except OSError as exc:
        raise ConfigError(f"cannot record the state format in {stamp}: {exc.strerror}") from None


def resolve_state_dir(option: str | os.PathLike[str] | None) -> Path:
    """The state directory to use, created with mode 0700 if missing, at this
    release's format (see :func:`check_state_format`)."""
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
    check_state_format(path)
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
