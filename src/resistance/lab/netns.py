"""Running commands and Python code inside the lab's network namespaces.

Commands go through ``ip netns exec`` (which execs in place, so the PID we get
is the program's own).  Python code runs in a short-lived thread that has
entered the namespace with setns(2): a network namespace belongs to a thread,
so sockets that thread opens (an httpx request, a TCP check) live in the
namespace while the rest of the process stays where it was.  Python 3.11 has
no ``os.setns``, hence the one ctypes call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from resistance.commands import run_tool
from resistance.lab.errors import LabError

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
COMMAND_TIMEOUT = 60.0

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def run(
    *cmd: str,
    input: str | None = None,
    timeout: float = COMMAND_TIMEOUT,
    env: dict[str, str] | None = None,
) -> str:
    """Run a command to completion; its stderr becomes a one-line LabError on failure."""
    return run_tool(cmd, error=LabError, input=input, timeout=timeout, env=env)


def in_ns(
    namespace: str,
    *cmd: str,
    input: str | None = None,
    timeout: float = COMMAND_TIMEOUT,
    env: dict[str, str] | None = None,
) -> str:
    return run("ip", "netns", "exec", namespace, *cmd, input=input, timeout=timeout, env=env)


def exec_prefix(namespace: str) -> list[str]:
    return ["ip", "netns", "exec", namespace]


def namespaces() -> set[str]:
    try:
        return set(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return set()


def _enter(namespace: str) -> None:
    fd = os.open(os.path.join(NETNS_DIR, namespace), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise LabError(f"cannot enter namespace {namespace}: {os.strerror(err)}")
    finally:
        os.close(fd)


def call_in(namespace: str, func: Callable[..., T], *args: object, timeout: float = 120.0) -> T:
    """Run ``func(*args)`` in a thread inside ``namespace`` and return what it returns.

    The thread is discarded afterwards, so the namespace never leaks into
    other work.  An exception in ``func`` is raised here.
    """
    result: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            _enter(namespace)
            result.append(func(*args))
        except BaseException as exc:  # handed to the caller
            failure.append(exc)

    thread = threading.Thread(target=target, name=f"netns-{namespace}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise LabError(f"work inside {namespace} took longer than {timeout:g} s")
    if failure:
        raise failure[0]
    return result[0]


def tcp_open(host: str, port: int, timeout: float) -> bool:
    """Whether a TCP connection to host:port completes within ``timeout`` (run it via call_in)."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def process_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone.

    Kept with each PID the lab records, so ``lab down`` never signals a
    process that merely reused a PID.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    # Field 22 counted after the parenthesised command name, which may hold spaces.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def argv_of(pid: int) -> Sequence[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []
