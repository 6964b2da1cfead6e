"""/metrics over HTTP: small pages in one body, large ones streamed, gzip on request.

The gzip stream (ISA-L's deflate when ``isal`` is installed, else the stdlib's zlib) is
decoded by the clients that read it: Python's gzip module, curl --compressed, and
Prometheus (Go's compress/gzip).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import shutil
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from probed import server
from probed.server import STREAM_PARTS, make_app
from tests.servers.prometheus import run_prometheus


class PageBackend:
    """Serves a fixed list of parts as its /metrics page."""

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts

    @property
    def ready(self) -> bool:
        return True

    def metrics_parts(self) -> list[bytes]:
        return list(self.parts)

    async def probe_once(self, module: str, target: str, debug: bool) -> tuple[int, str]:
        del module, target, debug
        return 404, ""

    async def reload(self) -> tuple[bool, str]:
        return True, ""


def _parts(count: int) -> list[bytes]:
    # Values of their own per line, like a live page's durations: not one repeated string.
    return [
        f'probe_success{{module="m",target="t{i}"}} {i * 0.000731 % 1:.6f}\n'.encode()
        for i in range(count)
    ]


@contextlib.asynccontextmanager
async def _serve(parts: list[bytes], encodings: list[str] | None = None) -> AsyncIterator[int]:
    """The app on a free port; ``encodings`` collects each /metrics answer's encoding."""

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if encodings is not None:
            encodings.append(response.headers.get("Content-Encoding", ""))
        return response

    runner = web.AppRunner(make_app(PageBackend(parts), [record]))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def _get(parts: list[bytes], encoding: str) -> tuple[bytes, str, bytes]:
    async with (
        _serve(parts) as port,
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.get(
            f"http://127.0.0.1:{port}/metrics", headers={"Accept-Encoding": encoding}
        ) as response,
    ):
        raw = await response.read()
        return raw, response.headers.get("Content-Encoding", ""), b"".join(parts)


async def test_small_page_is_one_body_gzipped_on_request() -> None:
    raw, encoding, page = await _get(_parts(100), "gzip")
    assert encoding == "gzip"
    assert gzip.decompress(raw) == page
    raw, encoding, page = await _get(_parts(100), "identity")
    assert (raw, encoding) == (page, "")


async def test_large_page_streams_the_same_text_plain_and_gzipped() -> None:
    parts = _parts(3 * STREAM_PARTS + 5)
    raw, encoding, page = await _get(parts, "gzip")
    assert encoding == "gzip"
    assert gzip.decompress(raw) == page
    raw, encoding, page = await _get(parts, "identity")
    assert (raw, encoding) == (page, "")


def test_isal_is_installed_and_compresses() -> None:
    """A dependency (4-5x less CPU than zlib for a 100k-job scrape): a missing wheel would
    only show as a slower scrape, so say it here."""
    assert type(server.compressor()).__module__.startswith("isal")


async def test_stdlib_zlib_when_isal_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "_isal", None)
    assert type(server.compressor()).__module__ == "zlib"
    for parts in (_parts(100), _parts(2 * STREAM_PARTS + 1)):
        raw, encoding, page = await _get(parts, "gzip")
        assert encoding == "gzip"
        assert gzip.decompress(raw) == page


async def test_curl_compressed_decodes_the_streamed_page() -> None:
    curl = shutil.which("curl")
    assert curl, "curl (Debian package curl) is required"
    parts = _parts(3 * STREAM_PARTS + 5)
    encodings: list[str] = []
    async with _serve(parts, encodings) as port:
        proc = await asyncio.create_subprocess_exec(
            curl,
            "-sS",
            "--fail",
            "--compressed",
            f"http://127.0.0.1:{port}/metrics",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    assert encodings == ["gzip"]
    assert out == b"".join(parts)


async def test_prometheus_ingests_the_streamed_gzip_page() -> None:
    """Go's compress/gzip, as Prometheus scrapes: every sample of a streamed page arrives."""
    count = 3 * STREAM_PARTS + 5
    encodings: list[str] = []
    async with _serve(_parts(count), encodings) as port:
        with contextlib.ExitStack() as stack:
            # The fixture blocks while Prometheus starts and while polling: off the loop,
            # which serves the page.
            prom = await asyncio.to_thread(
                stack.enter_context, run_prometheus(scrape_targets=[f"127.0.0.1:{port}"])
            )
            up = await asyncio.to_thread(prom.wait_for_query, "up == 1", 30)
            scraped = await asyncio.to_thread(prom.query, "scrape_samples_scraped")
            counted = await asyncio.to_thread(prom.query, "count(probe_success)")
            last = await asyncio.to_thread(prom.query, f'probe_success{{target="t{count - 1}"}}')
            await asyncio.to_thread(stack.close)
    assert up
    assert scraped[0]["value"][1] == str(count)
    assert counted[0]["value"][1] == str(count)
    assert float(last[0]["value"][1]) == pytest.approx((count - 1) * 0.000731 % 1, abs=1e-6)
    assert encodings
    assert set(encodings) == {"gzip"}
