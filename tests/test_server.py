"""/metrics over HTTP: small pages in one body, large ones streamed, gzip on request."""

from __future__ import annotations

import gzip

import aiohttp
from aiohttp import web

from probed.server import STREAM_PARTS, make_app


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
    return [f'probe_success{{module="m",target="t{i}"}} 1\n'.encode() for i in range(count)]


async def _get(parts: list[bytes], encoding: str) -> tuple[bytes, str, bytes]:
    runner = web.AppRunner(make_app(PageBackend(parts)))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.get(
                f"http://127.0.0.1:{port}/metrics", headers={"Accept-Encoding": encoding}
            ) as response,
        ):
            raw = await response.read()
            return raw, response.headers.get("Content-Encoding", ""), b"".join(parts)
    finally:
        await runner.cleanup()


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
