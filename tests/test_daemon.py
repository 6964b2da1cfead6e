"""End to end: `probed run` as a subprocess, scraped over HTTP, reloaded, stopped."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import banner, free_port, never_answer, serve

DEADLINE = 20.0


@dataclass
class Daemon:
    proc: asyncio.subprocess.Process
    base: str
    config: Path
    log: Path


def _write_config(path: Path, listen: int, targets: dict[str, str]) -> None:
    probes = "".join(
        f'[[probes]]\nmodule = "{module}"\ntarget = "{target}"\nlabels = {{ case = "{case}" }}\n'
        for case, (module, target) in ((case, spec.split(" ", 1)) for case, spec in targets.items())
    )
    path.write_text(
        f'[server]\nlisten = "127.0.0.1:{listen}"\nshutdown_grace = "1s"\n'
        'watch_interval = "200ms"\n'
        '[defaults]\ninterval = "1s"\ntimeout = "500ms"\n'
        '[modules.banner]\nprobe = "tcp"\nquery = [ { expect = "^SSH-2\\\\.0-" } ]\n' + probes
    )


def _last_run(text: str, case: str) -> float:
    match = re.search(
        rf'^probe_last_run_timestamp_seconds\{{.*case="{case}"\}} (\S+)$', text, re.MULTILINE
    )
    assert match, f"no probe_last_run_timestamp_seconds for {case}"
    return float(match.group(1))


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as resp:
        return resp.status, await resp.text()


async def _metrics_when(session: aiohttp.ClientSession, base: str, predicate: str) -> str:
    """Poll /metrics until ``predicate`` (a regex) matches; bounded by DEADLINE."""
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    text = ""
    while loop.time() < end:
        try:
            _, text = await _get(session, f"{base}/metrics")
        except aiohttp.ClientConnectorError:  # not listening yet
            await asyncio.sleep(0.1)
            continue
        if re.search(predicate, text, re.MULTILINE):
            return text
        await asyncio.sleep(0.2)
    pytest.fail(f"/metrics never matched {predicate!r}:\n{text[-3000:]}")


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[tuple[Daemon, dict[str, str]]]:
    async with serve(banner(b"SSH-2.0-test\r\n")) as ok_port, serve(never_answer) as tarpit:
        refused = free_port()
        targets = {
            "ok": f"banner 127.0.0.1:{ok_port}",
            "refused": f"banner 127.0.0.1:{refused}",
            "tarpit": f"banner 127.0.0.1:{tarpit}",
        }
        listen = free_port()
        cfg = tmp_path / "probes.toml"
        _write_config(cfg, listen, targets)
        log = tmp_path / "probed.log"
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "probed", "--log-format", "json", "run", "-c", str(cfg)),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        daemon = Daemon(proc, f"http://127.0.0.1:{listen}", cfg, log)
        try:
            yield daemon, targets
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_daemon_end_to_end(daemon: tuple[Daemon, dict[str, str]]) -> None:
    d, targets = daemon
    async with aiohttp.ClientSession() as session:
        text = await _metrics_when(session, d.base, r'^probe_success\{.*case="tarpit"')
        text = await _metrics_when(session, d.base, r'^probe_success\{.*case="refused"')
        text = await _metrics_when(session, d.base, r'^probe_success\{.*case="ok"')
        assert re.search(r'^probe_success\{module="banner",.*case="ok"\} 1$', text, re.M)
        assert re.search(r'^probe_success\{.*case="refused"\} 0$', text, re.M)
        assert re.search(
            r'^probe_failure_info\{.*case="refused",reason="connect_refused"\} 1$', text, re.M
        )
        assert re.search(r'^probe_failure_info\{.*case="tarpit",reason="timeout"\} 1$', text, re.M)
        assert re.search(r"^probed_runs_total\{module=\"banner\"\} [1-9]", text, re.M)
        assert "# TYPE probe_success gauge" in text
        assert text.count("# TYPE probe_success gauge") == 1

        status, _ = await _get(session, f"{d.base}/-/healthy")
        assert status == 200
        status, _ = await _get(session, f"{d.base}/-/ready")
        assert status == 200

        async with session.get(f"{d.base}/metrics", headers={"Accept-Encoding": "gzip"}) as resp:
            assert resp.headers.get("Content-Encoding") == "gzip"
            assert "probe_success" in await resp.text()

        ok_target = targets["ok"].split(" ", 1)[1]
        status, body = await _get(session, f"{d.base}/probe?module=banner&target={ok_target}")
        assert status == 200
        assert re.search(r"^probe_success\{.*\} 1$", body, re.M)
        status, body = await _get(
            session, f"{d.base}/probe?module=banner&target={ok_target}&debug=true"
        )
        assert status == 200
        assert "expect matched" in body
        status, body = await _get(session, f"{d.base}/probe?module=banner&target=127.0.0.9:1")
        assert status == 403
        assert "allow_probe_any_target" in body

        # A bad config changes nothing and is reported.
        good = d.config.read_text()
        d.config.write_text(good.replace('interval = "1s"', 'interval = "1 s"'))
        d.proc.send_signal(signal.SIGHUP)
        text = await _metrics_when(session, d.base, r"^probed_config_last_reload_successful 0")
        assert re.search(r'^probe_success\{.*case="ok"\} 1$', text, re.M)

        # A good one removes the tarpit job and keeps the others, with their schedule and
        # last result: no gap in the series, and later runs keep the job's phase.
        before = _last_run(text, "ok")
        lines = good.split("[[probes]]")
        d.config.write_text("[[probes]]".join(p for p in lines if "tarpit" not in p))
        async with session.post(f"{d.base}/-/reload") as resp:
            assert resp.status == 200, await resp.text()
            assert "0 changed" in await resp.text()
        _, text = await _get(session, f"{d.base}/metrics")
        assert 'case="tarpit"' not in text
        assert re.search(r'^probe_success\{.*case="ok"\} 1$', text, re.M)
        assert re.search(r"^probed_config_last_reload_successful 1", text, re.M)
        after = _last_run(text, "ok")
        assert after >= before
        later = after
        for _ in range(25):  # the next run comes within one interval (1s)
            if later > after:
                break
            await asyncio.sleep(0.2)
            later = _last_run((await _get(session, f"{d.base}/metrics"))[1], "ok")
        assert later > after
        drift = (later - before) % 1.0  # interval 1s: whole intervals apart, give or take lag
        assert min(drift, 1.0 - drift) < 0.2, (before, after, later)

        promtool = shutil.which("promtool")
        assert promtool, "promtool (Debian package prometheus) is required"
        check = await asyncio.create_subprocess_exec(
            *(promtool, "check", "metrics"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(check.communicate(text.encode()), 30)
        assert check.returncode == 0, (out + err).decode()

    d.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(d.proc.wait(), 10) == 0
    events = [json.loads(line) for line in d.log.read_text().splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert "probed started" in names
    assert "stopped" in names
    failures = [e for e in events if e["event"] == "probe failed"]
    assert failures
    assert all(e["level"] == "info" for e in failures)
    assert any(
        e["event"] == "reload failed; keeping the running configuration"
        and e["level"] == "error"
        and "interval" in e["error"]
        for e in events
    )


def test_check_config_cli(tmp_path: Path) -> None:
    root = Path(__file__).parent.parent
    ok = subprocess.run(
        [sys.executable, "-m", "probed", "check-config", str(root / "probes.toml")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert ok.returncode == 0
    assert "jobs per module:" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[defaults]\nintervall = "1s"\n')
    out = subprocess.run(
        [sys.executable, "-m", "probed", "check-config", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 2
    assert f'{bad}: defaults: unknown key "intervall" (did you mean "interval"?)' in out.stderr


async def test_probe_cli_nagios_codes(tmp_path: Path) -> None:
    async def run(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "probed",
            "probe",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        return proc.returncode or 0, out.decode()

    async with serve(banner(b"SSH-2.0-x\r\n")) as port:
        code, out = await run("tcp", f"127.0.0.1:{port}", "--debug")
        assert code == 0
        assert out.startswith("TCP OK")
        assert "log:" in out
    code, out = await run("tcp", f"127.0.0.1:{free_port()}")
    assert code == 2
    assert out.startswith("TCP CRITICAL")
    assert "connect_refused" in out
    code, out = await run("nosuch", "127.0.0.1:1")
    assert code == 3
    assert "UNKNOWN" in out


async def test_file_sd_change_reloads_without_a_signal(tmp_path: Path) -> None:
    async with serve(banner(b"SSH-2.0-x\r\n")) as port_a, serve(banner(b"SSH-2.0-y\r\n")) as port_b:
        sd = tmp_path / "targets.json"
        sd.write_text(json.dumps([{"targets": [f"127.0.0.1:{port_a}"], "labels": {"dc": "a"}}]))
        listen = free_port()
        cfg = tmp_path / "probes.toml"
        cfg.write_text(
            f'[server]\nlisten = "127.0.0.1:{listen}"\nwatch_interval = "200ms"\n'
            '[defaults]\ninterval = "1s"\ntimeout = "500ms"\n'
            '[modules.banner]\nprobe = "tcp"\nquery = [ { expect = "^SSH-" } ]\n'
            '[[groups]]\nname = "sd"\nmodules = ["banner"]\nfile_sd = ["*.json"]\n'
        )
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "probed", "--log-format", "json", "run", "-c", str(cfg)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{listen}"
        try:
            async with aiohttp.ClientSession() as session:
                await _metrics_when(session, base, rf'^probe_success{{.*:{port_a}",dc="a"}} 1')
                sd.write_text(
                    json.dumps([{"targets": [f"127.0.0.1:{port_b}"], "labels": {"dc": "b"}}])
                )
                text = await _metrics_when(
                    session, base, rf'^probe_success{{.*:{port_b}",dc="b"}} 1'
                )
                assert f":{port_a}" not in text
                # A broken file keeps the running jobs and reports the failed reload.
                sd.write_text("[{")
                text = await _metrics_when(
                    session, base, r"^probed_config_last_reload_successful 0"
                )
                assert re.search(rf'^probe_success{{.*:{port_b}",dc="b"}} 1', text, re.M)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 10) == 0


class CountingTarpit:
    """Accepts, never answers, and notes when each connection is closed by the client."""

    def __init__(self) -> None:
        self.open = 0
        self.closed_at: list[float] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        try:
            while await reader.read(1024):
                pass
        except ConnectionError:
            pass
        finally:
            self.open -= 1
            self.closed_at.append(time.time())
            writer.close()


async def test_sigterm_with_runs_in_flight_exits_0_within_the_grace(tmp_path: Path) -> None:
    tarpit = CountingTarpit()
    server = await asyncio.start_server(tarpit.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    jobs = 6
    grace = 0.5
    listen = free_port()
    cfg = tmp_path / "probes.toml"
    # Runs last 1.9 s of each 2 s interval, far longer than the grace: most are cancelled.
    cfg.write_text(
        f'[server]\nlisten = "127.0.0.1:{listen}"\nshutdown_grace = "{int(grace * 1000)}ms"\n'
        'per_host_concurrency = 100\n[defaults]\ninterval = "2s"\ntimeout = "1900ms"\n'
        + "".join(
            f'[modules.stuck{i}]\nprobe = "tcp"\nquery = [ {{ expect = "^SSH-" }} ]\n'
            f'[[probes]]\nmodule = "stuck{i}"\ntarget = "127.0.0.1:{port}"\n'
            for i in range(jobs)
        )
    )
    log, err = tmp_path / "probed.log", tmp_path / "stderr"
    with log.open("wb") as out, err.open("wb") as errors:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-W", "always::ResourceWarning", "-m", "probed"),
            *("--log-format", "json", "run", "-c", str(cfg)),
            stdout=out,
            stderr=errors,
        )
    try:
        async with aiohttp.ClientSession() as session:
            # A keep-alive scrape connection is open too; shutdown must not wait for it.
            await _metrics_when(session, f"http://127.0.0.1:{listen}", "^probed_jobs")
            loop = asyncio.get_running_loop()
            end = loop.time() + DEADLINE
            while tarpit.open < jobs:
                assert loop.time() < end, f"only {tarpit.open} runs in flight"
                await asyncio.sleep(0.02)
            sent = loop.time()
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 10)
            took = loop.time() - sent
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        server.close()
        await server.wait_closed()
    output = log.read_text()
    assert code == 0, output[-3000:]
    # The grace, plus interpreter start-up of nothing and teardown: a couple of seconds.
    assert took < grace + 2.0, took
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    by_name = {e["event"]: e for e in events}
    assert by_name["stopping"]["in_flight"] >= 1
    assert by_name["cancelled runs at shutdown"]["count"] >= 1
    # probed itself closed every probe connection before it said "stopped" (not the kernel
    # at exit), and left nothing unclosed behind.
    stopped = dt.datetime.fromisoformat(by_name["stopped"]["timestamp"]).timestamp()
    assert tarpit.open == 0
    assert len(tarpit.closed_at) >= jobs
    assert max(tarpit.closed_at) <= stopped + 0.01
    stderr = err.read_text()
    assert "ResourceWarning" not in stderr, stderr
    assert "Task was destroyed" not in stderr, stderr
    assert not [e for e in events if e["level"] in {"error", "critical"}], output[-3000:]
