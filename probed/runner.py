"""Run one check with its deadline: the single code path for the scheduler, the CLI,
``/probe`` and ``probed scan``."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import structlog

from probed.durations import format_duration
from probed.probes.base import Env, Reason
from probed.results import Outcome, Recorder

if TYPE_CHECKING:
    from probed.config import JobSpec

log = structlog.get_logger("probed.run")


async def execute(job: JobSpec, env: Env, *, capture_log: bool = False) -> Outcome:
    """Run ``job`` once. Never raises except CancelledError; bugs become failed outcomes
    with ``Reason.INTERNAL_ERROR`` (and the caller counts them)."""
    rec = Recorder(capture_log=capture_log)
    started = time.time()
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(job.timeout):
            ok = await job.spec.probe(job.target, job.settings, rec, env)
    except TimeoutError:
        ok = rec.fail(
            Reason.TIMEOUT,
            f"deadline of {format_duration(job.timeout)} reached in phase "
            f"{rec.current_phase or 'start'}",
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("probe raised", module=job.module, target=job.target.raw)
        rec.fail(Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
        ok = False
    return rec.finish(bool(ok), started, time.perf_counter() - t0)
