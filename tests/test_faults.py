"""Resource faults: too few file descriptors, names that do not resolve, a resolver that
never answers, no IPv6.

The DNS and IPv6 cases run in a network and mount namespace of their own
(tests/netns_faults.py): the host's resolver is outside 127.0.0.0/8, so no test here may ask
it anything, and the silent resolver is swapped in for that namespace only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import resource
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import free_port, serve, stop_gracefully

ROOT = Path(__file__).resolve().parents[1]
JOBS = 200
FD_LIMIT = 64
TIMEOUT_SLACK = 20.0


def _unshare_works() -> bool:
    try:
        done = subprocess.run(
            ["unshare", "--net", "--mount", "true"], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def test_dns_and_ipv6_faults_in_a_namespace() -> None:
    if not _unshare_works():
        pytest.skip("unshare --net --mount is not permitted here (needs root or user namespaces)")
    done = subprocess.run(
        ["unshare", "--net", "--mount", sys.executable, "-m", "tests.netns_faults"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results == {
        "v4_literal": "none",  # the namespace's loopback works
        "invalid_name": "dns_error",  # .invalid never resolves
        "ip6_only_v4_name": "no_address",  # localhost is 127.0.0.1 only here
        "ip6_only_v4_literal": "no_address",
        "no_ipv6_loopback": "network_unreachable",  # IPv6 off: no ::1
        "dns_timeout": "timeout",  # the run's deadline (500ms) ends the silent lookup
        "dns_timeout_long": "dns_error",  # the resolver gives up first (timeout:1)
    }, done.stderr[-3000:]


# -- too few file descriptors ---------------------------------------------------------------


class Switchable:
    """A listener that holds connections open without a word, until told to answer."""

    def __init__(self) -> None:
        self.answering = False

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.answering:
            writer.write(b"OK\r\n")
            await writer.drain()
            return
        await reader.read(1)  # held until the probe gives up


@contextlib.asynccontextmanager
async def listeners(handler: Switchable, count: int) -> AsyncIterator[list[int]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(serve(handler)) for _ in range(count)]


def _limit_fds() -> None:
    # The soft limit is the fault; the hard limit leaves room to clear it from outside
    # (raising a hard limit of another process needs CAP_SYS_RESOURCE, not given everywhere).
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, 4096))


def _config(path: Path, listen: int, ports: list[int]) -> None:
    hosts = ", ".join(f'"127.0.0.1:{port}"' for port in ports)
    path.write_text(
        f'[server]\nlisten = "127.0.0.1:{listen}"\nper_host_concurrency = {JOBS}\n'
        'shutdown_grace = "1s"\nwatch_interval = "1h"\n'
        '[defaults]\ninterval = "2s"\ntimeout = "1500ms"\n'
        '[modules.ok]\nprobe = "tcp"\nquery = [ { expect = "^OK" } ]\n'
        f'[[groups]]\nname = "fleet"\nmodules = ["ok"]\nhosts = [{hosts}]\n'
    )


def _reasons(text: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for reason in re.findall(r'^probe_failure_info\{[^}]*reason="(\w+)"\} 1$', text, re.M):
        found[reason] = found.get(reason, 0) + 1
    return found


async def _scrape(session: aiohttp.ClientSession, base: str) -> str:
    async with session.get(f"{base}/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


async def _until(session: aiohttp.ClientSession, base: str, want: str) -> dict[str, int]:
    """Scrape until the reasons satisfy ``want`` ("exhausted" or "recovered"); every scrape
    must answer."""
    loop = asyncio.get_running_loop()
    end = loop.time() + TIMEOUT_SLACK
    reasons: dict[str, int] = {}
    while loop.time() < end:
        reasons = _reasons(await _scrape(session, base))
        if want == "exhausted" and reasons.get("resource_exhausted", 0) > 0:
            return reasons
        if want == "recovered" and reasons.get("none", 0) == JOBS:
            return reasons
        await asyncio.sleep(0.3)
    pytest.fail(f"never {want}: {reasons}")


async def test_fd_limit_far_below_the_job_count(tmp_path: Path) -> None:
    handler = Switchable()
    listen = free_port()
    async with listeners(handler, JOBS) as ports:
        config = tmp_path / "probes.toml"
        _config(config, listen, ports)
        log = tmp_path / "probed.log"
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "probed", "--log-format", "json", "run", "-c", str(config)),
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_limit_fds,  # setrlimit only; the child has no threads yet
            )
        base = f"http://127.0.0.1:{listen}"
        try:
            async with aiohttp.ClientSession() as session:
                await _ready(session, base)
                exhausted = await _until(session, base, "exhausted")
                assert set(exhausted) <= {"resource_exhausted", "timeout", "none"}, exhausted
                async with session.get(f"{base}/-/healthy") as resp:
                    assert resp.status == 200
                # The fault clears: more descriptors, and the peers answer.
                resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (4096, 4096))
                handler.answering = True
                await _until(session, base, "recovered")
                text = await _scrape(session, base)
                assert not re.search(r"^probed_probe_errors_total\{.*\} [1-9]", text, re.M)
        finally:
            await stop_gracefully(proc)
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


async def _ready(session: aiohttp.ClientSession, base: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + TIMEOUT_SLACK
    while loop.time() < end:
        with contextlib.suppress(aiohttp.ClientConnectorError):
            async with session.get(f"{base}/-/ready") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.1)
    pytest.fail("the daemon never became ready")
