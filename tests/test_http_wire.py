"""HTTP/1.1 framing and limits of the http probe (probed/probes/httpwire.py), against
hand-written peers that send exact bytes: what nginx does not send on demand (interim
responses, bodies cut short, broken gzip, framing errors) and what each run must send."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from probed.config import ConfigError
from probed.probes.base import Reason
from probed.resources import Resources
from probed.results import Outcome
from probed.runner import execute
from probed.secrets import SecretStore
from tests.helpers import job, serve

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Resources]:
    resources = Resources(SecretStore(tmp_path, {}))
    yield resources
    await resources.close()


def canned(*parts: bytes, close: bool = True, requests: list[bytes] | None = None) -> Handler:
    """A peer that reads the request head, writes ``parts`` (a short pause between them, so
    they arrive as separate reads) and closes, or stays open when ``close`` is False."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if requests is not None:
            requests.append(head)
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.01)
        if close:
            writer.close()
        else:
            await asyncio.sleep(3600)

    return handler


async def _run(
    tmp_path: Path, env: Resources, peer: Handler, module: dict[str, Any] | None = None
) -> Outcome:
    async with serve(peer) as port:
        spec = job(tmp_path, {"probe": "http", **(module or {})}, f"http://127.0.0.1:{port}/x?q=1")
        return await execute(spec, env, capture_log=True)


def _value(outcome: Outcome, name: str) -> float:
    values = [v for family, _, v in outcome.samples if family.name == name]
    assert len(values) == 1, (name, values)
    return values[0]


async def test_request_bytes(tmp_path: Path, env: Resources) -> None:
    seen: list[bytes] = []
    peer = canned(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", requests=seen)
    outcome = await _run(tmp_path, env, peer, {"headers": {"X-Tenant": "a", "Accept": "text/*"}})
    assert outcome.success, outcome.detail
    (head,) = seen
    lines = head.decode().split("\r\n")
    assert lines[0] == "GET /x?q=1 HTTP/1.1"
    assert lines[1].startswith("Host: 127.0.0.1:")
    fields = dict(line.split(": ", 1) for line in lines[2:] if line)
    assert fields["Accept"] == "text/*"  # the module's value replaces the default
    assert fields["X-Tenant"] == "a"
    assert fields["Connection"] == "close"
    assert fields["User-Agent"].startswith("probed/")
    assert "Content-Length" not in fields
    assert "Accept-Encoding" not in fields


async def test_post_without_body_sends_a_zero_length(tmp_path: Path, env: Resources) -> None:
    seen: list[bytes] = []
    peer = canned(b"HTTP/1.1 204 No Content\r\n\r\n", close=False, requests=seen)
    outcome = await _run(tmp_path, env, peer, {"method": "POST"})
    assert outcome.success, outcome.detail  # 204: no body expected, no wait for a close
    assert b"\r\nContent-Length: 0\r\n" in seen[0]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({"X-Evil": "a\r\nX-Injected: 1"}, "must not contain CR, LF or NUL"),
        ({"Bad Name": "x"}, "invalid header name"),
        ({"Content-Length": "5"}, "set by probed itself"),
    ],
)
def test_header_settings_are_checked(tmp_path: Path, header: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        job(tmp_path, {"probe": "http", "headers": header}, "http://127.0.0.1:1/")


async def test_chunked_body_with_a_trailer_across_reads(tmp_path: Path, env: Resources) -> None:
    peer = canned(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"lo\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
        close=False,  # the terminating chunk ends the run, not the close
    )
    outcome = await _run(
        tmp_path, env, peer, {"fail_if_body_not_matches_regexp": ["^hello world$"]}
    )
    assert outcome.success, outcome.detail
    assert _value(outcome, "probe_http_uncompressed_body_length") == 11
    assert _value(outcome, "probe_http_content_length") == -1


async def test_interim_responses_are_skipped(tmp_path: Path, env: Resources) -> None:
    peer = canned(
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Final: yes\r\n\r\nok",
    )
    module = {"fail_if_header_not_matches": [{"header": "X-Final", "regexp": "yes"}]}
    outcome = await _run(tmp_path, env, peer, module)
    assert outcome.success, outcome.detail
    assert _value(outcome, "probe_http_status_code") == 200


async def test_body_until_close(tmp_path: Path, env: Resources) -> None:
    outcome = await _run(tmp_path, env, canned(b"HTTP/1.0 200 OK\r\n\r\nuntil ", b"the end"))
    assert outcome.success, outcome.detail
    assert _value(outcome, "probe_http_uncompressed_body_length") == 13
    assert _value(outcome, "probe_http_version") == 1.0


@pytest.mark.parametrize(
    ("parts", "reason", "words"),
    [
        (
            (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",),
            Reason.CONNECTION_CLOSED,
            "body",
        ),
        (
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",),
            Reason.CONNECTION_CLOSED,
            "body",
        ),
        ((b"HTTP/1.1 200 OK\r\nContent-",), Reason.CONNECTION_CLOSED, "before the response head"),
        ((), Reason.CONNECTION_CLOSED, "before the response head"),
        ((b"SSH-2.0-OpenSSH_9.2\r\n",), Reason.PROTOCOL_ERROR, "invalid response"),
        (
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",),
            Reason.PROTOCOL_ERROR,
            "invalid response",
        ),
        ((b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",), Reason.PROTOCOL_ERROR, "invalid response"),
    ],
)
async def test_broken_framing(
    tmp_path: Path, env: Resources, parts: tuple[bytes, ...], reason: Reason, words: str
) -> None:
    outcome = await _run(tmp_path, env, canned(*parts))
    assert outcome.reason is reason, outcome.detail
    assert words in outcome.detail
    assert "127.0.0.1 port " in outcome.detail


async def test_head_request_does_not_wait_for_a_body(tmp_path: Path, env: Resources) -> None:
    peer = canned(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", close=False)
    outcome = await _run(tmp_path, env, peer, {"method": "HEAD"})
    assert outcome.success, outcome.detail
    assert _value(outcome, "probe_http_content_length") == 1000
    assert _value(outcome, "probe_http_uncompressed_body_length") == 0


def _gzip_head(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body)


async def test_gzip_bomb_is_capped_as_decoded(tmp_path: Path, env: Resources) -> None:
    bomb = gzip.compress(b"\0" * (64 * 2**20), compresslevel=9)  # 64 MiB in ~64 KiB
    assert len(bomb) < 2**17
    module = {"compression": "gzip", "body_size_limit": "1MiB"}
    outcome = await _run(tmp_path, env, canned(_gzip_head(bomb) + bomb), module)
    assert outcome.reason is Reason.TOO_LARGE, outcome.detail
    # Without decoding, the same response is its compressed size: within the limit.
    plain = await _run(tmp_path, env, canned(_gzip_head(bomb) + bomb), {"body_size_limit": "1MiB"})
    assert plain.success, plain.detail
    assert _value(plain, "probe_http_uncompressed_body_length") == len(bomb)


@pytest.mark.parametrize("encoding", [b"gzip", b"deflate"])
async def test_compressed_bodies_decode(tmp_path: Path, env: Resources, encoding: bytes) -> None:
    text = b"hello compressed world " * 50
    body = gzip.compress(text) if encoding == b"gzip" else zlib.compress(text)
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\n\r\n" % encoding
    module = {"compression": encoding.decode(), "fail_if_body_matches_regexp": ["nothing here"]}
    outcome = await _run(tmp_path, env, canned(head + body), module)
    assert outcome.success, outcome.detail
    assert _value(outcome, "probe_http_uncompressed_body_length") == len(text)


async def test_corrupt_gzip_fails_the_run(tmp_path: Path, env: Resources) -> None:
    body = b"\x1f\x8b\x08\x00 this is not deflate data at all"
    outcome = await _run(tmp_path, env, canned(_gzip_head(body) + body), {"compression": "gzip"})
    assert outcome.reason is Reason.PROTOCOL_ERROR, outcome.detail
    assert "gzip" in outcome.detail


async def test_endless_interim_responses_hit_the_head_limit(tmp_path: Path, env: Resources) -> None:
    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        for _ in range(20_000):  # 100 Continue forever (bounded: ~500 KB)
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()

    outcome = await _run(tmp_path, env, peer)
    assert outcome.reason is Reason.TOO_LARGE, outcome.detail
    assert "response head" in outcome.detail


async def test_redirects_record_each_fact_once(tmp_path: Path, env: Resources) -> None:
    async with serve(canned(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")) as final:
        redirect = b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:%d/\r\n\r\n" % final
        async with serve(canned(redirect, close=False)) as port:
            spec = job(tmp_path, {"probe": "http"}, f"http://127.0.0.1:{port}/")
            outcome = await execute(spec, env, capture_log=True)
    assert outcome.success, outcome.detail
    assert _value(outcome, "probe_http_redirects") == 1
    assert _value(outcome, "probe_ip_protocol") == 4


async def test_bearer_token_with_a_line_break_is_refused(tmp_path: Path) -> None:
    seen: list[bytes] = []
    env = Resources(SecretStore(tmp_path, {"TOKEN": "abc\r\nX-Injected: 1"}))
    peer = canned(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", requests=seen)
    outcome = await _run(tmp_path, env, peer, {"bearer_token": {"env": "TOKEN"}})
    assert outcome.reason is Reason.SECRET_UNAVAILABLE, outcome.detail
    assert "env TOKEN" in outcome.detail
    assert "abc" not in outcome.detail
    assert seen == []  # nothing was sent
