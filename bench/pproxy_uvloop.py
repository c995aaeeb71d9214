"""Start pproxy on uvloop, as its own command line would on an older Python.

Why: pproxy 2.7 calls ``uvloop.install()`` and then ``asyncio.get_event_loop()``; with
uvloop >= 0.21 the fresh uvloop policy has no current loop and raises, so plain ``pproxy``
dies at start. Here ``install`` also sets a new loop; everything else is pproxy's own code.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop
from pproxy.server import main

_install = uvloop.install


def _install_and_set_loop() -> None:
    _install()
    asyncio.set_event_loop(asyncio.new_event_loop())


uvloop.install = _install_and_set_loop

if __name__ == "__main__":
    sys.exit(main())
