"""The reload loader (probed/reload.py): a forked child loads and compares; the daemon keeps
the running JobSpec objects of unchanged jobs, gets the child's errors as ConfigErrors, and
kills a child that hangs. Real files, a real fork, a real pipe."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import resource
import time
from pathlib import Path

import pytest

from probed import config as config_mod
from probed.config import ConfigError, JobSpec
from probed.reload import CHILD_NICE, diff, load_in_child, rebuild, reload_in_child


def _write(path: Path, hosts: list[str], *, expect: str = "^SSH-") -> Path:
    path.write_text(
        "[defaults]\n"
        'interval = "30s"\n'
        f'[modules.banner]\nprobe = "tcp"\nquery = [ {{ expect = "{expect}" }} ]\n'
        '[modules.plain]\nprobe = "tcp"\n'
        "[[groups]]\n"
        'name = "fleet"\n'
        'modules = ["banner", "plain"]\n'
        'hosts_file = "hosts.txt"\n'
    )
    (path.parent / "hosts.txt").write_text("".join(f"{h}\n" for h in hosts))
    return path


def _nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def _children() -> set[int]:
    """Our own child processes that exist now (zombies included)."""
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == os.getpid():
                out.add(int(entry.name))
    return out


async def test_unchanged_jobs_keep_their_objects_and_order(tmp_path: Path) -> None:
    path = _write(tmp_path / "probes.toml", [f"127.0.0.1:{p}" for p in range(2000, 2300)])
    running = config_mod.load(path)
    before = _children()
    # Drop the first 10 hosts, add 5; the rest is unchanged.
    _write(path, [f"127.0.0.1:{p}" for p in range(2010, 2305)])
    new = await load_in_child(path, running)
    assert _children() <= before, "the child is reaped"

    assert new.jobs == config_mod.load(path).jobs, "the same config as a direct load"
    old = {job.key: job for job in running.jobs}
    kept = [job for job in new.jobs if job.key in old]
    assert len(kept) == 2 * 290
    assert all(job is old[job.key] for job in kept), "unchanged jobs reuse the running objects"
    added = [job for job in new.jobs if job.key not in old]
    assert sorted(job.target.raw for job in added if job.module == "plain") == [
        f"127.0.0.1:{p}" for p in range(2300, 2305)
    ]
    assert new.modules.keys() == running.modules.keys()
    assert new.jobs[0].spec is running.jobs[0].spec, "the probe registry's one spec"


async def test_the_answer_names_what_changed_and_nothing_else(tmp_path: Path) -> None:
    path = _write(tmp_path / "probes.toml", [f"127.0.0.1:{p}" for p in range(2000, 2300)])
    running = config_mod.load(path)
    _write(path, [f"127.0.0.1:{p}" for p in range(2010, 2305)])
    new, changes = await reload_in_child(path, running)
    assert changes is not None
    gone = {f"127.0.0.1:{p}" for p in range(2000, 2010)}
    assert {id(job) for job in changes.gone} == {
        id(job) for job in running.jobs if job.target.raw in gone
    }, "the running objects of the removed jobs"
    added = {f"127.0.0.1:{p}" for p in range(2300, 2305)}
    assert changes.new == tuple(job for job in new.jobs if job.target.raw in added)


def test_diff_sends_runs_of_unchanged_jobs_and_rebuild_restores_the_order(tmp_path: Path) -> None:
    path = _write(tmp_path / "probes.toml", [f"127.0.{i // 250}.{i % 250}:22" for i in range(500)])
    running = config_mod.load(path).jobs
    assert diff(running, running) == ([(0, len(running))], []), "one pair for an unchanged config"
    rng = random.Random(9)
    for _ in range(50):
        new = list(running)
        if rng.random() < 0.2:
            rng.shuffle(new)
        for _ in range(rng.randrange(20)):  # drop some
            del new[rng.randrange(len(new))]
        for _ in range(rng.randrange(20)):  # change some (a longer interval)
            i = rng.randrange(len(new))
            new[i] = dataclasses.replace(new[i], interval=new[i].interval + 1)
        order, gone = diff(running, new)
        assert rebuild(running, order) == tuple(new)
        unchanged = [item for item in order if isinstance(item, tuple)]
        assert sum(stop - start for start, stop in unchanged) == sum(
            1 for job in new if job in running
        )
        assert all(isinstance(item, JobSpec) for item in order if not isinstance(item, tuple))
        kept = {i for start, stop in unchanged for i in range(start, stop)}
        assert sorted(gone) == [i for i in range(len(running)) if i not in kept]


async def test_a_changed_module_changes_its_jobs_only(tmp_path: Path) -> None:
    hosts = [f"127.0.0.1:{p}" for p in range(2000, 2010)]
    path = _write(tmp_path / "probes.toml", hosts)
    running = config_mod.load(path)
    _write(path, hosts, expect="^SSH-2")
    new = await load_in_child(path, running)
    old = {job.key: job for job in running.jobs}
    for job in new.jobs:
        if job.module == "plain":
            assert job is old[job.key]
        else:
            assert job is not old[job.key]
            assert job != old[job.key]


async def test_a_bad_config_comes_back_as_the_same_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "probes.toml", ["127.0.0.1:22"])
    running = config_mod.load(path)
    path.write_text(
        path.read_text().replace(
            '[modules.plain]\nprobe = "tcp"', '[modules.plain]\nprobe = "tcpp"'
        )
    )
    with pytest.raises(ConfigError) as direct:
        config_mod.load(path)
    with pytest.raises(ConfigError) as child:
        await load_in_child(path, running)
    assert str(child.value) == str(direct.value)
    assert child.value.problems == direct.value.problems
    assert str(path) in str(child.value)


async def test_a_loader_that_hangs_is_killed(tmp_path: Path) -> None:
    # A hosts file that is a FIFO with no writer: the child blocks reading it forever.
    path = _write(tmp_path / "probes.toml", ["127.0.0.1:22"])
    running = config_mod.load(path)
    (tmp_path / "hosts.txt").unlink()
    os.mkfifo(tmp_path / "hosts.txt")
    before = _children()
    started = time.monotonic()
    loading = asyncio.create_task(load_in_child(path, running, limit=1.0))
    await asyncio.sleep(0.3)
    (child,) = _children() - before
    assert _nice(child) == os.nice(0) + CHILD_NICE, "the loader yields the CPU to the daemon"
    with pytest.raises(ConfigError, match="loading took longer than 1s"):
        await loading
    assert time.monotonic() - started < 5
    assert _children() <= before, "the killed child is reaped"


async def test_the_load_is_paid_by_the_child_not_the_daemon(tmp_path: Path) -> None:
    # 20,000 jobs. In a thread of the daemon this CPU would be the daemon's (and hold the GIL
    # against its event loop); here the daemon only rebuilds the job tuple.
    hosts = [f"127.{i // 250}.{i % 250}.1:22" for i in range(10_000)]
    path = _write(tmp_path / "probes.toml", hosts)
    running = config_mod.load(path)
    _write(path, hosts[1:])
    own, children = _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
    new = await load_in_child(path, running)
    own, children = _cpu(resource.RUSAGE_SELF) - own, _cpu(resource.RUSAGE_CHILDREN) - children
    assert len(new.jobs) == 2 * 9_999
    assert children > 0.05, children
    assert own < children / 3, (own, children)


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime
