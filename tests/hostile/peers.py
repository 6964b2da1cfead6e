"""Hostile servers, written once: each behaviour is a handler factory for one dialect.

Every server binds 127.0.0.1 on a port the OS picks. Every loop is bounded (a few hundred
thousand iterations or a few minutes at most), so a peer can never outlive a broken test by
much; ``HostilePeer`` aborts every connection when its block ends.

Dialects are what the peer pretends to be before it misbehaves: the greeting it starts, the
line it never finishes, the commands it answers with invalid UTF-8.
"""

from __future__ import annotations

import asyncio
import enum
import random
import socket
import struct
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Final

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Dialect(enum.StrEnum):
    TCP = "tcp"  # a line protocol whose greeting starts "OK"
    HTTP = "http"
    TLS = "tls"  # TLS from the first byte
    SMTP = "smtp"
    POP3 = "pop3"
    IMAP = "imap"
    FTP = "ftp"
    SSH = "ssh"
    MYSQL = "mysql"


# Invalid UTF-8 of every kind: stray continuation bytes, overlong forms, a lone surrogate,
# truncated sequences, bytes that never occur (0xFE, 0xFF). No NUL, CR or LF.
GARBAGE: Final = (
    b"\xff\xfe\xc3\x28\xa0\xa1\xe2\x28\xa1\xf0\x28\x8c\xbc\xc0\xaf\xed\xa0\x80\xf8\x88\x80\x80"
)
_LOOP_BOUND: Final = 200_000  # iterations of any sending loop
_DRAIN_BOUND: Final = 1_000_000  # reads of any draining loop
_DRIP_BYTES: Final = 120  # one byte a second: two minutes at most
_CHUNK: Final = 16 * 1024
_TLS12: Final = 0x0303


def _mysql_greeting(version: bytes) -> bytes:
    payload = (
        b"\x0a"
        + version
        + b"\x00"
        + struct.pack("<I", 7)
        + b"abcdefgh\x00"
        + struct.pack("<HBHH", 0xF7FF, 0x21, 0x0002, 0x0008)
        + b"\x15"
        + bytes(10)
        + b"ijklmnopqrst\x00mysql_native_password\x00"
    )
    return len(payload).to_bytes(3, "little") + b"\x00" + payload


# -- TLS bytes, by hand ------------------------------------------------------------------------


def tls_record(content_type: int, body: bytes, version: int = _TLS12) -> bytes:
    return struct.pack("!BHH", content_type, version, len(body)) + body


def tls_handshake(msg_type: int, body: bytes) -> bytes:
    return bytes((msg_type,)) + len(body).to_bytes(3, "big") + body


def server_hello() -> bytes:
    """A TLS 1.2 ServerHello (ECDHE-RSA-AES128-GCM-SHA256, secure renegotiation) any client
    that offered that suite accepts as far as the certificate."""
    extensions = b"\xff\x01\x00\x01\x00"
    body = (
        struct.pack("!H", _TLS12)
        + bytes(range(32))
        + b"\x00"
        + struct.pack("!HB", 0xC02F, 0)
        + struct.pack("!H", len(extensions))
        + extensions
    )
    return tls_record(22, tls_handshake(2, body))


def small_flight() -> bytes:
    """ServerHello, a junk 700-byte certificate and ServerHelloDone: enough for the
    Heartbleed exchange (which never parses certificates) to send its heartbeat."""
    cert = b"\x30\x82" + bytes(698)
    entries = len(cert).to_bytes(3, "big") + cert
    certificate = tls_handshake(11, len(entries).to_bytes(3, "big") + entries)
    return server_hello() + tls_record(22, certificate) + tls_record(22, tls_handshake(14, b""))


# -- what each dialect says ----------------------------------------------------------------------

GREETING: Final[dict[Dialect, bytes]] = {
    Dialect.TCP: b"OK hostile peer ready\r\n",
    Dialect.HTTP: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    Dialect.TLS: server_hello(),
    Dialect.SMTP: b"220 mx.hostile ESMTP\r\n",
    Dialect.POP3: b"+OK hostile POP3 ready\r\n",
    Dialect.IMAP: b"* OK [CAPABILITY IMAP4rev1] hostile IMAP ready\r\n",
    Dialect.FTP: b"220 hostile FTP ready\r\n",
    Dialect.SSH: b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n",
    Dialect.MYSQL: _mysql_greeting(b"10.11.6-MariaDB"),
}
# The start of a line that never ends.
LINE_PREFIX: Final[dict[Dialect, bytes]] = {
    Dialect.TCP: b"OK",
    Dialect.HTTP: b"HTTP/1.1 200 OK\r\nX-Never-Ends: ",
    Dialect.SMTP: b"220 ",
    Dialect.POP3: b"+OK ",
    Dialect.IMAP: b"* OK ",
    Dialect.FTP: b"220 ",
    Dialect.SSH: b"SSH-2.0-",
    Dialect.MYSQL: b"\x40\x00\x00\x00\x0a",
}


# -- plumbing -----------------------------------------------------------------------------------


async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


async def _drain(reader: asyncio.StreamReader) -> None:
    """Read (and drop) until the client goes away."""
    for _ in range(_DRAIN_BOUND):
        if not await reader.read(65536):
            return


async def opening(dialect: Dialect, reader: asyncio.StreamReader) -> None:
    """Let the client speak first where it does: an HTTP request head, a ClientHello."""
    if dialect is Dialect.HTTP:
        await reader.readuntil(b"\r\n\r\n")
    elif dialect is Dialect.TLS:
        await reader.read(65536)  # one write on loopback; the rest is drained later


async def _send_forever(writer: asyncio.StreamWriter, chunk: bytes) -> None:
    # drain() waits while the client does not read: this costs the peer one chunk.
    for _ in range(_LOOP_BOUND):
        await _send(writer, chunk)


class HostilePeer:
    """``async with HostilePeer(handler) as peer``: a listener on ``peer.port``."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.connections = 0

    async def __aenter__(self) -> HostilePeer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            await self._handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client gave up: that is what these peers are for
        except asyncio.CancelledError:
            pass  # close(): end quietly
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.transport.abort()


# -- the behaviours -------------------------------------------------------------------------------

Behaviour = Callable[[Dialect], Handler]


def silent(dialect: Dialect) -> Handler:
    """Accept, read whatever comes, never answer."""
    del dialect
    return lambda reader, writer: _drain(reader)


def close_at_once(dialect: Dialect) -> Handler:
    """Accept and close (FIN) before a byte is sent."""
    del dialect

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    return handler


def reset_at_once(dialect: Dialect) -> Handler:
    """Accept and reset (RST: SO_LINGER 0, then close)."""
    del dialect

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    return handler


def drip(dialect: Dialect) -> Handler:
    """The dialect's greeting, one byte a second."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = GREETING[dialect]
        for i in range(_DRIP_BYTES):
            await _send(writer, data[i % len(data) : i % len(data) + 1])
            await asyncio.sleep(1.0)

    return handler


def endless_stream(dialect: Dialect) -> Handler:
    """Printable lines, as fast as the client reads, forever (HTTP: as a response body)."""
    chunk = (b"y" * 62 + b"\r\n") * (_CHUNK // 64)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await opening(dialect, reader)
        if dialect is Dialect.HTTP:  # the stream is the body of a 1 TiB response
            await _send(writer, b"HTTP/1.1 200 OK\r\nContent-Length: 1099511627776\r\n\r\n")
        await _send_forever(writer, chunk)

    return handler


def endless_line(dialect: Dialect) -> Handler:
    """The start of a plausible line, then bytes without a newline, forever."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await opening(dialect, reader)
        await _send(writer, LINE_PREFIX[dialect])
        await _send_forever(writer, b"A" * _CHUNK)

    return handler


def random_bytes(dialect: Dialect) -> Handler:
    """64 KiB of (seeded) random bytes, then silence."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await opening(dialect, reader)
        await _send(writer, random.Random(0x9E11).randbytes(64 * 1024))
        await _drain(reader)

    return handler


# Valid framing, invalid UTF-8 inside: a probe may succeed where the protocol lets it.
def _smtp_garbage() -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _send(writer, b"220 " + GARBAGE + b"\r\n")
        for _ in range(1000):
            line = await reader.readline()
            verb = line[:4].upper()
            if not line or verb == b"QUIT":
                await _send(writer, b"221 " + GARBAGE + b"\r\n")
                return
            if verb == b"EHLO":
                reply = b"250-" + GARBAGE + b"\r\n250-SIZE " + GARBAGE + b"\r\n250 " + GARBAGE
            elif verb == b"DATA":
                await _send(writer, b"354 " + GARBAGE + b"\r\n")
                for _ in range(10_000):
                    body = await reader.readline()
                    if body in (b".\r\n", b""):
                        break
                reply = b"250 " + GARBAGE
            else:
                reply = b"250 " + GARBAGE
            await _send(writer, reply + b"\r\n")

    return handler


def _pop3_garbage() -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _send(writer, b"+OK " + GARBAGE + b"\r\n")
        for _ in range(1000):
            line = (await reader.readline()).upper()
            if not line:
                return
            if line.startswith(b"CAPA"):
                reply = b"+OK " + GARBAGE + b"\r\nUSER\r\n" + GARBAGE + b"\r\n."
            elif line.startswith(b"STAT"):
                reply = b"+OK 1 42 " + GARBAGE
            else:
                reply = b"+OK " + GARBAGE
            await _send(writer, reply + b"\r\n")

    return handler


def _imap_garbage() -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _send(writer, b"* OK " + GARBAGE + b"\r\n")
        for _ in range(1000):
            line = await reader.readline()
            if not line:
                return
            tag, _, rest = line.strip().partition(b" ")
            untagged = b""
            if rest.upper().startswith(b"CAPABILITY"):
                untagged = b"* CAPABILITY IMAP4rev1 " + GARBAGE + b"\r\n"
            elif rest.upper().startswith((b"EXAMINE", b"SELECT")):
                untagged = b"* 1 EXISTS\r\n* 0 RECENT\r\n* OK " + GARBAGE + b"\r\n"
            await _send(writer, untagged + tag + b" OK " + GARBAGE + b"\r\n")

    return handler


def _ftp_garbage() -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _send(writer, b"220 " + GARBAGE + b"\r\n")
        answers = {
            b"USER": b"331 ",
            b"PASS": b"230 ",
            b"PWD": b'257 "/' + GARBAGE + b'" ',
            b"CWD": b"250 ",
            b"TYPE": b"200 ",
            b"QUIT": b"221 ",
        }
        for _ in range(1000):
            line = await reader.readline()
            if not line:
                return
            verb = line.split(b" ", 1)[0].strip().upper()
            if verb == b"FEAT":
                reply = b"211-" + GARBAGE + b"\r\n " + GARBAGE + b"\r\n211 " + GARBAGE
            else:
                reply = answers.get(verb, b"502 ") + GARBAGE
            await _send(writer, reply + b"\r\n")

    return handler


def _greeting_then_drain(dialect: Dialect, data: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await opening(dialect, reader)
        await _send(writer, data)
        await _drain(reader)

    return handler


def utf8_garbage(dialect: Dialect) -> Handler:
    """Answers framed as the protocol wants, full of invalid UTF-8."""
    scripted: dict[Dialect, Callable[[], Handler]] = {
        Dialect.SMTP: _smtp_garbage,
        Dialect.POP3: _pop3_garbage,
        Dialect.IMAP: _imap_garbage,
        Dialect.FTP: _ftp_garbage,
    }
    if dialect in scripted:
        return scripted[dialect]()
    fixed = {
        Dialect.TCP: b"OK " + GARBAGE + b"\r\n",
        Dialect.HTTP: (
            b"HTTP/1.1 200 "
            + GARBAGE
            + b"\r\nX-Garbage: "
            + GARBAGE
            + b"\r\nLast-Modified: "
            + GARBAGE
            + b"\r\nContent-Length: 22\r\nConnection: close\r\n\r\n"
            + GARBAGE
        ),
        Dialect.SSH: b"SSH-2.0-" + GARBAGE + b"\r\n",
        Dialect.MYSQL: _mysql_greeting(b"5.5.5-" + GARBAGE),
        Dialect.TLS: GARBAGE * 64,
    }
    return _greeting_then_drain(dialect, fixed[dialect])


def absurd(dialect: Dialect) -> Handler:
    """Protocol-valid but absurd: thousands of greeting or capability lines, thousands of
    headers, a 2^24-1 byte length field."""

    async def lines_forever(writer: asyncio.StreamWriter, first: bytes, line: bytes) -> None:
        await _send(writer, first)
        await _send_forever(writer, line * (_CHUNK // len(line)))

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if dialect in (Dialect.SMTP, Dialect.FTP, Dialect.TCP):
            await lines_forever(writer, b"", b"220-still greeting you\r\n")
        elif dialect is Dialect.POP3:
            await _send(writer, GREETING[dialect])
            await reader.readline()  # CAPA
            await lines_forever(writer, b"+OK capabilities follow\r\n", b"X-CAPABILITY\r\n")
        elif dialect is Dialect.IMAP:
            await _send(writer, GREETING[dialect])
            await reader.readline()  # CAPABILITY
            await lines_forever(writer, b"", b"* OK still here\r\n")
        elif dialect is Dialect.SSH:
            await lines_forever(writer, b"", b"a banner line before the version\r\n")
        elif dialect is Dialect.MYSQL:
            # A 2^24-1 byte packet that then streams (zeros) as fast as the client reads.
            await lines_forever(writer, b"\xff\xff\xff\x00\x0a", bytes(_CHUNK))
        elif dialect is Dialect.HTTP:
            await opening(dialect, reader)
            await lines_forever(writer, b"HTTP/1.1 200 OK\r\n", b"X-Header: value\r\n")
        else:
            raise ValueError(f"no absurd behaviour for {dialect}")

    return handler


# -- TLS only ---------------------------------------------------------------------------------


def bogus_records(dialect: Dialect) -> Handler:
    """Records of an undefined content type (0x63) with random bodies, forever."""
    del dialect

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await opening(Dialect.TLS, reader)
        body = random.Random(0xB0).randbytes(1000)
        await _send_forever(writer, tls_record(0x63, body) * 16)

    return handler


def lying_length(dialect: Dialect) -> Handler:
    """A ServerHello whose handshake header claims 2^24-1 bytes, in a 60-byte record."""
    del dialect

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await opening(Dialect.TLS, reader)
        await _send(writer, tls_record(22, b"\x02\xff\xff\xff" + bytes(56)))
        await _drain(reader)

    return handler


def endless_fragments(dialect: Dialect) -> Handler:
    """A ServerHello, then a Certificate claiming 2^24-1 bytes, one byte per record, forever."""
    del dialect

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await opening(Dialect.TLS, reader)
        await _send(writer, server_hello() + tls_record(22, b"\x0b\xff\xff\xff"))
        await _send_forever(writer, tls_record(22, b"\x00") * 2048)

    return handler


def oversized_cert(dialect: Dialect) -> Handler:
    """A ServerHello, then a 16 MiB certificate flight in full-size records."""
    del dialect

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await opening(Dialect.TLS, reader)
        total = 2**24 - 1
        header = b"\x0b" + total.to_bytes(3, "big") + (total - 3).to_bytes(3, "big")
        await _send(writer, server_hello() + tls_record(22, header))
        piece = tls_record(22, bytes(2**14))
        for _ in range(total // 2**14):
            await _send(writer, piece)
        await _drain(reader)

    return handler


def heartbeat_flood(dialect: Dialect) -> Handler:
    """A complete plaintext flight, then heartbeat records (never our echo), forever."""
    del dialect

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await opening(Dialect.TLS, reader)
        await _send(writer, small_flight())
        body = b"\x02\x10\x00" + random.Random(0x18).randbytes(4096 + 16)
        await _send_forever(writer, tls_record(24, body) * 4)

    return handler


BEHAVIOURS: Final[dict[str, Behaviour]] = {
    "silent": silent,
    "close": close_at_once,
    "reset": reset_at_once,
    "drip": drip,
    "endless_stream": endless_stream,
    "endless_line": endless_line,
    "random_bytes": random_bytes,
    "utf8_garbage": utf8_garbage,
    "absurd": absurd,
    "tls_bogus_records": bogus_records,
    "tls_lying_length": lying_length,
    "tls_endless_fragments": endless_fragments,
    "tls_oversized_cert": oversized_cert,
    "tls_heartbeat_flood": heartbeat_flood,
}
