"""The floor of a Heartbleed sweep: the least a Python + uvloop process pays per target.

    python benchmarks/heartbleed_floor.py --hosts-file hosts.txt
        [--concurrency 256] [--timeout 10] [--response-timeout 3] [--repeat N]

It does the network work of one no-leak check (HEARTBLEED.md) and nothing else: one
connection per target (no fallback to lower versions), a pre-built TLS 1.2 ClientHello with
the heartbeat extension, the server's flight read until ServerHelloDone (records and
handshake messages walked, nothing else parsed), one write of the pre-built heartbeat and
sentinel records, then the answer read until an echo of our payload, an alert, EOF or the
response timeout. On port 25 (as probed's ``starttls = "auto"`` does) it reads the SMTP
greeting, sends EHLO and STARTTLS and waits for the 220 first. No config, no recorder, no
metrics, no report beyond one JSON verdict per target; the verdicts are only as good as
that (a server that wants TLS 1.0 gets "FAILED").

Its CPU per target, next to ``probed scan heartbleed`` on the same targets
(``heartbleed_sweep.py --tools probed,floor``), is what the event loop, the kernel and the
bytes on the wire cost whatever the checker does. ``--repeat N`` sweeps the targets N times
in one process and prints the CPU of each sweep on stderr, so the start-up can be told apart.
Bytes the servers send are walked and dropped, never kept or printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import struct
import sys
import time
from pathlib import Path
from typing import cast

import uvloop

HANDSHAKE, ALERT, APPLICATION_DATA, HEARTBEAT = 22, 21, 23, 24
SERVER_HELLO_DONE = 14
PAYLOAD_SIZE = 4096
BUDGET = 256 * 1024
HEADER = struct.Struct("!BHH")


def client_hello() -> bytes:
    """TLS 1.2 ClientHello: 40 common RSA/ECDHE suites, heartbeat extension (mode 1)."""
    suites = bytes.fromhex(
        "c02fc030c02bc02cc013c014c009c00a009c009d002f0035000a00050004"
        "c011c007c012c008009e009f00330039001600150045008800410084"
    )
    curves = b"\x00\x0a\x00\x08\x00\x06\x00\x17\x00\x18\x00\x19"
    formats = b"\x00\x0b\x00\x02\x01\x00"
    sigalgs = b"\x00\x0d\x00\x0a\x00\x08\x04\x01\x05\x01\x02\x01\x04\x03"
    heartbeat = b"\x00\x0f\x00\x01\x01"
    extensions = curves + formats + sigalgs + heartbeat
    body = (
        b"\x03\x03"
        + os.urandom(32)
        + b"\x00"
        + struct.pack("!H", len(suites))
        + suites
        + b"\x01\x00"
        + struct.pack("!H", len(extensions))
        + extensions
    )
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return HEADER.pack(HANDSHAKE, 0x0301, len(message)) + message


def heartbeat_and_sentinel(version: int, payload: bytes) -> bytes:
    """The unpadded heartbeat, then the sentinel: one byte of application data, unexpected
    before Finished, so the server answers (alert 10) and flushes what it buffered."""
    request = b"\x01" + struct.pack("!H", len(payload)) + payload
    return (
        HEADER.pack(HEARTBEAT, version, len(request))
        + request
        + HEADER.pack(APPLICATION_DATA, version, 1)
        + b"\x00"
    )


class Check(asyncio.Protocol):
    """One target, one connection; ``done`` gets the verdict word."""

    def __init__(self, hello: bytes, payload: bytes, starttls: bool, response_timeout: float):
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.done: asyncio.Future[str] = loop.create_future()
        self.hello = hello
        self.payload = payload
        self.expected = b"\x02" + struct.pack("!H", len(payload)) + payload
        self.phase = "smtp-greeting" if starttls else "handshake"
        self.response_timeout = response_timeout
        self.buf = bytearray()
        self.messages = bytearray()  # handshake bytes walked for message boundaries
        self.seen = 0
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.phase == "handshake":
            self.transport.write(self.hello)

    def finish(self, verdict: str) -> None:
        if not self.done.done():
            self.done.set_result(verdict)
        if self.timer is not None:
            self.timer.cancel()
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish("ok" if self.phase == "response" else "FAILED")

    def eof_received(self) -> bool:
        self.finish("ok" if self.phase == "response" else "FAILED")
        return False

    def data_received(self, data: bytes) -> None:
        self.seen += len(data)
        if self.seen > BUDGET:
            self.finish("FAILED")
            return
        self.buf += data
        if self.phase.startswith("smtp"):
            self._smtp()
        else:
            self._records()

    def _smtp(self) -> None:
        assert self.transport is not None
        while b"\n" in self.buf:
            line, _, rest = bytes(self.buf).partition(b"\n")
            self.buf = bytearray(rest)
            if line[3:4] == b"-":
                continue
            if self.phase == "smtp-greeting":
                self.transport.write(b"EHLO floor.invalid\r\n")
                self.phase = "smtp-ehlo"
            elif self.phase == "smtp-ehlo":
                self.transport.write(b"STARTTLS\r\n")
                self.phase = "smtp-starttls"
            elif line.startswith(b"220"):
                self.phase = "handshake"
                self.buf.clear()
                self.transport.write(self.hello)
                return
            else:
                self.finish("FAILED")
                return

    def _records(self) -> None:
        buf = self.buf
        pos = 0
        while len(buf) - pos >= 5:
            kind, version, length = HEADER.unpack_from(buf, pos)
            if version >> 8 != 3 or kind not in (20, 21, 22, 23, 24):
                self.finish("FAILED")
                return
            if len(buf) - pos - 5 < length:
                break
            body = buf[pos + 5 : pos + 5 + length]
            pos += 5 + length
            if kind == ALERT:
                self.finish("ok" if self.phase == "response" else "FAILED")
                return
            if self.phase == "handshake" and kind == HANDSHAKE:
                self.messages += body
                if self._hello_done():
                    self.phase = "response"
                    assert self.transport is not None
                    self.transport.write(heartbeat_and_sentinel(version, self.payload))
                    self.timer = self.loop.call_later(
                        self.response_timeout, self.finish, "inconclusive"
                    )
            elif self.phase == "response" and kind == HEARTBEAT:
                self.finish(
                    "VULNERABLE" if bytes(body[: len(self.expected)]) == self.expected else "ok"
                )
                return
        del buf[:pos]

    def _hello_done(self) -> bool:
        msgs = self.messages
        pos = 0
        while len(msgs) - pos >= 4:
            kind = msgs[pos]
            length = int.from_bytes(msgs[pos + 1 : pos + 4], "big")
            if len(msgs) - pos - 4 < length:
                break
            pos += 4 + length
            if kind == SERVER_HELLO_DONE:
                return True
        del msgs[:pos]
        return False


async def check(
    host: str, port: int, slots: asyncio.Semaphore, args: argparse.Namespace, hello: bytes
) -> str:
    async with slots:
        loop = asyncio.get_running_loop()
        payload = os.urandom(PAYLOAD_SIZE)
        try:
            async with asyncio.timeout(args.timeout):
                _, proto = await loop.create_connection(
                    lambda: Check(hello, payload, port == 25, args.response_timeout),
                    host,
                    port,
                )
                return await proto.done
        except (OSError, TimeoutError):
            return "FAILED"


async def sweep(targets: list[tuple[str, int]], args: argparse.Namespace) -> list[str]:
    slots = asyncio.Semaphore(args.concurrency)
    hello = client_hello()
    return list(await asyncio.gather(*(check(h, p, slots, args, hello) for h, p in targets)))


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hosts-file", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--response-timeout", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    targets = []
    for line in args.hosts_file.read_text().split():  # HOST:PORT, one per line
        host, _, port = line.rpartition(":")
        targets.append((host, int(port)))
    verdicts: list[str] = []
    for i in range(args.repeat):
        before, wall = cpu(), time.perf_counter()
        verdicts = uvloop.run(sweep(targets, args))
        spent = cpu() - before
        print(
            f"sweep {i}: {len(targets)} targets, {spent:.3f} CPU-s "
            f"({1000 * spent / max(len(targets), 1):.3f} ms/target), "
            f"{time.perf_counter() - wall:.2f} s wall",
            file=sys.stderr,
        )
    rows = [
        {"target": f"{h}:{p}", "verdict": v} for (h, p), v in zip(targets, verdicts, strict=True)
    ]
    json.dump(rows, sys.stdout)
    sys.stdout.write("\n")
    return 1 if "VULNERABLE" in verdicts else 0


if __name__ == "__main__":
    sys.exit(main())
