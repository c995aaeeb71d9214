"""Types of the C extension ``_awg.c`` (the AmneziaWG translator's transport path)."""

from typing import Any

Route = tuple[int, bytes | None, dict[int, None] | None, Any]

def relay(
    fd: int,
    to_wireguard: bool,
    s4: int,
    h4_lo: int,
    h4_hi: int,
    handshake_sizes: tuple[int, int, int],
    routes: Route | dict[bytes, Route],
    new_size: int,
    hp_key: bytes | None = None,
    candidates: tuple[tuple[int, int, int, int], ...] | None = None,
    /,
) -> tuple[list[tuple[bytes, bytes]], int, int, int, list[Any]]: ...
def chacha20_block(key: bytes, counter: int, nonce: bytes, /) -> bytes: ...
