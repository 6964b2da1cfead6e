"""Run one probe against one hostile peer and measure what it cost: time, memory, fds."""

from __future__ import annotations

import asyncio
import os
import re
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probed.resources import Resources
from probed.results import Outcome
from probed.runner import execute
from probed.secrets import SecretStore
from tests.helpers import free_port, job
from tests.hostile.cases import PASSWORD_FILE, Case
from tests.hostile.peers import BEHAVIOURS, HostilePeer

TIMEOUT = 0.5
"""The job timeout of every case."""
SLACK = 0.5
"""How much longer than TIMEOUT a run may take, from the call to ``execute`` to its return."""
PYTHON_HEAP_BOUND = 8 * 2**20
"""tracemalloc peak during one run (probe and peer together), above what was allocated."""
RSS_BOUND = 32 * 2**20
"""Peak RSS growth during one run: catches C allocations (OpenSSL buffers) tracemalloc misses."""


@dataclass(frozen=True, slots=True)
class Observation:
    outcome: Outcome
    elapsed: float
    heap_peak: int
    rss_growth: int
    connections: int
    fds_before: int
    fds_after: int


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        match = re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.MULTILINE)
    assert match is not None
    return int(match.group(1)) * 1024


def _reset_peak_rss() -> None:
    # "5" resets VmHWM to the current RSS (Linux >= 4.0).
    with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
        refs.write("5")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def module_table(case: Case, tmp_path: Path) -> dict[str, Any]:
    secret = tmp_path / PASSWORD_FILE
    if not secret.exists():
        secret.write_text("hostile-suite-password\n")
    return case.probe.module(free_port())


async def _settle() -> None:
    # Closed transports release their sockets on the next loop iterations.
    for _ in range(3):
        await asyncio.sleep(0.005)


async def _warm_up(tmp_path: Path) -> None:
    """One refused run first: whatever the loop opens once (and keeps) is open before the
    fd count is taken."""
    spec = job(tmp_path, {"probe": "tcp"}, f"127.0.0.1:{free_port()}", timeout="1s")
    env = Resources(SecretStore(tmp_path))
    await execute(spec, env)
    await env.close()


async def run_case(case: Case, tmp_path: Path) -> Observation:
    module = module_table(case, tmp_path)
    await _warm_up(tmp_path)
    await _settle()
    fds_before = open_fds()
    handler = BEHAVIOURS[case.behaviour](case.probe.dialect)
    env = Resources(SecretStore(tmp_path))
    async with HostilePeer(handler) as peer:
        spec = job(
            tmp_path,
            module,
            case.probe.target.format(port=peer.port),
            timeout=f"{int(TIMEOUT * 1000)}ms",
            interval="10s",
        )
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            _reset_peak_rss()
            rss_before = _status_kib("VmRSS")
            started = time.perf_counter()
            outcome = await execute(spec, env)
            elapsed = time.perf_counter() - started
            heap_peak = tracemalloc.get_traced_memory()[1] - base
            rss_growth = _status_kib("VmHWM") - rss_before
        finally:
            tracemalloc.stop()
        await env.close()
    await _settle()
    return Observation(
        outcome=outcome,
        elapsed=elapsed,
        heap_peak=heap_peak,
        rss_growth=rss_growth,
        connections=peer.connections,
        fds_before=fds_before,
        fds_after=open_fds(),
    )
