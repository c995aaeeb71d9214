"""The C half of the splice relay builds cleanly, and is what CI tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

import resistance
from resistance.net import native

SOURCE = Path(resistance.__file__).parent / "net" / "_splice.c"


def test_the_extension_compiles_without_a_warning() -> None:
    gcc = shutil.which("gcc")
    include = sysconfig.get_paths()["include"]
    if gcc is None or not Path(include, "Python.h").exists():
        pytest.skip("no gcc or no Python headers here")
    out = subprocess.run(
        [gcc, "-fsyntax-only", "-O2", "-Wall", "-Wextra", "-Werror", "-I", include, str(SOURCE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr


def test_ci_runs_the_c_relay() -> None:
    """setup.py builds the extension as optional; in CI a failed build must not pass
    unnoticed, or every "splice" test would run the Python version."""
    if not os.environ.get("CI") or os.environ.get(native.DISABLE_ENV):
        pytest.skip("only CI promises a compiler and Python's headers")
    assert native.NATIVE, native.UNAVAILABLE_BECAUSE


def test_the_c_pumps_yield_after_as_many_chunks_as_the_python_ones() -> None:
    if not native.NATIVE:
        pytest.skip(f"the C extension is not here: {native.UNAVAILABLE_BECAUSE}")
    from resistance.net import _splice, relay

    assert _splice.ROUNDS == relay.ROUNDS
