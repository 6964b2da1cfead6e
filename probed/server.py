"""The aiohttp app: /metrics, /probe, /-/healthy, /-/ready, /-/reload."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import Iterable
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware

from probed.exposition import CONTENT_TYPE

# A scrape of 100,000 jobs is 65-175 MB of text (by labels and families); gzip level 1 keeps
# CPU low (~0.25 s) and still shrinks it ten- to thirtyfold. It runs in a thread: zlib
# releases the GIL.
GZIP_LEVEL = 1
GZIP_MIN_BYTES = 1024
# A page of more parts than this is streamed: joined and compressed a slice at a time (about
# 1 MB), so a scrape never holds the whole page, nor blocks the loop while it is built.
STREAM_PARTS = 8192


class Backend(Protocol):
    @property
    def ready(self) -> bool: ...

    def metrics_parts(self) -> list[bytes]:
        """A snapshot of the /metrics page: its text is these parts, concatenated."""
        ...

    async def probe_once(self, module: str, target: str, debug: bool) -> tuple[int, str]: ...

    async def reload(self) -> tuple[bool, str]: ...


BACKEND = web.AppKey("backend", Backend)


def _accepts_gzip(request: web.Request) -> bool:
    header = request.headers.get("Accept-Encoding", "")
    return any(
        part.split(";", 1)[0].strip() == "gzip" and "q=0" not in part.replace(" ", "")
        for part in header.split(",")
    )


async def metrics(request: web.Request) -> web.StreamResponse:
    parts = request.app[BACKEND].metrics_parts()
    headers = {"Content-Type": CONTENT_TYPE, "Vary": "Accept-Encoding"}
    gzipped = _accepts_gzip(request)
    loop = asyncio.get_running_loop()
    if len(parts) <= STREAM_PARTS:
        body = b"".join(parts)
        if len(body) >= GZIP_MIN_BYTES and gzipped:
            body = await loop.run_in_executor(None, gzip.compress, body, GZIP_LEVEL)
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    # wbits 16 + MAX_WBITS: a gzip member, as gzip.compress writes.
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    for start in range(0, len(parts), STREAM_PARTS):  # bounded by the snapshot
        chunk = b"".join(parts[start : start + STREAM_PARTS])
        if gzipped:
            chunk = await loop.run_in_executor(None, compressor.compress, chunk)
        if chunk:
            await response.write(chunk)
    if gzipped:
        await response.write(compressor.flush())
    await response.write_eof()
    return response


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
