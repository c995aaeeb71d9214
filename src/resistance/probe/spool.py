"""The probe's on-disk upload queue: every signed batch is a file until the registry has it.

A batch is written atomically (temporary file, fsync, rename, fsync of the
directory) before anything tries to upload it, so a crash or a restart loses
nothing; it is removed only after the registry confirmed it (stored now or
already stored), so an upload whose answer was lost is simply sent again and
the registry's idempotence by batch id keeps it from being stored twice.
Files are named ``<nanoseconds>-<batch id>.json``, so listing them sorted
gives the oldest first.  A batch the registry refuses for good (a 4xx other
than 401/408/429) moves to ``rejected/`` with the reason next to it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from resistance.errors import ConfigError
from resistance.paths import write_atomic

SUFFIX = ".json"


class Spool:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.rejected = folder / "rejected"
        try:
            self.rejected.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot use spool {folder}: {exc.strerror}") from None

    def put(self, batch_id: str, data: bytes) -> Path:
        path = self.folder / f"{time.time_ns():020d}-{batch_id}{SUFFIX}"
        write_atomic(path, data, mode=0o600, tmp=path.with_suffix(".tmp"))
        dir_fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return path

    def pending(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.name.endswith(SUFFIX))

    def done(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def reject(self, path: Path, reason: str) -> None:
        os.replace(path, self.rejected / path.name)
        (self.rejected / (path.name + ".reason")).write_text(reason + "\n")

    @staticmethod
    def batch_id(path: Path) -> str:
        return path.name.removesuffix(SUFFIX).split("-", 1)[1]
