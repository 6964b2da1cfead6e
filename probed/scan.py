"""``probed scan``: one check per target, now, with a report: the day-one sweep.

It reuses the daemon's modules, target parsing and probe code (``adhoc_job`` and
``execute``); only the fan-out, the progress line and the output formats live here.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sys
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from probed.config import Config, JobSpec, adhoc_job
from probed.probes.base import Env
from probed.results import Outcome
from probed.runner import execute
from probed.targets import TargetFileError, read_file_sd, read_hosts_file

EXIT_CLEAN, EXIT_VULNERABLE, EXIT_USAGE, EXIT_INCOMPLETE = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class Row:
    target: str
    verdict: str  # VULNERABLE, ok, inconclusive, FAILED
    reason: str
    tls_version: str
    heartbeat_extension: str
    response: str
    seconds: float
    detail: str


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs; a value is read as TOML (``25``, ``true``, ``["TLS10"]``) and
    otherwise taken as a string (``starttls=smtp``)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f'--set expects key=value, got "{item}"')
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value
    return out


def collect_targets(
    hosts: Sequence[str], hosts_files: Sequence[Path], file_sd: Sequence[Path]
) -> list[str]:
    """Targets in the order given, duplicates dropped. Raises TargetFileError."""
    targets = list(hosts)
    for path in hosts_files:
        targets += [host for host, _ in read_hosts_file(path)]
    for path in file_sd:
        targets += [host for host, _, _ in read_file_sd(path)]
    return list(dict.fromkeys(targets))


def _label(labels: str) -> str:
    return labels.partition('="')[2].rstrip('"')


def row(job: JobSpec, outcome: Outcome) -> Row:
    facts = {family.name: (labels, value) for family, labels, value in outcome.samples}
    vulnerable = facts.get("probe_heartbleed_vulnerable")
    if vulnerable is not None and vulnerable[1] == 1.0:
        verdict = "VULNERABLE"
    elif facts.get("probe_heartbleed_inconclusive", ("", 0.0))[1] == 1.0:
        verdict = "inconclusive"
    else:
        verdict = "ok" if outcome.success else "FAILED"
    extension = facts.get("probe_tls_heartbeat_extension")
    return Row(
        target=job.target.raw,
        verdict=verdict,
        reason=outcome.reason.value,
        tls_version=_label(facts.get("probe_tls_version_info", ("", 0.0))[0]),
        heartbeat_extension=(
            "" if extension is None else ("absent", "mode 1", "mode 2")[int(extension[1]) % 3]
        ),
        response=_label(facts.get("probe_heartbleed_response_info", ("", 0.0))[0]),
        seconds=round(outcome.duration, 3),
        detail="" if outcome.success else outcome.detail,
    )


async def sweep(
    jobs: Sequence[JobSpec],
    env: Env,
    concurrency: int,
    on_done: Callable[[JobSpec, Outcome], None] | None = None,
) -> list[Outcome]:
    """Run every job once, at most ``concurrency`` at a time; results in input order."""
    slots = asyncio.Semaphore(concurrency)

    async def one(job: JobSpec) -> Outcome:
        async with slots:
            outcome = await execute(job, env)
        if on_done is not None:
            on_done(job, outcome)
        return outcome

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(job), name=f"scan {job.target.raw}") for job in jobs]
    return [task.result() for task in tasks]


class Progress:
    """One self-overwriting status line on a terminal; silent otherwise."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.done = self.vulnerable = self.failed = 0
        self.stream = stream
        self.enabled = stream.isatty()

    def __call__(self, job: JobSpec, outcome: Outcome) -> None:
        del job
        self.done += 1
        verdict = {s[0].name: s[2] for s in outcome.samples}.get("probe_heartbleed_vulnerable")
        self.vulnerable += verdict == 1.0
        self.failed += not outcome.success and verdict != 1.0
        if self.enabled:
            width = 30
            filled = width * self.done // max(self.total, 1)
            self.stream.write(
                f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}"
                f"  vulnerable {self.vulnerable}  failed {self.failed} "
            )
            if self.done == self.total:
                self.stream.write("\n")
            self.stream.flush()


def render(rows: Sequence[Row], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([asdict(r) for r in rows], indent=2) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(Row.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
        return out.getvalue()
    headers = ("TARGET", "VERDICT", "REASON", "TLS", "HEARTBEAT", "RESPONSE", "SECONDS")
    table = [
        (
            r.target,
            r.verdict,
            r.reason,
            r.tls_version,
            r.heartbeat_extension,
            r.response,
            f"{r.seconds:.3f}",
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in table)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in table
    ]
    vulnerable = sum(r.verdict == "VULNERABLE" for r in rows)
    failed = sum(r.verdict == "FAILED" for r in rows)
    lines.append(f"\n{len(rows)} targets: {vulnerable} vulnerable, {failed} could not be checked")
    return "\n".join(lines) + "\n"


def exit_code(rows: Sequence[Row]) -> int:
    if any(r.verdict == "VULNERABLE" for r in rows):
        return EXIT_VULNERABLE
    if any(r.verdict == "FAILED" for r in rows):
        return EXIT_INCOMPLETE
    return EXIT_CLEAN


@dataclass(frozen=True, slots=True)
class ScanRequest:
    module: str
    targets: list[str]
    overrides: dict[str, Any]
    concurrency: int
    timeout: float | None
    fmt: str


def build_jobs(cfg: Config | None, request: ScanRequest) -> list[JobSpec]:
    """Raises ValueError naming the first bad target or setting."""
    jobs = []
    for target in request.targets:
        try:
            jobs.append(
                adhoc_job(
                    cfg,
                    request.module,
                    target,
                    overrides=request.overrides,
                    timeout=request.timeout,
                )
            )
        except ValueError as exc:
            raise ValueError(f"target {target}: {exc}") from None
    return jobs


async def run_scan(jobs: list[JobSpec], env: Env, request: ScanRequest) -> int:
    progress = Progress(len(jobs), sys.stderr)
    outcomes = await sweep(jobs, env, request.concurrency, progress)
    rows = [row(job, outcome) for job, outcome in zip(jobs, outcomes, strict=True)]
    sys.stdout.write(render(rows, request.fmt))
    return exit_code(rows)


__all__ = [
    "ScanRequest",
    "TargetFileError",
    "build_jobs",
    "collect_targets",
    "parse_overrides",
    "run_scan",
]
