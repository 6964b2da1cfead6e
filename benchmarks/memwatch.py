"""Run probed with a memory watcher thread: where does the daemon's RSS go? (``soak.py
--memwatch``)

    python benchmarks/memwatch.py --out memwatch.jsonl [--tracemalloc 1] -- run -c probes.toml

The daemon is the usual ``python -m probed ARGS`` (imported from the current directory
first, as ``python -m`` does), in this process. A thread appends one JSON line to ``--out``
every ``--every`` seconds (at most ``--max-samples``):

- glibc's allocator, all arenas (``mallinfo2``): bytes in use (``uordblks``), free bytes
  it keeps (``fordblks``), bytes from the system (``arena``, ``hblkhd`` for mmapped blocks);
- Python: memory blocks allocated (``sys.getallocatedblocks``), objects tracked by the
  garbage collector in total and for the most common types;
- with ``--tracemalloc FRAMES``: bytes traced, and every ``--diff-every`` seconds after
  ``--baseline`` the biggest increases by line against the snapshot taken at ``--baseline``;
- with ``--trim-at SECONDS``: once, glibc's ``malloc_trim(0)`` (free pages go back to the
  system) and VmRSS just before and after: how much of the RSS was memory kept free.

A growth of bytes in use or of objects is a leak; RSS that grows while they stay flat is
memory the allocators keep (fragmentation, per-thread arenas). This is a debugging aid: the
thread and tracemalloc cost CPU and memory of their own, so the soak's official figures
come from a run without it.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import runpy
import sys
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

MALLINFO_FIELDS = (
    "arena",
    "ordblks",
    "smblks",
    "hblks",
    "hblkhd",
    "usmblks",
    "fsmblks",
    "uordblks",
    "fordblks",
    "keepcost",
)
TOP = 25


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in MALLINFO_FIELDS]


def mallinfo() -> dict[str, int]:
    """glibc's ``mallinfo2()`` (glibc 2.33+): totals over every arena, in bytes."""
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    return {name: int(getattr(info, name)) for name in MALLINFO_FIELDS}


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def trim() -> dict[str, float]:
    before = rss_mib()
    started = time.perf_counter()
    released = ctypes.CDLL(None).malloc_trim(0)
    return {
        "rss_before_mib": round(before, 2),
        "rss_after_mib": round(rss_mib(), 2),
        "seconds": round(time.perf_counter() - started, 4),
        "released": released,
    }


def object_counts() -> tuple[int, dict[str, int]]:
    objects = gc.get_objects()
    counts = Counter(type(o).__qualname__ for o in objects)
    del objects
    return sum(counts.values()), dict(counts.most_common(TOP))


def diff(base: tracemalloc.Snapshot, now: tracemalloc.Snapshot) -> list[str]:
    stats = now.compare_to(base, "lineno")
    return [str(s) for s in sorted(stats, key=lambda s: -s.size_diff)[:TOP]]


def watch(args: argparse.Namespace) -> None:
    started = time.monotonic()
    base: tracemalloc.Snapshot | None = None
    last_diff = 0.0
    trimmed = False
    with Path(args.out).open("a") as out:
        for _ in range(args.max_samples):  # bounded
            t = time.monotonic() - started
            total, top = object_counts()
            line: dict[str, Any] = {
                "t": round(t, 2),
                "mallinfo": mallinfo(),
                "allocated_blocks": sys.getallocatedblocks(),
                "gc_objects": total,
                "gc_top": top,
            }
            if tracemalloc.is_tracing():
                current, peak = tracemalloc.get_traced_memory()
                line["traced"] = current
                line["traced_peak"] = peak
                if base is None and t >= args.baseline:
                    base = tracemalloc.take_snapshot()
                    last_diff = t
                elif base is not None and t - last_diff >= args.diff_every:
                    line["growth_since_baseline"] = diff(base, tracemalloc.take_snapshot())
                    last_diff = t
            if args.trim_at and not trimmed and t >= args.trim_at:
                line["trim"] = trim()
                trimmed = True
            out.write(json.dumps(line) + "\n")
            out.flush()
            time.sleep(args.every)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--every", type=float, default=10.0)
    parser.add_argument("--max-samples", type=int, default=2000)
    parser.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES")
    parser.add_argument("--baseline", type=float, default=300.0, help="seconds")
    parser.add_argument("--diff-every", type=float, default=300.0, help="seconds")
    parser.add_argument("--trim-at", type=float, default=0.0, help="seconds (0: never)")
    parser.add_argument("probed_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    probed_args = args.probed_args[1:] if args.probed_args[:1] == ["--"] else args.probed_args
    if args.tracemalloc:
        tracemalloc.start(args.tracemalloc)
    threading.Thread(target=watch, args=(args,), name="memwatch", daemon=True).start()
    sys.path.insert(0, os.getcwd())  # the probed/ of the current directory, as `-m` does
    sys.argv = ["probed", *probed_args]
    runpy.run_module("probed", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
