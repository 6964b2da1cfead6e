"""Plays Prometheus against a blackbox_exporter: one ``/probe`` call per target per interval.

Target ``i`` of ``n`` is scraped at ``start + i * interval / n + k * interval``, so the
calls are spread evenly over each interval, as Prometheus spreads its scrape loops.
At most ``concurrency`` calls are in flight; when that cap is reached the schedule
waits and the lateness shows up as driver lag. Connections are kept alive, as
Prometheus keeps them. Every call is recorded (when due, started, finished, HTTP
status, ``probe_success``), so callers count the probes that finished inside their
measurement window.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

import aiohttp
from yarl import URL


@dataclass(slots=True)
class ProbeCall:
    due: float
    started: float
    finished: float = 0.0
    status: int = 0  # HTTP status; 0 when the call itself failed
    success: bool = False  # probe_success 1 in the body


@dataclass(slots=True)
class DriverReport:
    calls: list[ProbeCall] = field(default_factory=list)
    transport_errors: int = 0

    def finished_between(self, start: float, end: float) -> list[ProbeCall]:
        return [c for c in self.calls if c.finished and start <= c.finished <= end]


def probe_urls(exporter: str, module: str, targets: Sequence[str]) -> list[URL]:
    """Pre-built ``/probe`` URLs (parsed once, so the driver spends little CPU per call)."""
    return [
        URL(f"{exporter}/probe?module={quote(module)}&target={quote(t, safe=':[]')}", encoded=True)
        for t in targets
    ]


async def _call(
    session: aiohttp.ClientSession,
    url: URL,
    record: ProbeCall,
    report: DriverReport,
    slots: asyncio.Semaphore,
) -> None:
    loop = asyncio.get_running_loop()
    try:
        async with session.get(url) as response:
            body = await response.read()
            record.status = response.status
            record.success = b"\nprobe_success 1" in body
    except (aiohttp.ClientError, TimeoutError):
        report.transport_errors += 1
    finally:
        record.finished = loop.time()
        slots.release()


async def drive(
    urls: Sequence[URL],
    *,
    interval: float,
    start: float,
    stop: float,
    concurrency: int,
    scrape_timeout: float,
    drain_timeout: float = 15.0,
) -> DriverReport:
    """Call every URL once per ``interval`` from loop time ``start`` until ``stop``.

    Bounded: at most ``len(urls) * ceil((stop - start) / interval)`` calls, and it
    returns at ``stop`` plus at most ``drain_timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    report = DriverReport()
    slots = asyncio.Semaphore(concurrency)
    step = interval / len(urls)
    headers = {"X-Prometheus-Scrape-Timeout-Seconds": f"{scrape_timeout:g}"}
    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=scrape_timeout + 5)
    tasks: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers=headers, skip_auto_headers=["User-Agent"]
    ) as session:
        k = 0
        while (due := start + k * step) < stop:
            now = loop.time()
            if due > now:
                # Sleep to the next due call; calls due within 1 ms go out together.
                await asyncio.sleep(max(due - now, 0.001))
            await slots.acquire()
            record = ProbeCall(due=due, started=loop.time())
            report.calls.append(record)
            task = asyncio.create_task(
                _call(session, urls[k % len(urls)], record, report, slots), name=f"probe-{k}"
            )
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            k += 1
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=drain_timeout)
            for task in pending:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*pending, return_exceptions=True)
    return report
