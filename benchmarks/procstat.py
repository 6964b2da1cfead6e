"""Process and machine accounting read straight from /proc (Linux only).

CPU time comes from /proc/PID/stat (utime + stime, in clock ticks of
``os.sysconf("SC_CLK_TCK")``, usually 10 ms), which sums every thread of the
process. Peak RSS is ``VmHWM`` from /proc/PID/status: the high-water mark of the
resident set since the process started.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class CpuSample:
    """CPU seconds used by one process so far, and when that was read."""

    wall: float  # time.monotonic() at the read
    user: float
    system: float

    @property
    def total(self) -> float:
        return self.user + self.system


def process_cpu(pid: int, tid: int | None = None) -> CpuSample:
    """Read utime and stime of ``pid`` (all threads) in seconds; with ``tid``, of that
    thread alone (``tid == pid``: the main thread, where probed's event loop runs)."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    raw = Path(path).read_text()
    # The command name is in parentheses and may itself hold spaces or ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state) of proc(5); utime is field 14, stime field 15.
    utime, stime = int(fields[11]), int(fields[12])
    return CpuSample(
        wall=time.monotonic(),
        user=utime / CLOCK_TICKS_PER_SECOND,
        system=stime / CLOCK_TICKS_PER_SECOND,
    )


def cpu_delta(start: CpuSample, end: CpuSample) -> tuple[float, float, float]:
    """Return (cpu seconds, user seconds, system seconds) between two samples."""
    return end.total - start.total, end.user - start.user, end.system - start.system


def status_kib(pid: int, key: str) -> int:
    """One ``kB`` field of /proc/PID/status (``VmHWM``, ``VmRSS`` ...), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0])
    raise KeyError(f"{key} not in /proc/{pid}/status")


def status_field(pid: int, key: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return value.strip()
    raise KeyError(f"{key} not in /proc/{pid}/status")


def open_fds(pid: int) -> int:
    """Descriptors the process holds now: the entries of /proc/PID/fd."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def peak_rss_mib(pid: int) -> float:
    """Peak resident set size (VmHWM) in MiB."""
    return status_kib(pid, "VmHWM") / 1024


@dataclass(frozen=True, slots=True)
class MachineSample:
    """Cumulative jiffies of the whole machine, from the first line of /proc/stat."""

    wall: float
    busy: int
    idle: int
    steal: int


def machine_cpu() -> MachineSample:
    first = Path("/proc/stat").read_text().splitlines()[0].split()
    # cpu user nice system idle iowait irq softirq steal guest guest_nice
    values = [int(v) for v in first[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = values
    return MachineSample(
        wall=time.monotonic(),
        busy=user + nice + system + irq + softirq,
        idle=idle + iowait,
        steal=steal,
    )


def machine_busy_cores(start: MachineSample, end: MachineSample) -> tuple[float, float]:
    """Average cores busy, and cores stolen by the hypervisor, between two samples."""
    elapsed = end.wall - start.wall
    if elapsed <= 0:
        return 0.0, 0.0
    busy = (end.busy - start.busy) / CLOCK_TICKS_PER_SECOND / elapsed
    steal = (end.steal - start.steal) / CLOCK_TICKS_PER_SECOND / elapsed
    return busy, steal
