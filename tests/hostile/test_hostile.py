"""Every protocol probe against every hostile behaviour (the table in cases.py), and the
daemon serving /metrics while its jobs fight hostile peers."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from probed.probes.base import Reason
from tests import toml_text
from tests.helpers import free_port, stop_gracefully
from tests.hostile import report
from tests.hostile.cases import CASES, PASSWORD_FILE, Case, ProbeUnderTest
from tests.hostile.harness import (
    PYTHON_HEAP_BOUND,
    RSS_BOUND,
    SLACK,
    TIMEOUT,
    run_case,
)
from tests.hostile.peers import BEHAVIOURS, HostilePeer

_REASONS = {reason.value for reason in Reason}


def test_table_names_only_known_reasons() -> None:
    for case in CASES:
        assert case.expected, case.id
        assert case.expected <= _REASONS, case.id
        assert "internal_error" not in case.expected, case.id


def test_reliability_md_is_current() -> None:
    assert report.PATH.read_text(encoding="utf-8") == report.render(), (
        "RELIABILITY.md is stale: python -m tests.hostile.report > RELIABILITY.md"
    )


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_hostile_peer(case: Case, tmp_path: Path) -> None:
    seen = await run_case(case, tmp_path)
    outcome = seen.outcome
    summary = f"{outcome.reason.value}: {outcome.detail!r}"
    assert seen.connections >= 1, "the peer never saw the probe"
    assert seen.elapsed <= TIMEOUT + SLACK, f"took {seen.elapsed:.3f}s ({summary})"
    assert outcome.reason.value in case.expected, summary
    assert outcome.success == (outcome.reason is Reason.NONE)
    assert seen.heap_peak <= PYTHON_HEAP_BOUND, f"heap peak {seen.heap_peak} ({summary})"
    assert seen.rss_growth <= RSS_BOUND, f"RSS grew {seen.rss_growth} ({summary})"
    assert seen.fds_after <= seen.fds_before, "file descriptors leaked"


# -- the daemon --------------------------------------------------------------------------------

# (probe of cases.py, behaviour): a plaintext flood, a drip, TLS and MySQL abuse.
_DAEMON_JOBS = (
    ("tcp", "endless_stream"),
    ("smtp", "drip"),
    ("http", "absurd"),
    ("tls", "tls_oversized_cert"),
    ("heartbleed", "tls_heartbeat_flood"),
    ("heartbleed", "tls_endless_fragments"),
    ("mysql_login", "absurd"),
    ("ssh", "utf8_garbage"),
)
_WATCH_SECONDS = 5.0
_REQUEST_TIMEOUT = 2.0


def _probe(name: str) -> ProbeUnderTest:
    return next(case.probe for case in CASES if case.probe.name == name)


def _daemon_config(tmp_path: Path, listen: int, ports: list[int]) -> Path:
    (tmp_path / PASSWORD_FILE).write_text("daemon-hostile-password\n")
    lines = [
        "[server]",
        f'listen = "127.0.0.1:{listen}"',
        'shutdown_grace = "1s"',
        "[defaults]",
        'interval = "1s"',
        'timeout = "500ms"',
    ]
    for i, (name, _) in enumerate(_DAEMON_JOBS):
        probe = _probe(name)
        table = probe.module(free_port())
        lines.append(f"[modules.m{i}]")
        lines += [f"{key} = {toml_text.value(value)}" for key, value in table.items()]
    for i, ((name, _), port) in enumerate(zip(_DAEMON_JOBS, ports, strict=True)):
        target = _probe(name).target.format(port=port)
        lines += ["[[probes]]", f'module = "m{i}"', f'target = "{target}"']
    path = tmp_path / "probes.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_daemon_keeps_serving_while_jobs_meet_hostile_peers(tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        peers = [
            await stack.enter_async_context(
                HostilePeer(BEHAVIOURS[behaviour](_probe(name).dialect))
            )
            for name, behaviour in _DAEMON_JOBS
        ]
        listen = free_port()
        config = _daemon_config(tmp_path, listen, [peer.port for peer in peers])
        log = tmp_path / "probed.log"
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "probed", "--log-format", "json", "run", "-c", str(config)),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            await _watch(f"http://127.0.0.1:{listen}", len(_DAEMON_JOBS))
            assert all(peer.connections >= 1 for peer in peers)
        finally:
            await stop_gracefully(proc)
        assert proc.returncode == 0, log.read_text()[-3000:]
        assert '"level": "error"' not in log.read_text(), log.read_text()[-3000:]


async def _watch(base: str, jobs: int) -> None:
    """Every request to /metrics and /-/healthy answers 200 within _REQUEST_TIMEOUT for
    _WATCH_SECONDS after the daemon is up, and each job runs."""
    timeout = aiohttp.ClientTimeout(total=_REQUEST_TIMEOUT)
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(timeout=timeout) as session:
        up_by = loop.time() + 15
        while True:  # bounded by up_by
            with contextlib.suppress(aiohttp.ClientConnectorError):
                async with session.get(f"{base}/-/ready") as resp:
                    if resp.status == 200:
                        break
            assert loop.time() < up_by, "the daemon never became ready"
            await asyncio.sleep(0.1)
        end = loop.time() + _WATCH_SECONDS
        text = ""
        requests = 0
        while loop.time() < end:
            for path in ("/metrics", "/-/healthy"):
                async with session.get(base + path) as resp:
                    assert resp.status == 200, path
                    body = await resp.text()
                requests += 1
                if path == "/metrics":
                    text = body
            await asyncio.sleep(0.05)
        assert requests > 20
        ran = [line for line in text.splitlines() if line.startswith("probe_success{")]
        assert len(ran) == jobs, text[-2000:]
        assert "probed_probe_errors_total" not in text or all(
            line.endswith(" 0.0")
            for line in text.splitlines()
            if line.startswith("probed_probe_errors_total{")
        ), text[-2000:]
