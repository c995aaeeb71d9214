"""``resist vpn serve``: keep the interface up, enforce limits, export metrics.

A loop, not a daemon of its own: each round (``interval`` seconds) it
accounts traffic, disables peers past their expiry or over their quota, and
refreshes the metrics snapshot.  SIGTERM or SIGINT ends it after the round;
the interface stays up (``resist vpn down`` takes it down).

On an AmneziaWG server it starts ``resist vpn amnezia-relay`` as a child
(inside the interface's namespace, where wireguard-go listens), restarts it
if it dies, and stops it with SIGTERM on the way out.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
from types import FrameType

from prometheus_client import start_http_server

from resistance.config import Endpoint
from resistance.vpn.metrics import VpnMetrics
from resistance.vpn.server import VpnServer

log = logging.getLogger(__name__)


def _start_relay(server: VpnServer) -> subprocess.Popen[bytes]:
    netns = server.config.netns
    argv = [*(("ip", "netns", "exec", netns) if netns else ())]
    argv += [sys.executable, "-m", "resistance", "vpn", "amnezia-relay"]
    argv += ["--state-dir", str(server.dir.parent)]
    return subprocess.Popen(argv)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def run_serve(server: VpnServer, *, interval: float, metrics: Endpoint | None) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    how = server.up()
    log.info("vpn %s up (%s)", server.config.interface, how)
    collector = VpnMetrics()
    http = None
    if metrics is not None:
        http, _thread = start_http_server(metrics.port, metrics.host, registry=collector.registry)
        bound = http.server_address[1]
        print(f"metrics on http://{Endpoint(metrics.host, bound)}/metrics", flush=True)
    relay = None if server.config.amnezia is None else _start_relay(server)
    print(f"serving vpn {server.config.interface}", flush=True)
    try:
        while not stop.is_set():
            if relay is not None and relay.poll() is not None:
                log.warning("AmneziaWG translator exited (%s): restarting it", relay.returncode)
                relay = _start_relay(server)
            blocked = server.enforce()
            for name, reason in blocked:
                print(f"disabled {name}: {reason.value}", flush=True)
            collector.update(server.view(), disabled_now=len(blocked))
            stop.wait(interval)
    finally:
        if relay is not None:
            _stop(relay)
        if http is not None:
            http.shutdown()
            http.server_close()
    return 0
