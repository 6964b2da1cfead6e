"""Reload without stalling the probes: load and compare in a forked child.

Loading 100,000 jobs is about 1.5 CPU-s of pure Python. In a thread of the daemon it holds
the GIL against the event loop for all of that time, and every run due meanwhile starts
late (p99 lag of seconds was measured). Here a forked child, on another core, loads the
file and compares each new job with the running one it inherited at fork; it sends back
the new config without its jobs, the new job order as runs of identical running jobs
(``(start, stop)`` index pairs) and new ``JobSpec`` objects, and the indices of the running
jobs that go. The daemon rebuilds the job tuple from slices of the running one, reusing its
``JobSpec`` objects, and hands the scheduler only what changed (``Changes``): the work on
the event loop grows with the changes, not with the jobs. At 100,000 jobs, comparing every
job on the loop (and the collections its allocations set off) held it for ~0.5 s.

The child touches none of the parent's sockets or its loop, restores default signal
handling before anything else (a signal meant for it must not reach the parent's loop
through the inherited wake-up fd), writes one pickle and leaves with ``os._exit``. A child
that does not answer within ``limit`` seconds is killed and the reload fails, keeping the
running config. When no pipe or process can be had (descriptor or task limits), the config is
loaded in a thread as before: slower for the loop, but the reload still happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import os
import pickle
import signal
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from probed import config as config_mod
from probed.config import Config, ConfigError, JobSpec

DEFAULT_TIMEOUT = 120.0
CHILD_NICE = 10
_CHILD_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)

# The new job order: a (start, stop) pair is a run of identical running jobs
# (``running[start:stop]``), a JobSpec is a new or changed job.
Order = list[tuple[int, int] | JobSpec]


@dataclass(frozen=True, slots=True)
class Changes:
    """What a reload changes: ``gone``, the running jobs that leave (removed, or replaced by a
    changed spec), and ``new``, the added and changed specs. Every other job of the new
    config is the running object itself."""

    gone: tuple[JobSpec, ...]
    new: tuple[JobSpec, ...]


def diff(running: Sequence[JobSpec], new: Sequence[JobSpec]) -> tuple[Order, list[int]]:
    """The new order, and the indices of the running jobs that are not in it."""
    index = {job.key: i for i, job in enumerate(running)}
    kept = bytearray(len(running))
    order: Order = []
    start = stop = -1
    for job in new:
        i = index.get(job.key)
        if i is not None and running[i] == job:
            kept[i] = 1
            if i != stop:  # not the next of the current run: start another
                if start >= 0:
                    order.append((start, stop))
                start = i
            stop = i + 1
        else:
            if start >= 0:
                order.append((start, stop))
                start = stop = -1
            order.append(job)
    if start >= 0:
        order.append((start, stop))
    return order, [i for i, k in enumerate(kept) if not k]


def rebuild(running: Sequence[JobSpec], order: Order) -> tuple[JobSpec, ...]:
    jobs: list[JobSpec] = []
    for item in order:
        if isinstance(item, tuple):
            jobs.extend(running[item[0] : item[1]])
        else:
            jobs.append(item)
    return tuple(jobs)


def _child(path: Path, running: Sequence[JobSpec], fd: int) -> None:
    for signum in _CHILD_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    # One load, then exit: a collection would only walk the parent's objects (and copy
    # every page it touches) for the little cyclic garbage a load leaves.
    gc.disable()
    # Yield the CPU to the daemon's loop when cores are short: a reload may take longer,
    # the probes must not start late.
    with contextlib.suppress(OSError):
        os.nice(CHILD_NICE)
    payload: object
    try:
        new = config_mod.load(path)
        payload = (dataclasses.replace(new, jobs=()), *diff(running, new.jobs))
    except ConfigError as exc:
        payload = exc
    except BaseException as exc:  # noqa: BLE001 - everything becomes a failed reload
        last = traceback.extract_tb(exc.__traceback__)[-1:]
        where = f" at {last[0].filename}:{last[0].lineno}" if last else ""
        payload = ConfigError(str(path), [f"reload failed: {type(exc).__name__}: {exc}{where}"])
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


async def load_in_child(
    path: Path,
    running: Config,
    *,
    limit: float = DEFAULT_TIMEOUT,
) -> Config:
    """The config at ``path``, loaded in a forked child. Raises ConfigError."""
    new, _ = await reload_in_child(path, running, limit=limit)
    return new


async def reload_in_child(
    path: Path,
    running: Config,
    *,
    limit: float = DEFAULT_TIMEOUT,
    steps: dict[str, float] | None = None,
) -> tuple[Config, Changes | None]:
    """The config at ``path``, loaded in a forked child, and what it changes (None when it
    had to be loaded in a thread instead: compare it whole). Raises ConfigError.

    ``steps``, if given, gets the seconds of each step: ``fork``, ``unpickle`` and
    ``rebuild`` (on the loop), ``child`` (from the fork to the answer read, off the loop)."""
    loop = asyncio.get_running_loop()
    steps = {} if steps is None else steps
    clock = time.perf_counter
    try:
        read_fd, write_fd = os.pipe()
    except OSError:  # out of descriptors: load here, as a thread of ours, rather than not at all
        return await loop.run_in_executor(None, config_mod.load, path), None
    started = clock()
    try:
        pid = os.fork()
    except OSError:  # out of processes (TasksMax) or memory: the same fallback
        os.close(read_fd)
        os.close(write_fd)
        return await loop.run_in_executor(None, config_mod.load, path), None
    if pid == 0:  # the child: never returns
        code = 1
        try:
            os.close(read_fd)
            _child(path, running.jobs, write_fd)
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    steps["fork"] = clock() - started
    reader = loop.run_in_executor(None, _read_all, read_fd)
    answered = False
    try:
        data = await asyncio.wait_for(asyncio.shield(reader), limit)
        answered = True
    except TimeoutError:
        raise ConfigError(str(path), [f"reload: loading took longer than {limit:g}s"]) from None
    finally:
        if not answered:  # timed out, or the reload itself was cancelled (shutdown)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # The reader returns at EOF: the child has written everything or is gone.
        with contextlib.suppress(OSError):
            await reader
        await loop.run_in_executor(None, _reap, pid, read_fd)
    steps["child"] = clock() - started
    return _answer(path, data, running.jobs, steps)


def _answer(
    path: Path, data: bytes, running: Sequence[JobSpec], steps: dict[str, float]
) -> tuple[Config, Changes]:
    """The new config from the child's pickle (on the loop: ``unpickle`` and ``rebuild``)."""
    clock = time.perf_counter
    started = clock()
    try:
        payload = pickle.loads(data)  # noqa: S301 - our own child, over our own pipe
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(str(path), [f"reload: no answer from the loader ({exc})"]) from None
    steps["unpickle"] = clock() - started
    if isinstance(payload, ConfigError):
        raise payload
    new, order, gone = payload
    assert isinstance(new, Config)
    started = clock()
    jobs = rebuild(running, order)
    changes = Changes(
        tuple(running[i] for i in gone), tuple(j for j in order if isinstance(j, JobSpec))
    )
    steps["rebuild"] = clock() - started
    return dataclasses.replace(new, jobs=jobs), changes


def _reap(pid: int, fd: int) -> None:
    os.waitpid(pid, 0)
    os.close(fd)
