"""The Heartbleed test peer, driven by plain asyncio sockets and probed.tls.

These double as the integration tests of the sans-IO exchange: every mode must end in the
verdict HEARTBLEED.md gives for the real server it imitates.
"""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from probed.tls import (
    Alert,
    HandshakeError,
    HandshakeFailure,
    HeartbleedExchange,
    OtherReason,
    Outcome,
    ReadyForHeartbeat,
    Verdict,
    build_heartbeat_request,
    build_sentinel,
    encode_record,
)
from tests.peers.heartbleed_server import heartbleed_server

PAYLOAD = os.urandom(4096)
REPO = Path(__file__).resolve().parents[2]
Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]

# -- a minimal client: STARTTLS dialogues, then the exchange -----------------------------------


async def _lines_until(reader: asyncio.StreamReader, final: Callable[[bytes], bool]) -> bytes:
    seen = b""
    while True:
        line = await reader.readline()
        assert line, f"connection closed after {seen!r}"
        seen += line
        if final(line):
            return seen


async def _smtp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    greeting = await _lines_until(reader, lambda line: line[3:4] == b" ")
    assert greeting.startswith(b"220-")
    writer.write(b"EHLO probe.test\r\n")
    reply = await _lines_until(reader, lambda line: line[3:4] == b" ")
    assert b"250-STARTTLS" in reply
    writer.write(b"STARTTLS\r\n")
    assert (await reader.readline()).startswith(b"220 ")


async def _pop3(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    assert (await reader.readline()).startswith(b"+OK")
    writer.write(b"STLS\r\n")
    assert (await reader.readline()).startswith(b"+OK")


async def _imap(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    assert (await reader.readline()).startswith(b"* OK")
    writer.write(b"x7 STARTTLS\r\n")
    reply = await _lines_until(reader, lambda line: line.startswith(b"x7 "))
    assert reply.endswith(b"\r\n")
    assert b"x7 OK" in reply


async def _ftp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    assert (await reader.readline()).startswith(b"220 ")
    writer.write(b"AUTH TLS\r\n")
    assert (await reader.readline()).startswith(b"234 ")


async def _mysql(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    header = await reader.readexactly(4)
    greeting = await reader.readexactly(int.from_bytes(header[:3], "little"))
    assert header[3] == 0
    assert greeting[0] == 10
    after_version = greeting.index(b"\x00", 1) + 1
    capabilities = int.from_bytes(greeting[after_version + 13 : after_version + 15], "little")
    assert capabilities & 0x0800  # CLIENT_SSL
    client_flags = 0x0800 | 0x0200 | 0x8000 | 0x00080000
    request = struct.pack("<IIB", client_flags, 16 * 1024 * 1024, 0x21) + bytes(23)
    writer.write(len(request).to_bytes(3, "little") + b"\x01" + request)


async def _postgres(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(bytes.fromhex("0000000804d2162f"))
    assert await reader.readexactly(1) == b"S"


async def _xmpp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(
        b"<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client'"
        b" xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
    )
    features = await reader.readuntil(b"</stream:features>")
    assert b"urn:ietf:params:xml:ns:xmpp-tls" in features
    writer.write(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert b"<proceed" in await reader.readuntil(b"/>")


STARTTLS: dict[str, Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]] = {
    "smtp": _smtp,
    "pop3": _pop3,
    "imap": _imap,
    "ftp": _ftp,
    "mysql": _mysql,
    "postgres": _postgres,
    "xmpp": _xmpp,
}


async def check(
    port: int,
    version: int = 0x0303,
    *,
    starttls: str | None = None,
    payload: bytes = PAYLOAD,
    max_bytes: int = 64 * 1024,
) -> tuple[Verdict | HandshakeError, HeartbleedExchange]:
    """One connection, one exchange, the way the asyncio probe will drive it."""
    exchange = HeartbleedExchange(version, None, payload, max_bytes=max_bytes)
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            if starttls is not None:
                await STARTTLS[starttls](reader, writer)
            writer.write(exchange.client_hello())
            while True:
                data = await reader.read(65536)
                event = exchange.feed(data) if data else exchange.eof()
                if isinstance(event, ReadyForHeartbeat):
                    writer.write(exchange.heartbeat_request())
                elif isinstance(event, Verdict | HandshakeError):
                    return event, exchange
        finally:
            writer.close()


async def check_with_fallback(port: int) -> tuple[list[object], HeartbleedExchange]:
    """Retry lower versions after a handshake alert or close, as HEARTBLEED.md says."""
    events: list[object] = []
    for version in (0x0303, 0x0302, 0x0301):
        event, exchange = await check(port, version)
        events.append(event)
        retry = {HandshakeFailure.HANDSHAKE_ALERT, HandshakeFailure.HANDSHAKE_EOF}
        if not (isinstance(event, HandshakeError) and event.reason in retry):
            return events, exchange
    raise AssertionError(f"no version worked: {events}")


async def handshake_only(port: int, version: int = 0x0303) -> tuple[Streams, HeartbleedExchange]:
    """Connect and read the server flight; the caller decides what to send next."""
    exchange = HeartbleedExchange(version, None, PAYLOAD)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(exchange.client_hello())
    async with asyncio.timeout(5):
        while not isinstance(exchange.feed(await reader.read(65536)), ReadyForHeartbeat):
            assert exchange.result is None
    return (reader, writer), exchange


async def finish(streams: Streams, exchange: HeartbleedExchange) -> Verdict | HandshakeError:
    reader, writer = streams
    try:
        async with asyncio.timeout(5):
            while True:
                data = await reader.read(65536)
                event = exchange.feed(data) if data else exchange.eof()
                if isinstance(event, Verdict | HandshakeError):
                    return event
    finally:
        writer.close()


VULNERABLE = Verdict(Outcome.VULNERABLE)
ALERT_10 = Verdict(Outcome.ALERT, alert=Alert(2, 10))

# -- OpenSSL 1.0.1f and its neighbours ----------------------------------------------------------


async def test_vulnerable() -> None:
    async with heartbleed_server("vulnerable") as port:
        event, exchange = await check(port)
    assert event == VULNERABLE
    assert exchange.negotiated_version == 0x0303
    assert exchange.heartbeat_mode == 1
    assert exchange.cipher_suite == 0xC02F
    assert exchange.handshake_types == (2, 11, 12, 14)


@pytest.mark.parametrize("version", [0x0302, 0x0301, 0x0300])
async def test_vulnerable_at_older_versions(version: int) -> None:
    async with heartbleed_server("vulnerable") as port:
        event, exchange = await check(port, version)
    assert event == VULNERABLE
    assert exchange.negotiated_version == version


async def test_vulnerable_negotiates_down_to_its_max_version() -> None:
    async with heartbleed_server("vulnerable", max_version=0x0302) as port:
        event, exchange = await check(port, 0x0303)
    assert event == VULNERABLE
    assert exchange.negotiated_version == 0x0302


async def test_vulnerable_without_the_extension_still_echoes() -> None:
    async with heartbleed_server("vulnerable", heartbeat_extension=False) as port:
        event, exchange = await check(port)
    assert event == VULNERABLE
    assert exchange.heartbeat_mode is None


async def test_vulnerable_with_certificate_request_and_mode_2() -> None:
    async with heartbleed_server("vulnerable", client_auth=True, heartbeat_mode=2) as port:
        event, exchange = await check(port)
    assert event == VULNERABLE
    assert 13 in exchange.handshake_types
    assert exchange.heartbeat_mode == 2


async def test_vulnerable_rejects_a_heartbeat_in_another_record_version() -> None:
    # The false negative of tools that hard-code the record version.
    async with heartbleed_server("vulnerable") as port:
        streams, exchange = await handshake_only(port, 0x0303)
        streams[1].write(build_heartbeat_request(0x0301, PAYLOAD) + build_sentinel(0x0303))
        event = await finish(streams, exchange)
    assert event == Verdict(Outcome.ALERT, alert=Alert(2, 70))


async def test_vulnerable_small_echo_waits_in_the_buffer_until_the_sentinel() -> None:
    payload = os.urandom(16)
    async with heartbleed_server("vulnerable") as port:
        event, _ = await check(port, payload=payload)
    assert event == VULNERABLE  # the flush sends the echo before alert 10


async def test_vulnerable_4096_byte_echo_overflows_the_buffer_without_sentinel() -> None:
    async with heartbleed_server("vulnerable") as port:
        streams, exchange = await handshake_only(port)
        streams[1].write(build_heartbeat_request(0x0303, PAYLOAD))  # no sentinel
        event = await finish(streams, exchange)
    assert event == VULNERABLE


async def test_patched_drops_the_heartbeat_and_alerts_on_the_sentinel() -> None:
    async with heartbleed_server("patched") as port:
        event, exchange = await check(port)
    assert event == ALERT_10
    assert exchange.heartbeat_mode == 1


async def test_patched_answers_a_well_formed_heartbeat() -> None:
    async with heartbleed_server("patched") as port:
        (reader, writer), _ = await handshake_only(port)
        message = b"\x01\x00\x04ping" + bytes(16)
        # The answer waits in the 4096-byte buffer; the sentinel flushes it, then alert 10.
        writer.write(encode_record(24, 0x0303, message) + build_sentinel(0x0303))
        async with asyncio.timeout(5):
            header = await reader.readexactly(5)
            body = await reader.readexactly(int.from_bytes(header[3:], "big"))
            alert = await reader.readexactly(7)
        writer.close()
    assert header[:3] == b"\x18\x03\x03"
    assert body[:7] == b"\x02\x00\x04ping"
    assert len(body) == 7 + 16
    assert alert == b"\x15\x03\x03\x00\x02\x02\x0a"


async def test_gnutls_alerts_on_the_heartbeat() -> None:
    async with heartbleed_server("gnutls") as port:
        event, exchange = await check(port)
    assert event == ALERT_10
    assert exchange.heartbeat_mode == 1


async def test_no_heartbeat_server() -> None:
    async with heartbleed_server("no_heartbeat") as port:
        event, exchange = await check(port)
    assert event == ALERT_10
    assert exchange.heartbeat_mode is None


async def test_tls10_only_needs_a_fallback() -> None:
    async with heartbleed_server("tls10_only") as port:
        events, exchange = await check_with_fallback(port)
    protocol_version = HandshakeError(HandshakeFailure.HANDSHAKE_ALERT, Alert(2, 70))
    assert events == [protocol_version, protocol_version, VULNERABLE]
    assert exchange.negotiated_version == 0x0301


# -- hostile and broken servers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("close", HandshakeError(HandshakeFailure.HANDSHAKE_EOF)),
        ("garbage", HandshakeError(HandshakeFailure.NOT_TLS)),
        ("big_cert", HandshakeError(HandshakeFailure.TOO_LARGE)),
        ("coalesced", VULNERABLE),
        ("split", VULNERABLE),
        ("plaintext_oops", Verdict(Outcome.OTHER, OtherReason.NOT_TLS)),
        ("endless_heartbeat", Verdict(Outcome.OTHER, OtherReason.OVERSIZED_RECORD)),
        ("echo_wrong", Verdict(Outcome.OTHER, OtherReason.WRONG_ECHO)),
    ],
)
async def test_hostile_and_broken_modes(mode: str, expected: object) -> None:
    async with heartbleed_server(mode) as port:
        event, _ = await check(port)
    assert event == expected


async def test_big_cert_passes_with_a_bigger_budget() -> None:
    async with heartbleed_server("big_cert", big_cert_size=100_000) as port:
        event, _ = await check(port, max_bytes=256 * 1024)
    assert event == VULNERABLE


async def test_stall_never_answers() -> None:
    async with heartbleed_server("stall") as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        exchange = HeartbleedExchange(0x0303, None, PAYLOAD)
        writer.write(exchange.client_hello())
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await reader.read(1)
        writer.close()
    assert exchange.result is None  # the probe reports this as a timeout, inconclusive


async def test_server_shuts_down_with_connections_open() -> None:
    async with heartbleed_server("endless_heartbeat") as port:
        streams, _ = await handshake_only(port)
        streams[1].write(build_heartbeat_request(0x0303, PAYLOAD))
        await streams[0].readexactly(100)  # the drip has started
    async with asyncio.timeout(5):
        await streams[0].read()  # returns at EOF: the peer closed the connection, no hang
    streams[1].close()


async def test_binds_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        async with heartbleed_server("vulnerable", host="0.0.0.0"):
            pass


# -- STARTTLS front-ends ------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", sorted(STARTTLS))
async def test_starttls_then_vulnerable(protocol: str) -> None:
    async with heartbleed_server("vulnerable", starttls=protocol) as port:
        event, _ = await check(port, starttls=protocol)
    assert event == VULNERABLE


async def test_starttls_smtp_then_patched() -> None:
    async with heartbleed_server("patched", starttls="smtp") as port:
        event, _ = await check(port, starttls="smtp")
    assert event == ALERT_10


async def test_smtp_requires_ehlo_before_starttls() -> None:
    async with heartbleed_server("vulnerable", starttls="smtp") as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(5):
            await _lines_until(reader, lambda line: line[3:4] == b" ")
            writer.write(b"STARTTLS\r\n")
            assert (await reader.readline()).startswith(b"503 ")
        writer.close()


# -- the CLI ------------------------------------------------------------------------------------


async def test_cli_serves_many_listeners_and_stops_on_sigterm() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.peers.heartbleed_server",
        "--mode",
        "vulnerable",
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(20):
            lines = [await process.stdout.readline() for _ in range(2)]
            ports = [int(line.decode().strip().rsplit(":", 1)[1]) for line in lines]
            assert len(set(ports)) == 2
            for port in ports:
                event, _ = await check(port)
                assert event == VULNERABLE
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
