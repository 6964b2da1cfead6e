"""The daemon's leak gauges on /metrics: ``probed_tasks`` and the ``process_*`` family,
read over HTTP from the real server at scrape time."""

from __future__ import annotations

import asyncio
import re
import resource
import socket
import time

import aiohttp
from aiohttp import web

from probed.exposition import Exposition, SelfMetrics
from probed.server import make_app


class ExpositionBackend:
    """The daemon's /metrics path (Exposition.render_parts) without a scheduler."""

    def __init__(self) -> None:
        self.exposition = Exposition(SelfMetrics())

    @property
    def ready(self) -> bool:
        return True

    def metrics_parts(self) -> list[bytes]:
        return self.exposition.render_parts()

    async def probe_once(self, module: str, target: str, debug: bool) -> tuple[int, str]:
        del module, target, debug
        return 404, ""

    async def reload(self) -> tuple[bool, str]:
        return True, ""


def _value(page: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", page, re.MULTILINE)
    assert match, f"{name} not on the page"
    return float(match.group(1))


async def test_tasks_and_descriptors_are_counted_at_scrape_time() -> None:
    runner = web.AppRunner(make_app(ExpositionBackend()))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/metrics"
    release = asyncio.Event()
    sockets: list[socket.socket] = []
    tasks: list[asyncio.Task[bool]] = []
    try:
        async with aiohttp.ClientSession() as session:

            async def scrape() -> str:
                async with session.get(url, headers={"Accept-Encoding": "gzip"}) as response:
                    assert response.status == 200
                    return await response.text()

            before = await scrape()
            tasks = [asyncio.create_task(release.wait()) for _ in range(7)]
            sockets = [socket.socket() for _ in range(5)]
            during = await scrape()
            release.set()
            await asyncio.gather(*tasks)
            for sock in sockets:
                sock.close()
            after = await scrape()
    finally:
        release.set()
        for sock in sockets:
            sock.close()
        await runner.cleanup()

    assert _value(during, "probed_tasks") == _value(before, "probed_tasks") + 7
    assert _value(after, "probed_tasks") == _value(before, "probed_tasks")
    assert _value(during, "process_open_fds") == _value(before, "process_open_fds") + 5
    assert _value(after, "process_open_fds") == _value(before, "process_open_fds")
    assert _value(before, "process_max_fds") == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    rss = _value(after, "process_resident_memory_bytes")
    assert 10 * 2**20 < rss < 4 * 2**30
    assert _value(after, "process_cpu_seconds_total") > 0
    # This process started before the test, today.
    assert time.time() - 86400 < _value(after, "process_start_time_seconds") <= time.time()
    assert "# TYPE probed_tasks gauge" in after


def test_tasks_is_nan_outside_an_event_loop() -> None:
    page = SelfMetrics().render().decode()
    assert re.search(r"^probed_tasks NaN$", page, re.MULTILINE)
