"""Composition root: config, resources, scheduler, web server; signals, reload, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import time
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from probed import config as config_mod
from probed import malloc
from probed.config import Config, ConfigError, adhoc_job
from probed.exposition import Exposition, SelfMetrics, job_labels, render_outcome
from probed.reload import reload_in_child
from probed.report import report
from probed.resources import Resources, new_event_loop
from probed.runner import execute
from probed.scheduler import Scheduler
from probed.server import make_app
from probed.systemd import Notifier
from probed.watch import watch
from probed.webconfig import WebConfig
from probed.webconfig import load as load_web_config

log = structlog.get_logger("probed")


class Daemon:
    def __init__(
        self, cfg: Config, notifier: Notifier | None = None, web_config: WebConfig | None = None
    ) -> None:
        self.config = cfg
        self.web_config = web_config
        self.notifier = notifier or Notifier()
        self.metrics = SelfMetrics()
        self.exposition = Exposition(self.metrics)
        self.env = Resources(cfg.secrets)
        self.scheduler = Scheduler(
            self.env,
            self.exposition,
            self.metrics,
            cfg.server.max_concurrency,
            cfg.server.per_host_concurrency,
        )
        self.env.in_flight = self.scheduler.in_flight
        self._ready = False
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._background: set[asyncio.Task[Any]] = set()

    # -- Backend for the web server -----------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._ready

    def metrics_parts(self) -> list[bytes]:
        return self.exposition.render_parts()

    async def probe_once(self, module: str, target: str, debug: bool) -> tuple[int, str]:
        job = self.scheduler.spec((module, target))
        if job is None:
            if not self.config.server.allow_probe_any_target:
                return 403, (
                    f'no configured job has module "{module}" and target "{target}" '
                    "(server.allow_probe_any_target is off)"
                )
            try:
                job = adhoc_job(self.config, module, target)
            except ValueError as exc:
                return 400, str(exc)
        outcome = await execute(job, self.env, capture_log=debug)
        if debug:
            return 200, report(job, outcome, with_log=True)
        labels = job_labels(job.module, job.target.raw, job.labels)
        families = render_outcome(labels, job.spec, outcome)
        return 200, "".join(f.header + text for f, text in families.items())

    async def reload(self) -> tuple[bool, str]:
        async with self._reload_lock:
            self.notifier.reloading()
            # Seconds per step; those on the loop (fork, unpickle, rebuild, apply) delay runs.
            steps: dict[str, float] = {}
            try:
                new, changes = await reload_in_child(self.config.path, self.config, steps=steps)
            except ConfigError as exc:
                self.metrics.reload_ok.set(0)
                log.exception("reload failed; keeping the running configuration", error=str(exc))
                self.notifier.ready(self._status())
                return False, str(exc)
            if new.server.listen != self.config.server.listen:
                log.warning(
                    "server.listen changed; restart probed to apply it",
                    running=self.config.server.listen,
                    configured=new.server.listen,
                )
            self.scheduler.max_concurrency = new.server.max_concurrency
            self.scheduler.per_host_concurrency = new.server.per_host_concurrency
            self.env.secrets = new.secrets
            started = time.perf_counter()
            if changes is not None:
                stats = self.scheduler.update(changes.gone, changes.new)
            else:  # loaded in a thread: compare every job
                stats = self.scheduler.apply(new.jobs)
            self.config = new
            steps["apply"] = time.perf_counter() - started
            self._loaded()
            # The old config's garbage is freed now; hand the pages back (in a thread: it
            # walks the heap).
            started = time.perf_counter()
            await asyncio.get_running_loop().run_in_executor(None, malloc.trim)
            steps["trim"] = time.perf_counter() - started
            log.info(
                "configuration reloaded",
                jobs=len(new.jobs),
                added=stats.added,
                removed=stats.removed,
                changed=stats.changed,
                unchanged=stats.unchanged,
                seconds={step: round(value, 4) for step, value in steps.items()},
            )
            self.notifier.ready(self._status())
            return True, (
                f"reloaded: {len(new.jobs)} jobs ({stats.added} added, "
                f"{stats.removed} removed, {stats.changed} changed)"
            )

    # -- life cycle ---------------------------------------------------------------------------
    def _loaded(self) -> None:
        self.metrics.reload_ok.set(1)
        self.metrics.reload_time.set(time.time())

    def _status(self) -> str:
        return f"{len(self.scheduler)} jobs"

    def request_stop(self) -> None:
        self._stop.set()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _files_changed(self) -> None:
        log.info("target files changed; reloading")
        await self.reload()

    def _on_sighup(self) -> None:
        self._spawn(self.reload(), "reload")

    async def _watchdog(self, interval: float) -> None:
        # Sent from the event loop itself: a stalled loop stops the pings and systemd
        # restarts us.
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stats = self.scheduler.apply(self.config.jobs)
        self._loaded()
        freeze_long_lived()
        web_config = self.web_config
        middlewares = web_config.middlewares if web_config is not None else ()
        runner = web.AppRunner(
            make_app(self, middlewares),
            access_log=None,
            handle_signals=False,
            # Requests in flight at shutdown (a scrape, a /probe) get the same grace as runs.
            shutdown_timeout=self.config.server.shutdown_grace,
        )
        await runner.setup()
        host, _, port = self.config.server.listen.rpartition(":")
        site = web.TCPSite(
            runner,
            host.strip("[]") or None,
            int(port),
            reuse_address=True,
            ssl_context=web_config.ssl_context if web_config is not None else None,
        )
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            await self.scheduler.stop(0)
            log.exception("cannot listen", listen=self.config.server.listen, error=str(exc))
            return 1
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        self._spawn(
            watch(
                lambda: self.config.watched_files,
                self._files_changed,
                lambda: self.config.server.watch_interval,
            ),
            "watch target files",
        )
        if self.notifier.watchdog_interval:
            self._spawn(self._watchdog(self.notifier.watchdog_interval), "watchdog")
        self._ready = True
        log.info(
            "probed started",
            listen=self.config.server.listen,
            jobs=stats.added,
            config=str(self.config.path),
            web=web_config.describe() if web_config is not None else "tls off, basic auth off",
        )
        self.notifier.ready(self._status())
        await self._stop.wait()
        self._ready = False
        self.notifier.stopping()
        log.info("stopping", in_flight=int(self.metrics.in_flight._value.get()))
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        for task in list(self._background):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._background, return_exceptions=True)
        # Both within one grace: runs and HTTP requests in flight finish or are cancelled,
        # the listener and every keep-alive connection close.
        await asyncio.gather(
            self.scheduler.stop(self.config.server.shutdown_grace), runner.cleanup()
        )
        await self.env.close()
        self.notifier.close()
        log.info("stopped")
        return 0


def freeze_long_lived() -> None:
    """Put every object alive now out of the garbage collector's sight (``gc.freeze``).

    Called once, right after the first config is scheduled, before any run starts: the
    config, the schedule and the libraries' module state live until a reload replaces them.
    At 100,000 jobs a full collection walks all of them and held the event loop for 0.2-0.3 s
    each time one ran (every minute or so, and on a reload's allocations); it skips frozen
    objects. A frozen object is still freed when its last reference goes, which is how a
    reload drops the old config (its objects hold no reference cycles: see
    tests/test_gc_freeze.py); only cyclic garbage among frozen objects would never be
    collected. That is why this is not repeated after a reload: the objects of the runs in
    flight then (tasks, transports, exceptions) can end up in cycles.
    """
    gc.collect()
    gc.freeze()


def run_daemon(path: Path, web_config_file: Path | None = None) -> int:
    malloc.configure()
    cfg = config_mod.load(path)
    web_config = load_web_config(web_config_file) if web_config_file is not None else None
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(Daemon(cfg, web_config=web_config).run())
