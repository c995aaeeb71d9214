"""Throw-away network namespaces for tests that must not reach any real network.

A namespace made here has only its loopback interface, so a connection the
node should never have made goes nowhere.  Root only; tests skip elsewhere.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

_counter = itertools.count()


def can_make_namespaces() -> bool:
    return (
        os.geteuid() == 0 and subprocess.run(["which", "ip"], capture_output=True).returncode == 0
    )


def run(*cmd: str, input: str | None = None) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
    return done.stdout


@contextmanager
def loopback_namespace(tag: str = "t") -> Iterator[str]:
    """A new namespace with only ``lo`` up; removed afterwards."""
    name = f"resist-{tag}-{os.getpid()}-{next(_counter)}"
    run("ip", "netns", "add", name)
    try:
        run("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def exec_prefix(namespace: str) -> tuple[str, ...]:
    return ("ip", "netns", "exec", namespace)
