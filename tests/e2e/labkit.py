"""What the lab tests that build their own namespaces share: a certificate, the
teardown of the censor and the namespaces (only the lab's own, by name), and the
logs a failed test keeps.

The censor's verdict log lives beside its settings in /run and goes with the lab
at teardown; the nodes' logs are in the lab's pytest temporary directory, which
pytest prunes after three runs.  A module's fixture names its lab with
:func:`kept_on_failure`; when one of its tests fails, tests/e2e/conftest.py
copies every log of that lab to ``lab-logs/<test>`` in pytest's base temporary
directory (kept like any pytest tmp dir, or under ``$RESIST_LAB_ARTIFACTS``
when set, as CI may) and puts the last lines of each in the failure report.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from resistance.lab import censor
from resistance.lab import topology as topo


def lab_certificate(tmp: Path) -> tuple[Path, Path]:
    """A throwaway P-256 certificate and key for the lab's TLS servers."""
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=lab"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


def remove_lab(t: topo.Topology) -> None:
    """Stop the censor's verdict program, delete the lab's namespaces and its settings."""
    settings = censor.load_settings(t.censor)
    if settings.watcher:
        censor._stop_watcher(settings.watcher)
    for ns in t.namespaces:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    censor.forget(t.censor)


#: Lines of each log shown in a failure report (all of it is copied).
TAIL_LINES = 40
#: Log files copied per lab at most, and bytes of each (a runaway log is cut).
MAX_LOGS = 64
MAX_LOG_BYTES = 8 << 20


@dataclass
class KeptLogs:
    """A lab whose logs a failed test keeps: its censor's and those under ``dirs``."""

    t: topo.Topology
    dirs: tuple[Path, ...]
    copies: list[Path] = field(default_factory=list)

    def files(self) -> list[tuple[str, Path]]:
        found = [("censor.log", censor.log_path(self.t.censor))]
        for base in self.dirs:
            if base.is_dir():
                logs = sorted(p for p in base.rglob("*") if p.suffix in (".log", ".err"))
                found += [(str(p.relative_to(base)).replace("/", "_"), p) for p in logs]
        return [(name, p) for name, p in found[:MAX_LOGS] if p.is_file()]

    def keep(self, dest: Path) -> str:
        """Copy the logs to ``dest``; their tails, as a failure report shows them."""
        dest.mkdir(parents=True, exist_ok=True)
        parts = []
        for name, path in self.files():
            try:
                with path.open("rb") as f:
                    size = f.seek(0, os.SEEK_END)
                    f.seek(max(0, size - MAX_LOG_BYTES))
                    data = f.read(MAX_LOG_BYTES)
            except OSError as exc:
                parts.append(f"--- {name}: cannot read: {exc}")
                continue
            (dest / name).write_bytes(data)
            self.copies.append(dest / name)
            tail = data.decode(errors="replace").splitlines()[-TAIL_LINES:]
            parts.append(f"--- {name} (last {len(tail)} lines; whole: {dest / name})")
            parts += tail
        return "\n".join(parts)


#: The labs up now, whose logs a failing test keeps.
WATCHED: list[KeptLogs] = []


@contextlib.contextmanager
def kept_on_failure(t: topo.Topology, *dirs: Path) -> Iterator[KeptLogs]:
    """While inside, a failing test keeps the lab's logs (see the module docstring)."""
    kept = KeptLogs(t, dirs)
    WATCHED.append(kept)
    try:
        yield kept
    finally:
        WATCHED.remove(kept)


def artifact_dir(basetemp: Path, nodeid: str) -> Path:
    """Where a failed test's lab logs go."""
    root = Path(os.environ.get("RESIST_LAB_ARTIFACTS") or basetemp / "lab-logs")
    return root / re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid)[-150:]


def keep_failed(basetemp: Path, nodeid: str) -> list[tuple[str, str]]:
    """Report sections (title, text) for a failed test: each watched lab's logs kept."""
    sections = []
    for i, kept in enumerate(list(WATCHED)):
        dest = artifact_dir(basetemp, nodeid) / f"{kept.t.name}-{i}"
        if dest.exists():
            shutil.rmtree(dest)
        sections.append((f"lab {kept.t.name}: logs kept in {dest}", kept.keep(dest)))
    return sections
