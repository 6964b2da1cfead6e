"""Fleet scale (issue 8): a mixed config of up to 100,000 jobs in one probed process.

    .venv/bin/python benchmarks/bench_scale.py                  # growth 1k..100k, then the 100k run
    .venv/bin/python benchmarks/bench_scale.py --inproc         # no daemon: load, apply, render

The mix (``MIX``): 40 % HTTP GET, 7.5 % HTTPS GET, 7.5 % TLS certificate, 10 % Heartbleed,
15 % TCP banner, 10 % SMTP, 5 % IMAP, 5 % POP3. Six fleet processes (``fleet.py``, one per
kind, each in its own 127.x range) hold the listeners; HTTP(S) sites share a listener ten to
one (one path per site, like virtual hosts), every other job has a listener of its own.

``run`` (the default): for each size of ``--growth`` a fresh daemon loads the config
(``load_s``: exec to ``/-/ready``), runs one interval of warm-up, then ``--windows`` intervals
are measured: daemon CPU (/proc), runs, skips, lag quantiles from
``probed_scheduler_lag_seconds``, peak RSS. At the largest size it then measures the scrape
(back-to-back scrapes against quiet periods, page size plain and gzip) and a reload of a
config that differs in a few jobs (``POST /-/reload`` time, lag around it, and whether every
unchanged job kept its result).

``--inproc``: the same configs without a daemon or traffic, in this process: config load,
``Scheduler.apply``, a publish of one real outcome per job (each module's outcome from one
real run against a tiny fleet), the render and gzip of ``/metrics``, with CPU (process time)
and RSS after each step. Quick enough to check an optimisation (about 20 s at 100k).
``--distinct-values``: each job's own durations and start, jobs published in random order
(a live page, ~15 MB gzipped, not 5); ``--save-page FILE`` keeps the page (``bench_gzip.py``).

Everything stays on 127.0.0.0/8; every wait is bounded and the fleets exit by themselves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import gzip
import ipaddress
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import fleet
import harness
import procstat
import promstats
import uvloop

REPO = harness.REPO
OUT = harness.BENCH_DIR / "out"
BASE_PORT = 25000
INPROC_BASE_PORT = 25100
PORTS_PER_HOST = 4
SITES_PER_LISTENER = 10  # HTTP(S) jobs per listener (one path each)
LISTEN_TIMEOUT = 180.0  # seconds a daemon of 100k jobs may take to answer /-/ready
# A saturated daemon serves a 100k-job page slowly: allow it, but never hang.
SCRAPE_TIMEOUT = aiohttp.ClientTimeout(total=300)


@dataclass(frozen=True, slots=True)
class Kind:
    """One fleet process: its listener kind and 127.x range."""

    name: str
    first_host: str


KINDS = {
    "banner": Kind("banner", "127.16.0.1"),
    "http": Kind("http", "127.17.0.1"),
    "tls": Kind("tls", "127.18.0.1"),
    "smtp": Kind("smtp", "127.19.0.1"),
    "pop3": Kind("pop3", "127.20.0.1"),
    "imap": Kind("imap", "127.21.0.1"),
}


@dataclass(frozen=True, slots=True)
class ModuleMix:
    """One module of the mix: its share, its fleet kind and how a listener is a target."""

    name: str
    kind: str
    share: float
    table: dict[str, Any]  # the [modules.NAME] body; "{ca}" is the fleet's CA file
    target: Callable[[str, int, int], str]  # (host, port, site number) -> job target
    per_listener: int = 1


def _host_port(host: str, port: int, site: int) -> str:
    del site
    return f"{host}:{port}"


def _url(scheme: str) -> Callable[[str, int, int], str]:
    def target(host: str, port: int, site: int) -> str:
        return f"{scheme}://{host}:{port}/site{site}"

    return target


_TLS_CONFIG = {"ca_file": "{ca}", "server_name": fleet.TLS_SERVER_NAME}
MIX = (
    ModuleMix("http_2xx", "http", 0.40, {"probe": "http", "ip_protocol": "ip4"}, _url("http"), 10),
    ModuleMix(
        "https_2xx",
        "tls",
        0.075,
        {"probe": "http", "ip_protocol": "ip4", "tls_config": _TLS_CONFIG},
        _url("https"),
        10,
    ),
    ModuleMix(
        "tls_cert",
        "tls",
        0.075,
        {"probe": "tls", "ip_protocol": "ip4", "tls_config": _TLS_CONFIG},
        _host_port,
    ),
    ModuleMix("heartbleed", "tls", 0.10, {"probe": "heartbleed", "ip_protocol": "ip4"}, _host_port),
    ModuleMix(
        "ssh_banner",
        "banner",
        0.15,
        {"probe": "tcp", "ip_protocol": "ip4", "query": [{"expect": "^SSH-2\\.0-"}]},
        _host_port,
    ),
    ModuleMix(
        "smtp", "smtp", 0.10, {"probe": "smtp", "tls": "none", "ip_protocol": "ip4"}, _host_port
    ),
    ModuleMix(
        "imap", "imap", 0.05, {"probe": "imap", "tls": "none", "ip_protocol": "ip4"}, _host_port
    ),
    ModuleMix(
        "pop3", "pop3", 0.05, {"probe": "pop3", "tls": "none", "ip_protocol": "ip4"}, _host_port
    ),
)


def job_counts(jobs: int) -> dict[str, int]:
    """Jobs per module for ``jobs`` in total (the remainder goes to the first module)."""
    counts = {m.name: int(jobs * m.share) for m in MIX}
    counts[MIX[0].name] += jobs - sum(counts.values())
    return counts


def listeners_needed(jobs: int, extra: int = 0) -> dict[str, int]:
    """Listeners per fleet kind: modules of one kind share the kind's first listeners.
    ``extra``: targets per module beyond ``jobs`` (the reload test adds them)."""
    counts = job_counts(jobs)
    need: dict[str, int] = dict.fromkeys(KINDS, 1)
    for m in MIX:
        wanted = math.ceil((counts[m.name] + extra) / m.per_listener)
        need[m.kind] = max(need[m.kind], wanted)
    return need


def addresses(
    kind: str, listeners: int, base_port: int = BASE_PORT, kinds: dict[str, Kind] = KINDS
) -> list[tuple[str, int]]:
    first = ipaddress.IPv4Address(kinds[kind].first_host)
    return fleet.fleet_addresses(listeners, PORTS_PER_HOST, base_port, first)


def _toml(value: Any, ca: str) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v, ca)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v, ca) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value.replace("{ca}", ca))
    return harness._toml_value(value)


def write_config(
    run_dir: Path,
    jobs: int,
    *,
    ca_file: str,
    listen: str,
    interval: float,
    timeout: float,
    skip: int = 0,
    extra: int = 0,
    base_port: int = BASE_PORT,
    kinds: dict[str, Kind] = KINDS,
) -> Path:
    """A probes.toml of ``jobs`` mixed jobs, one hosts file per module. ``skip`` leaves out
    each module's first ``skip`` targets and ``extra`` adds as many past the end (reload).
    ``kinds``: where the fleets are (another benchmark's ranges, e.g. the soak's)."""
    counts = job_counts(jobs)
    lines = [
        "[server]",
        f'listen = "{listen}"',
        "max_concurrency = 1000",
        "per_host_concurrency = 8",
        "",
        "[defaults]",
        f'interval = "{harness.toml_duration(interval)}"',
        f'timeout = "{harness.toml_duration(timeout)}"',
        "",
    ]
    for m in MIX:
        lines.append(f"[modules.{m.name}]")
        lines += [f"{k} = {_toml(v, ca_file)}" for k, v in m.table.items()]
        lines.append("")
    need = listeners_needed(jobs, extra)
    for m in MIX:
        pool = addresses(m.kind, need[m.kind], base_port, kinds)
        targets = []
        for i in range(skip, counts[m.name] + extra):
            host, port = pool[i // m.per_listener]
            targets.append(m.target(host, port, i % m.per_listener))
        hosts = run_dir / f"hosts-{m.name}{'-reload' if skip or extra else ''}.txt"
        hosts.write_text("\n".join(targets) + "\n")
        lines += [
            "[[groups]]",
            f'name = "{m.name}"',
            f'modules = ["{m.name}"]',
            f'hosts_file = "{hosts.name}"',
            'labels = { env = "bench", team = "ops" }',
            "",
        ]
    path = run_dir / f"probes-{jobs}{'-reload' if skip or extra else ''}.toml"
    path.write_text("\n".join(lines))
    return path


# --------------------------------------------------------------------------- fleets


@dataclass(slots=True)
class Fleets:
    procs: dict[str, subprocess.Popen[bytes]]
    ca_file: str

    def cpu(self) -> float:
        total = 0.0
        for proc in self.procs.values():
            with contextlib.suppress(OSError):
                total += procstat.process_cpu(proc.pid).total
        return total

    async def stop(self) -> None:
        await asyncio.gather(*(harness.stop_process(p) for p in self.procs.values()))


def _check_fleets(procs: dict[str, subprocess.Popen[bytes]], run_dir: Path, started: float) -> None:
    for name, proc in procs.items():
        if proc.poll() is not None:
            log = harness.tail(run_dir / f"fleet-{name}.log")
            raise RuntimeError(f"fleet {name} exited:\n{log}")
    if time.monotonic() - started > harness.START_TIMEOUT:
        raise RuntimeError("fleets not ready in time")


async def start_fleets(
    need: dict[str, int],
    run_dir: Path,
    max_seconds: float,
    base_port: int = BASE_PORT,
    *,
    kinds: dict[str, Kind] = KINDS,
    fleet_args: tuple[str, ...] = (),
) -> Fleets:
    """One ``fleet.py`` per kind (``fleet_args``: more options for each, e.g. ``--flap``)."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    outs: dict[str, Path] = {}
    for name, kind in kinds.items():
        outs[name] = run_dir / f"fleet-{name}.json"
        outs[name].unlink(missing_ok=True)  # written again once the fleet listens
        argv = [
            sys.executable,
            str(harness.BENCH_DIR / "fleet.py"),
            f"--kind={name}",
            f"--listeners={need[name]}",
            f"--first-host={kind.first_host}",
            f"--base-port={base_port}",
            f"--ports-per-host={PORTS_PER_HOST}",
            "--backlog=512",
            f"--out={outs[name]}",
            f"--max-seconds={max_seconds:.0f}",
            *fleet_args,
        ]
        procs[name] = harness.start_process(argv, run_dir / f"fleet-{name}.log")
    started = time.monotonic()
    fleets = Fleets(procs, "")
    try:
        while not all(p.exists() for p in outs.values()):
            _check_fleets(procs, run_dir, started)
            await asyncio.sleep(0.2)
    except BaseException:
        await fleets.stop()
        raise
    for name, path in outs.items():
        info = json.loads(path.read_text())
        got = [(t["host"], t["port"]) for t in info["targets"]]
        if got != addresses(name, need[name], base_port, kinds):
            await fleets.stop()
            raise RuntimeError(f"fleet {name} listens elsewhere than the config assumes")
        if name == "tls":
            fleets.ca_file = info["extra"]["ca_file"]
    return fleets


# --------------------------------------------------------------------------- in-process


def rss_mib() -> float:
    return procstat.status_kib(os.getpid(), "VmRSS") / 1024


async def sample_outcomes(cfg: Any) -> dict[str, Any]:
    """One real outcome per module (the first job of each), run against the fleets."""
    from probed.resources import Resources  # noqa: PLC0415 - the daemon's modules, only here
    from probed.runner import execute  # noqa: PLC0415

    env = Resources(cfg.secrets)
    firsts: dict[str, Any] = {}
    for job in cfg.jobs:
        firsts.setdefault(job.module, job)
    try:
        outcomes = {name: await execute(job, env) for name, job in firsts.items()}
    finally:
        await env.close()
    bad = [name for name, o in outcomes.items() if not o.success]
    if bad:
        raise RuntimeError(f"sample runs failed: {bad}")
    return outcomes


def streamed_scrape_cpu(exposition: Any) -> tuple[float, float, int]:
    """CPU (all, and of the snapshot alone) and gzip size of what the server does for a gzip
    scrape: snapshot, join and compress a slice at a time (probed.server.metrics without the
    socket and the thread)."""
    from probed import server  # noqa: PLC0415

    cpu = time.process_time()
    parts = exposition.render_parts()
    snapshot = time.process_time() - cpu
    if hasattr(server, "compressor"):  # ISA-L when installed, else zlib
        packer = server.compressor()
    else:  # probed before the ISA-L change (--probed-src of an older tree)
        packer = zlib.compressobj(server.GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    size = 0
    for start in range(0, len(parts), server.STREAM_PARTS):
        size += len(packer.compress(b"".join(parts[start : start + server.STREAM_PARTS])))
    size += len(packer.flush())
    return time.process_time() - cpu, snapshot, size


def own_copy(outcome: Any, rng: random.Random | None = None, now: float = 0.0) -> Any:
    """The outcome as a run of its own would leave it: new floats, tuples and label text.

    With ``rng`` (``--distinct-values``) also values of its own, as on a live page: the
    durations are the sample's times 0.5-2 (full-precision floats, like perf_counter
    differences) and the start is within the last minute, to the ms. Without, every job of
    a module has the same values and the page compresses three times better than a live one.
    """

    def fresh(text: str) -> str:
        return (text + " ")[:-1] if text else text

    def vary(value: float) -> float:
        return value * rng.uniform(0.5, 2.0) if rng else value + 1e-9

    started = round(now - rng.uniform(0.0, 60.0), 3) if rng else outcome.started * 1.0
    return dataclasses.replace(
        outcome,
        started=started,
        duration=vary(outcome.duration),
        phases=tuple((name, vary(value)) for name, value in outcome.phases),
        samples=tuple((f, fresh(extra), value + 0.0) for f, extra, value in outcome.samples),
    )


async def inproc(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    from probed import config as config_mod  # noqa: PLC0415
    from probed.exposition import Exposition, SelfMetrics  # noqa: PLC0415
    from probed.scheduler import Scheduler  # noqa: PLC0415

    jobs = max(args.growth)
    # Other ports than a full run's fleets, so both can run at once.
    fleets = await start_fleets(dict.fromkeys(KINDS, 4), run_dir, 120, INPROC_BASE_PORT)
    try:
        small = write_config(
            run_dir,
            len(MIX) * 10,
            ca_file=fleets.ca_file,
            listen="127.0.0.1:1",
            interval=60,
            timeout=10,
            base_port=INPROC_BASE_PORT,
        )
        outcomes = await sample_outcomes(config_mod.load(small))
    finally:
        await fleets.stop()
    path = write_config(
        run_dir,
        jobs,
        ca_file=fleets.ca_file,
        listen="127.0.0.1:1",
        interval=args.interval,
        timeout=10.0,
    )
    gc.collect()
    figures: dict[str, Any] = {"jobs": jobs, "rss_base_mib": rss_mib()}
    wall, cpu = time.perf_counter(), time.process_time()
    cfg = config_mod.load(path)
    figures["load_wall_s"] = time.perf_counter() - wall
    figures["load_cpu_s"] = time.process_time() - cpu
    gc.collect()
    figures["rss_after_load_mib"] = rss_mib()
    metrics = SelfMetrics()
    exposition = Exposition(metrics)
    scheduler = Scheduler(None, exposition, metrics, 1000, 8)  # type: ignore[arg-type]
    wall = time.perf_counter()
    scheduler.apply(cfg.jobs)
    figures["apply_wall_s"] = time.perf_counter() - wall
    gc.collect()
    figures["rss_after_apply_mib"] = rss_mib()
    if args.gc_freeze:  # as the daemon does once its first config is scheduled
        gc.freeze()
    rng = random.Random(8) if args.distinct_values else None
    order = list(cfg.jobs)
    if rng:  # a daemon's first results come in no order: a job's neighbours on the page
        rng.shuffle(order)  # are other modules' and targets' (in config order they share labels)
    now = time.time()
    wall = time.perf_counter()
    for job in order:
        # What a finished run does, with a result of the job's own (new floats, tuples).
        state: Any = scheduler._jobs[job.key]
        outcome = own_copy(outcomes[job.module], rng, now)
        if hasattr(scheduler, "_publish"):
            scheduler._publish(state, outcome)
        else:  # probed before issue 8 (--probed-src of an older tree)
            state.outcome = outcome
            exposition.publish(job.key, state.labels, job.spec, state.outcome)
    figures["publish_us_per_job"] = (time.perf_counter() - wall) / jobs * 1e6
    gc.collect()
    figures["rss_after_publish_mib"] = rss_mib()
    wall = time.perf_counter()
    gc.collect()  # what a full collection costs the loop in the steady state
    figures["full_collection_s"] = time.perf_counter() - wall
    figures["gc_tracked_objects"] = len(gc.get_objects())
    figures["gc_frozen_objects"] = gc.get_freeze_count()
    renders, gzips, streams, snapshots = [], [], [], []
    page = packed = b""
    streamed_bytes = None
    for _ in range(3):
        cpu = time.process_time()
        page = exposition.render()
        renders.append(time.process_time() - cpu)
        if args.save_page:
            args.save_page.write_bytes(page)
            args.save_page = None
        cpu = time.process_time()
        packed = gzip.compress(page, 1)
        gzips.append(time.process_time() - cpu)
        del page
        if hasattr(exposition, "render_parts"):
            seconds, snapshot, streamed_bytes = streamed_scrape_cpu(exposition)
            streams.append(seconds)
            snapshots.append(snapshot)
    figures.update(
        render_whole_page_cpu_s=min(renders),
        gzip1_whole_page_cpu_s=min(gzips),
        streamed_gzip_scrape_cpu_s=min(streams) if streams else None,
        snapshot_cpu_s=min(snapshots) if snapshots else None,
        page_bytes=len(exposition.render()),
        page_gzip_bytes=len(packed),
        streamed_gzip_bytes=streamed_bytes,
    )
    del packed
    changed = write_config(
        run_dir,
        jobs,
        ca_file=fleets.ca_file,
        listen="127.0.0.1:1",
        interval=args.interval,
        timeout=10.0,
        skip=args.reload_changes,
        extra=args.reload_changes,
    )
    figures["reload_on_loop"] = await reload_on_loop(scheduler, exposition, metrics, cfg, changed)
    wall, cpu = time.perf_counter(), time.process_time()
    reloaded = config_mod.load(path)
    figures["reload_load_cpu_s"] = time.process_time() - cpu
    wall2 = time.perf_counter()
    stats = scheduler.apply(reloaded.jobs)
    figures["reload_apply_s"] = time.perf_counter() - wall2
    figures["reload_total_wall_s"] = time.perf_counter() - wall
    figures["reload_unchanged"] = stats.unchanged  # the changed config, loaded again
    figures["reload_results_kept"] = sum(
        1 for job in reloaded.jobs if job.key in exposition and scheduler.outcome(job.key)
    )
    base = figures["rss_base_mib"]
    for step in ("load", "apply", "publish"):
        figures[f"bytes_per_job_to_{step}"] = (
            (figures[f"rss_after_{step}_mib"] - base) * 2**20 / jobs
        )
    await scheduler.stop(0)
    return figures


def minor_faults(pid: int | str = "self") -> int:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return int(raw[raw.rindex(")") + 2 :].split()[7])  # field 10 of proc(5): minflt


async def reload_on_loop(
    scheduler: Any, exposition: Any, metrics: Any, cfg: Any, changed: Path
) -> dict[str, Any]:
    """The daemon's own reload (``Daemon.reload``: forked child, rebuild, apply, trim) of
    ``changed`` over the published state, with a 1 ms ticker on the loop and a gc callback:
    where the loop is held (each stall over 5 ms, each collection over 1 ms, with their
    offsets from the start of the reload), and the reload's own step times (its log line)."""
    import structlog  # noqa: PLC0415

    from probed.app import Daemon  # noqa: PLC0415

    if not hasattr(Daemon, "reload"):
        return {}
    daemon = Daemon(cfg)
    # The scheduler with every job's result stands in for the daemon's own; no run starts.
    daemon.scheduler, daemon.exposition, daemon.metrics = scheduler, exposition, metrics
    if scheduler._timer is not None:
        scheduler._timer.cancel()
        scheduler._timer = None
    scheduler._timer_at = -math.inf  # _push never arms it again
    original = cfg.path.read_bytes()
    shutil.copyfile(changed, cfg.path)
    clock = time.perf_counter
    collections: list[tuple[float, int, float, int]] = []
    gc_started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = clock()
        else:
            now = clock()
            collections.append((gc_started[0], info["generation"], now - gc_started[0], 0))

    gaps: list[tuple[float, float]] = []

    async def tick() -> None:
        last = clock()
        while True:
            await asyncio.sleep(0.001)
            now = clock()
            gaps.append((now, now - last))
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.2)
    gc.callbacks.append(on_gc)
    rss0, faults0 = rss_mib(), minor_faults()
    started = clock()
    try:
        with structlog.testing.capture_logs() as logs:
            ok, message = await daemon.reload()
        wall = clock() - started
        faults = minor_faults() - faults0
        await asyncio.sleep(0.5)
    finally:
        gc.callbacks.remove(on_gc)
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        cfg.path.write_bytes(original)
    during = sorted(g for t, g in gaps if started <= t <= started + wall + 0.5)
    done = [e for e in logs if e.get("event") == "configuration reloaded"]
    return {
        "ok": ok,
        "message": message,
        "wall_s": wall,
        "steps_s": done[0].get("seconds") if done else None,
        "rss_before_mib": rss0,
        "rss_after_mib": rss_mib(),
        "minor_faults": faults,
        "tick_max_ms": during[-1] * 1000 if during else None,
        "tick_p99_ms": during[int(len(during) * 0.99)] * 1000 if during else None,
        "stalls_over_5ms": [
            (round((t - g - started) * 1000, 1), round(g * 1000, 1))
            for t, g in gaps
            if g > 0.005 and t >= started
        ],
        "collections_over_1ms": [
            (round((t - started) * 1000, 1), gen, round(d * 1000, 1))
            for t, gen, d, _ in collections
            if d > 0.001
        ],
        "collections": {
            f"gen{gen}": sum(1 for c in collections if c[1] == gen) for gen in range(3)
        },
    }


# --------------------------------------------------------------------------- the daemon


async def scrape_text(session: aiohttp.ClientSession, url: str) -> tuple[str, float]:
    return await harness.scrape(session, url)


def lag_summary(s0: list[promstats.Sample], s1: list[promstats.Sample]) -> dict[str, Any]:
    name = harness.LAG_HISTOGRAM
    delta = promstats.bucket_delta(
        promstats.histogram_buckets(s1, name), promstats.histogram_buckets(s0, name)
    )
    finite = [b for b, v in sorted(delta.items()) if not math.isinf(b)]
    worst = next((b for b in reversed(finite) if delta[b] < delta[math.inf]), 0.0)
    return {
        "lag_p50_ms": promstats.histogram_quantile(0.5, delta) * 1000,
        "lag_p99_ms": promstats.histogram_quantile(0.99, delta) * 1000,
        "lag_max_above_ms": worst * 1000,  # some run started later than this
        "lag_observations": delta.get(math.inf, 0.0),
        "lag_buckets": {f"{b:g}": v for b, v in sorted(delta.items())},
    }


WANTED = [
    f"{harness.LAG_HISTOGRAM}_bucket",
    harness.RUNS,
    harness.SKIPS,
    harness.ERRORS,
    harness.SUCCESS,
    "probed_runs_failed_total",
    "probe_last_run_timestamp_seconds",
]


class Daemon:
    """``python -m probed run`` started in ``src`` (the tree, or a copy of its probed/);
    ``launcher`` replaces ``-m probed`` (e.g. ``memwatch.py ... --``)."""

    def __init__(
        self,
        run_dir: Path,
        config: Path,
        listen: str,
        tag: str,
        *,
        src: Path = REPO,
        launcher: tuple[str, ...] = ("-m", "probed"),
    ) -> None:
        self.url = f"http://{listen}"
        self.log_path = run_dir / f"probed-{tag}.log"
        argv = [str(harness.VENV_PYTHON), *launcher, "run", "-c", str(config)]
        self.started = time.monotonic()
        self.proc = harness.start_process(argv, self.log_path, cwd=src)
        with contextlib.suppress(OSError):
            # The fleet's share of descriptors is separate; 1000 runs in flight need few.
            resource.prlimit(self.proc.pid, resource.RLIMIT_NOFILE, (65536, 65536))

    async def ready(self, session: aiohttp.ClientSession) -> float:
        """Seconds from exec until /-/ready answers 200 (config loaded, jobs scheduled)."""
        deadline = self.started + LISTEN_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"probed exited:\n{harness.tail(self.log_path)}")
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with session.get(
                    self.url + "/-/ready", timeout=aiohttp.ClientTimeout(total=5)
                ) as response:
                    if response.status == 200:
                        return time.monotonic() - self.started
            await asyncio.sleep(0.05)
        raise RuntimeError(f"probed not ready:\n{harness.tail(self.log_path)}")

    async def samples(self, session: aiohttp.ClientSession) -> list[promstats.Sample]:
        text, _ = await harness.scrape(session, self.url + "/metrics")
        return promstats.parse_samples(text, WANTED)

    def cpu(self) -> procstat.CpuSample:
        return procstat.process_cpu(self.proc.pid)

    def memory(self) -> dict[str, float]:
        """Resident now and its high-water mark so far, MiB."""
        pid = self.proc.pid
        return {
            "rss_mib": procstat.status_kib(pid, "VmRSS") / 1024,
            "peak_rss_mib": procstat.peak_rss_mib(pid),
        }

    async def stop(self) -> dict[str, Any]:
        code = await harness.stop_process(self.proc)
        return {"exit_code": code, "log": harness.scan_log(self.log_path)}


async def measure_window(
    daemon: Daemon, session: aiohttp.ClientSession, fleets: Fleets, seconds: float
) -> dict[str, Any]:
    s0 = await daemon.samples(session)
    c0, f0, m0 = daemon.cpu(), fleets.cpu(), procstat.machine_cpu()
    await asyncio.sleep(seconds)
    c1, f1, m1 = daemon.cpu(), fleets.cpu(), procstat.machine_cpu()
    s1 = await daemon.samples(session)
    window = c1.wall - c0.wall
    cpu, user, system = procstat.cpu_delta(c0, c1)
    runs = promstats.sum_samples(s1, harness.RUNS) - promstats.sum_samples(s0, harness.RUNS)
    busy, steal = procstat.machine_busy_cores(m0, m1)
    fleet_cores = (f1 - f0) / window
    return {
        "window_s": round(window, 1),
        "runs": round(runs),
        "runs_per_s": runs / window,
        "cpu_cores": cpu / window,
        "user_s": user,
        "system_s": system,
        "cpu_ms_per_run": cpu * 1000 / runs if runs else math.nan,
        "skipped": promstats.sum_samples(s1, harness.SKIPS)
        - promstats.sum_samples(s0, harness.SKIPS),
        "failed": promstats.sum_samples(s1, "probed_runs_failed_total")
        - promstats.sum_samples(s0, "probed_runs_failed_total"),
        "errors": promstats.sum_samples(s1, harness.ERRORS)
        - promstats.sum_samples(s0, harness.ERRORS),
        "jobs_ok": promstats.count_samples(s1, harness.SUCCESS, 1.0),
        "jobs_seen": promstats.count_samples(s1, harness.SUCCESS),
        "fleet_cores": fleet_cores,
        "machine_busy_cores": busy,
        "steal_cores": steal,
        "other_cores": max(0.0, busy - cpu / window - fleet_cores),
        **lag_summary(s0, s1),
    }


async def measure_scrapes(daemon: Daemon, seconds: float, rounds: int) -> dict[str, Any]:
    """Scrape CPU while the jobs run: CPU over back-to-back gzip scrapes minus CPU over as
    long a quiet period right before and after (the jobs' own rate), per scrape."""
    url = daemon.url + "/metrics"
    # The body as sent: sizes on the wire, and no decompression in this process.
    async with aiohttp.ClientSession(timeout=SCRAPE_TIMEOUT, auto_decompress=False) as raw:
        async with raw.get(url, headers={"Accept-Encoding": "identity"}) as r:
            plain_size = len(await r.read())
        async with raw.get(url, headers={"Accept-Encoding": "gzip"}) as r:
            gzip_size = len(await r.read())
            encoding = r.headers.get("Content-Encoding", "")
        per_round = []
        walls: list[float] = []
        for _ in range(rounds):
            q0 = daemon.cpu()
            await asyncio.sleep(seconds)
            q1 = daemon.cpu()
            count = 0
            while daemon.cpu().wall - q1.wall < seconds:
                started = time.monotonic()
                async with raw.get(url, headers={"Accept-Encoding": "gzip"}) as r:
                    await r.read()
                walls.append(time.monotonic() - started)
                count += 1
            q2 = daemon.cpu()
            await asyncio.sleep(seconds)
            q3 = daemon.cpu()
            quiet_rate = (q1.total - q0.total + q3.total - q2.total) / (
                q1.wall - q0.wall + q3.wall - q2.wall
            )
            busy = q2.total - q1.total - quiet_rate * (q2.wall - q1.wall)
            per_round.append(
                {
                    "scrapes": count,
                    "cpu_s_per_scrape": busy / count,
                    "quiet_cores": quiet_rate,
                }
            )
    costs = sorted(r["cpu_s_per_scrape"] for r in per_round)
    return {
        "page_bytes": plain_size,
        "page_gzip_bytes": gzip_size,
        "content_encoding": encoding,
        "rounds": per_round,
        "cpu_s_per_scrape_median": costs[len(costs) // 2],
        "scrape_wall_s_median": sorted(walls)[len(walls) // 2],
    }


async def measure_reload(
    daemon: Daemon,
    session: aiohttp.ClientSession,
    config: Path,
    changed: Path,
    settle: float,
) -> dict[str, Any]:
    """Swap in ``changed`` (a few jobs removed and added) via POST /-/reload: its time,
    lag around it, and whether each job in both configs kept its last result."""
    text0, _ = await harness.scrape(session, daemon.url + "/metrics")
    before = promstats.parse_samples(text0, WANTED)
    last_run = {
        (s.labels["module"], s.labels["target"]): s.value
        for s in before
        if s.name == "probe_last_run_timestamp_seconds"
    }
    shutil.copyfile(changed, config)
    started, started_unix = time.monotonic(), time.time()
    faults, cpu = minor_faults(daemon.proc.pid), daemon.cpu()
    async with session.post(daemon.url + "/-/reload", timeout=SCRAPE_TIMEOUT) as r:
        message = (await r.text()).strip()
        status = r.status
    reload_s = time.monotonic() - started
    faults = minor_faults(daemon.proc.pid) - faults
    cpu_s = daemon.cpu().total - cpu.total
    text1, _ = await harness.scrape(session, daemon.url + "/metrics")
    after = promstats.parse_samples(text1, WANTED)
    now_run = {
        (s.labels["module"], s.labels["target"]): s.value
        for s in after
        if s.name == "probe_last_run_timestamp_seconds"
    }
    kept = sum(1 for k, v in now_run.items() if k in last_run and v >= last_run[k])
    common = set(last_run) & set(now_run)
    lost = len([k for k in last_run if k not in now_run])
    await asyncio.sleep(settle)
    s2 = await daemon.samples(session)
    return {
        "status": status,
        "message": message,
        "reload_s": reload_s,
        "started_unix": started_unix,  # to line up with the daemon's log and --loopwatch
        "daemon_cpu_s": cpu_s,  # the daemon's own (not the child's) CPU during the reload
        "daemon_minor_faults": faults,  # copy-on-write faults while the child lives, mostly
        "jobs_before_with_result": len(last_run),
        "jobs_after_with_result": len(now_run),
        "unchanged_jobs_keeping_result": kept,
        "results_gone": lost,  # should equal the number of removed jobs
        "common": len(common),
        **{f"around_{k}": v for k, v in lag_summary(before, s2).items()},
    }


async def py_spy(pid: int, seconds: float, out: Path) -> str:
    """Sample the daemon without stopping it (``--nonblocking``): collapsed stacks."""
    spy = REPO / ".venv" / "bin" / "py-spy"
    argv = [str(spy), "record", "-p", str(pid), "-d", f"{seconds:.0f}", "-r", "50"]
    argv += ["--nonblocking", "-f", "raw", "-o", str(out)]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    await asyncio.wait_for(proc.wait(), seconds + 60)
    return str(out)


PROFILE_MARKS = {
    "probe coroutines (all protocols)": "execute (probed/runner.py",
    "aiohttp client (http probe)": "aiohttp/client",
    "ssl handshakes": "do_handshake",
    "publish (render + cache)": "Scheduler._publish",
    "structlog lines": "structlog",
    "scheduler timer": "Scheduler._on_timer",
    "/metrics handler": "metrics (probed/server.py",
    "reload (config load thread)": "config.py",
}


def summarise_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """py-spy's collapsed stacks -> inclusive shares of a few marks, and the hottest leaves."""
    total = 0
    inclusive = dict.fromkeys(PROFILE_MARKS, 0)
    leaves: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        for name, mark in PROFILE_MARKS.items():
            if mark in stack:
                inclusive[name] += count
        leaf = stack.rsplit(";", 1)[-1]
        leaves[leaf] = leaves.get(leaf, 0) + count
    hottest = sorted(leaves.items(), key=lambda kv: -kv[1])[:top]
    return {
        "samples": total,
        "inclusive_share": {k: round(v / total, 3) for k, v in inclusive.items()} if total else {},
        "hottest_leaves": [(leaf, round(n / total, 3)) for leaf, n in hottest] if total else [],
    }


async def one_size(
    args: argparse.Namespace,
    run_dir: Path,
    fleets: Fleets,
    session: aiohttp.ClientSession,
    *,
    jobs: int,
    last: bool,
) -> dict[str, Any]:
    listen = f"127.0.0.1:{harness.free_port()}"
    config = write_config(
        run_dir,
        jobs,
        ca_file=fleets.ca_file,
        listen=listen,
        interval=args.interval,
        timeout=args.timeout,
    )
    live = run_dir / f"probes-{jobs}-live.toml"
    shutil.copyfile(config, live)
    launcher: tuple[str, ...] = ("-m", "probed")
    if args.loopwatch:
        watch_out = run_dir / f"loopwatch-{jobs}.jsonl"
        launcher = (str(harness.BENCH_DIR / "loopwatch.py"), "--out", str(watch_out), "--")
    src = args.probed_src or REPO
    daemon = Daemon(run_dir, live, listen, str(jobs), src=src, launcher=launcher)
    result: dict[str, Any] = {"jobs": jobs}
    try:
        result["load_and_start_s"] = await daemon.ready(session)
        result["rss_after_start_mib"] = procstat.status_kib(daemon.proc.pid, "VmRSS") / 1024
        await asyncio.sleep(args.interval)  # warm-up: every job has run once
        windows = args.windows if last else 1
        if last and args.py_spy:
            spy = asyncio.create_task(
                py_spy(daemon.proc.pid, args.interval, run_dir / f"py-spy-{jobs}.txt")
            )
        result["steady"] = await measure_window(daemon, session, fleets, args.interval * windows)
        if last and args.py_spy:
            result["py_spy"] = summarise_profile(Path(await spy))
        result["peak_rss_mib"] = procstat.peak_rss_mib(daemon.proc.pid)
        result["memory"] = {"steady": daemon.memory()}
        if last:
            result["scrape"] = await measure_scrapes(daemon, args.scrape_seconds, 3)
            result["memory"]["after_scrapes"] = daemon.memory()
            changed = write_config(
                run_dir,
                jobs,
                ca_file=fleets.ca_file,
                listen=listen,
                interval=args.interval,
                timeout=args.timeout,
                skip=args.reload_changes,
                extra=args.reload_changes,
            )
            result["reload"] = await measure_reload(daemon, session, live, changed, 10.0)
            result["memory"]["after_reload"] = daemon.memory()
    finally:
        result["daemon"] = await daemon.stop()
    return result


async def run(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    biggest = max(args.growth)
    need = listeners_needed(biggest, args.reload_changes)
    budget = len(args.growth) * (args.interval * 2 + LISTEN_TIMEOUT)
    budget += args.interval * args.windows + 6 * args.scrape_seconds * 3 + 600
    fleets = await start_fleets(need, run_dir, budget)
    sizes: list[dict[str, Any]] = []
    try:
        async with aiohttp.ClientSession(timeout=SCRAPE_TIMEOUT) as session:
            for jobs in sorted(args.growth):
                print(f"-- {jobs} jobs", flush=True)
                try:
                    size = await one_size(
                        args, run_dir, fleets, session, jobs=jobs, last=jobs == biggest
                    )
                except (aiohttp.ClientError, TimeoutError, RuntimeError) as exc:
                    # Keep the sizes measured so far; say what failed at this one.
                    size = {"jobs": jobs, "error": f"{type(exc).__name__}: {exc}"}
                sizes.append(size)
                print(json.dumps(_brief(sizes[-1])), flush=True)
    finally:
        await fleets.stop()
    return {"listeners": need, "sizes": sizes}


def _brief(size: dict[str, Any]) -> dict[str, Any]:
    steady = size.get("steady", {})
    keys = ("runs_per_s", "cpu_cores", "cpu_ms_per_run", "skipped", "lag_p99_ms", "jobs_ok")
    return {
        "jobs": size["jobs"],
        "load_and_start_s": size.get("load_and_start_s"),
        "peak_rss_mib": size.get("peak_rss_mib"),
        **{k: steady.get(k) for k in keys},
    }


def format_growth(sizes: list[dict[str, Any]]) -> str:
    head = (
        "| jobs | load+start s | runs/s | probed cores | CPU-ms/run | lag p50 ms | lag p99 ms "
        "| skipped | failed | ok jobs | peak RSS MiB | fleet cores | other cores |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    rows = []
    for s in sizes:
        if "steady" not in s:
            rows.append(f"| {s['jobs']:,} | {s.get('error', 'no figures')} |")
            continue
        w = s["steady"]
        rows.append(
            f"| {s['jobs']:,} | {s['load_and_start_s']:.2f} | {w['runs_per_s']:.0f} "
            f"| {w['cpu_cores']:.2f} | {w['cpu_ms_per_run']:.3f} | {w['lag_p50_ms']:.2f} "
            f"| {w['lag_p99_ms']:.1f} | {w['skipped']:.0f} | {w['failed']:.0f} "
            f"| {w['jobs_ok']:,}/{w['jobs_seen']:,} | {s['peak_rss_mib']:.1f} "
            f"| {w['fleet_cores']:.2f} | {w['other_cores']:.2f} |"
        )
    return head + "\n".join(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inproc", action="store_true", help="no daemon, no traffic")
    parser.add_argument(
        "--growth",
        default="1000,10000,30000,100000",
        type=lambda text: [int(x) for x in text.split(",")],
        help="job counts, smallest first; the largest also gets the scrape and reload tests",
    )
    parser.add_argument("--interval", type=harness.parse_duration, default=60.0)
    parser.add_argument("--timeout", type=harness.parse_duration, default=10.0)
    parser.add_argument("--windows", type=int, default=3, help="intervals measured at the top")
    parser.add_argument("--scrape-seconds", type=float, default=15.0)
    parser.add_argument("--reload-changes", type=int, default=100, help="per module")
    parser.add_argument("--py-spy", action="store_true", help="profile the top size's daemon")
    parser.add_argument(
        "--loopwatch",
        action="store_true",
        help="run each daemon under loopwatch.py (loop stalls and gc passes, to a .jsonl)",
    )
    parser.add_argument(
        "--probed-src",
        type=Path,
        default=None,
        help="import probed from this tree (e.g. `git archive` of an older commit): --inproc "
        "in this process, else the daemons (run in it)",
    )
    parser.add_argument(
        "--distinct-values",
        action="store_true",
        help="--inproc: each job its own durations and start time, as a live page has them",
    )
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="--inproc: gc.freeze() once the config is scheduled, as the daemon does",
    )
    parser.add_argument(
        "--save-page", type=Path, default=None, help="--inproc: write the /metrics page here"
    )
    args = parser.parse_args(argv)
    if not all(100 <= n <= 200_000 for n in args.growth):
        parser.error("--growth: each count in 100..200000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    promstats.self_check()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = OUT / f"scale-{'inproc-' if args.inproc else ''}{stamp}"
    run_dir.mkdir(parents=True)
    sys.path.insert(0, str(args.probed_src or REPO))
    started = time.monotonic()
    work = inproc(args, run_dir) if args.inproc else run(args, run_dir)
    result = uvloop.run(work)
    report = {
        "command": harness.command_line(),
        "machine": harness.machine_info(),
        "seconds": round(time.monotonic() - started, 1),
        **result,
    }
    out = run_dir.with_suffix(".json")
    out.write_text(json.dumps(report, indent=1, default=str))
    if args.inproc:
        print(json.dumps(result, indent=1))
    else:
        print(format_growth(result["sizes"]))
        top = result["sizes"][-1]
        print(json.dumps({k: top.get(k) for k in ("scrape", "reload")}, indent=1))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
