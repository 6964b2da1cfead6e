"""Reload storms: a daemon with hundreds of jobs takes 60 reloads in quick succession
(SIGHUP and POST /-/reload, valid and invalid configs mixed) and comes out intact.

Afterwards: every job runs about once per interval (no duplicated timers or tasks),
``probed_runs_in_flight`` and ``probed_runs_waiting`` stayed within [0, jobs], unchanged jobs
kept their results throughout (``probe_last_run_timestamp_seconds`` present and never going
backwards), and the process did not grow: at most ``FD_BOUND`` more open files and
``RSS_BOUND`` more resident memory than before the storm.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import banner, free_port, serve, stop_gracefully

LISTENERS = 100
MODULES = ("m_a", "m_b", "m_c")  # m_a and m_b never change; m_c does in variant "changed"
JOBS = LISTENERS * len(MODULES)
EXTRA = 20  # jobs variant "added" has on top
INTERVAL = 2.0
RELOADS = 60
FD_BOUND = 16
RSS_BOUND = 32 * 2**20
_LAST_RUN = re.compile(
    r'^probe_last_run_timestamp_seconds\{module="(m_\w+)",target="([^"]+)"\} (\S+)$', re.M
)


def _config(listen: int, ports: list[int], variant: str) -> str:
    expect_c = "^SSH-2\\\\.0-" if variant != "changed" else "^SSH-2"
    lines = [
        "[server]",
        f'listen = "127.0.0.1:{listen}"',
        "per_host_concurrency = 64",
        'shutdown_grace = "1s"',
        'watch_interval = "1h"',
        "[defaults]",
        f'interval = "{INTERVAL:g}s"',
        'timeout = "1s"',
        '[modules.m_a]\nprobe = "tcp"\nquery = [ { expect = "^SSH-2\\\\.0-" } ]',
        '[modules.m_b]\nprobe = "tcp"\nquery = [ { expect = "^SSH-" } ]',
        f'[modules.m_c]\nprobe = "tcp"\nquery = [ {{ expect = "{expect_c}" }} ]',
        '[modules.m_x]\nprobe = "tcp"',
        "[[groups]]",
        'name = "fleet"',
        'modules = ["m_a", "m_b", "m_c"]',
        "hosts = [" + ", ".join(f'"127.0.0.1:{port}"' for port in ports) + "]",
    ]
    if variant == "added":
        lines += ["[[groups]]", 'name = "extra"', 'modules = ["m_x"]']
        lines.append("hosts = [" + ", ".join(f'"127.0.0.1:{p}"' for p in ports[:EXTRA]) + "]")
    text = "\n".join(lines) + "\n"
    if variant == "syntax":
        return text + "[[probes]\n"
    if variant == "unknown_module":
        return text + '[[probes]]\nmodule = "m_nope"\ntarget = "127.0.0.1:1"\n'
    return text


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def _status(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    assert match is not None
    return int(match.group(1)) * 1024


def _fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def _gauge(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match is not None, name
    return float(match.group(1))


def _runs(text: str) -> dict[str, float]:
    found = re.findall(r'^probed_runs_total\{module="(m_\w+)"\} (\S+)$', text, re.M)
    return {module: float(value) for module, value in found}


class Watch:
    """Scrapes /metrics; checks every scrape against the invariants."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base
        self.last_run: dict[tuple[str, str], float] = {}
        self.scrapes = 0

    async def scrape(self) -> str:
        async with self.session.get(f"{self.base}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
        self.scrapes += 1
        for gauge in ("probed_runs_in_flight", "probed_runs_waiting"):
            assert 0 <= _gauge(text, gauge) <= JOBS + EXTRA, f"{gauge} out of range"
        seen = {(m, t): float(v) for m, t, v in _LAST_RUN.findall(text)}
        for key, stamp in seen.items():
            assert stamp >= self.last_run.get(key, 0.0), f"{key}: last run went backwards"
            self.last_run[key] = stamp
        for key in self.last_run:
            if key[0] in ("m_a", "m_b"):
                assert key in seen, f"unchanged job {key} lost its result"
        return text


@contextlib.asynccontextmanager
async def listeners() -> AsyncIterator[list[int]]:
    async with contextlib.AsyncExitStack() as stack:
        ports = [
            await stack.enter_async_context(serve(banner(b"SSH-2.0-storm\r\n", then_close=True)))
            for _ in range(LISTENERS)
        ]
        yield ports


async def _runs_at_least(watch: Watch, runs: int, limit: float) -> None:
    """Wait (up to ``limit`` seconds) until every module completed ``runs`` runs."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    text = ""
    while loop.time() < end:
        with contextlib.suppress(aiohttp.ClientConnectorError):
            text = await watch.scrape()
            done = _runs(text)
            if all(done.get(module, 0) >= runs for module in MODULES):
                return
        await asyncio.sleep(0.2)
    pytest.fail(f"fewer than {runs} runs per module:\n{text[-2000:]}")


async def test_reload_storm(tmp_path: Path) -> None:
    listen = free_port()
    config = tmp_path / "probes.toml"
    async with listeners() as ports:
        config.write_text(_config(listen, ports, "base"))
        log = tmp_path / "probed.log"
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "probed", "--log-format", "json", "run", "-c", str(config)),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            async with aiohttp.ClientSession() as session:
                watch = Watch(session, f"http://127.0.0.1:{listen}")
                await _storm(watch, proc, config, listen, ports)
        finally:
            await stop_gracefully(proc)
    assert proc.returncode == 0, log.read_text()[-3000:]


async def _storm(
    watch: Watch,
    proc: asyncio.subprocess.Process,
    config: Path,
    listen: int,
    ports: list[int],
) -> None:
    # Every job has run once: the baseline.
    await _runs_at_least(watch, 2 * LISTENERS, 20)
    fds_before, rss_before = _fds(proc.pid), _status(proc.pid, "VmRSS")

    variants = ("added", "syntax", "changed", "base", "unknown_module", "added", "base")
    base = f"http://127.0.0.1:{listen}"
    outcomes = {"ok": 0, "failed": 0}
    for i in range(RELOADS):
        variant = variants[i % len(variants)]
        _write(config, _config(listen, ports, variant))
        if i % 2:
            proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.03)
        else:
            async with watch.session.post(f"{base}/-/reload") as resp:
                outcomes["ok" if resp.status == 200 else "failed"] += 1
                assert resp.status == (500 if variant in ("syntax", "unknown_module") else 200)
        if i % 5 == 0:
            await watch.scrape()
    assert outcomes["ok"]
    assert outcomes["failed"]

    # The storm ends on a valid config; the SIGHUP reloads in flight finish.
    _write(config, _config(listen, ports, "base"))
    async with watch.session.post(f"{base}/-/reload") as resp:
        assert resp.status == 200, await resp.text()
    text = await watch.scrape()
    assert _gauge(text, "probed_config_last_reload_successful") == 1
    assert re.search(r'^probed_jobs\{module="m_c"\} 100(\.0)?$', text, re.M)
    assert not re.search(r'^probed_jobs\{module="m_x"\} [1-9]', text, re.M)

    # A window of three intervals: about one run per job per interval, no more.
    before = _runs(text)
    window = 3 * INTERVAL
    await asyncio.sleep(window)
    after = _runs(await watch.scrape())
    for module in MODULES:
        runs = after[module] - before[module]
        assert runs >= LISTENERS * (window / INTERVAL - 1), f"{module}: {runs} runs"
        assert runs <= LISTENERS * (window / INTERVAL + 1), f"{module}: {runs} runs"
    assert watch.scrapes > 10

    fds_after, rss_after = _fds(proc.pid), _status(proc.pid, "VmRSS")
    assert fds_after <= fds_before + FD_BOUND, (fds_before, fds_after)
    assert rss_after <= rss_before + RSS_BOUND, (rss_before, rss_after)
