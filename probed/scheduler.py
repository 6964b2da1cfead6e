"""Owns every run: fixed per-job phases, caps, deadlines, skips and lag.

Jobs wait in one heap of (due, sequence, job) entries under a single event-loop timer set
for the earliest due; a task exists only while a run is in flight. At 100,000 jobs a heap
entry costs about a fifth of a loop TimerHandle per job (uvloop: a handle, a libuv timer and
a context copy each) and takes a tenth of the time to schedule.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import structlog

from probed.config import JobSpec
from probed.exposition import Exposition, JobKey, SelfMetrics, job_labels
from probed.probes.base import Env, Reason
from probed.results import Outcome
from probed.runner import execute

log = structlog.get_logger("probed.scheduler")
TIMER_RESOLUTION = 0.001


def schedule_phase(key: JobKey, interval: float) -> float:
    """A stable offset in [0, interval) from the job's identity: even spread, and the same
    rhythm after a restart."""
    digest = hashlib.blake2b("\0".join(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64 * interval


class JobState:
    __slots__ = (
        "due",
        "key",
        "outcome",
        "pending_due",
        "removed",
        "running",
        "spec",
        "waiting",
    )

    def __init__(self, spec: JobSpec, key: JobKey) -> None:
        self.spec = spec
        self.key = key  # one tuple per job, shared by every dict that holds the job
        self.due = 0.0
        self.pending_due = 0.0  # the scheduled start of the run now waiting for a slot
        self.running = False
        self.waiting = False
        self.removed = False
        self.outcome: Outcome | None = None


@dataclass(frozen=True, slots=True)
class ApplyStats:
    added: int
    removed: int
    changed: int
    unchanged: int


class Scheduler:
    def __init__(
        self,
        env: Env,
        exposition: Exposition,
        metrics: SelfMetrics,
        max_concurrency: int,
        per_host_concurrency: int,
    ) -> None:
        self._env = env
        self._exposition = exposition
        self._metrics = metrics
        self.max_concurrency = max_concurrency
        self.per_host_concurrency = per_host_concurrency
        self._jobs: dict[JobKey, JobState] = {}
        self._per_module: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._ready: deque[JobState] = deque()
        self._host_wait: dict[str, deque[JobState]] = {}
        self._host_running: dict[str, int] = {}
        self._running = 0
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wall_offset = 0.0
        # Due jobs: (due, tie-breaker, state). An entry is stale (skipped when popped) once
        # its job is removed or has moved on to a later due time.
        self._heap: list[tuple[float, int, JobState]] = []
        self._sequence = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    # -- configuration ------------------------------------------------------------------
    def apply(self, specs: Iterable[JobSpec]) -> ApplyStats:
        """Swap in a new job set: unchanged jobs keep schedule and result."""
        self._clock()
        new = {spec.key: spec for spec in specs}
        added = changed = unchanged = removed = 0
        for key, state in list(self._jobs.items()):
            spec = new.get(key)
            # A reload hands back the running JobSpec object for an unchanged job.
            if spec is not None and (spec is state.spec or spec == state.spec):
                unchanged += 1
                continue
            self._retire(state)
            if spec is None:
                removed += 1
            else:
                changed += 1
        for key, spec in new.items():
            if key not in self._jobs:
                added += 1
                self._add(spec, key)
        self._count()
        return ApplyStats(added - changed, removed, changed, unchanged)

    def update(self, gone: Iterable[JobSpec], new: Iterable[JobSpec]) -> ApplyStats:
        """Apply what a reload changes (``reload.Changes``): ``gone`` are running specs that
        leave (removed, or replaced by a changed spec of ``new``), ``new`` the added and
        changed specs; every other job stays as it is. The same result as ``apply`` of the
        whole new job set, in time proportional to the changes rather than to the jobs (at
        100,000 jobs ``apply`` holds the loop for 0.1-0.5 s)."""
        self._clock()
        retired: set[JobKey] = set()
        for spec in gone:
            state = self._jobs.get(spec.key)
            if state is not None and (state.spec is spec or state.spec == spec):
                self._retire(state)
                retired.add(state.key)
        added = changed = 0
        for spec in new:
            key = spec.key
            state = self._jobs.get(key)
            if state is not None:  # running under a spec ``gone`` did not name: replace it
                self._retire(state)
                retired.add(key)
            if key in retired:
                changed += 1
            else:
                added += 1
            self._add(spec, key)
        self._count()
        return ApplyStats(added, len(retired) - changed, changed, len(self) - added - changed)

    def _clock(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._wall_offset = time.time() - loop.time()

    def _count(self) -> None:
        """probed_jobs from the per-module counts (kept by _add and _retire)."""
        self._metrics.jobs.clear()
        for module, count in self._per_module.items():
            self._metrics.jobs.labels(module).set(count)

    def _add(self, spec: JobSpec, key: JobKey) -> None:
        assert self._loop is not None
        state = JobState(spec, key)
        self._jobs[key] = state
        self._per_module[spec.module] = self._per_module.get(spec.module, 0) + 1
        if self._stopping:
            return
        phase = schedule_phase(key, spec.interval)
        wall_now = self._loop.time() + self._wall_offset
        # Next wall-clock instant t with (t - phase) % interval == 0.
        wall_due = wall_now + ((phase - wall_now) % spec.interval)
        state.due = wall_due - self._wall_offset
        self._push(state)

    def _retire(self, state: JobState) -> None:
        state.removed = True  # its heap entry is now stale
        if state.waiting:
            state.waiting = False
            self._metrics.waiting.dec()
            try:
                self._ready.remove(state)
            except ValueError:
                self._host_wait.get(state.spec.host, deque()).remove(state)
        del self._jobs[state.key]
        module = state.spec.module
        left = self._per_module[module] - 1
        if left:
            self._per_module[module] = left
        else:
            del self._per_module[module]
        self._exposition.remove(state.key)

    def outcome(self, key: JobKey) -> Outcome | None:
        """The last run's summary: success, reason, detail, start and duration. Its phases
        and samples live on only as the job's /metrics text (a second copy of them would
        cost about 1 KB per job: 100 MB at 100,000 jobs)."""
        state = self._jobs.get(key)
        return state.outcome if state is not None else None

    def spec(self, key: JobKey) -> JobSpec | None:
        state = self._jobs.get(key)
        return state.spec if state is not None else None

    def __len__(self) -> int:
        return len(self._jobs)

    def in_flight(self) -> int:
        """Runs going on now."""
        return len(self._tasks)

    # -- the timer path -------------------------------------------------------------------
    def _push(self, state: JobState) -> None:
        heapq.heappush(self._heap, (state.due, next(self._sequence), state))
        if state.due < self._timer_at:
            self._arm()

    def _arm(self) -> None:
        """Set the one loop timer for the earliest entry of the heap."""
        loop = self._loop
        assert loop is not None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = math.inf
        if self._heap and not self._stopping:
            self._timer_at = self._heap[0][0]
            self._timer = loop.call_at(self._timer_at, self._on_timer)

    def _on_timer(self) -> None:
        loop = self._loop
        assert loop is not None
        self._timer = None
        self._timer_at = math.inf
        # The loop's clock and timers have millisecond resolution: a timer may fire up to
        # a tick before its due time, so take what is due within that tick (as a handle
        # per job did) rather than re-arming for a fraction of a millisecond.
        now = loop.time() + TIMER_RESOLUTION
        heap = self._heap
        # Bounded: each job's next entry is due an interval later, after ``now``.
        while heap and heap[0][0] <= now:
            due, _, state = heapq.heappop(heap)
            if not state.removed and due == state.due:
                self._on_due(state)
        self._arm()

    def _on_due(self, state: JobState) -> None:
        loop = self._loop
        assert loop is not None
        interval = state.spec.interval
        now = loop.time()
        due = state.due
        state.due += interval
        if state.due <= now:
            # The loop stalled for more than an interval: realign to the job's phase.
            state.due += ((now - state.due) // interval + 1) * interval
        heapq.heappush(self._heap, (state.due, next(self._sequence), state))
        if state.running or state.waiting:
            self._metrics.child(self._metrics.skipped, state.spec.module).inc()
            return
        state.pending_due = due
        self._offer(state, due)

    def _offer(self, state: JobState, due: float) -> None:
        host = state.spec.host
        if self._host_running.get(host, 0) >= self.per_host_concurrency:
            self._wait(state, self._host_wait.setdefault(host, deque()))
        elif self._running >= self.max_concurrency:
            self._wait(state, self._ready)
        else:
            self._start(state, due)

    def _wait(self, state: JobState, queue: deque[JobState]) -> None:
        state.waiting = True
        self._metrics.waiting.inc()
        queue.append(state)

    def _start(self, state: JobState, due: float) -> None:
        loop = self._loop
        assert loop is not None
        self._metrics.lag.observe(max(0.0, loop.time() - due))
        state.running = True
        self._running += 1
        host = state.spec.host
        self._host_running[host] = self._host_running.get(host, 0) + 1
        self._metrics.in_flight.inc()
        spec = state.spec
        task = loop.create_task(self._run(state), name=f"probe {spec.module} {spec.target.raw}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, state: JobState) -> None:
        spec = state.spec
        try:
            outcome = await execute(spec, self._env)
        finally:
            self._finished(state)
        metrics = self._metrics
        metrics.child(metrics.runs, spec.module).inc()
        if not outcome.success:
            metrics.child(metrics.failed, spec.module).inc()
            if outcome.reason is Reason.INTERNAL_ERROR:
                metrics.child(metrics.errors, spec.module).inc()
            log.info(
                "probe failed",
                module=spec.module,
                target=spec.target.raw,
                reason=outcome.reason.value,
                detail=outcome.detail,
                duration=round(outcome.duration, 6),
            )
        else:
            log.debug(
                "probe ok",
                module=spec.module,
                target=spec.target.raw,
                duration=round(outcome.duration, 6),
            )
        if not state.removed:
            self._publish(state, outcome)

    def _publish(self, state: JobState, outcome: Outcome) -> None:
        spec = state.spec
        labels = job_labels(spec.module, spec.target.raw, spec.labels)
        self._exposition.publish(state.key, labels, spec.spec, outcome)
        state.outcome = dataclasses.replace(outcome, phases=(), samples=(), log=None)

    def _finished(self, state: JobState) -> None:
        state.running = False
        self._running -= 1
        self._metrics.in_flight.dec()
        host = state.spec.host
        left = self._host_running[host] - 1
        if left:
            self._host_running[host] = left
        else:
            del self._host_running[host]
        if self._stopping:
            return
        host_queue = self._host_wait.get(host)
        if host_queue:
            self._release(host_queue.popleft())
            if not host_queue:
                del self._host_wait[host]
        while self._ready and self._running < self.max_concurrency:
            self._release(self._ready.popleft())

    def _release(self, state: JobState) -> None:
        state.waiting = False
        self._metrics.waiting.dec()
        self._offer(state, state.pending_due)

    # -- shutdown ---------------------------------------------------------------------------
    async def stop(self, grace: float) -> None:
        """Stop scheduling; let runs in flight finish until ``grace``, cancel the rest."""
        self._stopping = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._heap.clear()
        self._ready.clear()
        self._host_wait.clear()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
                log.info("cancelled runs at shutdown", count=len(pending))
