"""Soak (issue 9): thousands of jobs against flapping targets for a bounded long run.

    .venv/bin/python benchmarks/soak.py                  # 3,000 jobs, 15 s, 30 min
    .venv/bin/python benchmarks/soak.py --duration 3m --warmup 1m    # a shorter one
    .venv/bin/python benchmarks/soak.py --smoke          # 3 min, 1,000 jobs, fast flaps

The mix and the configs are ``bench_scale``'s (``MIX``: HTTP and HTTPS GET, TLS, Heartbleed
against the TLS listeners, TCP banner, SMTP, IMAP, POP3), against six ``fleet.py --flap``
processes (one per kind, 127.40.0.1 to 127.45.0.1, ports 26000-26003): every listener
cycles through healthy, refusing, stalling past the timeout, closing, resetting and
answering garbage, one step every ``--flap-period``, on a deterministic schedule
(``fleet.flap_behaviour``). The daemon (``python -m probed run``, from a copy of probed/
taken at the start) runs the jobs for ``--duration`` after it is ready. Meanwhile:

- every ``--sample-every`` (10 s): the daemon's VmRSS, VmHWM, open descriptors
  (/proc/PID/fd), threads and CPU time, from /proc;
- every ``--scrape-every`` (15 s): a ``GET /metrics`` with gzip and a 10 s timeout, as
  Prometheus scrapes: ``probed_tasks`` (asyncio tasks alive), runs in flight and waiting,
  runs, failures, skips, errors, the lag histogram, the jobs' current failure reasons;
- every ``--reload-every`` (5 min): a reload, alternating the config and one with each
  module's first ``--reload-changes`` targets removed and as many added, through
  ``POST /-/reload`` and SIGHUP in turn; before every ``--invalid-every``-th one an invalid
  config (a bad duration, an unknown module, a TOML syntax error in turn) that must be
  refused: HTTP 500, ``probed_config_last_reload_successful 0``, the jobs unchanged.

The figures are taken after ``--warmup`` (5 min): RSS slope by least squares (MiB/hour),
descriptors and tasks (min, max, and the median of the window's first third against its
last third), threads, runs, failures by reason (from the daemon's ``probe failed`` log
lines), skips (must be 0), lag p50/p99, reload outcomes, scrapes answered. Verdicts:

- RSS flat: slope at most ``RSS_SLOPE_LIMIT`` MiB/hour;
- descriptors, tasks flat: the last third's median at most ``DRIFT_ABS`` or ``DRIFT_REL``
  (whichever is larger) above the first third's (both move with the runs in flight, which
  the stalling targets make vary from second to second);
- clean: no skip, no probe error, every scrape answered, every reload as expected, no
  unexpected error line in the log, the daemon stopped with exit code 0.

Everything stays on 127.0.0.0/8. Every wait is capped (start 180 s, a scrape 10 s, a reload
60 s, the whole run ``--duration`` + 15 min) and the fleets exit by themselves.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import math
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import bench_scale
import harness
import procstat
import promstats
import uvloop

REPO = harness.REPO
OUT = harness.BENCH_DIR / "out"
BASE_PORT = 26000
KINDS = {
    name: bench_scale.Kind(name, f"127.{40 + i}.0.1") for i, name in enumerate(bench_scale.KINDS)
}
SCRAPE_TIMEOUT = 10.0  # Prometheus' default scrape_timeout
RELOAD_TIMEOUT = 60.0
RUN_MARGIN = 900.0  # the whole run may exceed --duration by this much (start, stop, fleets)
RSS_SLOPE_LIMIT = 4.0  # MiB per hour
DRIFT_ABS = 5.0
DRIFT_REL = 0.10
RELOAD_FAILED_EVENT = "reload failed; keeping the running configuration"
WANTED = [
    *bench_scale.WANTED,
    "probed_tasks",
    "probed_jobs",
    "probed_runs_in_flight",
    "probed_runs_waiting",
    "probed_config_last_reload_successful",
    "probed_config_last_reload_success_timestamp_seconds",
    "process_open_fds",
    "process_resident_memory_bytes",
    "probe_failure_info",
]


def invalid_config(text: str, n: int) -> str:
    """Three ways an operator breaks a config, in turn."""
    variant = n % 3
    if variant == 0:
        bad = text.replace('interval = "', 'interval = "15 s', 1)  # '15 s15s': no duration
        assert bad != text
        return bad
    if variant == 1:
        return text + (
            '\n[[groups]]\nname = "typo"\nmodules = ["no_such_module"]\n'
            'hosts = ["127.40.0.1:26000"]\n'
        )
    return text + "\n[modules.broken\nprobe = 'tcp'\n"


# --------------------------------------------------------------------------- the record


@dataclass(slots=True)
class Record:
    started: float  # monotonic, when the daemon answered /-/ready
    samples: list[dict[str, Any]] = field(default_factory=list)
    scrapes: list[dict[str, Any]] = field(default_factory=list)
    reloads: list[dict[str, Any]] = field(default_factory=list)
    window_start: list[promstats.Sample] | None = None  # first scrape after the warm-up
    last: list[promstats.Sample] | None = None  # the last scrape that answered

    def at(self) -> float:
        return round(time.monotonic() - self.started, 2)


async def fetch_metrics(
    session: aiohttp.ClientSession, url: str
) -> tuple[list[promstats.Sample], dict[str, Any]]:
    """One scrape as Prometheus does it (gzip, 10 s timeout): the samples and its figures."""
    started = time.monotonic()
    headers = {"Accept": harness.PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}
    async with session.get(
        url, headers=headers, timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT)
    ) as response:
        raw = await response.read()
        status = response.status
        encoding = response.headers.get("Content-Encoding", "")
    seconds = time.monotonic() - started
    if status != 200:
        raise RuntimeError(f"HTTP {status}")
    body = gzip.decompress(raw) if encoding == "gzip" else raw
    samples = promstats.parse_samples(body.decode(), WANTED)
    return samples, {
        "seconds": round(seconds, 4),
        "wire_bytes": len(raw),
        "bytes": len(body),
        "gzip": encoding == "gzip",
    }


def scrape_figures(samples: list[promstats.Sample]) -> dict[str, Any]:
    def total(name: str) -> float:
        return promstats.sum_samples(samples, name)

    reasons = Counter(s.labels.get("reason", "") for s in samples if s.name == "probe_failure_info")
    return {
        "tasks": total("probed_tasks"),
        "open_fds": total("process_open_fds"),
        "rss_mib": round(total("process_resident_memory_bytes") / 2**20, 2),
        "in_flight": total("probed_runs_in_flight"),
        "waiting": total("probed_runs_waiting"),
        "jobs": total("probed_jobs"),
        "runs": total(harness.RUNS),
        "failed": total("probed_runs_failed_total"),
        "skipped": total(harness.SKIPS),
        "errors": total(harness.ERRORS),
        "jobs_ok": promstats.count_samples(samples, harness.SUCCESS, 1.0),
        "reload_ok": total("probed_config_last_reload_successful"),
        "reasons_now": dict(reasons.most_common()),
    }


# --------------------------------------------------------------------------- the loops


async def sampler(
    daemon: bench_scale.Daemon, fleets: bench_scale.Fleets, rec: Record, every: float, end: float
) -> None:
    pid = daemon.proc.pid
    while time.monotonic() < end:  # bounded by --duration
        if daemon.proc.poll() is not None:
            raise RuntimeError(f"probed exited with {daemon.proc.returncode}")
        for name, proc in fleets.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"fleet {name} exited with {proc.returncode}")
        cpu = procstat.process_cpu(pid)
        machine = procstat.machine_cpu()
        rec.samples.append(
            {
                "t": rec.at(),
                "rss_mib": round(procstat.status_kib(pid, "VmRSS") / 1024, 2),
                "hwm_mib": round(procstat.status_kib(pid, "VmHWM") / 1024, 2),
                "fds": procstat.open_fds(pid),
                "threads": int(procstat.status_field(pid, "Threads")),
                "cpu_s": round(cpu.total, 2),
                "fleet_cpu_s": round(fleets.cpu(), 2),
                "machine_busy_jiffies": machine.busy,
            }
        )
        await asyncio.sleep(min(every, max(0.0, end - time.monotonic())))


async def scraper(
    session: aiohttp.ClientSession,
    url: str,
    rec: Record,
    *,
    every: float,
    warmup: float,
    end: float,
) -> None:
    next_at = time.monotonic()
    while next_at < end:  # bounded by --duration
        entry: dict[str, Any] = {"t": rec.at()}
        try:
            samples, figures = await fetch_metrics(session, url)
        except (aiohttp.ClientError, TimeoutError, OSError, RuntimeError) as exc:
            entry.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        else:
            entry.update(ok=True, **figures, **scrape_figures(samples))
            rec.last = samples
            if rec.window_start is None and entry["t"] >= warmup:
                rec.window_start = samples
                entry["window_start"] = True
        rec.scrapes.append(entry)
        if len(rec.scrapes) % 4 == 0:
            progress(rec)
        next_at += every
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


def progress(rec: Record) -> None:
    s = rec.samples[-1] if rec.samples else {}
    c = rec.scrapes[-1]
    print(
        f"t={c['t']:7.0f}s rss={s.get('rss_mib', 0):6.1f}MiB fds={s.get('fds', 0):4} "
        f"threads={s.get('threads', 0):2} tasks={c.get('tasks', math.nan):5.0f} "
        f"in_flight={c.get('in_flight', math.nan):4.0f} runs={c.get('runs', math.nan):8.0f} "
        f"failed={c.get('failed', math.nan):8.0f} skipped={c.get('skipped', math.nan):.0f} "
        f"scrape_ok={c['ok']} reloads={len(rec.reloads)}",
        flush=True,
    )


async def reload_once(
    session: aiohttp.ClientSession,
    daemon: bench_scale.Daemon,
    *,
    live: Path,
    source: Path | str,
    via: str,
    jobs: int,
    rec: Record,
) -> dict[str, Any]:
    """Swap ``live`` for ``source`` (a config path, or invalid text) and reload ``via``
    ``post`` or ``sighup``; did the daemon do what it must?"""
    valid = isinstance(source, Path)
    entry: dict[str, Any] = {
        "t": rec.at(),
        "config": source.name if isinstance(source, Path) else "invalid",
        "via": via,
        "expected": "ok" if valid else "rejected",
    }
    before, _ = await fetch_metrics(session, daemon.url + "/metrics")
    stamp0 = promstats.sum_samples(before, "probed_config_last_reload_success_timestamp_seconds")
    if isinstance(source, Path):
        await asyncio.to_thread(shutil.copyfile, source, live)
    else:
        await asyncio.to_thread(live.write_text, source)
    started = time.monotonic()
    if via == "post":
        async with session.post(
            daemon.url + "/-/reload", timeout=aiohttp.ClientTimeout(total=RELOAD_TIMEOUT)
        ) as response:
            entry["status"] = response.status
            entry["message"] = (await response.text()).strip()[:300]
    else:
        daemon.proc.send_signal(signal.SIGHUP)
    # Poll until the gauges show the outcome (a SIGHUP has no answer); bounded.
    after: list[promstats.Sample] = before
    deadline = started + RELOAD_TIMEOUT
    while time.monotonic() < deadline:
        after, _ = await fetch_metrics(session, daemon.url + "/metrics")
        ok_now = promstats.sum_samples(after, "probed_config_last_reload_successful")
        stamp = promstats.sum_samples(after, "probed_config_last_reload_success_timestamp_seconds")
        if (valid and stamp > stamp0) or (not valid and ok_now == 0):
            break
        await asyncio.sleep(0.2)
    entry["seconds"] = round(time.monotonic() - started, 3)
    entry["reload_ok_gauge"] = promstats.sum_samples(after, "probed_config_last_reload_successful")
    entry["jobs_after"] = promstats.sum_samples(after, "probed_jobs")
    if valid:
        entry["ok"] = (
            entry["reload_ok_gauge"] == 1
            and entry["jobs_after"] == jobs
            and entry.get("status", 200) == 200
        )
    else:
        entry["ok"] = (
            entry["reload_ok_gauge"] == 0
            and entry["jobs_after"] == promstats.sum_samples(before, "probed_jobs")
            and entry.get("status", 500) == 500
        )
    return entry


async def reloader(
    session: aiohttp.ClientSession,
    daemon: bench_scale.Daemon,
    rec: Record,
    *,
    args: argparse.Namespace,
    configs: tuple[Path, Path],
    live: Path,
    end: float,
) -> None:
    current = 0  # configs[current] is what the daemon runs
    n = 0
    # Half a period in: the warm-up holds the first reload (its thread, its arena).
    next_at = time.monotonic() + args.reload_every / 2
    while next_at < end - 30:  # bounded by --duration; none in the last 30 s
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        n += 1
        steps: list[tuple[Path | str, str]] = []
        if args.invalid_every and n % args.invalid_every == 0:
            text = invalid_config(configs[current].read_text(), n // args.invalid_every)
            steps.append((text, "post"))
        current = 1 - current
        steps.append((configs[current], "post" if n % 2 else "sighup"))
        for source, via in steps:
            try:
                entry = await reload_once(
                    session, daemon, live=live, source=source, via=via, jobs=args.jobs, rec=rec
                )
            except (aiohttp.ClientError, TimeoutError, OSError, RuntimeError) as exc:
                entry = {"t": rec.at(), "via": via, "ok": False, "error": repr(exc)}
                entry["expected"] = "ok" if isinstance(source, Path) else "rejected"
            rec.reloads.append(entry)
            print(f"reload {n}: {json.dumps(entry)}", flush=True)
            await asyncio.sleep(5)
        next_at += args.reload_every


# --------------------------------------------------------------------------- the figures


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value), per hour."""
    if len(points) < 2:
        return math.nan
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return math.nan
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 3600


def series(points: list[tuple[float, float]]) -> dict[str, Any]:
    values = [v for _, v in points]
    if not values:
        return {"points": 0}
    third = max(1, len(values) // 3)
    first, last = statistics.median(values[:third]), statistics.median(values[-third:])
    return {
        "points": len(values),
        "first": values[0],
        "last": values[-1],
        "min": min(values),
        "max": max(values),
        "max_minus_min": max(values) - min(values),
        "median_first_third": first,
        "median_middle_third": statistics.median(values[third:-third] or values),
        "median_last_third": last,
        "drift": last - first,
        "slope_per_hour": slope_per_hour(points),
    }


def drift_flat(s: dict[str, Any]) -> bool:
    if not s.get("points"):
        return False
    allowed = max(DRIFT_ABS, DRIFT_REL * s["median_first_third"])
    return bool(s["drift"] <= allowed)


def read_log(path: Path) -> dict[str, Any]:
    """Failures by reason and module, and error lines, from the daemon's JSON log."""
    reasons: Counter[str] = Counter()
    by_module: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    other = 0
    first_errors: list[str] = []
    with path.open(errors="replace") as log:
        for line in log:  # bounded by the file
            if not line.startswith("{"):
                other += 1
                continue
            try:
                event = json.loads(line)
            except ValueError:
                other += 1
                continue
            if event.get("event") == "probe failed":
                reasons[event.get("reason", "?")] += 1
                by_module[event.get("module", "?")] += 1
            elif event.get("level") in {"error", "critical"}:
                errors[event.get("event", "?")] += 1
                if len(first_errors) < 5:
                    first_errors.append(line.strip()[:400])
    return {
        "failures_by_reason": dict(reasons.most_common()),
        "failures_by_module": dict(by_module.most_common()),
        "failures_logged": sum(reasons.values()),
        "error_events": dict(errors),
        "first_errors": first_errors,
        "non_json_lines": other,
    }


def memwatch_summary(path: Path, warmup: float) -> dict[str, Any]:
    """``memwatch.py``'s lines after the warm-up: allocator and object series, last diff."""
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.startswith("{")]
    warm = [x for x in lines if x["t"] >= warmup]
    mib = 2**20

    def of(key: str, scale: float = 1.0) -> dict[str, Any]:
        return series([(x["t"], x[key] / scale) for x in warm if key in x])

    def malloc(key: str) -> dict[str, Any]:
        return series([(x["t"], x["mallinfo"][key] / mib) for x in warm])

    growth = [x["growth_since_baseline"] for x in warm if "growth_since_baseline" in x]
    first_top = warm[0]["gc_top"] if warm else {}
    last_top = warm[-1]["gc_top"] if warm else {}
    return {
        "malloc_in_use_mib": malloc("uordblks"),
        "malloc_free_kept_mib": malloc("fordblks"),
        "malloc_arena_mib": malloc("arena"),
        "malloc_mmapped_mib": malloc("hblkhd"),
        "python_allocated_blocks": of("allocated_blocks"),
        "gc_objects": of("gc_objects"),
        "traced_mib": of("traced", mib),
        "gc_types_growth": {
            k: last_top.get(k, 0) - first_top.get(k, 0)
            for k in sorted(set(first_top) | set(last_top))
            if last_top.get(k, 0) != first_top.get(k, 0)
        },
        "tracemalloc_growth_last": growth[-1] if growth else [],
        "trim": next((x["trim"] for x in lines if "trim" in x), None),
    }


def fleet_counters(run_dir: Path) -> dict[str, Any]:
    counters = {}
    for name in KINDS:
        lines = (run_dir / f"fleet-{name}.log").read_text(errors="replace").splitlines()
        last = next((x for x in reversed(lines) if x.startswith("{")), "{}")
        counters[name] = json.loads(last)
    return counters


def summarise(
    rec: Record, args: argparse.Namespace, log: dict[str, Any], exit_code: int | None
) -> dict[str, Any]:
    warm = [s for s in rec.samples if s["t"] >= args.warmup]
    scrapes_warm = [s for s in rec.scrapes if s["ok"] and s["t"] >= args.warmup]
    rss = series([(s["t"], s["rss_mib"]) for s in warm])
    rss["at_warmup_end"] = rss.pop("first", math.nan)
    rss["at_end"] = rss.pop("last", math.nan)
    fds = series([(s["t"], float(s["fds"])) for s in warm])
    tasks = series([(s["t"], s["tasks"]) for s in scrapes_warm])
    threads = series([(s["t"], float(s["threads"])) for s in warm])
    in_flight = series([(s["t"], s["in_flight"]) for s in scrapes_warm])
    cpu = (
        (warm[-1]["cpu_s"] - warm[0]["cpu_s"]) / (warm[-1]["t"] - warm[0]["t"])
        if len(warm) > 1
        else math.nan
    )
    busy = (
        (warm[-1]["machine_busy_jiffies"] - warm[0]["machine_busy_jiffies"])
        / procstat.CLOCK_TICKS_PER_SECOND
        / (warm[-1]["t"] - warm[0]["t"])
        if len(warm) > 1
        else math.nan
    )
    fleet_cores = (
        (warm[-1]["fleet_cpu_s"] - warm[0]["fleet_cpu_s"]) / (warm[-1]["t"] - warm[0]["t"])
        if len(warm) > 1
        else math.nan
    )
    s0, s1 = rec.window_start, rec.last
    window: dict[str, Any] = {}
    if s0 is not None and s1 is not None:
        window = {
            "runs": promstats.sum_samples(s1, harness.RUNS)
            - promstats.sum_samples(s0, harness.RUNS),
            "failed": promstats.sum_samples(s1, "probed_runs_failed_total")
            - promstats.sum_samples(s0, "probed_runs_failed_total"),
            # lag_buckets: how many runs started how late (a wait for a slot counts too)
            **bench_scale.lag_summary(s0, s1),
        }
    last_ok: dict[str, Any] = next((s for s in reversed(rec.scrapes) if s["ok"]), {})
    scrape_seconds = sorted(s["seconds"] for s in rec.scrapes if s["ok"])
    reloads: dict[str, Any] = {
        "done": len(rec.reloads),
        "valid_ok": sum(1 for r in rec.reloads if r["expected"] == "ok" and r["ok"]),
        "invalid_rejected": sum(1 for r in rec.reloads if r["expected"] == "rejected" and r["ok"]),
        "not_as_expected": [r for r in rec.reloads if not r["ok"]],
        "seconds_max": max((r.get("seconds", math.nan) for r in rec.reloads), default=math.nan),
    }
    invalid = sum(1 for r in rec.reloads if r["expected"] == "rejected")
    unexpected_errors = {
        k: v - (invalid if k == RELOAD_FAILED_EVENT else 0)
        for k, v in log["error_events"].items()
        if v - (invalid if k == RELOAD_FAILED_EVENT else 0)
    }
    scrapes: dict[str, Any] = {
        "total": len(rec.scrapes),
        "ok": sum(1 for s in rec.scrapes if s["ok"]),
        "gzip": sum(1 for s in rec.scrapes if s.get("gzip")),
        "failed": [s for s in rec.scrapes if not s["ok"]],
        "seconds_p50": promstats.exact_quantile(0.5, scrape_seconds),
        "seconds_max": max(scrape_seconds, default=math.nan),
        "wire_bytes_last": last_ok.get("wire_bytes"),
        "bytes_last": last_ok.get("bytes"),
    }
    verdicts = {
        "rss_flat": bool(rss.get("slope_per_hour", math.inf) <= RSS_SLOPE_LIMIT),
        "fds_flat": drift_flat(fds),
        "tasks_flat": drift_flat(tasks),
        "no_skips": last_ok.get("skipped", 1) == 0,
        "no_probe_errors": last_ok.get("errors", 1) == 0,
        "every_scrape_answered": scrapes["ok"] == scrapes["total"] > 0,
        "reloads_as_expected": not reloads["not_as_expected"] and reloads["done"] > 0,
        "no_unexpected_error_lines": not unexpected_errors,
        "clean_exit": exit_code == 0,
    }
    return {
        "window_s": [args.warmup, args.duration],
        "rss_mib": rss,
        "hwm_mib_at_end": warm[-1]["hwm_mib"] if warm else math.nan,
        "fds": fds,
        "tasks": tasks,
        "threads": threads,
        "in_flight": in_flight,
        "daemon_cores": cpu,
        "fleet_cores": fleet_cores,
        "machine_busy_cores": busy,
        "runs_total": last_ok.get("runs"),
        "failed_total": last_ok.get("failed"),
        "skipped_total": last_ok.get("skipped"),
        "probe_errors_total": last_ok.get("errors"),
        "window": window,
        "failures": log,
        "unexpected_error_events": unexpected_errors,
        "reloads": reloads,
        "scrapes": scrapes,
        "verdicts": verdicts,
        "flat": verdicts["rss_flat"] and verdicts["fds_flat"] and verdicts["tasks_flat"],
        "clean": all(verdicts.values()),
    }


def format_summary(summary: dict[str, Any]) -> str:
    rss, fds, tasks, threads = (summary[k] for k in ("rss_mib", "fds", "tasks", "threads"))
    w = summary["window"]
    r = summary["reloads"]
    sc = summary["scrapes"]
    memwatch = summary.get("memwatch")
    watched = []
    if memwatch:
        for key in ("malloc_in_use_mib", "malloc_free_kept_mib", "gc_objects", "traced_mib"):
            s = memwatch[key]
            if s.get("points"):
                watched.append(
                    f"memwatch {key}: {s['first']:.1f} -> {s['last']:.1f} "
                    f"(min {s['min']:.1f}, max {s['max']:.1f}, "
                    f"slope {s['slope_per_hour']:+.2f}/h)"
                )
    if memwatch and memwatch.get("trim"):
        watched.append(f"memwatch malloc_trim(0): {memwatch['trim']}")
    lines = [
        f"window {summary['window_s'][0]:.0f}-{summary['window_s'][1]:.0f} s after ready",
        f"RSS MiB: {rss.get('at_warmup_end', math.nan):.1f} at warm-up end, "
        f"{rss.get('at_end', math.nan):.1f} at end, min {rss.get('min', math.nan):.1f} "
        f"max {rss.get('max', math.nan):.1f}, slope {rss.get('slope_per_hour', math.nan):+.2f} "
        f"MiB/h (limit {RSS_SLOPE_LIMIT}); VmHWM {summary['hwm_mib_at_end']:.1f}",
        f"fds: {fds.get('min')}-{fds.get('max')}, median first/last third "
        f"{fds.get('median_first_third')}/{fds.get('median_last_third')}, "
        f"slope {fds.get('slope_per_hour', math.nan):+.1f}/h",
        f"tasks: {tasks.get('min')}-{tasks.get('max')}, median first/last third "
        f"{tasks.get('median_first_third')}/{tasks.get('median_last_third')}, "
        f"slope {tasks.get('slope_per_hour', math.nan):+.1f}/h",
        f"threads: {threads.get('min')}-{threads.get('max')}",
        f"runs: {summary['runs_total']:.0f} total, {w.get('runs', math.nan):.0f} in the window "
        f"({w.get('failed', math.nan):.0f} failed); skipped {summary['skipped_total']:.0f}; "
        f"probe errors {summary['probe_errors_total']:.0f}",
        f"lag p50 {w.get('lag_p50_ms', math.nan):.2f} ms, p99 {w.get('lag_p99_ms', math.nan):.2f}"
        " ms",
        f"failures by reason (log, whole run): {summary['failures']['failures_by_reason']}",
        f"reloads: {r['done']} ({r['valid_ok']} valid ok, {r['invalid_rejected']} invalid "
        f"rejected, {len(r['not_as_expected'])} not as expected)",
        f"scrapes: {sc['ok']}/{sc['total']} answered ({sc['gzip']} gzip), p50 "
        f"{sc['seconds_p50'] * 1000:.0f} ms, max {sc['seconds_max'] * 1000:.0f} ms",
        f"daemon {summary['daemon_cores']:.2f} cores, fleets {summary['fleet_cores']:.2f}, "
        f"machine {summary['machine_busy_cores']:.2f} busy",
        *watched,
        f"verdicts: {summary['verdicts']}",
        "FLAT" if summary["flat"] else "NOT FLAT",
        "CLEAN"
        if summary["clean"]
        else "NOT CLEAN: "
        + (", ".join(k for k, ok in summary["verdicts"].items() if not ok) or "aborted"),
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the run


async def soak(args: argparse.Namespace, run_dir: Path, src: Path) -> dict[str, Any]:
    need = bench_scale.listeners_needed(args.jobs, args.reload_changes)
    hold = 2 * args.timeout + 2  # a stalled connection outlives the probe's deadline
    fleets = await bench_scale.start_fleets(
        need,
        run_dir,
        args.duration + RUN_MARGIN,
        BASE_PORT,
        kinds=KINDS,
        fleet_args=(f"--flap={args.flap_period:g}", f"--hold={hold:g}"),
    )
    listen = f"127.0.0.1:{harness.free_port()}"
    common = {
        "ca_file": fleets.ca_file,
        "listen": listen,
        "interval": args.interval,
        "timeout": args.timeout,
        "base_port": BASE_PORT,
        "kinds": KINDS,
    }
    config_a = bench_scale.write_config(run_dir, args.jobs, **common)
    config_b = bench_scale.write_config(
        run_dir, args.jobs, skip=args.reload_changes, extra=args.reload_changes, **common
    )
    live = run_dir / "probes-live.toml"
    shutil.copyfile(config_a, live)
    launcher: tuple[str, ...] = ("-m", "probed")
    if args.memwatch:
        launcher = (
            str(harness.BENCH_DIR / "memwatch.py"),
            f"--out={run_dir / 'memwatch.jsonl'}",
            f"--every={args.sample_every:g}",
            f"--tracemalloc={args.tracemalloc}",
            f"--baseline={args.warmup:g}",
            f"--trim-at={args.trim_at:g}",
            "--",
        )
    daemon = bench_scale.Daemon(run_dir, live, listen, "soak", src=src, launcher=launcher)
    aborted = ""
    try:
        # The body as sent: gzip is checked and undone here, so its size on the wire is known.
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            ready_s = await daemon.ready(session)
            rec = Record(started=time.monotonic())
            end = rec.started + args.duration
            print(f"ready in {ready_s:.2f}s; soaking {args.duration:.0f}s", flush=True)
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(sampler(daemon, fleets, rec, args.sample_every, end))
                    url = daemon.url + "/metrics"
                    every, warmup = args.scrape_every, args.warmup
                    group.create_task(
                        scraper(session, url, rec, every=every, warmup=warmup, end=end)
                    )
                    configs = (config_a, config_b)
                    group.create_task(
                        reloader(
                            session, daemon, rec, args=args, configs=configs, live=live, end=end
                        )
                    )
            except* RuntimeError as group_error:  # the daemon or a fleet died: keep the record
                aborted = "; ".join(str(e) for e in group_error.exceptions)
                print(f"ABORTED at t={rec.at():.0f}s: {aborted}", flush=True)
    finally:
        stopped = await daemon.stop()
        await fleets.stop()
    exit_code = stopped["exit_code"]
    log = read_log(daemon.log_path)
    summary = summarise(rec, args, log, exit_code)
    if args.memwatch:
        summary["memwatch"] = memwatch_summary(run_dir / "memwatch.jsonl", args.warmup)
    if aborted:
        summary.update(aborted=aborted, clean=False)
    return {
        "ready_s": ready_s,
        "listeners": need,
        "summary": summary,
        "daemon_exit_code": exit_code,
        "fleet": fleet_counters(run_dir),
        "samples": rec.samples,
        "scrapes": rec.scrapes,
        "reloads": rec.reloads,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    duration = harness.parse_duration
    parser.add_argument("--smoke", action="store_true", help="3 min, 1,000 jobs, fast flaps")
    parser.add_argument("--jobs", type=int, default=None, help="default 3000 (smoke 1000)")
    parser.add_argument("--interval", type=duration, default=15.0)
    parser.add_argument("--timeout", type=duration, default=5.0)
    parser.add_argument("--duration", type=duration, default=None, help="default 30m (smoke 3m)")
    parser.add_argument("--warmup", type=duration, default=None, help="default 5m (smoke 1m)")
    parser.add_argument("--sample-every", type=duration, default=10.0)
    parser.add_argument("--scrape-every", type=duration, default=15.0)
    parser.add_argument("--reload-every", type=duration, default=None, help="5m (smoke 30s)")
    parser.add_argument(
        "--invalid-every", type=int, default=3, help="an invalid config before every Nth reload"
    )
    parser.add_argument("--reload-changes", type=int, default=50, help="targets per module")
    parser.add_argument(
        "--flap-period", type=duration, default=None, help="fleet step, 60s (smoke 15s)"
    )
    parser.add_argument(
        "--memwatch",
        action="store_true",
        help="debug: run the daemon under memwatch.py (allocator and object counts)",
    )
    parser.add_argument(
        "--tracemalloc",
        type=int,
        default=0,
        metavar="FRAMES",
        help="with --memwatch: trace allocations, diff against the warm-up end",
    )
    parser.add_argument(
        "--trim-at",
        type=duration,
        default=0.0,
        help="with --memwatch: malloc_trim(0) once, this long after start (RSS before/after)",
    )
    args = parser.parse_args(argv)
    smoke = args.smoke
    defaults = {
        "jobs": 1000 if smoke else 3000,
        "duration": 180.0 if smoke else 1800.0,
        "warmup": 60.0 if smoke else 300.0,
        "reload_every": 30.0 if smoke else 300.0,
        "flap_period": 15.0 if smoke else 60.0,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not 100 <= args.jobs <= 20000:
        parser.error("--jobs must be in 100..20000")
    if not 60 <= args.duration <= 4 * 3600:
        parser.error("--duration must be in 1m..4h")
    if not 0 <= args.warmup < args.duration:
        parser.error("--warmup must be shorter than --duration")
    if args.timeout >= args.interval:
        parser.error("--timeout must be shorter than --interval")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    promstats.self_check()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = OUT / f"soak-{stamp}"
    run_dir.mkdir(parents=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="probed-soak-") as tmp:
        src = harness.snapshot_probed(Path(tmp))
        digest = harness.probed_source_digest(src)

        async def bounded() -> dict[str, Any]:
            async with asyncio.timeout(args.duration + RUN_MARGIN):
                return await soak(args, run_dir, src)

        result = uvloop.run(bounded())
    report = {
        "command": harness.command_line(),
        "machine": harness.machine_info(),
        "probed_source_sha256": digest,
        "settings": vars(args),
        "thresholds": {
            "rss_slope_mib_per_hour": RSS_SLOPE_LIMIT,
            "drift_abs": DRIFT_ABS,
            "drift_rel": DRIFT_REL,
        },
        "seconds": round(time.monotonic() - started, 1),
        **result,
    }
    out = run_dir.with_suffix(".json")
    out.write_text(json.dumps(report, indent=1, default=str))
    print(format_summary(result["summary"]))
    print(f"written: {out}\nconfigs and logs: {run_dir}")
    return 0 if result["summary"]["clean"] else 1


if __name__ == "__main__":
    sys.exit(main())
