"""CPU time of processes from /proc: one process, a server's process tree, the machine, the load average.

utime + stime in clock ticks (10 ms here). A tree counts each live process's own time plus its reaped
children's (cutime + cstime), so a child that exited inside a window still counts through its parent.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def stat_fields(pid: int | str) -> list[str]:
    """/proc/<pid>/stat from field 3 (state) on; the command name in parentheses may hold spaces."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2:].split()


def own_ticks(pid: int) -> int | None:
    """utime + stime of one process (all its threads), or None if it is gone."""
    try:
        fields = stat_fields(pid)
    except (OSError, ValueError, IndexError):
        return None
    return int(fields[11]) + int(fields[12])  # fields 14 and 15


def _all_processes() -> dict[int, tuple[int, int, int]]:
    """{pid: (own ticks, reaped children's ticks, ppid)} of every process visible now."""
    table: dict[int, tuple[int, int, int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                f = stat_fields(entry.name)
                table[int(entry.name)] = (int(f[11]) + int(f[12]), int(f[13]) + int(f[14]), int(f[1]))
    return table


def tree_ticks(root: int) -> int | None:
    """CPU of `root` and every descendant, reaped children included (None if root is gone)."""
    table = _all_processes()
    if root not in table:
        return None
    children: dict[int, list[int]] = {}
    for pid, (_, _, ppid) in table.items():
        children.setdefault(ppid, []).append(pid)
    tree, frontier = {root}, [root]
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(table[pid][0] + table[pid][1] for pid in tree)


def sum_ticks(pids: list[int]) -> int | None:
    """Own CPU of several processes (None if any is gone: the sum would silently shrink)."""
    total = 0
    for pid in pids:
        ticks = own_ticks(pid)
        if ticks is None:
            return None
        total += ticks
    return total


def children_of(parent: int) -> list[int]:
    return [pid for pid, (_, _, ppid) in _all_processes().items() if ppid == parent]


def listener_pid(port: int) -> int | None:
    """The process listening on TCP `port` (a server's root process), if this user may see its sockets."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(fields[9])
    wanted = {f"socket:[{inode}]" for inode in inodes}
    if not wanted:
        return None
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                for fd in os.scandir(f"/proc/{entry.name}/fd"):
                    with contextlib.suppress(OSError):
                        if os.readlink(fd.path) in wanted:
                            return int(entry.name)
    return None


def machine_ticks() -> tuple[int, int]:
    """(busy, idle) ticks summed over all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values[:8]) - idle, idle  # user nice system idle iowait irq softirq steal


def loadavg() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(v) for v in f.read().split()[:3]]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
