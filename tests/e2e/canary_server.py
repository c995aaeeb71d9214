"""The registry's canary alone, for end-to-end tests in a lab namespace.

    python canary_server.py HOST PORT

Prints its public key (base64url) once it listens; exits on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from resistance.config import Endpoint
from resistance.directory.keys import public_key_text
from resistance.registry.canary import CanaryServer


async def main(host: str, port: int) -> None:
    key = Ed25519PrivateKey.generate()
    server = CanaryServer(key)
    await server.start(Endpoint(host, port))
    print(public_key_text(key.public_key()), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
