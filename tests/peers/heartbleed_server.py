"""A hand-written TLS endpoint for testing and benchmarking the Heartbleed check.

No real server is vulnerable today, so this one plays the part. It completes only the
plaintext half of a handshake (ServerHello, Certificate, [ServerKeyExchange],
[CertificateRequest], ServerHelloDone), then answers heartbeats the way the servers described
in /work/shared/HEARTBLEED.md do. It has no secret memory: a "vulnerable" echo is the client's
own payload, and where 1.0.1f would over-read, this peer fills in random bytes.

Library use::

    async with heartbleed_server("vulnerable", starttls="smtp") as port:
        ...  # connect to 127.0.0.1:port

CLI use (benchmarks; many listeners in one process, uvloop when available, clean SIGTERM)::

    python -m tests.peers.heartbleed_server --mode vulnerable --listen 127.0.0.1:0 \
        --listen 127.0.0.1:0

It prints ``listening HOST:PORT`` per listener once all are bound, and binds loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import functools
import ipaddress
import os
import random
import signal
import ssl
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Final, NoReturn

import trustme

from probed.tls import (
    EXT_HEARTBEAT,
    MAX_RECORD_LENGTH,
    AlertDescription,
    AlertLevel,
    ClientHello,
    ContentType,
    HandshakeReassembler,
    HandshakeType,
    encode_alert,
    encode_handshake,
    encode_record,
    parse_client_hello,
)
from probed.tls.handshake import EXT_EC_POINT_FORMATS, EXT_RENEGOTIATION_INFO

__all__ = [
    "HeartbleedPeer",
    "Mode",
    "PeerConfig",
    "StartTLS",
    "heartbleed_server",
    "main",
]


class Mode(enum.StrEnum):
    VULNERABLE = "vulnerable"  # OpenSSL 1.0.1f
    PATCHED = "patched"  # OpenSSL 1.0.1g+
    GNUTLS = "gnutls"  # GnuTLS with heartbeat: alert 10 to an early heartbeat
    NO_HEARTBEAT = "no_heartbeat"  # modern server: no extension 15, alert 10
    STALL = "stall"  # reads, never answers
    CLOSE = "close"  # closes right after the ClientHello
    GARBAGE = "garbage"  # random non-TLS bytes
    PLAINTEXT_OOPS = "plaintext_oops"  # vsftpd's "500 OOPS" after the handshake
    BIG_CERT = "big_cert"  # a certificate flight of big_cert_size bytes (64 KiB+), then 1.0.1f
    COALESCED = "coalesced"  # the whole flight in one record, then 1.0.1f
    SPLIT = "split"  # the flight cut into many tiny records, then 1.0.1f
    ENDLESS_HEARTBEAT = "endless_heartbeat"  # a heartbeat header of length 0xffff, then a drip
    TLS10_ONLY = "tls10_only"  # alert protocol_version above TLS 1.0, then 1.0.1f
    ECHO_WRONG = "echo_wrong"  # a heartbeat response that is not the client's payload


class StartTLS(enum.StrEnum):
    SMTP = "smtp"
    POP3 = "pop3"
    IMAP = "imap"
    FTP = "ftp"
    MYSQL = "mysql"
    POSTGRES = "postgres"
    XMPP = "xmpp"


@dataclass(frozen=True, slots=True)
class PeerConfig:
    mode: Mode
    starttls: StartTLS | None = None
    max_version: int = 0x0303
    # Echo extension 15 in the ServerHello when the client offered it (never in no_heartbeat).
    heartbeat_extension: bool = True
    heartbeat_mode: int = 1
    # Send a CertificateRequest (servers that ask for client certificates, e.g. some Exims).
    client_auth: bool = False
    # Minimum size of the Certificate message in big_cert mode.
    big_cert_size: int = 70_000


# Modes that behave like OpenSSL 1.0.1f once their special handshake is over.
_VULNERABLE_LIKE: Final = frozenset(
    {Mode.VULNERABLE, Mode.BIG_CERT, Mode.COALESCED, Mode.SPLIT, Mode.TLS10_ONLY}
)
# Modes whose record handling is OpenSSL's (record version checks, 4096-byte write buffer).
_OPENSSL_LIKE: Final = _VULNERABLE_LIKE | {Mode.PATCHED, Mode.ECHO_WRONG, Mode.ENDLESS_HEARTBEAT}

_OPENSSL_WRITE_BUFFER: Final = 4096
_MAX_PLAINTEXT: Final = 2**14
_HEARTBEAT_PADDING: Final = 16
_MAX_CLIENT_HELLO: Final = 64 * 1024
_MAX_LINE: Final = 4096
_POSTGRES_SSL_REQUEST: Final = bytes.fromhex("0000000804d2162f")
_MYSQL_CLIENT_SSL: Final = 0x0800
_XMPP_TLS_NS: Final = b"urn:ietf:params:xml:ns:xmpp-tls"
_OOPS: Final = b"500 OOPS: SSL: handshake failed\r\n"


@functools.cache
def certificate_chain() -> tuple[bytes, ...]:
    """A real DER leaf and CA certificate, made once per process."""
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    pems = [blob.bytes().decode("ascii") for blob in leaf.cert_chain_pems]
    pems.append(ca.cert_pem.bytes().decode("ascii"))
    return tuple(ssl.PEM_cert_to_DER_cert(pem) for pem in pems)


def _certificate_message(big_size: int | None) -> bytes:
    chain = list(certificate_chain())
    if big_size is not None:
        # Like a server configured with a huge CA bundle: repeat the CA until it is big enough.
        while sum(len(cert) + 3 for cert in chain) < big_size:
            chain.append(chain[-1])
    entries = b"".join(len(cert).to_bytes(3, "big") + cert for cert in chain)
    return encode_handshake(HandshakeType.CERTIFICATE, len(entries).to_bytes(3, "big") + entries)


def _records(content_type: int, version: int, data: bytes, size: int = _MAX_PLAINTEXT) -> bytes:
    return b"".join(
        encode_record(content_type, version, data[i : i + size]) for i in range(0, len(data), size)
    )


def _alert_record(version: int, description: int) -> bytes:
    return encode_record(ContentType.ALERT, version, encode_alert(AlertLevel.FATAL, description))


# Preference order: what a 1.0.1-era server picks from the classic list.
_CIPHER_PREFERENCE: Final = (0xC02F, 0xC013, 0xC014, 0x009C, 0x0035, 0x002F, 0x000A)
_ECDHE_SUITES: Final = frozenset({0xC02F, 0xC013, 0xC014})


def _choose_cipher(hello: ClientHello, version: int) -> int | None:
    offered = set(hello.cipher_suites)
    for suite in _CIPHER_PREFERENCE:
        if suite in offered and (version >= 0x0303 or suite not in {0xC02F, 0x009C}):
            return suite
    return None


def _server_hello(config: PeerConfig, hello: ClientHello, version: int, suite: int) -> bytes:
    offered = {ext_type for ext_type, _ in hello.extensions}
    extensions = b""
    if 0x00FF in hello.cipher_suites or EXT_RENEGOTIATION_INFO in offered:
        extensions += struct.pack("!HHB", EXT_RENEGOTIATION_INFO, 1, 0)
    if suite in _ECDHE_SUITES:
        extensions += struct.pack("!HHBB", EXT_EC_POINT_FORMATS, 2, 1, 0)
    if (
        EXT_HEARTBEAT in offered
        and config.heartbeat_extension
        and config.mode is not Mode.NO_HEARTBEAT
    ):
        extensions += struct.pack("!HHB", EXT_HEARTBEAT, 1, config.heartbeat_mode)
    body = (
        struct.pack("!H", version)
        + os.urandom(32)
        + b"\x20"
        + os.urandom(32)
        + struct.pack("!HB", suite, 0)
    )
    if extensions:
        body += struct.pack("!H", len(extensions)) + extensions
    return encode_handshake(HandshakeType.SERVER_HELLO, body)


def _server_key_exchange(version: int) -> bytes:
    # Named curve secp256r1, an uncompressed point, a signature. The client never checks it.
    body = b"\x03\x00\x17\x41\x04" + os.urandom(64)
    if version >= 0x0303:
        body += b"\x04\x03"
    body += struct.pack("!H", 72) + os.urandom(72)
    return encode_handshake(HandshakeType.SERVER_KEY_EXCHANGE, body)


def _certificate_request(version: int) -> bytes:
    body = b"\x02\x01\x40"  # rsa_sign, ecdsa_sign
    if version >= 0x0303:
        body += b"\x00\x04\x04\x01\x04\x03"
    body += b"\x00\x00"  # no CA names
    return encode_handshake(HandshakeType.CERTIFICATE_REQUEST, body)


def _server_flight(config: PeerConfig, hello: ClientHello, version: int, suite: int) -> bytes:
    big = config.big_cert_size if config.mode is Mode.BIG_CERT else None
    messages = [_server_hello(config, hello, version, suite), _certificate_message(big)]
    if suite in _ECDHE_SUITES:
        messages.append(_server_key_exchange(version))
    if config.client_auth:
        messages.append(_certificate_request(version))
    messages.append(encode_handshake(HandshakeType.SERVER_HELLO_DONE, b""))
    if config.mode is Mode.COALESCED:
        return _records(ContentType.HANDSHAKE, version, b"".join(messages))
    if config.mode is Mode.SPLIT:
        stream = b"".join(messages)
        sizes = random.Random(len(stream))
        out = []
        pos = 0
        while pos < len(stream):
            size = sizes.randint(1, 40)
            out.append(encode_record(ContentType.HANDSHAKE, version, stream[pos : pos + size]))
            pos += size
        return b"".join(out)
    # OpenSSL's way: each message in its own record(s), all in one TCP write.
    return b"".join(_records(ContentType.HANDSHAKE, version, message) for message in messages)


class _ClosedError(Exception):
    """The client went away or broke the protocol: end this connection quietly."""


async def _read_record(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    try:
        header = await reader.readexactly(5)
        content_type, version, length = struct.unpack("!BHH", header)
        if length > MAX_RECORD_LENGTH:
            raise _ClosedError
        return content_type, version, await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise _ClosedError from exc


async def _read_client_hello(reader: asyncio.StreamReader) -> ClientHello:
    reassembler = HandshakeReassembler(keep=(HandshakeType.CLIENT_HELLO,))
    total = 0
    while True:
        content_type, _, body = await _read_record(reader)
        total += len(body)
        if content_type != ContentType.HANDSHAKE or total > _MAX_CLIENT_HELLO:
            raise _ClosedError
        messages = reassembler.feed(body)
        if messages:
            first = messages[0]
            if first.msg_type != HandshakeType.CLIENT_HELLO or first.body is None:
                raise _ClosedError
            hello = parse_client_hello(first.body)
            if hello is None:
                raise _ClosedError
            return hello


class _Output:
    """The server's sending side, with OpenSSL 1.0.1's 4096-byte handshake write buffer.

    Before the handshake completes, OpenSSL writes through a buffering BIO: small records
    (a short heartbeat echo) wait there until the buffer overflows or something flushes it.
    """

    def __init__(self, writer: asyncio.StreamWriter, buffered: bool) -> None:
        self._writer = writer
        self._buffered = buffered
        self._pending = bytearray()

    async def send(self, data: bytes) -> None:
        self._pending += data
        if not self._buffered or len(self._pending) > _OPENSSL_WRITE_BUFFER:
            await self.flush()

    async def flush(self) -> None:
        if self._pending:
            self._writer.write(bytes(self._pending))
            self._pending.clear()
        try:
            await self._writer.drain()
        except ConnectionError as exc:
            raise _ClosedError from exc

    async def fatal(self, version: int, description: int) -> NoReturn:
        """Fatal alerts flush whatever is buffered, then go out themselves; then we close."""
        await self.send(_alert_record(version, description))
        await self.flush()
        raise _ClosedError


# -- STARTTLS front-ends ------------------------------------------------------------------------


async def _line(reader: asyncio.StreamReader) -> bytes:
    try:
        line = await reader.readuntil(b"\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as exc:
        raise _ClosedError from exc
    if len(line) > _MAX_LINE:
        raise _ClosedError
    return line


async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    try:
        await writer.drain()
    except ConnectionError as exc:
        raise _ClosedError from exc


async def _starttls_smtp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # Exim style: a multi-line greeting, and STARTTLS only after EHLO.
    await _send(writer, b"220-localhost ESMTP probed test peer\r\n220-no UCE\r\n220 ready\r\n")
    greeted = False
    while True:
        line = await _line(reader)
        verb = line.strip().split(b" ", 1)[0].upper()
        if verb == b"EHLO":
            greeted = True
            await _send(
                writer,
                b"250-localhost Hello\r\n250-SIZE 52428800\r\n250-PIPELINING\r\n"
                b"250-STARTTLS\r\n250 HELP\r\n",
            )
        elif verb == b"STARTTLS" and greeted:
            await _send(writer, b"220 TLS go ahead\r\n")
            return
        elif verb == b"STARTTLS":
            await _send(writer, b"503 5.5.1 EHLO first\r\n")
        elif verb == b"QUIT":
            await _send(writer, b"221 bye\r\n")
            raise _ClosedError
        else:
            await _send(writer, b"500 5.5.1 unrecognized command\r\n")


async def _starttls_pop3(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _send(writer, b"+OK probed test peer ready\r\n")
    while True:
        verb = (await _line(reader)).strip().upper()
        if verb == b"CAPA":
            await _send(writer, b"+OK\r\nUSER\r\nSTLS\r\n.\r\n")
        elif verb == b"STLS":
            await _send(writer, b"+OK Begin TLS negotiation\r\n")
            return
        elif verb == b"QUIT":
            await _send(writer, b"+OK bye\r\n")
            raise _ClosedError
        else:
            await _send(writer, b"-ERR unknown command\r\n")


async def _starttls_imap(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _send(writer, b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] peer ready\r\n")
    while True:
        parts = (await _line(reader)).strip().split(b" ", 1)
        tag = parts[0] or b"*"
        verb = parts[1].upper() if len(parts) > 1 else b""
        if verb == b"CAPABILITY":
            await _send(
                writer,
                b"* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\n" + tag + b" OK done\r\n",
            )
        elif verb == b"STARTTLS":
            await _send(writer, tag + b" OK Begin TLS negotiation now\r\n")
            return
        elif verb == b"LOGOUT":
            await _send(writer, b"* BYE\r\n" + tag + b" OK LOGOUT completed\r\n")
            raise _ClosedError
        else:
            await _send(writer, tag + b" BAD unknown command\r\n")


async def _starttls_ftp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _send(writer, b"220 probed test peer FTP\r\n")
    while True:
        command = (await _line(reader)).strip().upper()
        if command in {b"AUTH TLS", b"AUTH SSL", b"AUTH TLS-C"}:
            await _send(writer, b"234 Proceed with negotiation.\r\n")
            return
        if command == b"FEAT":
            await _send(writer, b"211-Features:\r\n AUTH TLS\r\n PBSZ\r\n PROT\r\n211 End\r\n")
        elif command == b"QUIT":
            await _send(writer, b"221 Goodbye.\r\n")
            raise _ClosedError
        else:
            await _send(writer, b"530 Please login with USER and PASS.\r\n")


def _mysql_greeting() -> bytes:
    capabilities = 0x0001 | 0x0004 | 0x0008 | 0x0200 | _MYSQL_CLIENT_SSL | 0x2000 | 0x8000
    capabilities |= 0x00080000  # CLIENT_PLUGIN_AUTH
    payload = (
        b"\x0a5.5.35-probed-peer\x00"
        + struct.pack("<I", 7)  # connection id
        + os.urandom(8)
        + b"\x00"
        + struct.pack("<HBHH", capabilities & 0xFFFF, 0x21, 0x0002, capabilities >> 16)
        + b"\x15"
        + bytes(10)
        + os.urandom(12)
        + b"\x00mysql_native_password\x00"
    )
    return len(payload).to_bytes(3, "little") + b"\x00" + payload


async def _starttls_mysql(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _send(writer, _mysql_greeting())
    try:
        header = await reader.readexactly(4)
        length = int.from_bytes(header[:3], "little")
        if length != 32 or header[3] != 1:
            raise _ClosedError
        request = await reader.readexactly(32)
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise _ClosedError from exc
    if not int.from_bytes(request[:4], "little") & _MYSQL_CLIENT_SSL:
        raise _ClosedError


async def _starttls_postgres(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        request = await reader.readexactly(8)
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise _ClosedError from exc
    if request != _POSTGRES_SSL_REQUEST:
        raise _ClosedError
    await _send(writer, b"S")


async def _read_until(reader: asyncio.StreamReader, done: Callable[[bytes], bool]) -> bytes:
    seen = b""
    while not done(seen):
        chunk = await reader.read(1024)
        if not chunk or len(seen) > _MAX_LINE:
            raise _ClosedError
        seen += chunk
    return seen


async def _starttls_xmpp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    def stream_opened(seen: bytes) -> bool:
        start = seen.find(b"<stream:stream")
        return start >= 0 and seen.find(b">", start) >= 0

    def starttls_asked(seen: bytes) -> bool:
        start = seen.find(b"<starttls")
        return start >= 0 and seen.find(b">", start) >= 0

    await _read_until(reader, stream_opened)
    await _send(
        writer,
        b"<?xml version='1.0'?><stream:stream xmlns='jabber:client'"
        b" xmlns:stream='http://etherx.jabber.org/streams' id='peer1' from='localhost'"
        b" version='1.0'><stream:features><starttls xmlns='" + _XMPP_TLS_NS + b"'>"
        b"<required/></starttls></stream:features>",
    )
    await _read_until(reader, starttls_asked)
    await _send(writer, b"<proceed xmlns='" + _XMPP_TLS_NS + b"'/>")


_Dialogue = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
_STARTTLS: Final[dict[StartTLS, _Dialogue]] = {
    StartTLS.SMTP: _starttls_smtp,
    StartTLS.POP3: _starttls_pop3,
    StartTLS.IMAP: _starttls_imap,
    StartTLS.FTP: _starttls_ftp,
    StartTLS.MYSQL: _starttls_mysql,
    StartTLS.POSTGRES: _starttls_postgres,
    StartTLS.XMPP: _starttls_xmpp,
}


# -- TLS behaviour ------------------------------------------------------------------------------


async def _drain_forever(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(ConnectionError):
        while await reader.read(65536):
            pass


async def _drip_heartbeat(writer: asyncio.StreamWriter, version: int) -> NoReturn:
    # A record that claims 65535 bytes and never ends: the client must give up by itself.
    await _send(writer, struct.pack("!BHH", ContentType.HEARTBEAT, version, 0xFFFF))
    while not writer.is_closing():
        await _send(writer, os.urandom(64))
        await asyncio.sleep(0.005)
    raise _ClosedError


def _heartbeat_response(message: bytes, version: int, *, vulnerable: bool, wrong: bool) -> bytes:
    """The answer to a heartbeat request, or b"" where the server drops the request."""
    if len(message) < 3 or message[0] != 1:
        return b""  # too short, or not a request: OpenSSL ignores it
    payload_length = int.from_bytes(message[1:3], "big")
    available = message[3 : 3 + payload_length]
    if not vulnerable and 3 + payload_length + _HEARTBEAT_PADDING > len(message):
        return b""  # 1.0.1g: silently discard a request that does not hold its payload
    # 1.0.1f copies payload_length bytes whatever the record holds; this peer has no memory to
    # leak and fills the rest with random bytes.
    echo = available + os.urandom(payload_length - len(available))
    if wrong:
        echo = bytes(b ^ 0x5A for b in echo)
    body = b"\x02" + message[1:3] + echo + os.urandom(_HEARTBEAT_PADDING)
    return _records(ContentType.HEARTBEAT, version, body)


async def _after_handshake(
    config: PeerConfig,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    version: int,
) -> None:
    mode = config.mode
    out = _Output(writer, buffered=mode in _OPENSSL_LIKE)
    while True:
        content_type, record_version, body = await _read_record(reader)
        if mode is Mode.PLAINTEXT_OOPS:
            await _send(writer, _OOPS)
            raise _ClosedError
        if mode in _OPENSSL_LIKE and record_version != version:
            await out.fatal(version, AlertDescription.PROTOCOL_VERSION)
        if content_type == ContentType.HEARTBEAT:
            if mode in {Mode.GNUTLS, Mode.NO_HEARTBEAT}:
                await out.fatal(version, AlertDescription.UNEXPECTED_MESSAGE)
            if mode is Mode.ENDLESS_HEARTBEAT:
                await _drip_heartbeat(writer, version)
            response = _heartbeat_response(
                body,
                version,
                vulnerable=mode in _VULNERABLE_LIKE or mode is Mode.ECHO_WRONG,
                wrong=mode is Mode.ECHO_WRONG,
            )
            if response:
                await out.send(response)
        elif content_type == ContentType.ALERT:
            await out.flush()
            raise _ClosedError
        else:
            # Application data (the sentinel) or a ClientKeyExchange we cannot process: both
            # are unexpected here. The alert flushes the buffered output first.
            await out.fatal(version, AlertDescription.UNEXPECTED_MESSAGE)


async def _serve_tls(
    config: PeerConfig, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    if config.mode is Mode.STALL:
        await _drain_forever(reader)
        return
    hello = await _read_client_hello(reader)
    if config.mode is Mode.CLOSE:
        return
    if config.mode is Mode.GARBAGE:
        noise = bytearray(os.urandom(512))
        noise[0] %= ContentType.CHANGE_CIPHER_SPEC  # never a record type: this is not TLS
        await _send(writer, bytes(noise))
        await _drain_forever(reader)
        return
    max_version = 0x0301 if config.mode is Mode.TLS10_ONLY else config.max_version
    if config.mode is Mode.TLS10_ONLY and hello.version > max_version:
        await _send(writer, _alert_record(0x0301, AlertDescription.PROTOCOL_VERSION))
        return
    if hello.version < 0x0300:
        await _send(writer, _alert_record(0x0300, AlertDescription.PROTOCOL_VERSION))
        return
    version = min(hello.version, max_version)
    suite = _choose_cipher(hello, version)
    if suite is None:
        await _send(writer, _alert_record(version, AlertDescription.HANDSHAKE_FAILURE))
        return
    await _send(writer, _server_flight(config, hello, version, suite))
    await _after_handshake(config, reader, writer, version)


# -- the server ---------------------------------------------------------------------------------


def _check_loopback(host: str) -> None:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the test peer binds loopback addresses only, not {host}")


class HeartbleedPeer:
    """Listeners sharing one configuration; ``close()`` ends them and every connection."""

    def __init__(self, config: PeerConfig) -> None:
        self.config = config
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def listen(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Start one more listener; returns its port (chosen by the OS when ``port`` is 0)."""
        _check_loopback(host)
        server = await asyncio.start_server(self._handle, host, port, backlog=1024)
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        # Aborting the transports ends every handler through its own EOF path. Cancelling the
        # handler tasks instead makes asyncio's stream callback log a spurious traceback (3.11),
        # so cancellation is only the fallback for a handler that does not notice.
        for writer in list(self._writers):
            writer.transport.abort()
        if self._connections:
            _, stuck = await asyncio.wait(set(self._connections), timeout=1.0)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self._writers.add(writer)
        try:
            if self.config.starttls is not None:
                await _STARTTLS[self.config.starttls](reader, writer)
            await _serve_tls(self.config, reader, writer)
        except _ClosedError:
            pass
        finally:
            self._connections.discard(task)
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def heartbleed_server(
    mode: Mode | str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    starttls: StartTLS | str | None = None,
    max_version: int = 0x0303,
    heartbeat_extension: bool = True,
    heartbeat_mode: int = 1,
    client_auth: bool = False,
    big_cert_size: int = 70_000,
) -> AsyncIterator[int]:
    """Run a peer on ``host`` (loopback only) and ``port`` (0: the OS picks); yields the
    port."""
    config = PeerConfig(
        mode=Mode(mode),
        starttls=StartTLS(starttls) if starttls is not None else None,
        max_version=max_version,
        heartbeat_extension=heartbeat_extension,
        heartbeat_mode=heartbeat_mode,
        client_auth=client_auth,
        big_cert_size=big_cert_size,
    )
    peer = HeartbleedPeer(config)
    bound = await peer.listen(host, port)
    try:
        yield bound
    finally:
        await peer.close()


# -- CLI ----------------------------------------------------------------------------------------


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    host = host.removeprefix("[").removesuffix("]")
    try:
        _check_loopback(host)
        return host, int(port)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


async def _run(config: PeerConfig, listens: Sequence[tuple[str, int]]) -> None:
    peer = HeartbleedPeer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        bound = [(host, await peer.listen(host, port)) for host, port in listens]
        for host, port in bound:
            shown = f"[{host}]" if ":" in host else host
            print(f"listening {shown}:{port}", flush=True)
        await stop.wait()
    finally:
        await peer.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mode", required=True, choices=[m.value for m in Mode])
    parser.add_argument("--listen", action="append", required=True, type=_parse_listen)
    parser.add_argument("--starttls", choices=[s.value for s in StartTLS])
    parser.add_argument("--max-version", type=lambda v: int(v, 0), default=0x0303)
    parser.add_argument("--no-heartbeat-extension", action="store_true")
    parser.add_argument("--client-auth", action="store_true")
    args = parser.parse_args(argv)
    config = replace(
        PeerConfig(Mode(args.mode)),
        starttls=StartTLS(args.starttls) if args.starttls else None,
        max_version=args.max_version,
        heartbeat_extension=not args.no_heartbeat_extension,
        client_auth=args.client_auth,
    )
    certificate_chain()  # make the certificate before the first connection, not during it
    coro = _run(config, args.listen)
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up for benchmarks only
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)
    return 0


if __name__ == "__main__":
    sys.exit(main())
