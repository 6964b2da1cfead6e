"""The ``env`` every probe receives, and the event loop it runs on: what one-shot commands
(``probed probe``, ``probed scan``) need without the daemon's web server."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from probed.secrets import SecretStore

if TYPE_CHECKING:
    import aiohttp

_T = TypeVar("_T")


class Resources:
    """The ``env`` every probe receives: long-lived, shared, built once."""

    def __init__(self, secrets: SecretStore) -> None:
        self.secrets = secrets
        self._contexts: dict[Any, ssl.SSLContext] = {}
        self._http: aiohttp.ClientSession | None = None

    def ssl_context(self, key: Any, build: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = self._contexts[key] = build()
        return ctx

    def http_session(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running loop the session binds to.
        if self._http is None or self._http.closed:
            # Imported here: aiohttp's client costs a tenth of a second of start-up that
            # a `probed scan heartbleed` never needs.
            from probed.probes.http import new_session  # noqa: PLC0415

            self._http = new_session()
        return self._http

    async def closing(self, work: Awaitable[_T]) -> _T:
        """``await work``, then close (one-shot runs: CLI ``probe`` and ``scan``)."""
        try:
            return await work
        finally:
            await self.close()

    async def close(self) -> None:
        self._contexts.clear()
        if self._http is not None:
            await self._http.close()
            self._http = None


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up, imported where the loop is made
    except ImportError:  # pragma: no cover - uvloop is a declared dependency
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
