"""The ``env`` every probe receives, and the event loop it runs on: what one-shot commands
(``probed probe``, ``probed scan``) need without the daemon's web server."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, TypeVar

from probed.secrets import SecretStore

_T = TypeVar("_T")
OFFLOAD_AT = 16
"""Runs in flight from which TLS handshake steps go to worker threads."""


class Resources:
    """The ``env`` every probe receives: long-lived, shared, built once."""

    def __init__(self, secrets: SecretStore) -> None:
        self.secrets = secrets
        self._contexts: dict[Any, ssl.SSLContext] = {}
        self._tls_pool: ThreadPoolExecutor | None = None
        self.in_flight: Callable[[], int] = lambda: 0

    def ssl_context(self, key: Any, build: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = self._contexts[key] = build()
        return ctx

    def tls_offload(self) -> Executor | None:
        """Threads for the CPU of TLS handshakes (one per core), or None: run it inline.

        OpenSSL runs without the GIL there while the loop goes on with other runs
        (``Stream.start_tls(offload=...)``), but each hand-off costs CPU of its own (0.1-0.3
        ms, benchmarks/RESULTS.md). So only a busy daemon offloads: one with at least
        ``OFFLOAD_AT`` runs in flight (``in_flight``, set by the daemon), where the loop
        thread is the bottleneck; a quiet one keeps the cheaper inline handshake."""
        if self.in_flight() < OFFLOAD_AT:
            return None
        if self._tls_pool is None:
            workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2
            self._tls_pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="probed-tls")
        return self._tls_pool

    async def closing(self, work: Awaitable[_T]) -> _T:
        """``await work``, then close (one-shot runs: CLI ``probe`` and ``scan``)."""
        try:
            return await work
        finally:
            await self.close()

    async def close(self) -> None:
        self._contexts.clear()
        if self._tls_pool is not None:
            self._tls_pool.shutdown(wait=False, cancel_futures=True)
            self._tls_pool = None


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up, imported where the loop is made
    except ImportError:  # pragma: no cover - uvloop is a declared dependency
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
