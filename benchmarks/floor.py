"""The floor: the least a Python + uvloop prober pays for one TCP banner check.

    python benchmarks/floor.py --targets targets.json --interval 10s --timeout 5s \\
        --status status.json --max-seconds 120

Same schedule as the daemons (target i at ``i * interval / n`` in each interval) and
the same check (connect, read until the banner line, match ``^SSH-2.0-``, close), but
nothing else: no config, no caps, no recorder, no metrics, no logs. Its CPU per probe
is a reference for what probed's own machinery costs on top of the event loop and
the kernel. On SIGUSR1 it writes its counters to ``--status`` (JSON with a ``seq``
that increases), so the harness reads them at the ends of its window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import uvloop

BANNER = re.compile(rb"^SSH-2\.0-")


@dataclass(slots=True)
class Counters:
    seq: int = 0
    started: int = 0
    completed: int = 0
    ok: int = 0


class BannerClient(asyncio.Protocol):
    """Resolves ``done`` with whether the first line matched, on the first line or EOF."""

    __slots__ = ("_buf", "_done")

    def __init__(self, done: asyncio.Future[bool]) -> None:
        self._done = done
        self._buf = b""

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if b"\n" in self._buf and not self._done.done():
            self._done.set_result(BANNER.match(self._buf) is not None)

    def eof_received(self) -> bool:
        if not self._done.done():
            self._done.set_result(BANNER.match(self._buf) is not None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._done.set_result(False)


async def check(host: str, port: int, seconds: float, counters: Counters) -> None:
    """One banner check, given ``seconds`` in all."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bool] = loop.create_future()
    transport: asyncio.BaseTransport | None = None
    ok = False
    try:
        async with asyncio.timeout(seconds):
            transport, _ = await loop.create_connection(lambda: BannerClient(done), host, port)
            ok = await done
    except (OSError, TimeoutError):
        ok = False
    finally:
        if transport is not None:
            cast(asyncio.Transport, transport).close()
        counters.completed += 1
        counters.ok += ok


async def run(args: argparse.Namespace, targets: list[dict[str, Any]]) -> int:
    counters = Counters()
    status = Path(args.status)
    loop = asyncio.get_running_loop()

    def write_status() -> None:
        counters.seq += 1
        tmp = status.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(counters)))
        tmp.replace(status)

    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, write_status)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tasks: set[asyncio.Task[None]] = set()
    start = loop.time() + 0.05
    end = start + args.max_seconds
    step = args.interval / len(targets)
    write_status()
    k = 0
    while not stop.is_set() and (due := start + k * step) < end:
        now = loop.time()
        if due > now:
            await asyncio.sleep(max(due - now, 0.001))
            continue
        target = targets[k % len(targets)]
        task = loop.create_task(check(target["host"], target["port"], args.timeout, counters))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        counters.started += 1
        k += 1
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    write_status()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", required=True, help="target list written by fleet.py")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds")
    parser.add_argument("--status", required=True, help="where SIGUSR1 writes the counters")
    parser.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args(argv)
    targets = json.loads(Path(args.targets).read_text())["targets"]
    return uvloop.run(run(args, targets))


if __name__ == "__main__":
    sys.exit(main())
