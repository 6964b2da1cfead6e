"""Property tests: any bytes, in any chunking, end as values; memory stays bounded."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probed.tls import (
    DEFAULT_MAX_BYTES,
    MAX_SERVER_HELLO_LENGTH,
    HandshakeError,
    HeartbleedExchange,
    NeedMoreData,
    Outcome,
    ReadyForHeartbeat,
    Verdict,
)

from .wire import alert, as_records, chunks, echo, flight, flight_messages, record

PAYLOAD = os.urandom(4096)
# A partial record header, a partial handshake header, a partial alert, and a ServerHello that
# is still arriving: nothing else is ever held.
MAX_SKIPPING = 4 + 4 + 2
MAX_BUFFERED = MAX_SKIPPING + MAX_SERVER_HELLO_LENGTH

chunk_sizes = st.lists(st.integers(1, 300), min_size=1, max_size=8)
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None)


def feed_all(exchange: HeartbleedExchange, pieces: list[bytes]) -> list[object]:
    events: list[object] = []
    for piece in pieces:
        event = exchange.feed(piece)
        assert isinstance(event, NeedMoreData | ReadyForHeartbeat | Verdict | HandshakeError)
        assert exchange.buffered_bytes <= MAX_BUFFERED
        if isinstance(event, ReadyForHeartbeat):
            exchange.heartbeat_request()
        events.append(event)
    final = exchange.eof()
    assert isinstance(final, Verdict | HandshakeError)
    events.append(final)
    return events


def assert_final_is_sticky(events: list[object]) -> None:
    finals = [i for i, e in enumerate(events) if isinstance(e, Verdict | HandshakeError)]
    assert finals
    first = finals[0]
    assert all(e == events[first] for e in events[first:])


@PROPERTY_SETTINGS
@given(st.binary(max_size=3000), chunk_sizes)
def test_arbitrary_bytes_are_values(data: bytes, sizes: list[int]) -> None:
    exchange = HeartbleedExchange(0x0303, None, PAYLOAD)
    events = feed_all(exchange, chunks(data, sizes))
    assert_final_is_sticky(events)
    assert not any(isinstance(e, Verdict) and e.vulnerable for e in events)


# Bytes that look a lot like TLS, so the fuzzing gets past the first header check.
tls_ish = st.lists(
    st.one_of(
        st.builds(
            record,
            st.sampled_from([20, 21, 22, 23, 24]),
            st.sampled_from([0x0300, 0x0301, 0x0302, 0x0303]),
            st.binary(max_size=200),
        ),
        st.binary(max_size=20),
        st.just(flight()),
        st.just(alert(2, 10)),
        st.just(b"\x18\x03\x03\x10\x03\x02\x10\x00"),
    ),
    max_size=12,
).map(b"".join)


@PROPERTY_SETTINGS
@given(tls_ish, chunk_sizes)
def test_tls_like_bytes_are_values_and_never_vulnerable(data: bytes, sizes: list[int]) -> None:
    exchange = HeartbleedExchange(0x0303, None, PAYLOAD)
    events = feed_all(exchange, chunks(data, sizes))
    assert_final_is_sticky(events)
    # The generator does not know PAYLOAD, so nothing it makes can be our echo.
    assert not any(isinstance(e, Verdict) and e.vulnerable for e in events)


@PROPERTY_SETTINGS
@given(st.binary(min_size=1, max_size=2000), chunk_sizes)
def test_valid_flight_then_anything_is_never_vulnerable(tail: bytes, sizes: list[int]) -> None:
    exchange = HeartbleedExchange(0x0303, None, PAYLOAD)
    events = feed_all(exchange, chunks(flight() + tail, sizes))
    assert_final_is_sticky(events)
    assert not any(isinstance(e, Verdict) and e.vulnerable for e in events)


@PROPERTY_SETTINGS
@given(
    st.integers(1, 9),
    st.integers(0, 64),
    st.lists(st.integers(1, 5000), min_size=1, max_size=6),
    st.sampled_from([0x0301, 0x0302, 0x0303]),
)
def test_echo_in_any_framing_is_vulnerable(
    parts: int, padding: int, sizes: list[int], version: int
) -> None:
    exchange = HeartbleedExchange(0x0303, None, PAYLOAD)
    data = as_records(flight_messages(version), version, size=97) + echo(
        PAYLOAD, version, padding=padding, parts=parts
    )
    events = feed_all(exchange, chunks(data, sizes))
    assert events[-1] == Verdict(Outcome.VULNERABLE)


@PROPERTY_SETTINGS
@given(st.integers(0, 2000), st.integers(0, 255))
def test_any_single_byte_change_in_the_flight_is_a_value(index: int, value: int) -> None:
    data = bytearray(flight() + echo(PAYLOAD))
    data[index % len(data)] = value
    exchange = HeartbleedExchange(0x0303, None, PAYLOAD)
    feed_all(exchange, [bytes(data)])


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([20, 21, 22, 23, 24]), st.integers(1, 4))
def test_endless_streams_end_within_the_budget(content_type: int, phase_count: int) -> None:
    # Whatever record type a peer streams forever, the exchange ends after at most
    # max_bytes per phase, holding almost nothing meanwhile.
    exchange = HeartbleedExchange(0x0303, None, PAYLOAD)
    prefix = flight() if phase_count % 2 else b""
    exchange.feed(prefix)
    endless = record(content_type, 0x0303, b"") * 200
    fed = 0
    while exchange.result is None:
        exchange.feed(endless)
        fed += len(endless)
        assert exchange.buffered_bytes <= MAX_SKIPPING
        assert fed <= 2 * DEFAULT_MAX_BYTES + len(endless)
