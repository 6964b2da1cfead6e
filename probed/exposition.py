"""Outcomes -> Prometheus text, cached per job and family; the daemon's own metrics.

A job's text is rendered once per run and kept per family, so a scrape only joins strings:
at 100,000 jobs that is the difference between seconds and tens of milliseconds of CPU.
"""

from __future__ import annotations

import asyncio
import math
import platform
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

import probed
from probed.probes.base import (
    PROBE_DNS_LOOKUP,
    PROBE_DURATION,
    PROBE_FAILURE,
    PROBE_LAST_RUN,
    PROBE_SUCCESS,
    Family,
    ProbeSpec,
)
from probed.results import Outcome, escape_label

JobKey = tuple[str, str]
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def format_value(value: float) -> str:
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def job_labels(module: str, target: str, labels: Iterable[tuple[str, str]]) -> str:
    """The identity labels of every series of a job, rendered once per job."""
    parts = [f'module="{escape_label(module)}"', f'target="{escape_label(target)}"']
    parts += [f'{k}="{escape_label(v)}"' for k, v in labels]
    return ",".join(parts)


def running_tasks() -> float:
    """Tasks alive in the running event loop (NaN when called outside one)."""
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:
        return math.nan


def render_outcome(labels: str, spec: ProbeSpec, outcome: Outcome) -> dict[Family, str]:
    """One job's series, grouped by family."""
    out: dict[Family, str] = {}

    def add(family: Family, extra: str, value: float) -> None:
        inner = f"{labels},{extra}" if extra else labels
        line = f"{family.name}{{{inner}}} {format_value(value)}\n"
        out[family] = out.get(family, "") + line

    add(PROBE_SUCCESS, "", 1.0 if outcome.success else 0.0)
    add(PROBE_DURATION, "", outcome.duration)
    add(PROBE_FAILURE, f'reason="{outcome.reason.value}"', 1.0)
    add(PROBE_LAST_RUN, "", round(outcome.started, 3))
    for name, seconds in outcome.phases:
        add(spec.phase_family, f'phase="{name}"', seconds)
        if name == "resolve":
            add(PROBE_DNS_LOOKUP, "", seconds)
    for family, extra, value in outcome.samples:
        add(family, extra, value)
    return out


class SelfMetrics:
    """probed_* metrics, served by prometheus-client from a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        Gauge("probed_build_info", "Build information.", ["version", "python"], registry=r).labels(
            probed.__version__, platform.python_version()
        ).set(1)
        self.reload_ok = Gauge(
            "probed_config_last_reload_successful",
            "Whether the last configuration load succeeded.",
            registry=r,
        )
        self.reload_time = Gauge(
            "probed_config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully.",
            registry=r,
        )
        self.jobs = Gauge("probed_jobs", "Scheduled jobs per module.", ["module"], registry=r)
        self.lag = Histogram(
            "probed_scheduler_lag_seconds",
            "How late runs start after their scheduled time.",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("probed_runs_in_flight", "Runs executing now.", registry=r)
        self.waiting = Gauge(
            "probed_runs_waiting", "Runs due but waiting for a concurrency slot.", registry=r
        )
        self.runs = Counter("probed_runs", "Runs completed, per module.", ["module"], registry=r)
        self.failed = Counter(
            "probed_runs_failed", "Runs that failed, per module.", ["module"], registry=r
        )
        self.skipped = Counter(
            "probed_runs_skipped",
            "Runs skipped because the previous run of the job was still running or waiting.",
            ["module"],
            registry=r,
        )
        self.errors = Counter(
            "probed_probe_errors",
            "Runs that ended in a bug in probed (logged with a traceback).",
            ["module"],
            registry=r,
        )
        # Read at scrape time: what a soak watches for leaks (tasks, descriptors, memory).
        Gauge(
            "probed_tasks", "asyncio tasks alive in the daemon's event loop.", registry=r
        ).set_function(running_tasks)
        # process_resident_memory_bytes, process_open_fds, process_max_fds,
        # process_cpu_seconds_total, process_start_time_seconds, process_virtual_memory_bytes
        ProcessCollector(registry=r)
        self._children: dict[tuple[int, str], Counter] = {}

    def child(self, metric: Counter, module: str) -> Counter:
        """The per-module child, cached: ``labels()`` costs a lock and a dict lookup."""
        key = (id(metric), module)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(module)
        return found

    def render(self) -> bytes:
        return generate_latest(self.registry)


_EMPTY = b""


class _Block:
    """The jobs of one probe type. Each job has a slot, the same in every family's list, so a
    job costs one dict entry plus a pointer per family of its probe, not a dict entry per
    family (at 100,000 jobs with ~15 families each that is ~60 MB less)."""

    __slots__ = ("filled", "free", "slots", "texts")

    def __init__(self) -> None:
        self.slots: dict[JobKey, int] = {}
        self.free: list[int] = []
        self.texts: dict[Family, list[bytes]] = {}  # family -> text per slot (b"": none)
        self.filled: dict[Family, int] = {}  # family -> slots with text

    def slot(self, key: JobKey) -> int:
        slot = self.slots.get(key)
        if slot is None:
            if self.free:
                slot = self.free.pop()
            else:
                slot = len(self.slots)
                for texts in self.texts.values():
                    texts.append(_EMPTY)
            self.slots[key] = slot
        return slot

    def put(self, family: Family, slot: int, text: bytes) -> None:
        texts = self.texts.get(family)
        if texts is None:
            size = len(self.slots) + len(self.free)
            texts = self.texts[family] = [_EMPTY] * size
            self.filled[family] = 0
        self.filled[family] += bool(text) - bool(texts[slot])
        texts[slot] = text

    def clear(self, slot: int) -> None:
        for family, texts in self.texts.items():
            if texts[slot]:
                self.filled[family] -= 1
                texts[slot] = _EMPTY


class Exposition:
    """Per-job text, kept per probe type and family; a scrape joins it family by family.

    The text is kept as UTF-8 bytes: a scrape takes a list of references to them (a
    snapshot) and the server joins and compresses it a slice at a time, with no str page,
    no encode and no whole page in memory (at 100,000 mixed jobs the page is ~175 MB).
    """

    def __init__(self, self_metrics: SelfMetrics) -> None:
        self.self_metrics = self_metrics
        self._blocks: dict[str, _Block] = {}  # probe name -> its jobs
        self._block_of: dict[JobKey, _Block] = {}

    def publish(self, key: JobKey, labels: str, spec: ProbeSpec, outcome: Outcome) -> None:
        block = self._blocks.get(spec.name)
        if block is None:
            block = self._blocks[spec.name] = _Block()
        if self._block_of.get(key, block) is not block:  # the job changed probe type
            self.remove(key)
        self._block_of[key] = block
        slot = block.slot(key)
        rendered = render_outcome(labels, spec, outcome)
        for family in block.texts:
            if family not in rendered:
                block.put(family, slot, _EMPTY)
        for family, text in rendered.items():
            block.put(family, slot, text.encode("utf-8"))

    def remove(self, key: JobKey) -> None:
        block = self._block_of.pop(key, None)
        if block is not None:
            slot = block.slots.pop(key)
            block.clear(slot)
            block.free.append(slot)

    def __contains__(self, key: JobKey) -> bool:
        return key in self._block_of

    def _job_parts(self) -> list[bytes]:
        by_family: dict[Family, list[list[bytes]]] = {}
        for block in self._blocks.values():
            for family, texts in block.texts.items():
                if block.filled[family]:
                    by_family.setdefault(family, []).append(texts)
        parts: list[bytes] = []
        for family in sorted(by_family, key=lambda f: f.name):
            parts.append(family.header.encode("utf-8"))
            for texts in by_family[family]:
                parts.extend(texts)
        return parts

    def render_jobs(self) -> str:
        return b"".join(self._job_parts()).decode("utf-8")

    def render_parts(self) -> list[bytes]:
        """The page as a list of immutable parts, taken at one instant: a consistent
        snapshot that costs a pointer per part, whatever runs finish while it is sent.
        Empty parts (b"") stand for jobs without that family; they join to nothing."""
        parts = self._job_parts()
        parts.append(self.self_metrics.render())
        return parts

    def render(self) -> bytes:
        return b"".join(self.render_parts())
