"""Whether the C half of the splice relay (``_splice.c``) is here and switched on.

``resistance.net._splice`` is compiled at install time where a C compiler and Python's
headers are found (``setup.py`` marks it optional). Without it, or with
``RESIST_NO_EXTENSIONS=1`` in the environment, the node relays with the same algorithm
written in Python (:mod:`resistance.net.relay`, :mod:`resistance.net.reactor`); the tests
run the relay both ways.
"""

from __future__ import annotations

import os
from typing import Final

DISABLE_ENV: Final = "RESIST_NO_EXTENSIONS"


def _why_not() -> str | None:
    if os.environ.get(DISABLE_ENV):
        return f"{DISABLE_ENV} is set"
    try:
        from resistance.net import _splice  # noqa: F401
    except ImportError as exc:
        return f"resistance.net._splice is not usable ({exc})"
    return None


UNAVAILABLE_BECAUSE: Final = _why_not()
NATIVE: Final = UNAVAILABLE_BECAUSE is None
"""The relay's per-event path runs in C (``resistance.net._splice``)."""
