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


class Resources:
    """The ``env`` every probe receives: long-lived, shared, built once."""

    def __init__(self, secrets: SecretStore) -> None:
        self.secrets = secrets
        self._contexts: dict[Any, ssl.SSLContext] = {}
        self._tls_pool: ThreadPoolExecutor | None = None

    def ssl_context(self, key: Any, build: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = self._contexts[key] = build()
        return ctx

    def tls_executor(self) -> Executor:
        """Threads for the CPU of TLS handshakes (one per core): OpenSSL runs without the
        GIL there while the loop goes on (``Stream.start_tls(offload=...)``)."""
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
