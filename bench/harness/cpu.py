"""CPU pinning (taskset) and CPU accounting from /proc.

On 2-core machines the server under test runs on one CPU and the load generator on the other.
Besides throughput, the bench reports the server's CPU time per request (steadier on a shared
machine: stolen cycles lower req/s, not CPU per request) and the *other load*: the busy time of a
CPU not spent by our own processes (other work on the machine, VM steal).
"""

from __future__ import annotations

import os
import resource
import shutil
from dataclasses import dataclass

__all__ = ["CpuPlan", "children_cpu_seconds", "cpu_busy", "parse_cpu_busy", "pinned", "session_cpu_seconds"]


@dataclass(frozen=True)
class CpuPlan:
    """Where the server side and the client side run (None: not pinned)."""

    server_cpu: int | None
    client_cpu: int | None

    @staticmethod
    def choose(*, pin: bool) -> CpuPlan:
        """The first two CPUs of this process's affinity, if asked, possible and taskset exists."""
        cpus = sorted(os.sched_getaffinity(0))
        if not pin or len(cpus) < 2 or shutil.which("taskset") is None:
            return CpuPlan(None, None)
        return CpuPlan(cpus[0], cpus[1])


def pinned(cmd: list[str], cpu: int | None) -> list[str]:
    """``cmd`` run on CPU ``cpu`` only (taskset), when a CPU is given and taskset exists."""
    if cpu is None or not shutil.which("taskset"):
        return cmd
    return ["taskset", "-c", str(cpu), *cmd]


def parse_cpu_busy(proc_stat: str, cpu: int) -> int | None:
    """Busy ticks of CPU ``cpu`` in a /proc/stat text (all but idle and iowait, steal included)."""
    for line in proc_stat.splitlines():
        if line.startswith(f"cpu{cpu} "):
            vals = [int(v) for v in line.split()[1:]]
            return sum(vals[:8]) - vals[3] - vals[4]  # user..steal minus idle, iowait
    return None


def cpu_busy(cpu: int | None) -> float | None:
    """Seconds CPU ``cpu`` has been busy since boot (None: no CPU given)."""
    if cpu is None:
        return None
    with open("/proc/stat") as fh:
        ticks = parse_cpu_busy(fh.read(), cpu)
    return None if ticks is None else ticks / os.sysconf("SC_CLK_TCK")


def session_cpu_seconds(session_id: int) -> float:
    """utime+stime of every process in a session (threads included), from /proc/*/stat."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[3]) == session_id:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """CPU time of this process's waited-for children (the load generators, once they exit)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime
