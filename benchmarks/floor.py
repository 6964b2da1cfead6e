"""The floor: the least a Python + uvloop prober pays for one check.

    python benchmarks/floor.py --targets targets.json --interval 10 --timeout 5 \\
        --status status.json --max-seconds 120 [--check banner|http|tls]

Same schedule as the daemons (target i at ``i * interval / n`` in each interval) and
the same check, but nothing else: no config, no caps, no recorder, no metrics, no logs.
Its CPU per probe is a reference for what probed's own machinery costs on top of the
event loop, the kernel and (for TLS) OpenSSL. The checks (``--check``, by default the
fleet's kind):

- ``banner``: connect, read until the first line, match ``^SSH-2.0-``, close.
- ``http``: connect, send one pre-built ``GET / HTTP/1.1`` (Host, User-Agent, Accept,
  ``Connection: close``), read the head and ``Content-Length`` bytes of body, require a
  2xx status line, close.
- ``tls``: ``loop.create_connection(ssl=ctx)`` (the handshake, verified against the
  fleet's CA for its server name, as both daemons are configured), then close.

On SIGUSR1 it writes its counters to ``--status`` (JSON with a ``seq`` that increases),
so the harness reads them at the ends of its window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import ssl
import sys
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import uvloop

BANNER = re.compile(rb"^SSH-2\.0-")
HTTP_OK = re.compile(rb"^HTTP/1\.[01] 2\d\d ")
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
CHECKS = ("banner", "http", "tls")


@dataclass(slots=True)
class Counters:
    seq: int = 0
    started: int = 0
    completed: int = 0
    ok: int = 0


class BannerClient(asyncio.Protocol):
    """Resolves ``done`` with whether the first line matched, on the first line or EOF."""

    __slots__ = ("_buf", "_done")

    def __init__(self, done: asyncio.Future[bool]) -> None:
        self._done = done
        self._buf = b""

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if b"\n" in self._buf and not self._done.done():
            self._done.set_result(BANNER.match(self._buf) is not None)

    def eof_received(self) -> bool:
        if not self._done.done():
            self._done.set_result(BANNER.match(self._buf) is not None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._done.set_result(False)


class HttpClient(asyncio.Protocol):
    """Sends the request on connect; resolves ``done`` with whether a whole 2xx came back."""

    __slots__ = ("_buf", "_done", "_request")

    def __init__(self, done: asyncio.Future[bool], request: bytes) -> None:
        self._done = done
        self._request = request
        self._buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).write(self._request)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._done.done():
            return
        head_end = self._buf.find(b"\r\n\r\n")
        if head_end < 0:
            return
        length = CONTENT_LENGTH.search(self._buf, 0, head_end + 2)
        if length is None or len(self._buf) >= head_end + 4 + int(length.group(1)):
            self._done.set_result(HTTP_OK.match(self._buf) is not None)

    def eof_received(self) -> bool:
        if not self._done.done():
            # No Content-Length: the body ends at EOF; with one, EOF came too early.
            head_end = self._buf.find(b"\r\n\r\n")
            whole = head_end >= 0 and CONTENT_LENGTH.search(self._buf, 0, head_end + 2) is None
            self._done.set_result(whole and HTTP_OK.match(self._buf) is not None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._done.set_result(False)


Check = Callable[[str, int, float, Counters], Coroutine[Any, Any, None]]


def http_request(host: str, port: int) -> bytes:
    return (
        f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: floor\r\nAccept: */*\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii")


def make_check(kind: str, extra: dict[str, Any], targets: list[dict[str, Any]]) -> Check:
    """The check coroutine for ``kind``; requests and the TLS context are built once."""
    if kind == "banner":
        return check_banner
    if kind == "http":
        requests = {(t["host"], t["port"]): http_request(t["host"], t["port"]) for t in targets}

        async def check_http(host: str, port: int, seconds: float, counters: Counters) -> None:
            await check_http_once(host, port, requests[host, port], seconds, counters)

        return check_http
    if kind == "tls":
        context = ssl.create_default_context(cafile=extra["ca_file"])
        server_name: str = extra["server_name"]

        async def check_tls(host: str, port: int, seconds: float, counters: Counters) -> None:
            await check_tls_once(host, port, context, server_name, seconds=seconds, c=counters)

        return check_tls
    raise ValueError(f"unknown check {kind!r} (want one of {', '.join(CHECKS)})")


async def check_http_once(
    host: str, port: int, request: bytes, seconds: float, counters: Counters
) -> None:
    """One HTTP GET, given ``seconds`` in all."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bool] = loop.create_future()
    transport: asyncio.BaseTransport | None = None
    ok = False
    try:
        async with asyncio.timeout(seconds):
            transport, _ = await loop.create_connection(
                lambda: HttpClient(done, request), host, port
            )
            ok = await done
    except (OSError, TimeoutError):
        ok = False
    finally:
        if transport is not None:
            cast(asyncio.Transport, transport).close()
        counters.completed += 1
        counters.ok += ok


async def check_tls_once(
    host: str, port: int, context: ssl.SSLContext, server_name: str, *, seconds: float, c: Counters
) -> None:
    """One TLS handshake (verified), given ``seconds`` in all, then close."""
    loop = asyncio.get_running_loop()
    transport: asyncio.BaseTransport | None = None
    ok = False
    try:
        async with asyncio.timeout(seconds):
            transport, _ = await loop.create_connection(
                asyncio.Protocol, host, port, ssl=context, server_hostname=server_name
            )
            ok = True
    except (OSError, TimeoutError):  # ssl.SSLError is an OSError
        ok = False
    finally:
        if transport is not None:
            transport.close()
        c.completed += 1
        c.ok += ok


async def check_banner(host: str, port: int, seconds: float, counters: Counters) -> None:
    """One banner check, given ``seconds`` in all."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bool] = loop.create_future()
    transport: asyncio.BaseTransport | None = None
    ok = False
    try:
        async with asyncio.timeout(seconds):
            transport, _ = await loop.create_connection(lambda: BannerClient(done), host, port)
            ok = await done
    except (OSError, TimeoutError):
        ok = False
    finally:
        if transport is not None:
            cast(asyncio.Transport, transport).close()
        counters.completed += 1
        counters.ok += ok


async def run(args: argparse.Namespace, targets: list[dict[str, Any]], check: Check) -> int:
    counters = Counters()
    status = Path(args.status)
    loop = asyncio.get_running_loop()

    def write_status() -> None:
        counters.seq += 1
        tmp = status.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(counters)))
        tmp.replace(status)

    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, write_status)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tasks: set[asyncio.Task[None]] = set()
    start = loop.time() + 0.05
    end = start + args.max_seconds
    step = args.interval / len(targets)
    write_status()
    k = 0
    while not stop.is_set() and (due := start + k * step) < end:
        now = loop.time()
        if due > now:
            await asyncio.sleep(max(due - now, 0.001))
            continue
        target = targets[k % len(targets)]
        task = loop.create_task(check(target["host"], target["port"], args.timeout, counters))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        counters.started += 1
        k += 1
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    write_status()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", required=True, help="target list written by fleet.py")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds")
    parser.add_argument("--status", required=True, help="where SIGUSR1 writes the counters")
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--check", choices=CHECKS, default=None, help="default: the fleet's kind")
    args = parser.parse_args(argv)
    fleet = json.loads(Path(args.targets).read_text())
    targets: list[dict[str, Any]] = fleet["targets"]
    check = make_check(args.check or fleet["kind"], fleet.get("extra") or {}, targets)
    return uvloop.run(run(args, targets, check))


if __name__ == "__main__":
    sys.exit(main())
