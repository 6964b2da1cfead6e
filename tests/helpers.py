"""Shared test helpers: loopback peers written for the tests, and jobs from config text."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from probed import config as config_mod
from probed.config import JobSpec

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def serve(
    handler: Handler, host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[int]:
    """A TCP server on an OS-picked loopback port running ``handler`` per connection."""
    tasks: set[asyncio.Task[None]] = set()

    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        except asyncio.CancelledError:
            # Server shutdown: end quietly (asyncio logs a cancelled handler as an error).
            pass
        finally:
            tasks.discard(task)
            writer.close()

    server = await asyncio.start_server(wrapped, host, 0, ssl=ssl_context)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


def banner(text: bytes, *, then_close: bool = False) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(text)
        await writer.drain()
        if not then_close:
            await reader.read(1)

    return handler


async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    del writer
    await reader.read(1)
    await asyncio.sleep(3600)


async def endless_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    chunk = b"x" * 16384
    for _ in range(100_000):  # bounded: ~1.6 GB at most, the client stops reading far sooner
        writer.write(chunk)
        await writer.drain()


async def reset_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    # SO_LINGER with a zero timeout turns close() into an RST.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def job(
    tmp_path: Path,
    module: dict[str, Any],
    target: str,
    *,
    timeout: str = "3s",
    interval: str = "10s",
) -> JobSpec:
    """One job from a module table, through the real config loader."""
    raw = {
        "defaults": {"interval": interval, "timeout": timeout},
        "modules": {"m": module},
        "probes": [{"module": "m", "target": target}],
    }
    cfg = config_mod.build(raw, tmp_path / "probes.toml")
    return cfg.jobs[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def stop_gracefully(proc: asyncio.subprocess.Process, grace: float = 10.0) -> None:
    """SIGTERM a daemon still running and wait; SIGKILL it after ``grace`` seconds."""
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        proc.kill()
        await proc.wait()
