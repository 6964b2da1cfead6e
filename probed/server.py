"""The aiohttp app: /metrics, /probe, /-/healthy, /-/ready, /-/reload."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Iterable
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware

from probed.exposition import CONTENT_TYPE

try:
    from isal import isal_zlib as _isal
except ImportError:  # no isal wheel for this platform: the stdlib's zlib, a bit larger, 4x CPU
    _isal = None  # type: ignore[assignment]

# A scrape of 100,000 jobs is 65-175 MB of text (by labels and families). ISA-L's deflate at
# level 1 gzips such a page at ~1.7 GB/s, ten- to thirtyfold smaller; the stdlib's zlib at
# level 1 is 4-5x slower for a like size (benchmarks/RESULTS.md, Fleet scale, change 5).
# Either releases the GIL: it runs in a thread.
GZIP_LEVEL = 1
GZIP_MIN_BYTES = 1024
# A page of more parts than this is streamed: joined and compressed a slice at a time (about
# 1 MB), so a scrape never holds the whole page, nor blocks the loop while it is built.
STREAM_PARTS = 8192


class Compressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...

    def flush(self) -> bytes: ...


def compressor() -> Compressor:
    """A compressor of one gzip member (wbits 16 + MAX_WBITS, as ``gzip.compress`` writes,
    any gzip decoder reads): ISA-L's if ``isal`` imports, else the stdlib's zlib."""
    if _isal is not None:
        return _isal.compressobj(GZIP_LEVEL, _isal.DEFLATED, 16 + _isal.MAX_WBITS)
    return zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)


def gzip_whole(body: bytes) -> bytes:
    packer = compressor()
    return packer.compress(body) + packer.flush()


def gzip_slice(packer: Compressor, parts: list[bytes]) -> bytes:
    """Join and compress in one executor call: the loop thread only slices the snapshot,
    and the compressor reads the slice while it is still in this core's cache."""
    return packer.compress(b"".join(parts))


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
            body = await loop.run_in_executor(None, gzip_whole, body)
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    packer = compressor() if gzipped else None
    for start in range(0, len(parts), STREAM_PARTS):  # bounded by the snapshot
        stop = start + STREAM_PARTS
        if packer is None:
            chunk = b"".join(parts[start:stop])
        else:
            chunk = await loop.run_in_executor(None, gzip_slice, packer, parts[start:stop])
        if chunk:
            await response.write(chunk)
    if packer is not None:
        await response.write(packer.flush())
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
