"""Run probed with a loop-stall and garbage-collection watcher: when is the event loop held,
and is the collector the one holding it? (``bench_scale.py --loopwatch``)

    python benchmarks/loopwatch.py --out loopwatch.jsonl -- run -c probes.toml

The daemon is the usual ``python -m probed ARGS`` (imported from the current directory
first, as ``python -m`` does), in this process. On its event loop a timer re-arms itself
every millisecond; a tick later than ``--stall-ms`` past its time is a stall and becomes one
JSON line (``{"stall": seconds, "at": unix time when the loop was held from}``). A
``gc.callbacks`` hook times every collection; those over ``--gc-ms`` become lines too
(``{"gc": generation, "seconds": ..., "at": ..., "collected": ...}``). Lines are written
from the loop, a few at a time, so the watcher's own cost is the 1,000 timer callbacks per
second (~1 % of a core). A collection's time is wall time from the hook's start call to
its stop call: while worker threads want the GIL (the TLS offload), it includes waits for
it. A debugging aid: official figures come from runs without it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import runpy
import sys
import time
from pathlib import Path
from typing import Any, TextIO

TICK = 0.001


class Watch:
    def __init__(self, out: TextIO, stall: float, gc_min: float) -> None:
        self.out = out
        self.stall = stall
        self.gc_min = gc_min
        self.pending: list[dict[str, Any]] = []
        self.gc_started = 0.0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.due = 0.0

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        now = time.time()
        if phase == "start":
            self.gc_started = now
            return
        took = now - self.gc_started
        if took >= self.gc_min:
            self.pending.append(
                {
                    "gc": info["generation"],
                    "seconds": round(took, 4),
                    "at": round(self.gc_started, 4),
                    "collected": info["collected"],
                }
            )

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.due = loop.time() + TICK
        loop.call_at(self.due, self.tick)

    def tick(self) -> None:
        loop = self.loop
        assert loop is not None
        late = loop.time() - self.due
        if late >= self.stall:
            self.pending.append(
                {"stall": round(late, 4), "at": round(time.time() - late - TICK, 4)}
            )
        if self.pending:
            for line in self.pending:
                self.out.write(json.dumps(line) + "\n")
            self.out.flush()
            self.pending.clear()
        self.due = loop.time() + TICK
        loop.call_at(self.due, self.tick)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stall-ms", type=float, default=20.0)
    parser.add_argument("--gc-ms", type=float, default=5.0)
    parser.add_argument("probed_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    probed_args = args.probed_args[1:] if args.probed_args[:1] == ["--"] else args.probed_args
    watch = Watch(args.out.open("a"), args.stall_ms / 1000, args.gc_ms / 1000)
    gc.callbacks.append(watch.on_gc)
    sys.path.insert(0, os.getcwd())  # the probed/ of the current directory, as `-m` does
    import probed.app  # noqa: PLC0415 - after sys.path
    import probed.resources  # noqa: PLC0415

    factory = probed.resources.new_event_loop

    def new_event_loop() -> asyncio.AbstractEventLoop:
        loop = factory()
        watch.start(loop)
        return loop

    # run_daemon's loop factory, as probed.app imported it
    probed.app.new_event_loop = new_event_loop  # type: ignore[attr-defined]
    sys.argv = ["probed", *probed_args]
    runpy.run_module("probed", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
