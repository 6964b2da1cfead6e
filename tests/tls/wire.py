"""Server-side bytes for the unit tests, built by hand (struct) rather than with probed.tls's
own encoders, so a bug in those cannot hide itself in the tests."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

from probed.tls import Event, HeartbleedExchange, ReadyForHeartbeat

CERTIFICATE = 11
SERVER_KEY_EXCHANGE = 12
CERTIFICATE_REQUEST = 13
SERVER_HELLO_DONE = 14


def record(content_type: int, version: int, body: bytes) -> bytes:
    return struct.pack("!BHH", content_type, version, len(body)) + body


def handshake(msg_type: int, body: bytes) -> bytes:
    return struct.pack("!B", msg_type) + len(body).to_bytes(3, "big") + body


def alert(level: int, description: int, version: int = 0x0303) -> bytes:
    return record(21, version, bytes((level, description)))


def server_hello(
    version: int = 0x0303,
    suite: int = 0xC02F,
    heartbeat_mode: int | None = 1,
    *,
    extensions: bool = True,
) -> bytes:
    body = struct.pack("!H", version) + bytes(range(32)) + b"\x00" + struct.pack("!HB", suite, 0)
    exts = b"\xff\x01\x00\x01\x00"
    if heartbeat_mode is not None:
        exts += struct.pack("!HHB", 15, 1, heartbeat_mode)
    if extensions:
        body += struct.pack("!H", len(exts)) + exts
    return handshake(2, body)


def certificate(size: int = 700) -> bytes:
    cert = b"\x30\x82" + bytes(size - 2)
    entries = len(cert).to_bytes(3, "big") + cert
    return handshake(CERTIFICATE, len(entries).to_bytes(3, "big") + entries)


def flight_messages(
    version: int = 0x0303,
    heartbeat_mode: int | None = 1,
    *,
    extra: Sequence[bytes] = (),
    cert_size: int = 700,
) -> list[bytes]:
    return [
        server_hello(version, heartbeat_mode=heartbeat_mode),
        certificate(cert_size),
        *extra,
        handshake(SERVER_HELLO_DONE, b""),
    ]


def as_records(messages: Iterable[bytes], version: int = 0x0303, size: int = 16384) -> bytes:
    """Messages joined into one handshake stream, cut into records of at most ``size`` bytes."""
    stream = b"".join(messages)
    return b"".join(record(22, version, stream[i : i + size]) for i in range(0, len(stream), size))


def flight(version: int = 0x0303, heartbeat_mode: int | None = 1) -> bytes:
    """A plain server flight: ServerHello, Certificate, ServerHelloDone, one record each."""
    return b"".join(record(22, version, m) for m in flight_messages(version, heartbeat_mode))


def echo(payload: bytes, version: int = 0x0303, *, padding: int = 16, parts: int = 1) -> bytes:
    """A vulnerable server's answer, optionally split over ``parts`` heartbeat records."""
    body = b"\x02" + len(payload).to_bytes(2, "big") + payload + bytes(padding)
    step = -(-len(body) // parts)
    return b"".join(record(24, version, body[i : i + step]) for i in range(0, len(body), step))


def chunks(data: bytes, sizes: Sequence[int]) -> list[bytes]:
    """``data`` cut into pieces of the given sizes, cycled (sizes must be positive)."""
    out = []
    pos = 0
    index = 0
    while pos < len(data):
        size = sizes[index % len(sizes)]
        out.append(data[pos : pos + size])
        pos += size
        index += 1
    return out


def drive(exchange: HeartbleedExchange, pieces: Iterable[bytes]) -> Event:
    """Feed every piece like a probe would (sending the heartbeat when asked); last event."""
    event: Event | None = None
    for piece in pieces:
        event = exchange.feed(piece)
        if isinstance(event, ReadyForHeartbeat):
            exchange.heartbeat_request()
    assert event is not None
    return event
