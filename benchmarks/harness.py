"""Side-by-side harness: probed against blackbox_exporter on one loopback fleet.

One run starts the fleet once, then measures alternating phases of equal length
(probed, blackbox, probed, blackbox ...) so that the machine's noise hits both
sides. Each phase starts its daemon afresh, waits one interval of warm-up, then
measures a window:

- CPU: utime + stime of the daemon's process (all threads) from /proc/PID/stat.
- Probes: runs completed in the window. probed: the increase of
  ``probed_runs_total{module=...}`` between two /metrics scrapes, one at each end
  of the window (those two scrapes are inside the CPU window, so their cost is
  charged to probed; their own CPU is reported too). blackbox: ``/probe`` calls
  the driver saw finish inside the window.
- Scheduler lag p50/p99: from the increase of ``probed_scheduler_lag_seconds``
  buckets over the window, bucket-interpolated like PromQL histogram_quantile.
- Peak RSS: VmHWM from /proc/PID/status at the end of the window.

A third and fourth side can join a run: ``floor`` (floor.py, a bare uvloop client doing
the same checks) and ``plugins`` (plugins.py, the workload's monitoring-plugins check,
fork+exec per check as Nagios runs it; the side's CPU is that of the reaped plugin
processes, the runner's own CPU is reported apart, like the blackbox driver's).

A workload (``Workload``) names the fleet kind and the module both daemons run;
``bench_tcp.py`` defines the TCP banner one, ``bench_http.py`` the HTTP GET one and
``bench_tls.py`` the TLS handshake one. A module value the fleet only knows once it
runs (the TLS fleet's CA file) is written as ``FleetExtra("ca_file")``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import driver
import procstat
import promstats
import uvloop
import yaml

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "benchmarks"
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
PROBED_SCRIPT = REPO / ".venv" / "bin" / "probed"
BLACKBOX = Path("/usr/bin/prometheus-blackbox-exporter")
PLUGINS_DIR = Path("/usr/lib/nagios/plugins")  # Debian's monitoring-plugins-basic/standard
# What Prometheus 2.x sends, so probed serves the page it would serve in production.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
LAG_HISTOGRAM = "probed_scheduler_lag_seconds"
RUNS = "probed_runs_total"
SKIPS = "probed_runs_skipped_total"
ERRORS = "probed_probe_errors_total"
IN_FLIGHT = "probed_runs_in_flight"
SUCCESS = "probe_success"
SIDES = ("probed", "blackbox", "floor", "plugins")
START_TIMEOUT = 120.0  # seconds a daemon may take to answer after exec
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """'500ms', '10s', '1.5m', '1h' -> seconds (a bare number means seconds)."""
    text = text.strip()
    with contextlib.suppress(ValueError):
        return float(text)
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"bad duration {text!r} (want e.g. 500ms, 10s, 2m)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def toml_duration(seconds: float) -> str:
    return f"{seconds:g}s" if seconds >= 1 else f"{seconds * 1000:g}ms"


@dataclass(frozen=True, slots=True)
class FleetExtra:
    """A module value taken from the started fleet's target list (its ``extra`` table)."""

    key: str


def _with_fleet_values(value: Any, extra: dict[str, Any]) -> Any:
    if isinstance(value, FleetExtra):
        if value.key not in extra:
            raise RuntimeError(f"the fleet's target list has no extra.{value.key}")
        return extra[value.key]
    if isinstance(value, dict):
        return {k: _with_fleet_values(v, extra) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_with_fleet_values(v, extra) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class Workload:
    """One kind of check, as each side configures it."""

    name: str  # e.g. "tcp-banner"
    fleet_kind: str  # fleet.FLEET_KINDS key
    module: str  # module name in both daemons' configs (and the runs_total label)
    probed_module: dict[str, Any]  # the [modules.NAME] table of probes.toml
    blackbox_module: dict[str, Any]  # the modules.NAME entry of blackbox.yml
    target: Callable[[dict[str, Any]], str] = lambda t: f"{t['host']}:{t['port']}"
    # The monitoring-plugins check (the "plugins" side): argv with {host}, {port},
    # {timeout} (whole seconds) and the fleet's extra values ({ca_file}, {server_name}),
    # filled per target by plugins.py.
    plugins_command: tuple[str, ...] = ()

    def for_fleet(self, extra: dict[str, Any]) -> Workload:
        """This workload with every ``FleetExtra`` replaced by the fleet's value."""
        return replace(
            self,
            probed_module=_with_fleet_values(self.probed_module, extra),
            blackbox_module=_with_fleet_values(self.blackbox_module, extra),
        )


@dataclass(frozen=True, slots=True)
class BenchSettings:
    jobs: int
    interval: float
    timeout: float
    window: float
    warmup: float
    rounds: int
    sides: tuple[str, ...]
    max_concurrency: int
    per_host_concurrency: int
    driver_concurrency: int
    plugins_concurrency: int
    ports_per_host: int
    base_port: int
    fleet_args: tuple[str, ...]
    probed_cmd: tuple[str, ...] | None
    plugins_cmd: tuple[str, ...] | None
    snapshot: bool
    out_dir: Path
    command: str
    snapshot_dir: Path | None = None  # set by run_benchmark: where the copy of probed is


@dataclass(slots=True)
class PhaseResult:
    side: str
    round: int
    window_s: float = 0.0
    startup_s: float = 0.0
    cpu_s: float = 0.0
    user_s: float = 0.0
    system_s: float = 0.0
    probes: int = 0
    expected_probes: float = 0.0
    successes: int = 0
    cpu_ms_per_probe: float = math.nan
    # The daemon's main thread alone (probed: the event loop; the rest is worker threads).
    loop_cpu_s: float = math.nan
    lag_p50_ms: float = math.nan
    lag_p99_ms: float = math.nan
    lag_buckets: dict[str, float] = field(default_factory=dict)
    skipped: int = 0
    peak_rss_mib: float = math.nan
    threads: int = 0
    fleet_cpu_s: float = 0.0
    harness_cpu_s: float = 0.0
    # plugins side: the runner's own CPU (plays the Nagios core; charged to neither side)
    runner_cpu_s: float = math.nan
    machine_busy_cores: float = 0.0
    machine_steal_cores: float = 0.0
    other_busy_cores: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_process(
    argv: Sequence[str], log_path: Path, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    log: TextIO = log_path.open("w")
    try:
        return subprocess.Popen(
            list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd
        )
    finally:
        log.close()  # the child holds its own copy of the descriptor


async def stop_process(proc: subprocess.Popen[bytes]) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, STOP_TIMEOUT)
    return proc.poll()


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


async def wait_http_ok(
    session: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes], log_path: Path
) -> float:
    """Poll ``url`` until it answers 200; return seconds waited. Bounded by START_TIMEOUT."""
    started = time.monotonic()
    while time.monotonic() - started < START_TIMEOUT:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{proc.args!r} exited with {proc.returncode} before it was ready:\n"
                f"{tail(log_path)}"
            )
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
                await response.read()
                if response.status == 200:
                    return time.monotonic() - started
        await asyncio.sleep(0.25)
    raise RuntimeError(f"{url} not ready after {START_TIMEOUT:g}s:\n{tail(log_path)}")


# --------------------------------------------------------------------------- fleet


@dataclass(slots=True)
class Fleet:
    proc: subprocess.Popen[bytes]
    targets: list[dict[str, Any]]
    info: dict[str, Any]


async def start_fleet(
    settings: BenchSettings, workload: Workload, run_dir: Path, max_seconds: float
) -> Fleet:
    targets_path = run_dir / "targets.json"
    log_path = run_dir / "fleet.log"
    argv = [
        sys.executable,
        str(BENCH_DIR / "fleet.py"),
        "--listeners",
        str(settings.jobs),
        "--kind",
        workload.fleet_kind,
        "--ports-per-host",
        str(settings.ports_per_host),
        "--base-port",
        str(settings.base_port),
        "--out",
        str(targets_path),
        "--max-seconds",
        f"{max_seconds:.0f}",
        *settings.fleet_args,
    ]
    proc = start_process(argv, log_path)
    started = time.monotonic()
    while not targets_path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"fleet exited with {proc.returncode}:\n{tail(log_path)}")
        if time.monotonic() - started > START_TIMEOUT:
            await stop_process(proc)
            raise RuntimeError(f"fleet not ready after {START_TIMEOUT:g}s:\n{tail(log_path)}")
        await asyncio.sleep(0.1)
    info = json.loads(targets_path.read_text())
    targets: list[dict[str, Any]] = info.pop("targets")
    info["startup_s"] = round(time.monotonic() - started, 2)
    return Fleet(proc=proc, targets=targets, info=info)


# --------------------------------------------------------------------------- configs


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[ " + ", ".join(_toml_value(v) for v in value) + " ]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def probed_config(
    settings: BenchSettings, workload: Workload, hosts_file: Path, listen: str
) -> str:
    """probes.toml text for ``settings.jobs`` jobs of ``workload`` (read back as a check)."""
    lines = [
        "# written by benchmarks/harness.py",
        "[server]",
        f"listen = {_toml_value(listen)}",
        f"max_concurrency = {settings.max_concurrency}",
        f"per_host_concurrency = {settings.per_host_concurrency}",
        "",
        "[defaults]",
        f"interval = {_toml_value(toml_duration(settings.interval))}",
        f"timeout = {_toml_value(toml_duration(settings.timeout))}",
        "",
        f"[modules.{workload.module}]",
        *(f"{k} = {_toml_value(v)}" for k, v in workload.probed_module.items()),
        "",
        "[[groups]]",
        'name = "fleet"',
        f"modules = [ {_toml_value(workload.module)} ]",
        f"hosts_file = {_toml_value(str(hosts_file))}",
        "",
    ]
    text = "\n".join(lines)
    parsed = tomllib.loads(text)
    assert parsed["modules"][workload.module] == workload.probed_module, "TOML round trip"
    return text


def blackbox_config(settings: BenchSettings, workload: Workload) -> str:
    module = {"timeout": toml_duration(settings.timeout), **workload.blackbox_module}
    return yaml.safe_dump({"modules": {workload.module: module}}, sort_keys=False)


# --------------------------------------------------------------------------- phases


@dataclass(slots=True)
class Samples:
    """CPU counters of everything we account, read together."""

    daemon: procstat.CpuSample
    loop: procstat.CpuSample
    fleet: procstat.CpuSample
    harness: procstat.CpuSample
    machine: procstat.MachineSample

    @classmethod
    def read(cls, daemon_pid: int, fleet_pid: int) -> Samples:
        return cls(
            daemon=procstat.process_cpu(daemon_pid),
            loop=procstat.process_cpu(daemon_pid, daemon_pid),
            fleet=procstat.process_cpu(fleet_pid),
            harness=procstat.process_cpu(os.getpid()),
            machine=procstat.machine_cpu(),
        )


def fill_common(result: PhaseResult, start: Samples, end: Samples, pid: int) -> None:
    result.window_s = end.daemon.wall - start.daemon.wall
    result.cpu_s, result.user_s, result.system_s = procstat.cpu_delta(start.daemon, end.daemon)
    result.loop_cpu_s = procstat.cpu_delta(start.loop, end.loop)[0]
    result.fleet_cpu_s = procstat.cpu_delta(start.fleet, end.fleet)[0]
    result.harness_cpu_s = procstat.cpu_delta(start.harness, end.harness)[0]
    busy, steal = procstat.machine_busy_cores(start.machine, end.machine)
    result.machine_busy_cores, result.machine_steal_cores = busy, steal
    ours = result.cpu_s + result.fleet_cpu_s + result.harness_cpu_s
    # What the rest of the machine (other users, kernel threads) did meanwhile: the noise.
    result.other_busy_cores = max(0.0, busy - ours / result.window_s)
    result.peak_rss_mib = procstat.peak_rss_mib(pid)
    result.threads = int(procstat.status_field(pid, "Threads"))
    if result.probes:
        result.cpu_ms_per_probe = result.cpu_s * 1000 / result.probes


async def scrape(session: aiohttp.ClientSession, url: str) -> tuple[str, float]:
    started = time.monotonic()
    headers = {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}
    async with session.get(url, headers=headers) as response:
        response.raise_for_status()
        text = await response.text()
    return text, time.monotonic() - started


def scan_log(path: Path) -> dict[str, Any]:
    """Count error-looking lines in a daemon's log; keep the first few."""
    errors: list[str] = []
    count = 0
    lines = 0
    with path.open(errors="replace") as log:
        for line in log:
            lines += 1
            lowered = line.lower()
            if (
                '"level": "error"' in lowered
                or '"level":"error"' in lowered
                or "level=error" in lowered
                or " error " in lowered
                or lowered.startswith("traceback")
                or "[error" in lowered
            ):
                count += 1
                if len(errors) < 5:
                    errors.append(line.rstrip()[:400])
    return {"lines": lines, "bytes": path.stat().st_size, "error_lines": count, "first": errors}


def probed_source_digest(root: Path) -> str:
    """sha256 of the Python sources of the package under ``root``/probed."""
    digest = hashlib.sha256()
    for path in sorted((root / "probed").rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def snapshot_probed(root: Path) -> Path:
    """Copy probed's package under ``root``, so every phase runs the same code.

    The tree may be edited while a run goes on; ``python -m probed`` started in the
    copy's folder imports the copy (the current directory comes before the editable
    install's finder on the import path). The copy lives outside the repository so
    that no linter or type checker of the tree ever sees it.
    """
    shutil.copytree(REPO / "probed", root / "probed", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def probed_argv(
    settings: BenchSettings, config_path: Path, snapshot: Path | None
) -> tuple[list[str], Path | None]:
    """The command that runs probed, and the folder to run it in."""
    if settings.probed_cmd:
        return [*settings.probed_cmd, "run", "-c", str(config_path)], None
    python = VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable)
    if snapshot is not None:
        return [str(python), "-m", "probed", "run", "-c", str(config_path)], snapshot
    if PROBED_SCRIPT.exists():
        return [str(PROBED_SCRIPT), "run", "-c", str(config_path)], None
    return [str(python), "-m", "probed", "run", "-c", str(config_path)], None


async def probed_phase(
    settings: BenchSettings, workload: Workload, fleet: Fleet, run_dir: Path, round_no: int
) -> PhaseResult:
    result = PhaseResult(side="probed", round=round_no)
    port = free_port()
    listen = f"127.0.0.1:{port}"
    hosts_file = run_dir / "hosts.txt"
    hosts_file.write_text("".join(workload.target(t) + "\n" for t in fleet.targets))
    config_path = run_dir / f"probes-r{round_no}.toml"
    config_path.write_text(probed_config(settings, workload, hosts_file, listen))
    log_path = run_dir / f"probed-r{round_no}.log"
    snapshot = settings.snapshot_dir
    argv, cwd = probed_argv(settings, config_path, snapshot)
    result.extra["argv"] = argv
    result.extra["cwd"] = str(cwd) if cwd else None
    result.extra["source_digest"] = probed_source_digest(snapshot or REPO)
    metrics_url = f"http://{listen}/metrics"
    wanted = [f"{LAG_HISTOGRAM}_bucket", RUNS, SKIPS, ERRORS, IN_FLIGHT, SUCCESS]
    proc = start_process(argv, log_path, cwd)
    try:
        async with aiohttp.ClientSession() as session:
            result.startup_s = await wait_http_ok(session, metrics_url, proc, log_path)
            await asyncio.sleep(settings.warmup)
            a = Samples.read(proc.pid, fleet.proc.pid)
            page0, scrape0_s = await scrape(session, metrics_url)
            b = procstat.process_cpu(proc.pid)
            await asyncio.sleep(max(0.0, a.daemon.wall + settings.window - time.monotonic()))
            c = procstat.process_cpu(proc.pid)
            page1, scrape1_s = await scrape(session, metrics_url)
            d = Samples.read(proc.pid, fleet.proc.pid)
        if proc.poll() is not None:
            raise RuntimeError(f"probed exited with {proc.returncode}:\n{tail(log_path)}")
        s0 = promstats.parse_samples(page0, wanted)
        s1 = promstats.parse_samples(page1, wanted)
        m = {"module": workload.module}
        result.probes = round(
            promstats.sum_samples(s1, RUNS, **m) - promstats.sum_samples(s0, RUNS, **m)
        )
        result.skipped = round(
            promstats.sum_samples(s1, SKIPS, **m) - promstats.sum_samples(s0, SKIPS, **m)
        )
        lag = promstats.bucket_delta(
            promstats.histogram_buckets(s1, LAG_HISTOGRAM),
            promstats.histogram_buckets(s0, LAG_HISTOGRAM),
        )
        result.lag_buckets = {f"{b:g}": v for b, v in sorted(lag.items())}
        result.lag_p50_ms = promstats.histogram_quantile(0.50, lag) * 1000
        result.lag_p99_ms = promstats.histogram_quantile(0.99, lag) * 1000
        fill_common(result, a, d, proc.pid)
        result.expected_probes = settings.jobs * result.window_s / settings.interval
        jobs_seen = promstats.count_samples(s1, SUCCESS)
        result.successes = promstats.count_samples(s1, SUCCESS, 1.0)
        result.extra.update(
            {
                "success_is": "jobs whose last probe_success is 1, at window end",
                "jobs_seen": jobs_seen,
                "scrape_seconds": [round(scrape0_s, 3), round(scrape1_s, 3)],
                "scrape_cpu_s_upper_bound": round(
                    procstat.cpu_delta(a.daemon, b)[0] + procstat.cpu_delta(c, d.daemon)[0], 3
                ),
                "page_bytes": len(page1),
                "probe_errors": promstats.sum_samples(s1, ERRORS)
                - promstats.sum_samples(s0, ERRORS),
                "runs_in_flight_at_end": promstats.sum_samples(s1, IN_FLIGHT),
                "lag_observations": lag.get(math.inf, 0.0),
            }
        )
    finally:
        result.extra["exit_code"] = await stop_process(proc)
        result.extra["log"] = scan_log(log_path)
    return result


async def blackbox_phase(
    settings: BenchSettings, workload: Workload, fleet: Fleet, run_dir: Path, round_no: int
) -> PhaseResult:
    result = PhaseResult(side="blackbox", round=round_no)
    port = free_port()
    exporter = f"http://127.0.0.1:{port}"
    config_path = run_dir / "blackbox.yml"
    config_path.write_text(blackbox_config(settings, workload))
    log_path = run_dir / f"blackbox-r{round_no}.log"
    argv = [
        str(BLACKBOX),
        f"--config.file={config_path}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    result.extra["argv"] = argv
    urls = driver.probe_urls(exporter, workload.module, [workload.target(t) for t in fleet.targets])
    proc = start_process(argv, log_path)
    loop = asyncio.get_running_loop()
    try:
        async with aiohttp.ClientSession() as session:
            result.startup_s = await wait_http_ok(session, f"{exporter}/-/healthy", proc, log_path)
        begin = loop.time() + 0.05
        window_start = begin + settings.warmup
        window_end = window_start + settings.window
        drive = asyncio.create_task(
            driver.drive(
                urls,
                interval=settings.interval,
                start=begin,
                stop=window_end,
                concurrency=settings.driver_concurrency,
                # Prometheus' default scrape_timeout; blackbox then uses the module's 5 s.
                scrape_timeout=max(settings.interval, settings.timeout + 0.5),
            ),
            name="blackbox-driver",
        )
        await asyncio.sleep(max(0.0, window_start - loop.time()))
        a = Samples.read(proc.pid, fleet.proc.pid)
        w0 = loop.time()
        await asyncio.sleep(max(0.0, w0 + settings.window - loop.time()))
        d = Samples.read(proc.pid, fleet.proc.pid)
        w1 = loop.time()
        # Peak RSS and liveness before the driver's drain, which may take a while.
        if proc.poll() is not None:
            raise RuntimeError(f"blackbox exited with {proc.returncode}:\n{tail(log_path)}")
        report = await drive
        in_window = report.finished_between(w0, w1)
        result.probes = len(in_window)
        result.successes = sum(1 for c in in_window if c.success)
        fill_common(result, a, d, proc.pid)
        result.expected_probes = settings.jobs * result.window_s / settings.interval
        lags = [c.started - c.due for c in in_window]
        latencies = [c.finished - c.started for c in in_window]
        result.extra.update(
            {
                "success_is": "/probe calls finished in the window with probe_success 1",
                "driver_lag_p50_ms": promstats.exact_quantile(0.5, lags) * 1000,
                "driver_lag_p99_ms": promstats.exact_quantile(0.99, lags) * 1000,
                "probe_call_p50_ms": promstats.exact_quantile(0.5, latencies) * 1000,
                "probe_call_p99_ms": promstats.exact_quantile(0.99, latencies) * 1000,
                "http_non_200": sum(1 for c in in_window if c.status != 200),
                "transport_errors": report.transport_errors,
                "calls_total": len(report.calls),
                "driver_cpu_ms_per_call": (
                    result.harness_cpu_s * 1000 / result.probes if result.probes else math.nan
                ),
            }
        )
    finally:
        result.extra["exit_code"] = await stop_process(proc)
        result.extra["log"] = scan_log(log_path)
    return result


def read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


async def floor_status(
    proc: subprocess.Popen[bytes], path: Path, after: int, *, ask: bool = True
) -> dict[str, Any]:
    """Ask floor.py for its counters (SIGUSR1) and wait until it has written them.

    The first call must not ask: SIGUSR1 kills a process that has no handler yet, and
    floor.py writes its counters once by itself when its handler is in place.
    """
    if ask:
        proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + (START_TIMEOUT if not ask else 5)
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError, ValueError):
            status = read_json(path)
            if status["seq"] > after:
                return status
        await asyncio.sleep(0.005)
    raise RuntimeError(f"floor.py did not report its counters (exit code {proc.poll()})")


async def status_window(
    settings: BenchSettings,
    fleet: Fleet,
    proc: subprocess.Popen[bytes],
    status_path: Path,
    result: PhaseResult,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Start-up, warm-up and the measured window of a client that reports its counters in a
    status file on SIGUSR1 (floor.py, plugins.py): fills the common figures of ``result``
    and returns the status at the window's start and end."""
    started = time.monotonic()
    first = await floor_status(proc, status_path, 0, ask=False)
    result.startup_s = time.monotonic() - started
    await asyncio.sleep(settings.warmup)
    a = Samples.read(proc.pid, fleet.proc.pid)
    s0 = await floor_status(proc, status_path, first["seq"])
    await asyncio.sleep(max(0.0, a.daemon.wall + settings.window - time.monotonic()))
    s1 = await floor_status(proc, status_path, s0["seq"])
    d = Samples.read(proc.pid, fleet.proc.pid)
    result.probes = s1["completed"] - s0["completed"]
    result.successes = s1["ok"] - s0["ok"]
    fill_common(result, a, d, proc.pid)
    result.expected_probes = settings.jobs * result.window_s / settings.interval
    return s0, s1


async def floor_phase(
    settings: BenchSettings, workload: Workload, fleet: Fleet, run_dir: Path, round_no: int
) -> PhaseResult:
    """A bare uvloop client doing the same checks (floor.py's check for the fleet kind)."""
    result = PhaseResult(side="floor", round=round_no)
    status_path = run_dir / f"floor-r{round_no}.json"
    log_path = run_dir / f"floor-r{round_no}.log"
    argv = [
        sys.executable,
        str(BENCH_DIR / "floor.py"),
        f"--targets={run_dir / 'targets.json'}",
        f"--check={workload.fleet_kind}",
        f"--interval={settings.interval}",
        f"--timeout={settings.timeout}",
        f"--status={status_path}",
        f"--max-seconds={settings.warmup + settings.window + 30:.0f}",
    ]
    result.extra["argv"] = argv
    proc = start_process(argv, log_path)
    try:
        await status_window(settings, fleet, proc, status_path, result)
        result.extra["success_is"] = "checks completed in the window that succeeded"
    finally:
        result.extra["exit_code"] = await stop_process(proc)
        result.extra["log"] = scan_log(log_path)
    return result


def _lag_buckets(status: dict[str, Any]) -> dict[float, float]:
    return {float(k.replace("+Inf", "inf")): float(v) for k, v in status["lag_buckets"].items()}


async def plugins_phase(
    settings: BenchSettings, workload: Workload, fleet: Fleet, run_dir: Path, round_no: int
) -> PhaseResult:
    """The workload's monitoring-plugins check, fork+exec per check (plugins.py runs them).

    CPU of the side: the plugin processes reaped in the window (the runner's
    ``os.times()`` children fields); probes: plugins reaped in the window, counted at the
    same moment. The runner's own CPU (fork/exec, pipes, waits: the Nagios core's part) is
    ``runner_cpu_s``, charged to neither side. Peak RSS: n/a (see below).
    """
    if not workload.plugins_command:
        raise RuntimeError(f"workload {workload.name} has no plugins_command")
    result = PhaseResult(side="plugins", round=round_no)
    status_path = run_dir / f"plugins-r{round_no}.json"
    log_path = run_dir / f"plugins-r{round_no}.log"
    argv = [
        sys.executable,
        str(BENCH_DIR / "plugins.py"),
        f"--targets={run_dir / 'targets.json'}",
        f"--command={json.dumps(list(workload.plugins_command))}",
        f"--interval={settings.interval}",
        f"--timeout={settings.timeout}",
        f"--concurrency={settings.plugins_concurrency}",
        f"--status={status_path}",
        f"--max-seconds={settings.warmup + settings.window + 30:.0f}",
    ]
    result.extra["argv"] = argv
    proc = start_process(argv, log_path)
    try:
        # plugins.py writes its status file the way floor.py does.
        s0, s1 = await status_window(settings, fleet, proc, status_path, result)
        # fill_common took the runner's own CPU as the side's: move it, then count the plugins.
        result.runner_cpu_s = result.cpu_s
        result.user_s = s1["children_user_s"] - s0["children_user_s"]
        result.system_s = s1["children_system_s"] - s0["children_system_s"]
        result.cpu_s = result.user_s + result.system_s
        result.loop_cpu_s = math.nan
        result.cpu_ms_per_probe = result.cpu_s * 1000 / result.probes if result.probes else math.nan
        ours = result.cpu_s + result.runner_cpu_s + result.fleet_cpu_s + result.harness_cpu_s
        result.other_busy_cores = max(0.0, result.machine_busy_cores - ours / result.window_s)
        # RUSAGE_CHILDREN's ru_maxrss counts a child's pages before exec too (the forked
        # runner's image), so it is only an upper bound of a plugin's peak: reported apart.
        result.peak_rss_mib = math.nan
        result.extra["peak_child_rss_mib_upper_bound"] = s1["peak_child_rss_kib"] / 1024
        lag = promstats.bucket_delta(_lag_buckets(s1), _lag_buckets(s0))
        result.lag_buckets = {f"{b:g}": v for b, v in sorted(lag.items())}
        result.lag_p50_ms = promstats.histogram_quantile(0.50, lag) * 1000
        result.lag_p99_ms = promstats.histogram_quantile(0.99, lag) * 1000
        exit_codes = {
            code: n - s0["exit_codes"].get(code, 0) for code, n in s1["exit_codes"].items()
        }
        result.extra.update(
            {
                "success_is": "plugins reaped in the window that exited 0",
                "command": list(workload.plugins_command),
                "cpu_is": "CPU of the plugin processes reaped in the window (cutime+cstime)",
                "runner_cpu_s_user_system": [
                    round(s1["self_user_s"] - s0["self_user_s"], 3),
                    round(s1["self_system_s"] - s0["self_system_s"], 3),
                ],
                "runner_cpu_ms_per_check": (
                    result.runner_cpu_s * 1000 / result.probes if result.probes else math.nan
                ),
                "runner_peak_rss_mib": procstat.peak_rss_mib(proc.pid),
                "exit_codes": {k: v for k, v in exit_codes.items() if v},
                "plugins_killed": s1["killed"] - s0["killed"],
                "spawn_errors": s1["spawn_errors"] - s0["spawn_errors"],
                "not_ok_examples": s1["not_ok_examples"],
                "lag_is": "how late the runner started a plugin (exact buckets, interpolated)",
            }
        )
    finally:
        result.extra["exit_code"] = await stop_process(proc)
        result.extra["log"] = scan_log(log_path)
    return result


# --------------------------------------------------------------------------- report


def side_summary(phases: list[PhaseResult]) -> dict[str, Any]:
    cpu = sum(p.cpu_s for p in phases)
    probes = sum(p.probes for p in phases)
    summary: dict[str, Any] = {
        "phases": len(phases),
        "cpu_s": cpu,
        "probes": probes,
        "cpu_ms_per_probe": cpu * 1000 / probes if probes else math.nan,
        "loop_cpu_ms_per_probe": (
            sum(p.loop_cpu_s for p in phases) * 1000 / probes if probes else math.nan
        ),
        "skipped": sum(p.skipped for p in phases),
        "lowest_success_ratio": min((success_ratio(p) for p in phases), default=math.nan),
        "peak_rss_mib": max((p.peak_rss_mib for p in phases), default=math.nan),
        "fleet_cpu_ms_per_probe": (
            sum(p.fleet_cpu_s for p in phases) * 1000 / probes if probes else math.nan
        ),
        "harness_cpu_ms_per_probe": (
            sum(p.harness_cpu_s for p in phases) * 1000 / probes if probes else math.nan
        ),
        "per_phase_cpu_ms_per_probe": [p.cpu_ms_per_probe for p in phases],
    }
    if phases and phases[0].side == "plugins":
        summary["runner_cpu_ms_per_probe"] = (
            sum(p.runner_cpu_s for p in phases) * 1000 / probes if probes else math.nan
        )
    buckets: dict[float, float] = {}
    for p in phases:
        for bound, count in p.lag_buckets.items():
            buckets[float(bound)] = buckets.get(float(bound), 0.0) + count
    if buckets:
        summary["lag_p50_ms"] = promstats.histogram_quantile(0.5, buckets) * 1000
        summary["lag_p99_ms"] = promstats.histogram_quantile(0.99, buckets) * 1000
    return summary


def success_ratio(p: PhaseResult) -> float:
    if p.side == "probed":
        jobs_seen: int = p.extra.get("jobs_seen", 0)
        return p.successes / max(1, jobs_seen)
    return p.successes / max(1, p.probes)


def phase_problems(p: PhaseResult) -> list[str]:
    """Reasons not to trust a phase's figures (empty when it looks sane)."""
    where = f"{p.side} round {p.round}"
    problems = []
    if success_ratio(p) < 0.99:
        problems.append(f"{where}: only {100 * success_ratio(p):.1f}% of probes succeeded")
    if not 0.9 <= p.probes / max(1.0, p.expected_probes) <= 1.1:
        problems.append(f"{where}: {p.probes} probes, expected ~{p.expected_probes:.0f}")
    if p.skipped > 0.01 * max(1, p.probes):
        problems.append(f"{where}: {p.skipped} runs skipped")
    log = p.extra.get("log", {})
    if log.get("error_lines"):
        problems.append(f"{where}: {log['error_lines']} error lines in its log")
    if p.extra.get("exit_code") not in {0, None}:
        problems.append(f"{where}: exit code {p.extra['exit_code']} after SIGTERM")
    problems.extend(
        f"{where}: {key} = {p.extra[key]:g}"
        for key in (
            "probe_errors",
            "transport_errors",
            "http_non_200",
            "plugins_killed",
            "spawn_errors",
        )
        if p.extra.get(key)
    )
    return problems


# (numerator, denominator, key of the ratio, key of its per-round list or None)
RATIOS = (
    ("probed", "blackbox", "ratio_probed_over_blackbox", "ratio_per_round"),
    ("probed", "plugins", "ratio_probed_over_plugins", "ratio_probed_over_plugins_per_round"),
    ("blackbox", "plugins", "ratio_blackbox_over_plugins", None),
    ("probed", "floor", "ratio_probed_over_floor", None),
    ("blackbox", "floor", "ratio_blackbox_over_floor", None),
    ("plugins", "floor", "ratio_plugins_over_floor", None),
)


def add_ratios(summary: dict[str, Any], by_side: dict[str, list[PhaseResult]]) -> None:
    """CPU per probe of one side over another's, over all phases (and per round for some)."""
    for top, bottom, key, per_round_key in RATIOS:
        if top not in summary or bottom not in summary:
            continue
        summary[key] = summary[top]["cpu_ms_per_probe"] / summary[bottom]["cpu_ms_per_probe"]
        if per_round_key is None:
            continue
        per_round = []
        for r in sorted({p.round for p in by_side[top]}):
            tt = [p for p in by_side[top] if p.round == r]
            bb = [p for p in by_side[bottom] if p.round == r]
            if tt and bb and bb[0].cpu_ms_per_probe > 0:
                per_round.append(tt[0].cpu_ms_per_probe / bb[0].cpu_ms_per_probe)
        summary[per_round_key] = per_round


def summarize(phases: list[PhaseResult], target_ms: float) -> dict[str, Any]:
    by_side: dict[str, list[PhaseResult]] = {}
    for p in phases:
        by_side.setdefault(p.side, []).append(p)
    summary: dict[str, Any] = {side: side_summary(ps) for side, ps in by_side.items()}
    probed = summary.get("probed")
    add_ratios(summary, by_side)
    summary["problems"] = [problem for p in phases for problem in phase_problems(p)]
    digests = {p.extra.get("source_digest") for p in by_side.get("probed", [])}
    if len(digests) > 1:
        summary["problems"].append(
            f"probed's sources changed between phases ({', '.join(sorted(map(str, digests)))})"
        )
    if probed:
        summary["target_cpu_ms_per_probe"] = target_ms
        summary["target_met"] = bool(probed["cpu_ms_per_probe"] <= target_ms)
    return summary


def _f(value: float, digits: int = 3) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def format_table(phases: list[PhaseResult]) -> str:
    header = (
        "side      rnd window_s probes  /s     ok%   cpu_s  cpu_ms/probe  lag_p50_ms "
        "lag_p99_ms skipped rss_MiB fleet_cpu_s harness_cpu_s other_cores runner_cpu_s"
    )
    rows = [header, "-" * len(header)]
    for p in phases:
        rate = p.probes / p.window_s if p.window_s else math.nan
        ok = 100 * success_ratio(p)
        rows.append(
            f"{p.side:<9} {p.round:>3} {p.window_s:>8.1f} {p.probes:>6} {rate:>5.0f} "
            f"{_f(ok, 1):>6} {p.cpu_s:>7.2f} {_f(p.cpu_ms_per_probe, 4):>13} "
            f"{_f(p.lag_p50_ms, 2):>11} {_f(p.lag_p99_ms, 2):>10} {p.skipped:>7} "
            f"{_f(p.peak_rss_mib, 1):>7} {p.fleet_cpu_s:>11.2f} {p.harness_cpu_s:>13.2f} "
            f"{p.other_busy_cores:>11.2f} {_f(p.runner_cpu_s, 2):>12}"
        )
    return "\n".join(rows)


def format_summary(summary: dict[str, Any]) -> str:
    lines = []
    for side in SIDES:
        s = summary.get(side)
        if not s:
            continue
        line = (
            f"{side:<9} {s['cpu_ms_per_probe']:.4f} CPU-ms/probe "
            "(= CPU-s per 1,000 probes"
            + (f"; main thread {s['loop_cpu_ms_per_probe']:.4f}" if side == "probed" else "")
            + f") over {s['probes']} probes, "
            f"peak RSS {s['peak_rss_mib']:.1f} MiB, skipped {s['skipped']}, "
            f"fleet {s['fleet_cpu_ms_per_probe']:.4f} ms/probe, "
            f"harness {s['harness_cpu_ms_per_probe']:.4f} ms/probe"
        )
        if "runner_cpu_ms_per_probe" in s:
            line += (
                f", runner (fork/exec, charged to neither side) "
                f"{s['runner_cpu_ms_per_probe']:.4f} ms/probe; peak RSS n/a"
            )
        if "lag_p50_ms" in s:
            line += (
                f", lag p50 {_f(s['lag_p50_ms'], 2)} ms p99 {_f(s['lag_p99_ms'], 2)} ms"
                " (bucket-interpolated)"
            )
        lines.append(line)
    if "ratio_probed_over_blackbox" in summary:
        per_round = ", ".join(f"{r:.3f}" for r in summary["ratio_per_round"])
        lines.append(
            f"ratio probed/blackbox CPU per probe: {summary['ratio_probed_over_blackbox']:.3f}"
            f" (per round: {per_round})"
        )
    if "ratio_probed_over_plugins" in summary:
        per_round = ", ".join(f"{r:.3f}" for r in summary["ratio_probed_over_plugins_per_round"])
        lines.append(
            f"ratio probed/plugins CPU per probe: {summary['ratio_probed_over_plugins']:.3f}"
            f" (per round: {per_round})"
        )
    if "ratio_blackbox_over_plugins" in summary:
        lines.append(
            f"ratio blackbox/plugins CPU per probe: {summary['ratio_blackbox_over_plugins']:.3f}"
        )
    lines.extend(
        f"ratio {side}/floor CPU per probe: {summary[f'ratio_{side}_over_floor']:.3f}"
        for side in ("probed", "blackbox", "plugins")
        if f"ratio_{side}_over_floor" in summary
    )
    if "target_met" in summary:
        verdict = "met" if summary["target_met"] else "NOT met"
        lines.append(
            f"target <= {summary['target_cpu_ms_per_probe']} CPU-ms/probe for probed: {verdict}"
        )
    if summary.get("problems"):
        lines.append("FIGURES NOT SANE:")
        lines.extend(f"  - {problem}" for problem in summary["problems"])
    return "\n".join(lines)


def command_output(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    return (done.stdout or done.stderr).strip()


def machine_info() -> dict[str, Any]:
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    probed_version = "not installed"
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        probed_version = importlib.metadata.version("probed")

    def sysctl(name: str) -> str:
        try:
            return Path("/proc/sys", *name.split(".")).read_text().strip()
        except OSError:
            return "unknown"

    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvloop": importlib.metadata.version("uvloop"),
        "aiohttp": importlib.metadata.version("aiohttp"),
        "probed": probed_version,
        "blackbox_exporter": command_output([str(BLACKBOX), "--version"]).splitlines()[0]
        if BLACKBOX.exists()
        else "missing",
        "monitoring_plugins": command_output([str(PLUGINS_DIR / "check_tcp"), "-V"])
        if (PLUGINS_DIR / "check_tcp").exists()
        else "missing",
        "clock_ticks_per_second": procstat.CLOCK_TICKS_PER_SECOND,
        "ip_local_port_range": sysctl("net.ipv4.ip_local_port_range"),
        "tcp_tw_reuse": sysctl("net.ipv4.tcp_tw_reuse"),
        "loadavg_at_start": Path("/proc/loadavg").read_text().strip(),
        "git_head": command_output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
    }


# --------------------------------------------------------------------------- main


def parse_settings(
    description: str,
    argv: list[str] | None = None,
    *,
    jobs: int = 5000,
    duration: str = "60s",
    base_port: int = 22000,
) -> BenchSettings:
    """The command line every bench_*.py shares (the keywords are its defaults)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--jobs", type=int, default=jobs, help="checks (= fleet listeners)")
    parser.add_argument("--interval", default="10s", help="each check runs once per interval")
    parser.add_argument("--timeout", default="5s", help="per-check timeout on both sides")
    parser.add_argument("--duration", default=duration, help="measurement window of each phase")
    parser.add_argument("--warmup", default=None, help="before each window (default: interval)")
    parser.add_argument("--rounds", type=int, default=2, help="probed+blackbox pairs")
    parser.add_argument(
        "--sides",
        default="probed,blackbox",
        help="comma list in phase order, of probed, blackbox, floor (a bare uvloop client) "
        "and plugins (the monitoring-plugins check, fork+exec per check)",
    )
    parser.add_argument("--max-concurrency", type=int, default=1000)
    parser.add_argument("--per-host-concurrency", type=int, default=8)
    parser.add_argument("--driver-concurrency", type=int, default=256)
    parser.add_argument(
        "--plugins-concurrency", type=int, default=64, help="plugins running at once"
    )
    parser.add_argument("--ports-per-host", type=int, default=4)
    parser.add_argument("--base-port", type=int, default=base_port, help="fleet's first port")
    parser.add_argument(
        "--fleet-args",
        default="",
        help='extra arguments for fleet.py, e.g. --fleet-args="--tls-key rsa"',
    )
    parser.add_argument(
        "--probed-cmd",
        default=None,
        help="command prefix that runs probed (default: .venv/bin/probed, else python -m probed)",
    )
    parser.add_argument(
        "--plugins-cmd",
        default=None,
        help="the plugins side's command instead of the workload's (absolute path, then "
        "arguments with {host}, {port}, {timeout}, {ca_file}, {server_name}; no shell)",
    )
    parser.add_argument(
        "--no-snapshot",
        action="store_true",
        help="run probed from the live tree (default: from a copy made at the start of the run)",
    )
    parser.add_argument("--out-dir", default=str(BENCH_DIR / "out"))
    args = parser.parse_args(argv)

    try:
        interval = parse_duration(args.interval)
        timeout = parse_duration(args.timeout)
        window = parse_duration(args.duration)
        warmup = parse_duration(args.warmup) if args.warmup else interval
    except ValueError as exc:
        parser.error(str(exc))
    sides = tuple(s.strip() for s in args.sides.split(",") if s.strip())
    if not sides or any(s not in SIDES for s in sides) or len(set(sides)) != len(sides):
        parser.error(f"--sides takes each of {', '.join(SIDES)} at most once")
    if not 1 <= args.jobs <= 18000:
        parser.error("--jobs must be in 1..18000 (one listener each, within RLIMIT_NOFILE)")
    if not 1 <= args.rounds <= 10:
        parser.error("--rounds must be in 1..10")
    if not 0 < timeout < interval:
        parser.error("--timeout must be below --interval")
    if not 5 <= window <= 1800:
        parser.error("--duration must be in 5s..30m")
    return BenchSettings(
        jobs=args.jobs,
        interval=interval,
        timeout=timeout,
        window=window,
        warmup=warmup,
        rounds=args.rounds,
        sides=sides,
        max_concurrency=args.max_concurrency,
        per_host_concurrency=args.per_host_concurrency,
        driver_concurrency=args.driver_concurrency,
        plugins_concurrency=args.plugins_concurrency,
        ports_per_host=args.ports_per_host,
        base_port=args.base_port,
        fleet_args=tuple(shlex.split(args.fleet_args)),
        probed_cmd=tuple(args.probed_cmd.split()) if args.probed_cmd else None,
        plugins_cmd=tuple(shlex.split(args.plugins_cmd)) if args.plugins_cmd else None,
        snapshot=not args.no_snapshot,
        out_dir=Path(args.out_dir),
        command=command_line(),
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def run_benchmark(settings: BenchSettings, workload: Workload, target_ms: float) -> dict[str, Any]:
    """Check the prerequisites, then run every phase on a uvloop event loop."""
    promstats.self_check()
    if "blackbox" in settings.sides and not BLACKBOX.exists():
        raise SystemExit(f"{BLACKBOX} missing: apt-get install prometheus-blackbox-exporter")
    if settings.plugins_cmd:
        workload = replace(workload, plugins_command=settings.plugins_cmd)
    if "plugins" in settings.sides:
        if not workload.plugins_command:
            raise SystemExit(f"workload {workload.name} has no plugins_command")
        if not Path(workload.plugins_command[0]).exists():
            raise SystemExit(
                f"{workload.plugins_command[0]} missing: apt-get install "
                "monitoring-plugins-basic monitoring-plugins-standard"
            )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = settings.out_dir / f"{workload.name}-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    info["probed_tree_digest_at_start"] = probed_source_digest(REPO)
    with tempfile.TemporaryDirectory(prefix="probed-bench-") as tmp:
        if "probed" in settings.sides and settings.snapshot and not settings.probed_cmd:
            settings = replace(settings, snapshot_dir=snapshot_probed(Path(tmp)))
            info["probed_snapshot_digest"] = probed_source_digest(Path(tmp))
        return uvloop.run(_run_phases(settings, workload, target_ms, run_dir, info))


async def _run_phases(
    settings: BenchSettings,
    workload: Workload,
    target_ms: float,
    run_dir: Path,
    info: dict[str, Any],
) -> dict[str, Any]:
    phase_bound = START_TIMEOUT + settings.warmup + settings.window + 2 * STOP_TIMEOUT + 30
    fleet_bound = 60 + settings.rounds * len(settings.sides) * phase_bound
    print(f"run dir {run_dir}", flush=True)
    fleet = await start_fleet(settings, workload, run_dir, fleet_bound)
    print(f"fleet: {fleet.info['listeners']} listeners on {fleet.info['hosts']} hosts", flush=True)
    workload = workload.for_fleet(fleet.info.get("extra") or {})
    phases: list[PhaseResult] = []
    runners = {
        "probed": probed_phase,
        "blackbox": blackbox_phase,
        "floor": floor_phase,
        "plugins": plugins_phase,
    }
    try:
        for round_no in range(1, settings.rounds + 1):
            for side in settings.sides:
                print(f"round {round_no}: {side} ...", flush=True)
                phase = await runners[side](settings, workload, fleet, run_dir, round_no)
                phases.append(phase)
                print(format_table([phase]).splitlines()[-1], flush=True)
    finally:
        with contextlib.suppress(OSError, KeyError):  # KeyError: it has exited (a zombie)
            fleet.info["peak_rss_mib"] = procstat.peak_rss_mib(fleet.proc.pid)
        fleet.info["exit_code"] = await stop_process(fleet.proc)
        fleet.info["log_tail"] = tail(run_dir / "fleet.log", 3)
    summary = summarize(phases, target_ms)
    result = {
        "workload": workload.name,
        "command": settings.command,
        "settings": asdict(settings),
        "machine": info,
        "fleet": fleet.info,
        "modules": {
            "probed": workload.probed_module,
            "blackbox": workload.blackbox_module,
            "plugins": list(workload.plugins_command),
        },
        "phases": [asdict(p) for p in phases],
        "summary": summary,
    }
    out_file = run_dir.with_suffix(".json")
    out_file.write_text(json.dumps(_jsonable(result), indent=2))
    print()
    print(format_table(phases))
    print()
    print(format_summary(summary))
    print(f"\nraw results: {out_file}\nconfigs and logs: {run_dir}")
    return result


def command_line() -> str:
    return shlex.join([os.path.relpath(sys.executable, REPO), *sys.argv])
