"""The daemon freezes its start-up objects out of the garbage collector's sight
(probed.app.freeze_long_lived): a full collection at 100,000 jobs then walks the results,
not the config. That is safe only if what a reload drops is freed by reference counting,
since frozen objects are never collected: a reference cycle among the old config's or the
schedule's objects would leak them on every reload. Here a real daemon object reloads a
real config through the forked child, with every job changed or removed."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from probed import config as config_mod
from probed.app import Daemon, freeze_long_lived

JOBS = 600


def _write(path: Path, hosts: range, expect: str) -> None:
    # Port 1 on loopback: nothing listens; with a 1 h interval no run is due in the test.
    (path.parent / "hosts.txt").write_text(
        "".join(f"127.0.{h // 200}.{h % 200 + 1}:1\n" for h in hosts)
    )
    path.write_text(
        "[server]\n"
        'listen = "127.0.0.1:0"\n'
        "[defaults]\n"
        'interval = "1h"\n'
        f'[modules.banner]\nprobe = "tcp"\nquery = [ {{ expect = "{expect}" }} ]\n'
        "[[groups]]\n"
        'name = "fleet"\n'
        'modules = ["banner"]\n'
        'hosts_file = "hosts.txt"\n'
        'labels = { team = "ops" }\n'
    )


@pytest.fixture
def unfreeze() -> Iterator[None]:
    try:
        yield
    finally:
        gc.unfreeze()


@pytest.mark.usefixtures("unfreeze")
async def test_a_reload_frees_the_frozen_config_it_replaces(tmp_path: Path) -> None:
    path = tmp_path / "probes.toml"
    _write(path, range(JOBS), "^a")
    daemon = Daemon(config_mod.load(path))
    try:
        daemon.scheduler.apply(daemon.config.jobs)
        freeze_long_lived()
        frozen = gc.get_freeze_count()
        assert frozen > 3 * JOBS

        # Half the hosts go and the module's body changes: every running job is replaced.
        _write(path, range(JOBS // 2), "^b")
        ok, message = await daemon.reload()
        assert ok, message
        assert message.startswith(f"reloaded: {JOBS // 2} jobs (0 added, {JOBS // 2} removed")
        assert all(daemon.scheduler.spec(job.key) is job for job in daemon.config.jobs)
        # A retired job's state lives on in the scheduler's heap until its entry is popped
        # (within an interval); stopping empties the heap at once.
        await daemon.scheduler.stop(0)
        # Each old job's JobSpec, Target, schedule state and heap entry were frozen (~4 per
        # job); they and the old Config are gone by reference counting alone. (With a cycle
        # through each job's state, 639 of 75,307 went.)
        freed = frozen - gc.get_freeze_count()
        assert freed >= 3 * JOBS, (frozen, freed)
    finally:
        await daemon.scheduler.stop(0)
        await daemon.env.close()
