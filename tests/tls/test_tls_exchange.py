"""HeartbleedExchange: events, verdicts, handshake failures and bounds."""

from __future__ import annotations

import os

import pytest

from probed.tls import (
    Alert,
    HandshakeError,
    HandshakeFailure,
    HeartbleedExchange,
    NeedMoreData,
    OtherReason,
    Outcome,
    Phase,
    ReadyForHeartbeat,
    Verdict,
)

from .wire import (
    CERTIFICATE_REQUEST,
    SERVER_HELLO_DONE,
    SERVER_KEY_EXCHANGE,
    alert,
    as_records,
    certificate,
    chunks,
    drive,
    echo,
    flight,
    flight_messages,
    handshake,
    record,
    server_hello,
)

PAYLOAD = os.urandom(4096)


def ready(version: int = 0x0303, negotiated: int = 0x0303) -> HeartbleedExchange:
    exchange = HeartbleedExchange(version, None, PAYLOAD)
    event = exchange.feed(flight(negotiated))
    assert isinstance(event, ReadyForHeartbeat)
    return exchange


# -- the happy paths ----------------------------------------------------------------------------


def test_ready_once_then_request_uses_negotiated_version() -> None:
    exchange = HeartbleedExchange(0x0303, None, PAYLOAD)
    assert exchange.phase is Phase.HANDSHAKE
    event = exchange.feed(flight(0x0301, heartbeat_mode=2))
    assert isinstance(event, ReadyForHeartbeat)
    assert event.server_hello.version == 0x0301
    assert exchange.negotiated_version == 0x0301
    assert exchange.heartbeat_mode == 2
    assert exchange.cipher_suite == 0xC02F
    assert exchange.handshake_types == (2, 11, 14)
    request = exchange.heartbeat_request()
    assert request == (b"\x18\x03\x01\x10\x03\x01\x10\x00" + PAYLOAD + b"\x17\x03\x01\x00\x01\x00")
    assert exchange.heartbeat_sent
    assert isinstance(exchange.feed(b""), NeedMoreData)  # Ready is not repeated


def test_heartbeat_request_before_handshake_is_a_driver_bug() -> None:
    exchange = HeartbleedExchange(0x0303, None, PAYLOAD)
    with pytest.raises(RuntimeError):
        exchange.heartbeat_request()


@pytest.mark.parametrize("parts", [1, 2, 3, 7])
def test_echo_is_vulnerable_even_split_over_records(parts: int) -> None:
    exchange = ready()
    event = exchange.feed(echo(PAYLOAD, parts=parts))
    assert event == Verdict(Outcome.VULNERABLE)
    assert isinstance(event, Verdict)
    assert event.vulnerable
    assert exchange.buffered_bytes == 0


def test_echo_without_padding_and_in_small_chunks() -> None:
    exchange = ready()
    event = drive(exchange, chunks(echo(PAYLOAD, padding=0), [1, 7, 100, 3]))
    assert event == Verdict(Outcome.VULNERABLE)


def test_echo_is_decided_before_the_padding_arrives() -> None:
    exchange = ready()
    data = echo(PAYLOAD)
    assert exchange.feed(data[: 5 + 3 + 4096]) == Verdict(Outcome.VULNERABLE)


def test_heartbeat_mode_absent_still_probes() -> None:
    exchange = HeartbleedExchange(0x0303, None, PAYLOAD)
    assert isinstance(exchange.feed(flight(heartbeat_mode=None)), ReadyForHeartbeat)
    assert exchange.heartbeat_mode is None
    assert exchange.feed(echo(PAYLOAD)) == Verdict(Outcome.VULNERABLE)


def test_full_flight_with_optional_messages() -> None:
    extra = [
        handshake(SERVER_KEY_EXCHANGE, bytes(150)),
        handshake(CERTIFICATE_REQUEST, b"\x01\x01\x00\x00"),
        handshake(22, b"\x01\x00\x00\x00"),  # CertificateStatus
    ]
    messages = [handshake(0, b""), *flight_messages(extra=extra)]  # HelloRequest is ignored
    exchange = HeartbleedExchange(0x0303, None, PAYLOAD)
    assert isinstance(exchange.feed(as_records(messages)), ReadyForHeartbeat)
    assert exchange.handshake_types == (2, 11, 12, 13, 22, 14)


def test_coalesced_flight_and_echo_in_one_chunk() -> None:
    # A server may answer so fast that the echo arrives with the flight; the verdict wins.
    exchange = HeartbleedExchange(0x0303, None, PAYLOAD)
    event = exchange.feed(as_records(flight_messages()) + echo(PAYLOAD))
    assert event == Verdict(Outcome.VULNERABLE)


def test_flight_split_into_tiny_records() -> None:
    exchange = HeartbleedExchange(0x0303, None, PAYLOAD)
    event = drive(exchange, [as_records(flight_messages(), size=3)])
    assert isinstance(event, ReadyForHeartbeat)


def test_warning_alert_during_handshake_is_ignored() -> None:
    exchange = HeartbleedExchange(0x0303, "a.test", PAYLOAD)
    event = exchange.feed(alert(1, 112) + flight())
    assert isinstance(event, ReadyForHeartbeat)


# -- not vulnerable -----------------------------------------------------------------------------


def test_alert_first_is_not_vulnerable() -> None:
    exchange = ready()
    event = exchange.feed(alert(2, 10) + echo(PAYLOAD))
    assert event == Verdict(Outcome.ALERT, alert=Alert(2, 10))
    assert isinstance(event, Verdict)
    assert not event.vulnerable
    assert event.alert is not None
    assert str(event.alert) == "fatal unexpected_message"


def test_alert_split_over_two_records() -> None:
    exchange = ready()
    assert isinstance(exchange.feed(record(21, 0x0303, b"\x02")), NeedMoreData)
    assert exchange.feed(record(21, 0x0303, b"\x46")) == Verdict(Outcome.ALERT, alert=Alert(2, 70))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"500 OOPS: vsftpd: refusing to run with writable root\r\n", OtherReason.NOT_TLS),
        (record(23, 0x0303, b"\x00"), OtherReason.UNEXPECTED_RECORD),
        (record(20, 0x0303, b"\x01"), OtherReason.UNEXPECTED_RECORD),
        (record(22, 0x0303, handshake(14, b"")), OtherReason.UNEXPECTED_HANDSHAKE),
        (b"\x18\x03\x03\xff\xff" + bytes(1000), OtherReason.OVERSIZED_RECORD),
    ],
)
def test_other_answers_are_never_vulnerable(data: bytes, reason: OtherReason) -> None:
    assert ready().feed(data) == Verdict(Outcome.OTHER, reason)


def test_leftover_handshake_in_the_flight_record() -> None:
    exchange = HeartbleedExchange(0x0303, None, PAYLOAD)
    messages = [*flight_messages(), certificate()]
    assert exchange.feed(as_records(messages)) == Verdict(
        Outcome.OTHER, OtherReason.UNEXPECTED_HANDSHAKE
    )


def test_partial_leftover_handshake_in_the_flight_record() -> None:
    exchange = HeartbleedExchange(0x0303, None, PAYLOAD)
    stream = as_records(flight_messages())
    # The last record grows two bytes of another handshake message.
    data = record(22, 0x0303, b"".join(flight_messages()) + b"\x0b\x00")
    assert len(data) == len(stream) + 2
    assert exchange.feed(data) == Verdict(Outcome.OTHER, OtherReason.UNEXPECTED_HANDSHAKE)


@pytest.mark.parametrize(
    "response",
    [
        echo(PAYLOAD[:-1] + bytes([PAYLOAD[-1] ^ 1])),  # last byte differs
        echo(PAYLOAD[:100]),  # a shorter echo (other length field)
        record(24, 0x0303, b"\x01\x10\x00" + PAYLOAD),  # a request, not a response
        record(24, 0x0303, b"\x02\x10\x00" + bytes(4096)),  # server memory, not our payload
    ],
)
def test_wrong_echo_is_not_vulnerable(response: bytes) -> None:
    assert ready().feed(response) == Verdict(Outcome.OTHER, OtherReason.WRONG_ECHO)


def test_truncated_echo_then_alert() -> None:
    exchange = ready()
    partial = record(24, 0x0303, b"\x02\x10\x00" + PAYLOAD[:1000])
    assert isinstance(exchange.feed(partial), NeedMoreData)
    assert exchange.feed(alert(2, 80)).outcome is Outcome.ALERT  # type: ignore[union-attr]


def test_eof_after_handshake_and_mid_echo() -> None:
    exchange = ready()
    exchange.feed(echo(PAYLOAD)[:2000])
    assert exchange.eof() == Verdict(Outcome.EOF)
    assert ready().eof() == Verdict(Outcome.EOF)


def test_final_event_is_sticky() -> None:
    exchange = ready()
    verdict = exchange.feed(alert(2, 10))
    assert exchange.feed(echo(PAYLOAD)) == verdict
    assert exchange.eof() == verdict
    assert exchange.result == verdict
    assert exchange.phase is Phase.DONE


# -- handshake failures -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (alert(2, 70, 0x0301), HandshakeFailure.HANDSHAKE_ALERT),
        (alert(1, 0), HandshakeFailure.HANDSHAKE_ALERT),  # close_notify
        (b"220 mail.example.test ESMTP\r\n", HandshakeFailure.NOT_TLS),
        (b"HTTP/1.1 400 Bad Request\r\n", HandshakeFailure.NOT_TLS),
        (b"\x80\x2e\x04\x00\x01", HandshakeFailure.NOT_TLS),  # SSLv2 server hello
        (as_records([server_hello(0x0303)]), HandshakeFailure.BAD_VERSION),  # offered 1.1
        (as_records([server_hello(0x0200)]), HandshakeFailure.BAD_VERSION),
        (as_records([certificate()]), HandshakeFailure.UNEXPECTED_MESSAGE),
        (record(23, 0x0302, b"hello"), HandshakeFailure.UNEXPECTED_MESSAGE),
        (record(24, 0x0302, b"\x01\x00\x00"), HandshakeFailure.UNEXPECTED_MESSAGE),
        (as_records([handshake(2, b"\x03\x02")]), HandshakeFailure.MALFORMED),
        (
            as_records([server_hello(0x0302), handshake(SERVER_HELLO_DONE, b"x")], 0x0302),
            HandshakeFailure.MALFORMED,
        ),
        (
            as_records([server_hello(0x0302), handshake(1, b"")], 0x0302),
            HandshakeFailure.UNEXPECTED_MESSAGE,
        ),
        (as_records([server_hello(0x0302)], 0x0302) + b"\x00\x01", HandshakeFailure.MALFORMED),
        (as_records([server_hello(0x0302)]) + b"\x16\xff\xff", HandshakeFailure.MALFORMED),
    ],
)
def test_handshake_failures(data: bytes, reason: HandshakeFailure) -> None:
    event = HeartbleedExchange(0x0302, None, PAYLOAD).feed(data)
    assert isinstance(event, HandshakeError)
    assert event.reason is reason


def test_handshake_alert_carries_the_alert() -> None:
    event = HeartbleedExchange(0x0303, None, PAYLOAD).feed(alert(2, 40))
    assert event == HandshakeError(HandshakeFailure.HANDSHAKE_ALERT, Alert(2, 40))


def test_eof_during_handshake() -> None:
    exchange = HeartbleedExchange(0x0303, None, PAYLOAD)
    exchange.feed(flight()[:60])
    assert exchange.eof() == HandshakeError(HandshakeFailure.HANDSHAKE_EOF)


# -- bounds -------------------------------------------------------------------------------------


def test_big_certificate_flight_is_too_large_by_default_without_buffering() -> None:
    exchange = HeartbleedExchange(0x0303, None, PAYLOAD)
    data = as_records(flight_messages(cert_size=70_000))
    event: object = None
    for piece in chunks(data, [1400]):
        event = exchange.feed(piece)
        assert exchange.buffered_bytes <= 4 + 5 + 2  # headers and an alert, never a body
    assert event == HandshakeError(HandshakeFailure.TOO_LARGE)


def test_bigger_budget_accepts_a_big_flight() -> None:
    exchange = HeartbleedExchange(0x0303, None, PAYLOAD, max_bytes=256 * 1024)
    assert isinstance(
        exchange.feed(as_records(flight_messages(cert_size=70_000))), ReadyForHeartbeat
    )
    assert exchange.feed(echo(PAYLOAD)) == Verdict(Outcome.VULNERABLE)


def test_response_phase_has_its_own_budget() -> None:
    # A 60 KiB flight leaves little of a shared 64 KiB; the echo must still fit.
    exchange = HeartbleedExchange(0x0303, None, PAYLOAD)
    assert isinstance(
        exchange.feed(as_records(flight_messages(cert_size=60_000))), ReadyForHeartbeat
    )
    assert exchange.feed(echo(PAYLOAD)) == Verdict(Outcome.VULNERABLE)


def test_endless_empty_heartbeat_records_end_as_too_large() -> None:
    exchange = ready()
    event: object = None
    for _ in range(20):
        event = exchange.feed(record(24, 0x0303, b"") * 1000)
        if isinstance(event, Verdict):
            break
    assert event == Verdict(Outcome.OTHER, OtherReason.TOO_LARGE)


def test_endless_alert_fragments_end_as_too_large() -> None:
    exchange = ready()
    event: object = None
    for _ in range(20):
        event = exchange.feed(record(21, 0x0303, b"") * 1000)
    assert event == Verdict(Outcome.OTHER, OtherReason.TOO_LARGE)


def test_drip_of_a_long_valid_record_is_compared_as_it_comes() -> None:
    exchange = ready()
    assert isinstance(exchange.feed(b"\x18\x03\x03\x40\x00\x02\x10\x00"), NeedMoreData)
    for i in range(0, 4096, 64):
        exchange.feed(PAYLOAD[i : i + 64])
        assert exchange.buffered_bytes == 0
    assert exchange.result == Verdict(Outcome.VULNERABLE)


@pytest.mark.parametrize("size", [0, 16382])
def test_payload_size_is_checked(size: int) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - any ValueError: a caller error
        HeartbleedExchange(0x0303, None, bytes(size))


def test_heartbeat_request_after_a_handshake_error_is_a_driver_bug() -> None:
    exchange = HeartbleedExchange(0x0303, None, PAYLOAD)
    exchange.feed(as_records([server_hello(), handshake(1, b"")]))
    assert exchange.server_hello is not None
    assert isinstance(exchange.result, HandshakeError)
    with pytest.raises(RuntimeError):
        exchange.heartbeat_request()
