"""Reload without stalling the probes: load and compare in a forked child.

Loading 100,000 jobs is about 1.5 CPU-s of pure Python. In a thread of the daemon it holds
the GIL against the event loop for all of that time, and every run due meanwhile starts
late (p99 lag of seconds was measured). Here a forked child, on another core, loads the
file and compares each new job with the running one it inherited at fork; it sends back
the new config without its jobs, plus, per job in the new order, either the index of the
identical running job or the new ``JobSpec``. The daemon rebuilds the job tuple from that,
reusing the running ``JobSpec`` objects, so an unchanged job costs one int on the pipe and
no memory; only added and changed jobs are unpickled.

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
import os
import pickle
import signal
import traceback
from collections.abc import Sequence
from pathlib import Path

from probed import config as config_mod
from probed.config import Config, ConfigError, JobSpec

DEFAULT_TIMEOUT = 120.0
CHILD_NICE = 10
_CHILD_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)

# In the new order: an int is the index of the identical running job, else the new spec.
Order = list[int | JobSpec]


def diff(running: Sequence[JobSpec], new: Sequence[JobSpec]) -> Order:
    index = {job.key: i for i, job in enumerate(running)}
    order: Order = []
    for job in new:
        i = index.get(job.key)
        order.append(i if i is not None and running[i] == job else job)
    return order


def rebuild(running: Sequence[JobSpec], order: Order) -> tuple[JobSpec, ...]:
    return tuple(running[item] if isinstance(item, int) else item for item in order)


def _child(path: Path, running: Sequence[JobSpec], fd: int) -> None:
    for signum in _CHILD_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    # Yield the CPU to the daemon's loop when cores are short: a reload may take longer,
    # the probes must not start late.
    with contextlib.suppress(OSError):
        os.nice(CHILD_NICE)
    payload: object
    try:
        new = config_mod.load(path)
        payload = (dataclasses.replace(new, jobs=()), diff(running, new.jobs))
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
    loop = asyncio.get_running_loop()
    try:
        read_fd, write_fd = os.pipe()
    except OSError:  # out of descriptors: load here, as a thread of ours, rather than not at all
        return await loop.run_in_executor(None, config_mod.load, path)
    try:
        pid = os.fork()
    except OSError:  # out of processes (TasksMax) or memory: the same fallback
        os.close(read_fd)
        os.close(write_fd)
        return await loop.run_in_executor(None, config_mod.load, path)
    if pid == 0:  # the child: never returns
        code = 1
        try:
            os.close(read_fd)
            _child(path, running.jobs, write_fd)
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
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
    try:
        payload = pickle.loads(data)  # noqa: S301 - our own child, over our own pipe
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(str(path), [f"reload: no answer from the loader ({exc})"]) from None
    if isinstance(payload, ConfigError):
        raise payload
    new, order = payload
    assert isinstance(new, Config)
    return dataclasses.replace(new, jobs=rebuild(running.jobs, order))


def _reap(pid: int, fd: int) -> None:
    os.waitpid(pid, 0)
    os.close(fd)
