"""``resist vpn serve``: keep the interface up, enforce limits, export metrics.

A loop, not a daemon of its own: each round (``interval`` seconds) it
accounts traffic, disables peers past their expiry or over their quota, and
refreshes the metrics snapshot.  SIGTERM or SIGINT ends it after the round;
the interface stays up (``resist vpn down`` takes it down).

On an AmneziaWG server it starts ``resist vpn amnezia-relay`` as a child
(inside the interface's namespace, where wireguard-go listens), restarts it
if it dies (waiting 1 s, then twice as long after each quick death, at most
a minute), and stops it with SIGTERM on the way out.  A translator that
exits with a configuration error (status 2: its port is taken, its address
is not this host's) is not restarted, since a restart cannot mend that:
``serve`` says so in one line and exits 2.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
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


#: the exit status of a command's configuration error (clikit.one_line_errors)
CONFIG_ERROR_EXIT = 2
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 60.0


class RelayWatch:
    """Keep a child translator running: restart it with backoff, give up on bad configuration.

    ``start`` makes the child; ``check`` (each round of the serve loop) looks
    at it and returns the one line to exit with when it must not be restarted.
    A child that ran for :data:`MAX_BACKOFF` seconds before it died is
    restarted after :data:`FIRST_BACKOFF` again.
    """

    def __init__(
        self,
        start: Callable[[], subprocess.Popen[bytes]],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._start = start
        self._clock = clock
        self.proc: subprocess.Popen[bytes] | None = start()
        self.started = clock()
        self.backoff = FIRST_BACKOFF
        self.restart_at: float | None = None
        self.restarts = 0

    def check(self) -> str | None:
        now = self._clock()
        if self.proc is not None:
            status = self.proc.poll()
            if status is None:
                return None
            self.proc = None
            if status == CONFIG_ERROR_EXIT:
                return (
                    f"the AmneziaWG translator could not start (exit status {status}); "
                    "its error is above"
                )
            if now - self.started >= MAX_BACKOFF:
                self.backoff = FIRST_BACKOFF
            log.warning(
                "AmneziaWG translator exited (%s): restarting it in %.0f s", status, self.backoff
            )
            self.restart_at = now + self.backoff
            self.backoff = min(self.backoff * 2, MAX_BACKOFF)
        if self.restart_at is not None and now >= self.restart_at:
            self.proc = self._start()
            self.started = now
            self.restart_at = None
            self.restarts += 1
        return None

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None


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
    relay = None if server.config.amnezia is None else RelayWatch(lambda: _start_relay(server))
    print(f"serving vpn {server.config.interface}", flush=True)
    try:
        while not stop.is_set():
            trouble = None if relay is None else relay.check()
            if trouble is not None:
                print(f"resist: error: {trouble}", file=sys.stderr, flush=True)
                return CONFIG_ERROR_EXIT
            blocked = server.enforce()
            for name, reason in blocked:
                print(f"disabled {name}: {reason.value}", flush=True)
            collector.update(server.view(), disabled_now=len(blocked))
            stop.wait(interval)
    finally:
        if relay is not None:
            relay.stop()
        if http is not None:
            http.shutdown()
            http.server_close()
    return 0
