"""TLS handshake steps run in a worker thread (``Stream.start_tls(offload=...)``), against a
real TLS server: the handshake completes, bytes arriving during a step are kept, a run
cancelled during a step ends cleanly, and the daemon's env offloads only when busy."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from probed.probes.stream import Stream, connect
from probed.resources import OFFLOAD_AT, Resources
from probed.results import Recorder
from probed.runner import execute
from probed.secrets import SecretStore
from tests.helpers import job, serve
from tests.servers.certs import CertAuthority


class SlowPool(ThreadPoolExecutor):
    """A real thread pool whose steps take ``delay`` longer: bytes and EOF from the server
    arrive while a step runs. Records the thread of each step."""

    def __init__(self, delay: float) -> None:
        super().__init__(1, thread_name_prefix="slow-tls")
        self.delay = delay
        self.threads: list[str] = []
        self.stream: Stream | None = None
        # Per step: bytes in the SSL object's input BIO before and after the delay (they
        # must not change while the thread owns it), and bytes held back meanwhile.
        self.bio: list[tuple[int, int]] = []
        self.held: list[int] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        def slow() -> Any:
            self.threads.append(threading.current_thread().name)
            stream = self.stream
            bio = stream._tls_in if stream is not None else None
            before = bio.pending if bio is not None else 0
            time.sleep(self.delay)
            if stream is not None and bio is not None:
                self.bio.append((before, bio.pending))
                self.held.append(sum(map(len, stream._deferred or [])))
            return fn(*args, **kwargs)

        return super().submit(slow)


def _contexts(ca: CertAuthority) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    certs = ca.localhost("offload")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(certs.cert, certs.key)
    client = ssl.create_default_context(cafile=str(ca.ca_cert))
    return server, client


async def _echo_line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"hello over tls\r\n")  # sent right after the handshake: during our last step
    await writer.drain()
    await reader.read(1)


def trickle(
    upstream: int, pieces: list[int]
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]:
    """A TCP relay to ``upstream`` that passes the server's bytes 64 at a time, 5 ms apart:
    the server's handshake flight arrives in pieces, most of them during a slow step."""

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)

        async def to_server() -> None:
            while data := await reader.read(65536):
                up_writer.write(data)
                await up_writer.drain()
            up_writer.write_eof()

        task = asyncio.create_task(to_server())
        try:
            while data := await up_reader.read(65536):
                for i in range(0, len(data), 64):
                    writer.write(data[i : i + 64])
                    pieces.append(len(data[i : i + 64]))
                    await writer.drain()
                    await asyncio.sleep(0.005)
        finally:
            task.cancel()
            up_writer.close()
            writer.close()

    return relay


async def _handshake(port: int, client: ssl.SSLContext, pool: SlowPool) -> Stream:
    rec = Recorder()
    stream = await connect((2, ("127.0.0.1", port)), rec)
    pool.stream = stream
    await stream.start_tls(client, "localhost", offload=pool)
    return stream


async def test_offloaded_handshake_keeps_bytes_that_arrive_meanwhile(
    server_ca: CertAuthority,
) -> None:
    server, client = _contexts(server_ca)
    pool = SlowPool(0.05)
    pieces: list[int] = []
    try:
        async with (
            serve(_echo_line, ssl_context=server) as tls_port,
            serve(trickle(tls_port, pieces)) as port,
        ):
            with await _handshake(port, client, pool) as stream:
                assert stream.tls is not None
                assert stream.tls.version() == "TLSv1.3"
                line = await asyncio.wait_for(stream.read_line(), 5)
    finally:
        pool.shutdown()
    assert line == b"hello over tls\r\n"
    assert pool.threads
    assert all(name.startswith("slow-tls") for name in pool.threads)
    # Pieces arrived while a step owned the SSL object: held back, the BIO left alone.
    assert len(pieces) > 10
    assert any(pool.held), pool.held
    assert all(before == after for before, after in pool.bio), pool.bio


async def test_cancelled_during_a_step_ends_cleanly(server_ca: CertAuthority) -> None:
    server, client = _contexts(server_ca)
    pool = SlowPool(0.5)
    errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        async with serve(_echo_line, ssl_context=server) as port:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(_handshake(port, client, pool), 0.2)
            await asyncio.sleep(0.6)  # the step finishes after its run was cancelled
    finally:
        pool.shutdown()
        loop.set_exception_handler(None)
    assert errors == []


@pytest.mark.parametrize("busy", [False, True])
async def test_only_a_busy_daemon_offloads(
    tmp_path: Path, server_ca: CertAuthority, busy: bool
) -> None:
    server, _ = _contexts(server_ca)
    env = Resources(SecretStore(tmp_path, {}))
    env.in_flight = lambda: OFFLOAD_AT if busy else OFFLOAD_AT - 1
    module = {"probe": "tls", "tls_config": {"ca_file": str(server_ca.ca_cert)}}
    try:
        async with serve(_echo_line, ssl_context=server) as port:
            outcome = await execute(job(tmp_path, module, f"localhost:{port}"), env)
        pool = env._tls_pool
    finally:
        await env.close()
    assert outcome.success, outcome.detail
    assert (pool is not None) is busy
