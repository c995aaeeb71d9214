"""Types of the C extension ``_splice.c`` (the splice relay's per-event path)."""

from collections.abc import Callable
from typing import Any, Final

ROUNDS: Final[int]

class PipePool:
    size: Final[int]
    keep: Final[int]
    slots: Final[int]
    def __init__(self, *, size: int = 0, keep: int = 256) -> None: ...
    def get(self) -> tuple[int, int]: ...
    def put(self, pipe: tuple[int, int], /) -> None: ...
    def close(self) -> None: ...
    def __len__(self) -> int: ...

class Pump:
    src_fd: Final[int]
    dst_fd: Final[int]
    pending: Final[int]
    chunk: Final[int]
    eof: Final[bool]
    done: Final[bool]
    moved: int
    readable: bool
    writable: bool
    ending: bool
    def __init__(
        self, relay: Any, src_fd: int, dst_fd: int, pool: PipePool, chunk: int, loop: Any
    ) -> None: ...
    def run(self) -> None: ...
    def halt(self) -> None: ...

class Side:
    def __init__(self, relay: Any, reading: Pump, writing: Pump) -> None: ...
    def __call__(self, events: int, /) -> None: ...

dispatch: Callable[[int, dict[int, Callable[[int], None]], int], None]
