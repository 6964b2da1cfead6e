"""The ``env`` every probe receives, and the event loop it runs on: what one-shot commands
(``probed probe``, ``probed scan``) need without the daemon's web server."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from probed.secrets import SecretStore

_T = TypeVar("_T")


class Resources:
    """The ``env`` every probe receives: long-lived, shared, built once."""

    def __init__(self, secrets: SecretStore) -> None:
        self.secrets = secrets
        self._contexts: dict[Any, ssl.SSLContext] = {}

    def ssl_context(self, key: Any, build: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = self._contexts[key] = build()
        return ctx

    async def closing(self, work: Awaitable[_T]) -> _T:
        """``await work``, then close (one-shot runs: CLI ``probe`` and ``scan``)."""
        try:
            return await work
        finally:
            await self.close()

    async def close(self) -> None:
        self._contexts.clear()


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up, imported where the loop is made
    except ImportError:  # pragma: no cover - uvloop is a declared dependency
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
