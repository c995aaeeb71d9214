"""Running a system tool (ip, nft, wg, …) to completion, its failure as one line.

The lab and the WireGuard server drive the same kind of tools the same way: output
captured, a timeout on every run, and a missing tool, a timeout or a non-zero exit
turned into one clear line in the caller's own error class.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence


def run_tool(
    argv: Sequence[str],
    *,
    error: Callable[[str], Exception],
    timeout: float,
    input: str | None = None,
    env: dict[str, str] | None = None,
    check: bool = True,
    shown: Sequence[str] | None = None,
) -> str:
    """Run ``argv``; its standard output, or ``error(one line)`` when it cannot run, runs
    out of ``timeout`` or (with ``check``) exits non-zero. ``shown`` is the command as
    messages name it (default ``argv``: e.g. without an ``ip netns exec NS`` prefix)."""
    named = " ".join((shown or argv)[:6])
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
            check=False,
            env=dict(os.environ, **env) if env else None,
        )
    except FileNotFoundError:
        raise error(f"{argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise error(f"{named} took longer than {timeout:g} s") from None
    if check and done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        raise error(f"{named}: {why[-1] if why else f'exit status {done.returncode}'}")
    return done.stdout
