"""What the lab tests that build their own namespaces share: a certificate, and the
teardown of the censor and the namespaces (only the lab's own, by name)."""

from __future__ import annotations

import subprocess
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
