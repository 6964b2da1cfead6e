"""The monitoring-plugins side: one fork+exec of a Nagios plugin per check, as Nagios does.

    python benchmarks/plugins.py --targets targets.json --command '["/usr/lib/nagios/plugins/
        check_tcp", "-H", "{host}", "-p", "{port}", "-e", "SSH-2.0-", "-t", "{timeout}"]' \\
        --interval 10 --timeout 5 --status status.json --max-seconds 120 [--concurrency 64]

Same schedule as the daemons, the driver and floor.py (target i at ``i * interval / n`` in
each interval). Each check runs the plugin with ``asyncio.create_subprocess_exec`` (no
shell; stdout read through a pipe as the Nagios core reads a plugin's first line, stderr
to /dev/null), waits for it and counts exit code 0 as OK, anything else as not OK.
``{host}``, ``{port}``, ``{timeout}`` (whole seconds, at least 1, for the plugin's
``-t``) and the fleet's extra values (``{ca_file}``, ``{server_name}``) in the command
are filled per target. A plugin still running ``--timeout`` + 2 s
after it started is killed (the core's own service check timeout) and counted as not OK.
At most ``--concurrency`` plugins run at once; when the cap is reached the schedule waits
and the lateness shows in the lag histogram.

The child is started with vfork+exec (the stdlib event loop's subprocess path), so the
plugin's CPU is its own: exec, dynamic linking, the check, exit; not the tear-down of a
fork()ed copy of this Python process, which a Nagios worker (a small C process) would
not have.

This process plays the Nagios core. Its own CPU (the fork/exec and the pipes, in Python)
and its children's CPU (the plugins, reaped) are reported apart: on SIGUSR1 it writes its
counters and ``os.times()`` to ``--status`` (JSON with a ``seq`` that increases), so the
harness reads both at the ends of its window. A check and its children's CPU are counted
at the same moment, when the child is reaped. ``peak_child_rss_kib`` is
``getrusage(RUSAGE_CHILDREN).ru_maxrss``, the largest peak RSS of a reaped child; the
kernel counts a child's forked pages before exec too, so it is at least this runner's
own RSS: an upper bound of a plugin's peak, not the plugin's (``/usr/bin/time -f %M``
on one plugin gives that).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import resource
import signal
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Upper bounds (seconds) of the start-lag histogram, cumulative like a Prometheus one.
LAG_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, math.inf)
KILL_GRACE = 2.0  # seconds past --timeout before a plugin is killed


@dataclass(slots=True)
class Counters:
    seq: int = 0
    started: int = 0
    completed: int = 0
    ok: int = 0
    killed: int = 0
    spawn_errors: int = 0
    exit_codes: dict[str, int] = field(default_factory=dict)
    lag_buckets: dict[str, int] = field(
        default_factory=lambda: {f"{b:g}" if b != math.inf else "+Inf": 0 for b in LAG_BOUNDS}
    )
    not_ok_examples: list[str] = field(default_factory=list)
    self_user_s: float = 0.0
    self_system_s: float = 0.0
    children_user_s: float = 0.0
    children_system_s: float = 0.0
    peak_child_rss_kib: int = 0

    def observe_lag(self, seconds: float) -> None:
        for bound, key in zip(LAG_BOUNDS, self.lag_buckets, strict=True):
            if seconds <= bound:
                self.lag_buckets[key] += 1

    def snapshot(self) -> dict[str, Any]:
        times = os.times()
        self.self_user_s, self.self_system_s = times.user, times.system
        self.children_user_s, self.children_system_s = times.children_user, times.children_system
        self.peak_child_rss_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        self.seq += 1
        return asdict(self)


def build_commands(template: list[str], fleet: dict[str, Any], timeout: float) -> list[list[str]]:
    """One argv per target, built once (the core expands its macros per check; this is less).

    ``{host}``, ``{port}``, ``{timeout}`` and the keys of the fleet's ``extra`` (``{ca_file}``,
    ``{server_name}`` for the tls kind) are filled in.
    """
    seconds = str(max(1, math.ceil(timeout)))
    extra: dict[str, Any] = fleet.get("extra") or {}
    return [
        [
            arg.format_map({**extra, "host": t["host"], "port": t["port"], "timeout": seconds})
            for arg in template
        ]
        for t in fleet["targets"]
    ]


async def check_once(
    argv: list[str], seconds: float, counters: Counters, slots: asyncio.Semaphore
) -> None:
    """Run one plugin to its end (or kill it), then count it."""
    ok = False
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError:
        counters.spawn_errors += 1
        counters.completed += 1
        slots.release()
        return
    output = b""
    try:
        async with asyncio.timeout(seconds + KILL_GRACE):
            output, _ = await proc.communicate()
        code = str(proc.returncode)
        ok = proc.returncode == 0
    except TimeoutError:
        code = "killed"
        counters.killed += 1
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    except asyncio.CancelledError:  # at shutdown: kill it, reap it, do not count it
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    finally:
        slots.release()
    counters.completed += 1
    counters.ok += ok
    counters.exit_codes[code] = counters.exit_codes.get(code, 0) + 1
    if not ok and len(counters.not_ok_examples) < 5:
        first = output.split(b"\n", 1)[0].decode(errors="replace")[:200]
        counters.not_ok_examples.append(f"{code}: {' '.join(argv)} -> {first}")


async def run(args: argparse.Namespace, commands: list[list[str]]) -> int:
    counters = Counters()
    status = Path(args.status)
    loop = asyncio.get_running_loop()

    def write_status() -> None:
        tmp = status.with_suffix(".tmp")
        tmp.write_text(json.dumps(counters.snapshot()))
        tmp.replace(status)

    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, write_status)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    slots = asyncio.Semaphore(args.concurrency)
    tasks: set[asyncio.Task[None]] = set()
    start = loop.time() + 0.05
    end = start + args.max_seconds
    step = args.interval / len(commands)
    write_status()
    k = 0
    while not stop.is_set() and (due := start + k * step) < end:
        now = loop.time()
        if due > now:
            await asyncio.sleep(max(due - now, 0.001))
            continue
        await slots.acquire()
        counters.observe_lag(loop.time() - due)
        task = loop.create_task(
            check_once(commands[k % len(commands)], args.timeout, counters, slots)
        )
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        counters.started += 1
        k += 1
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    write_status()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", required=True, help="target list written by fleet.py")
    parser.add_argument("--command", required=True, help="JSON list: the plugin's argv template")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds")
    parser.add_argument("--status", required=True, help="where SIGUSR1 writes the counters")
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--concurrency", type=int, default=64, help="plugins running at once")
    args = parser.parse_args(argv)
    template = json.loads(args.command)
    if not (isinstance(template, list) and template and all(isinstance(a, str) for a in template)):
        parser.error("--command must be a JSON list of strings")
    if not Path(template[0]).is_absolute():
        parser.error("--command must start with the plugin's absolute path")
    fleet = json.loads(Path(args.targets).read_text())
    commands = build_commands(template, fleet, args.timeout)
    # The stdlib loop, not uvloop: its subprocess path (_posixsubprocess) starts the child
    # with vfork, as a small C core would fork; uvloop (libuv) fork()s this whole Python
    # image, and the child then pays for tearing down those copied mappings at exec. A pidfd
    # per child, not the default thread per child, tells the loop a plugin has exited.
    asyncio.set_child_watcher(asyncio.PidfdChildWatcher())
    return asyncio.run(run(args, commands))


if __name__ == "__main__":
    sys.exit(main())
