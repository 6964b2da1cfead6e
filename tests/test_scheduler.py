"""Scheduler behaviour: phases, caps, skips, deadlines, reload semantics."""

from __future__ import annotations

import asyncio
from pathlib import Path

from probed import config as config_mod
from probed.config import JobSpec
from probed.exposition import Exposition, SelfMetrics
from probed.reload import diff, rebuild
from probed.resources import Resources
from probed.scheduler import Scheduler, schedule_phase
from tests.helpers import serve


def test_phase_is_stable_and_spread() -> None:
    keys = [("tcp", f"10.0.{i // 256}.{i % 256}:22") for i in range(2000)]
    phases = [schedule_phase(k, 60.0) for k in keys]
    assert phases == [schedule_phase(k, 60.0) for k in keys], "same identity, same phase"
    assert all(0 <= p < 60 for p in phases)
    # Even spread: every 6 s slice of the minute holds roughly a tenth of the jobs.
    counts = [sum(1 for p in phases if s * 6 <= p < (s + 1) * 6) for s in range(10)]
    assert min(counts) > 140, counts
    assert max(counts) < 260, counts


class Concurrency:
    """A loopback peer that holds each connection and records when it was open."""

    # The peer shares the probe's event loop, so it notices a client's close a loop
    # iteration or two after the scheduler has already started the next run. Overlaps
    # shorter than this are that notification delay, not two runs in flight.
    CLOSE_NOTICE = 0.05

    def __init__(self, hold: float) -> None:
        self.hold = hold
        self.intervals: list[tuple[float, float]] = []

    @property
    def total(self) -> int:
        return len(self.intervals)

    @property
    def peak(self) -> int:
        """Most connections open at once, each counted until CLOSE_NOTICE before its end."""
        events = sorted(
            [(start, 1) for start, _ in self.intervals]
            + [(max(start, end - self.CLOSE_NOTICE), -1) for start, end in self.intervals]
        )
        now = peak = 0
        for _, step in events:
            now += step
            peak = max(peak, now)
        return peak

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            writer.write(b"hi\r\n")
            # Held until the client hangs up (its deadline) or ``hold`` passes.
            await asyncio.wait_for(reader.read(1), self.hold)
        except TimeoutError:
            pass
        finally:
            self.intervals.append((start, loop.time()))


def _config(tmp_path: Path, targets: list[str], **server: object) -> config_mod.Config:
    raw = {
        "server": server,
        "defaults": {"interval": "400ms", "timeout": "350ms"},
        "modules": {"hold": {"probe": "tcp", "query": [{"expect": "^hi"}, {"expect": "^never"}]}},
        "probes": [{"module": "hold", "target": t} for t in targets],
    }
    return config_mod.build(raw, tmp_path / "probes.toml")


def _scheduler(cfg: config_mod.Config) -> tuple[Scheduler, Exposition, SelfMetrics]:
    metrics = SelfMetrics()
    exposition = Exposition(metrics)
    sched = Scheduler(
        Resources(cfg.secrets),
        exposition,
        metrics,
        cfg.server.max_concurrency,
        cfg.server.per_host_concurrency,
    )
    return sched, exposition, metrics


def _counter(metrics: SelfMetrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name, {"module": "hold"})
    return value or 0.0


async def test_per_host_cap_and_skips(tmp_path: Path) -> None:
    peer = Concurrency(hold=1.0)  # longer than the 350 ms deadline: every run times out
    async with serve(peer) as port1, serve(peer) as port2:
        # Two jobs on one host, cap 1 per host: they cannot both run every 400 ms.
        targets = [f"127.0.0.1:{port1}", f"127.0.0.1:{port2}"]
        cfg = _config(tmp_path, targets, per_host_concurrency=1)
        sched, exposition, metrics = _scheduler(cfg)
        sched.apply(cfg.jobs)
        await asyncio.sleep(2.0)
        await sched.stop(grace=1.0)
    assert peer.total > 0
    assert peer.peak == 1
    assert _counter(metrics, "probed_runs_total") > 0
    assert _counter(metrics, "probed_runs_skipped_total") > 0
    assert 'reason="timeout"' in exposition.render_jobs()


async def test_global_cap_and_skips_when_runs_wait(tmp_path: Path) -> None:
    peer = Concurrency(hold=1.0)
    async with serve(peer) as port:
        # Two jobs on two host names of one listener, but only one run at a time.
        targets = [f"127.0.0.1:{port}", f"localhost:{port}"]
        cfg = _config(tmp_path, targets, max_concurrency=1)
        sched, _, metrics = _scheduler(cfg)
        sched.apply(cfg.jobs)
        await asyncio.sleep(2.0)
        await sched.stop(grace=1.0)
    assert peer.peak == 1
    # Two 350 ms runs cannot share one slot every 400 ms: some runs must be skipped.
    assert _counter(metrics, "probed_runs_skipped_total") > 0


async def test_reload_keeps_unchanged_drops_removed_adds_new(tmp_path: Path) -> None:
    peer = Concurrency(hold=0.0)
    async with serve(peer) as port:
        a, b, c = (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}")
        cfg = _config(tmp_path, [a, b])
        sched, exposition, _ = _scheduler(cfg)
        sched.apply(cfg.jobs)
        await asyncio.sleep(1.0)
        kept = sched.outcome(("hold", a))
        assert kept is not None
        stats = sched.apply(_config(tmp_path, [a, c]).jobs)
        assert (stats.added, stats.removed, stats.unchanged) == (1, 1, 0 + 1)
        assert sched.outcome(("hold", a)) is not None
        assert ("hold", b) not in exposition
        assert f'target="{b}"' not in exposition.render_jobs()
        await asyncio.sleep(1.0)
        assert ("hold", c) in exposition
        await sched.stop(grace=1.0)


async def test_update_with_a_reloads_changes_equals_apply(tmp_path: Path) -> None:
    # Port 1 on loopback: nothing listens; with a 1 h interval no run is due during the test.
    def build(hosts: range, expect: str) -> config_mod.Config:
        raw = {
            "defaults": {"interval": "1h", "timeout": "1s"},
            "modules": {
                "same": {"probe": "tcp"},
                "edited": {"probe": "tcp", "query": [{"expect": expect}]},
            },
            "probes": [
                {"module": m, "target": f"127.0.{h // 250}.{h % 250 + 1}:1"}
                for h in hosts
                for m in ("same", "edited")
            ],
        }
        return config_mod.build(raw, tmp_path / "probes.toml")

    old = build(range(300), "^a")
    # 20 hosts go, 30 come, and every job of the edited module changes.
    new = build(range(20, 330), "^b")
    by_apply, _, apply_metrics = _scheduler(old)
    by_update, _, update_metrics = _scheduler(old)
    by_apply.apply(old.jobs)
    by_update.apply(old.jobs)
    before = dict(by_update._jobs)

    order, gone = diff(old.jobs, new.jobs)
    assert rebuild(old.jobs, order) == new.jobs
    stats = by_update.update(
        [old.jobs[i] for i in gone], [job for job in order if isinstance(job, JobSpec)]
    )
    assert stats == by_apply.apply(new.jobs)
    assert (stats.added, stats.removed, stats.changed, stats.unchanged) == (60, 40, 280, 280)
    assert by_update._jobs.keys() == by_apply._jobs.keys() == {job.key for job in new.jobs}
    for job in new.jobs:
        state = by_update._jobs[job.key]
        assert state.spec == job
        if job.module == "same" and job.key in before:  # unchanged: the same state, same due
            assert state is before[job.key]
        else:
            assert state is not before.get(job.key)
        assert abs(state.due - by_apply._jobs[job.key].due) < 0.01
    for module in ("same", "edited"):
        sample = update_metrics.registry.get_sample_value("probed_jobs", {"module": module})
        assert sample == 310
        assert sample == apply_metrics.registry.get_sample_value("probed_jobs", {"module": module})
    # A module that loses all its jobs leaves probed_jobs, as with apply.
    only_same = [job for job in new.jobs if job.module == "same"]
    by_update.update([job for job in new.jobs if job.module == "edited"], [])
    assert by_update.apply(only_same).unchanged == 310
    assert update_metrics.registry.get_sample_value("probed_jobs", {"module": "edited"}) is None
    await by_apply.stop(0)
    await by_update.stop(0)
