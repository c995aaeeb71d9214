"""CPU time and memory of a server and all its descendants, read from /proc.

Why a process tree and not one PID: Dante forks helper processes, and a server may grow
workers; what the server costs is the sum over everything it started. CPU time of a child
that has already exited and been reaped is in its parent's cutime/cstime, so summing
utime+stime+cutime+cstime over the live tree counts each tick once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")
_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces.
    return raw[raw.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """`root` and every live descendant, found by scanning the parent PIDs in /proc."""
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        tree.append(pid)
        frontier.extend(children.get(pid, ()))
    return tree


def cpu_seconds(root: int) -> float:
    """User+system CPU seconds of the tree (all threads), including reaped children."""
    ticks = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is None:
            continue
        # After the name: state=0 ppid=1 ... utime=11 stime=12 cutime=13 cstime=14.
        ticks += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return ticks / _TICK


@dataclass(frozen=True, slots=True)
class Memory:
    rss_kib: int
    pss_kib: int
    processes: int


def _rollup_kib(pid: int, key: str) -> int | None:
    try:
        text = (_PROC / str(pid) / "smaps_rollup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def _status_rss_kib(pid: int) -> int:
    try:
        text = (_PROC / str(pid) / "status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def memory(root: int) -> Memory:
    """RSS and PSS summed over the tree; PSS falls back to RSS where smaps_rollup is absent.

    For a multi-process server PSS is the honest sum: pages shared between the forks are
    split among them instead of counted once per process.
    """
    rss = pss = 0
    tree = process_tree(root)
    for pid in tree:
        pid_rss = _status_rss_kib(pid)
        rss += pid_rss
        pid_pss = _rollup_kib(pid, "Pss")
        pss += pid_rss if pid_pss is None else pid_pss
    return Memory(rss_kib=rss, pss_kib=pss, processes=len(tree))


@dataclass(frozen=True, slots=True)
class CoreTicks:
    """Jiffies of one CPU since boot, from /proc/stat."""

    tasks: int
    """user + nice + system: time charged to some process."""
    other: int
    """irq + softirq + steal: interrupts (loopback TCP runs largely in softirq) and the
    hypervisor."""
    total: int


def core_ticks() -> dict[int, CoreTicks]:
    ticks: dict[int, CoreTicks] = {}
    for line in (_PROC / "stat").read_text().splitlines():
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in values[:8])
        ticks[int(name[3:])] = CoreTicks(
            tasks=user + nice + system,
            other=irq + softirq + steal,
            total=user + nice + system + idle + iowait + irq + softirq + steal,
        )
    return ticks


@dataclass(frozen=True, slots=True)
class CoreUse:
    """How one CPU was used between two readings, as fractions of its time."""

    busy: float
    """By anything: tasks, interrupts, steal."""
    tasks: float
    """By processes (ours and everyone else's)."""


def core_use(before: dict[int, CoreTicks], after: dict[int, CoreTicks], cpu: int) -> CoreUse:
    """Used to tell which side limited a measurement, and whether someone else was running.

    A load core near 100% while the proxy core has room means the numbers say more about
    the load generator than the proxy; task time well above what the bench's own processes
    used means other work shared the core.
    """
    b, a = before[cpu], after[cpu]
    total = max(a.total - b.total, 1)
    return CoreUse(
        busy=(a.tasks - b.tasks + a.other - b.other) / total,
        tasks=(a.tasks - b.tasks) / total,
    )
