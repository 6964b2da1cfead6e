"""The aiohttp app: /metrics, /probe, /-/healthy, /-/ready, /-/reload."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Iterable
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware

from probed.exposition import CONTENT_TYPE

# A scrape of 100,000 jobs is ~65 MB of text; gzip level 1 keeps CPU low (~0.25 s) and
# still shrinks it about tenfold. It runs in a thread: zlib releases the GIL.
GZIP_LEVEL = 1
GZIP_MIN_BYTES = 1024


class Backend(Protocol):
    @property
    def ready(self) -> bool: ...

    def metrics_page(self) -> bytes: ...

    async def probe_once(self, module: str, target: str, debug: bool) -> tuple[int, str]: ...

    async def reload(self) -> tuple[bool, str]: ...


BACKEND = web.AppKey("backend", Backend)


def _accepts_gzip(request: web.Request) -> bool:
    header = request.headers.get("Accept-Encoding", "")
    return any(
        part.split(";", 1)[0].strip() == "gzip" and "q=0" not in part.replace(" ", "")
        for part in header.split(",")
    )


async def metrics(request: web.Request) -> web.Response:
    body = request.app[BACKEND].metrics_page()
    headers = {"Content-Type": CONTENT_TYPE, "Vary": "Accept-Encoding"}
    if len(body) >= GZIP_MIN_BYTES and _accepts_gzip(request):
        loop = asyncio.get_running_loop()
        body = await loop.run_in_executor(None, gzip.compress, body, GZIP_LEVEL)
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=body, headers=headers)


async def probe(request: web.Request) -> web.Response:
    module = request.query.get("module", "")
    target = request.query.get("target", "")
    if not module or not target:
        return web.Response(status=400, text="module and target parameters are required\n")
    debug = request.query.get("debug", "").lower() in {"1", "true", "yes"}
    status, text = await request.app[BACKEND].probe_once(module, target, debug)
    content_type = "text/plain" if debug or status != 200 else CONTENT_TYPE.split(";")[0]
    return web.Response(status=status, text=text, content_type=content_type)


async def healthy(request: web.Request) -> web.Response:
    del request
    return web.Response(text="OK\n")


async def ready(request: web.Request) -> web.Response:
    if request.app[BACKEND].ready:
        return web.Response(text="OK\n")
    return web.Response(status=503, text="not ready\n")


async def reload(request: web.Request) -> web.Response:
    ok, message = await request.app[BACKEND].reload()
    return web.Response(status=200 if ok else 500, text=message + "\n")


async def index(request: web.Request) -> web.Response:
    del request
    return web.Response(
        text="probed\n\n/metrics  every job's last result\n/probe?module=M&target=T[&debug=true]\n"
        "/-/healthy /-/ready\nPOST /-/reload\n"
    )


def make_app(backend: Backend, middlewares: Iterable[Middleware] = ()) -> web.Application:
    """``middlewares`` (basic auth from the web config) guard every route."""
    app = web.Application(client_max_size=64 * 1024, middlewares=list(middlewares))
    app[BACKEND] = backend
    app.router.add_get("/", index)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/probe", probe)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_post("/-/reload", reload)
    app.router.add_put("/-/reload", reload)
    return app
