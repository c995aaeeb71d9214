"""Send raw bytes to a SOCKS server and print what comes back, as JSON.

Run as a program so that tests can talk to a node inside a network
namespace: ``ip netns exec NS python socks_exchange.py HOST PORT HEX...``.
Each HEX argument is sent after the previous answer has been read (up to
``--expect`` bytes each), so multi-step handshakes stay in step.
"""

from __future__ import annotations

import argparse
import json
import socket
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("steps", nargs="+", help="hex to send, then bytes to wait for: HEX/N")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    started = time.monotonic()
    result: dict[str, object] = {"replies": [], "eof": False}
    with socket.create_connection((args.host, args.port), timeout=args.timeout) as sock:
        for step in args.steps:
            data_hex, _, want = step.partition("/")
            sock.sendall(bytes.fromhex(data_hex))
            need = int(want or "0")
            got = b""
            try:
                while len(got) < need:
                    chunk = sock.recv(need - len(got))
                    if not chunk:
                        result["eof"] = True
                        break
                    got += chunk
            except TimeoutError:
                result["timeout"] = True
            result["replies"].append(got.hex())  # type: ignore[attr-defined]
            if result["eof"] or result.get("timeout"):
                break
        if not result["eof"] and not result.get("timeout"):
            try:
                sock.settimeout(2.0)
                result["eof"] = sock.recv(1) == b""
            except (TimeoutError, ConnectionResetError):
                pass
    result["seconds"] = round(time.monotonic() - started, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
