"""The Heartbleed exchange as a sans-IO state machine.

The asyncio probe owns the socket; this class owns the protocol::

    exchange = HeartbleedExchange(0x0303, None, os.urandom(4096))
    write(exchange.client_hello())
    while True:
        data = await read()
        event = exchange.feed(data) if data else exchange.eof()
        if isinstance(event, ReadyForHeartbeat):
            write(exchange.heartbeat_request())  # in ONE write
        elif isinstance(event, (Verdict, HandshakeError)):
            break

Nothing here raises on server input: every byte sequence, in any chunking, ends as one of the
event values below. What the server sends is compared and dropped, never kept.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from .alerts import Alert, AlertDescription
from .handshake import (
    HandshakeMessage,
    HandshakeReassembler,
    HandshakeType,
    ServerHello,
    build_client_hello,
    parse_server_hello,
)
from .heartbeat import (
    MAX_PAYLOAD_LENGTH,
    EchoMatcher,
    EchoState,
    build_heartbeat_request,
    build_sentinel,
)
from .records import (
    DEFAULT_MAX_BYTES,
    ContentType,
    FaultKind,
    RecordFault,
    RecordPiece,
    RecordReader,
)

__all__ = [
    "MAX_SERVER_HELLO_LENGTH",
    "Event",
    "HandshakeError",
    "HandshakeFailure",
    "HeartbleedExchange",
    "NeedMoreData",
    "OtherReason",
    "Outcome",
    "Phase",
    "ReadyForHeartbeat",
    "Verdict",
]


class Phase(enum.Enum):
    HANDSHAKE = "handshake"  # waiting for ServerHelloDone
    RESPONSE = "response"  # handshake read; heartbeat may be sent; waiting for the answer
    DONE = "done"


class HandshakeFailure(enum.StrEnum):
    """Why no heartbeat could be sent. The probe may retry a lower version on the first two."""

    HANDSHAKE_ALERT = "handshake_alert"  # fatal alert or close_notify before ServerHelloDone
    HANDSHAKE_EOF = "handshake_eof"  # connection closed before ServerHelloDone
    NOT_TLS = "not_tls"  # the first bytes are no TLS record (banner, HTTP, SSLv2, garbage)
    BAD_VERSION = "bad_version"  # ServerHello version outside SSL 3.0 .. the offered version
    UNEXPECTED_MESSAGE = "unexpected_message"  # wrong message or record type for this point
    MALFORMED = "malformed"  # TLS framing, but a message or record is not well formed
    TOO_LARGE = "too_large"  # the handshake exceeded the byte budget (max_bytes)


class Outcome(enum.StrEnum):
    VULNERABLE = "vulnerable"  # the server echoed our unpadded payload
    ALERT = "alert"  # an alert came first (patched OpenSSL, GnuTLS, no heartbeat support)
    EOF = "eof"  # the connection closed first
    OTHER = "other"  # anything else; see OtherReason. Never vulnerable.


class OtherReason(enum.StrEnum):
    NOT_TLS = "not_tls"  # plaintext such as vsftpd's "500 OOPS", or garbage
    UNEXPECTED_RECORD = "unexpected_record"  # application data, change_cipher_spec
    UNEXPECTED_HANDSHAKE = "unexpected_handshake"  # handshake bytes after ServerHelloDone
    WRONG_ECHO = "wrong_echo"  # a heartbeat record that is not our payload echoed
    OVERSIZED_RECORD = "oversized_record"  # a record length above 2^14 + 2048
    TOO_LARGE = "too_large"  # the response exceeded the byte budget without a decision


@dataclass(frozen=True, slots=True)
class NeedMoreData:
    """Nothing decided yet: read more (or call ``eof()``)."""


@dataclass(frozen=True, slots=True)
class ReadyForHeartbeat:
    """ServerHelloDone arrived: send ``heartbeat_request()`` now, in one write."""

    server_hello: ServerHello


@dataclass(frozen=True, slots=True)
class Verdict:
    """Final: how the exchange after the handshake ended."""

    outcome: Outcome
    reason: OtherReason | None = None  # set exactly when outcome is OTHER
    alert: Alert | None = None  # set exactly when outcome is ALERT

    @property
    def vulnerable(self) -> bool:
        return self.outcome is Outcome.VULNERABLE


@dataclass(frozen=True, slots=True)
class HandshakeError:
    """Final: the handshake did not reach ServerHelloDone."""

    reason: HandshakeFailure
    alert: Alert | None = None  # set when reason is HANDSHAKE_ALERT


Event = NeedMoreData | ReadyForHeartbeat | Verdict | HandshakeError

NEED_MORE_DATA: Final = NeedMoreData()

# After the ServerHello, these may come before ServerHelloDone; anything else is out of order.
_FLIGHT_TYPES: Final = frozenset(
    {
        HandshakeType.CERTIFICATE,
        HandshakeType.SERVER_KEY_EXCHANGE,
        HandshakeType.CERTIFICATE_REQUEST,
        HandshakeType.CERTIFICATE_STATUS,
        HandshakeType.SUPPLEMENTAL_DATA,
    }
)
_VERSION_FLOOR: Final = 0x0300
# The only message body the exchange keeps. A TLS 1.2 ServerHello is ~100 bytes plus extensions;
# one above a full record cannot be real, and is reported as malformed instead of buffered.
MAX_SERVER_HELLO_LENGTH: Final = 2**14


class HeartbleedExchange:
    """One Heartbleed check over one connection (see the module docstring for the loop).

    ``version`` is the ClientHello version to offer (0x0303, 0x0302, 0x0301 or 0x0300);
    ``server_name`` adds SNI (a host name, never an IP); ``payload`` is the random heartbeat
    payload chosen by the caller (4096 bytes is the designed size; 1..16381 are accepted).
    ``max_bytes`` bounds what each phase (handshake, response) will read.
    Raises ``ValueError`` only for bad arguments; server bytes never raise.
    """

    __slots__ = (
        "_alert_bytes",
        "_client_hello",
        "_handshake",
        "_handshake_types",
        "_heartbeat_sent",
        "_matcher",
        "_max_bytes",
        "_payload",
        "_phase",
        "_reader",
        "_ready_reported",
        "_result",
        "_server_hello",
        "_version",
    )

    def __init__(
        self,
        version: int,
        server_name: str | None,
        payload: bytes,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        client_random: bytes | None = None,
    ) -> None:
        self._client_hello = build_client_hello(version, server_name, random=client_random)
        if not 0 < len(payload) <= MAX_PAYLOAD_LENGTH:
            raise ValueError(f"heartbeat payload must be 1..{MAX_PAYLOAD_LENGTH} bytes")
        self._version = version
        self._payload = payload
        self._max_bytes = max_bytes
        self._reader = RecordReader(max_bytes)
        self._handshake = HandshakeReassembler(
            keep=(HandshakeType.SERVER_HELLO,), max_kept_length=MAX_SERVER_HELLO_LENGTH
        )
        self._matcher = EchoMatcher(payload)
        self._alert_bytes = bytearray()
        self._phase = Phase.HANDSHAKE
        self._server_hello: ServerHello | None = None
        self._handshake_types: list[int] = []
        self._result: Verdict | HandshakeError | None = None
        self._ready_reported = False
        self._heartbeat_sent = False

    # -- facts ---------------------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def offered_version(self) -> int:
        return self._version

    @property
    def server_hello(self) -> ServerHello | None:
        return self._server_hello

    @property
    def negotiated_version(self) -> int | None:
        return self._server_hello.version if self._server_hello else None

    @property
    def cipher_suite(self) -> int | None:
        return self._server_hello.cipher_suite if self._server_hello else None

    @property
    def heartbeat_mode(self) -> int | None:
        """None: the server did not echo extension 15; else its mode (1 or 2)."""
        return self._server_hello.heartbeat_mode if self._server_hello else None

    @property
    def handshake_types(self) -> tuple[int, ...]:
        """Types of the handshake messages read, in order (e.g. (2, 11, 13, 14))."""
        return tuple(self._handshake_types)

    @property
    def heartbeat_sent(self) -> bool:
        return self._heartbeat_sent

    @property
    def result(self) -> Verdict | HandshakeError | None:
        """The final event once there is one."""
        return self._result

    @property
    def buffered_bytes(self) -> int:
        """Server bytes held right now: partial headers, a partial alert, and a partly received
        ServerHello (at most MAX_SERVER_HELLO_LENGTH); never a record body otherwise."""
        return self._reader.buffered + self._handshake.buffered + len(self._alert_bytes)

    # -- driving -------------------------------------------------------------------------------

    def client_hello(self) -> bytes:
        return self._client_hello

    def heartbeat_request(self) -> bytes:
        """The heartbeat record and the sentinel record, for one write.

        Both use the negotiated version: 1.0.1f answers a heartbeat in any other record version
        with a fatal alert, which would look like a patched server.
        Raises ``RuntimeError`` unless ServerHelloDone was read (a driver bug, not a server
        problem).
        """
        handshake_read = self._phase is Phase.RESPONSE or isinstance(self._result, Verdict)
        if self._server_hello is None or not handshake_read:
            raise RuntimeError("heartbeat_request() before the server handshake was read")
        version = self._server_hello.version
        self._heartbeat_sent = True
        return build_heartbeat_request(version, self._payload) + build_sentinel(version)

    def feed(self, data: bytes | bytearray | memoryview) -> Event:
        """Process received bytes; returns the resulting event.

        ``ReadyForHeartbeat`` is returned once, by the call that completed the handshake; a
        final ``Verdict``/``HandshakeError`` is returned by that call and every later one.
        If the same data both ends the handshake and decides the verdict (a server that sends
        an alert right after ServerHelloDone), the verdict is returned.
        """
        if self._result is not None:
            return self._result
        for item in self._reader.feed(data):
            if isinstance(item, RecordFault):
                self._on_fault(item)
            elif self._phase is Phase.HANDSHAKE:
                self._on_handshake_piece(item)
            else:
                self._on_response_piece(item)
            if self._result is not None:
                return self._result
        if self._phase is Phase.RESPONSE and not self._ready_reported:
            self._ready_reported = True
            assert self._server_hello is not None
            return ReadyForHeartbeat(self._server_hello)
        return NEED_MORE_DATA

    def eof(self) -> Verdict | HandshakeError:
        """The server closed the connection (or reset it)."""
        if self._result is None:
            if self._phase is Phase.HANDSHAKE:
                self._finish(HandshakeError(HandshakeFailure.HANDSHAKE_EOF))
            else:
                self._finish(Verdict(Outcome.EOF))
        assert self._result is not None
        return self._result

    # -- internals -----------------------------------------------------------------------------

    def _finish(self, result: Verdict | HandshakeError) -> None:
        self._result = result
        self._phase = Phase.DONE
        self._alert_bytes.clear()

    def _on_fault(self, fault: RecordFault) -> None:
        if self._phase is Phase.HANDSHAKE:
            if fault.kind is FaultKind.TOO_LARGE:
                reason = HandshakeFailure.TOO_LARGE
            elif fault.kind is FaultKind.NOT_TLS and not fault.records_seen:
                reason = HandshakeFailure.NOT_TLS
            else:
                reason = HandshakeFailure.MALFORMED
            self._finish(HandshakeError(reason))
            return
        other = {
            FaultKind.NOT_TLS: OtherReason.NOT_TLS,
            FaultKind.OVERSIZED_RECORD: OtherReason.OVERSIZED_RECORD,
            FaultKind.TOO_LARGE: OtherReason.TOO_LARGE,
        }[fault.kind]
        self._finish(Verdict(Outcome.OTHER, other))

    def _take_alert(self, piece: RecordPiece) -> Alert | None:
        # Alerts are two bytes; keep at most those two. Only the first alert of a piece is read:
        # real stacks send one alert per record, and an alert ends the exchange anyway (a
        # warning during the handshake is the only one skipped).
        need = 2 - len(self._alert_bytes)
        self._alert_bytes += piece.data[:need]
        if len(self._alert_bytes) < 2:
            return None
        alert = Alert(self._alert_bytes[0], self._alert_bytes[1])
        self._alert_bytes.clear()
        return alert

    def _on_handshake_piece(self, piece: RecordPiece) -> None:
        content_type = piece.content_type
        if content_type == ContentType.HANDSHAKE:
            messages = self._handshake.feed(piece.data)
            for index, message in enumerate(messages):
                self._on_message(message)
                if self._result is not None:
                    return
                if self._phase is Phase.RESPONSE:
                    if index + 1 < len(messages) or self._handshake.in_progress:
                        self._finish(Verdict(Outcome.OTHER, OtherReason.UNEXPECTED_HANDSHAKE))
                    return
        elif content_type == ContentType.ALERT:
            alert = self._take_alert(piece)
            # A warning (say unrecognized_name before the ServerHello) does not end a TLS 1.2
            # handshake; close_notify and fatal alerts do.
            if alert is not None and (
                alert.fatal or alert.description == AlertDescription.CLOSE_NOTIFY
            ):
                self._finish(HandshakeError(HandshakeFailure.HANDSHAKE_ALERT, alert))
        else:
            self._finish(HandshakeError(HandshakeFailure.UNEXPECTED_MESSAGE))

    def _on_message(self, message: HandshakeMessage) -> None:
        msg_type = message.msg_type
        if msg_type == HandshakeType.HELLO_REQUEST and message.length == 0:
            return  # RFC 5246 7.4.1.1: ignored while a handshake is under way
        self._handshake_types.append(msg_type)
        if self._server_hello is None:
            if msg_type != HandshakeType.SERVER_HELLO:
                self._finish(HandshakeError(HandshakeFailure.UNEXPECTED_MESSAGE))
                return
            hello = parse_server_hello(message.body) if message.body is not None else None
            if hello is None:
                self._finish(HandshakeError(HandshakeFailure.MALFORMED))
            elif not _VERSION_FLOOR <= hello.version <= self._version:
                self._finish(HandshakeError(HandshakeFailure.BAD_VERSION))
            else:
                self._server_hello = hello
        elif msg_type == HandshakeType.SERVER_HELLO_DONE:
            if message.length != 0:
                self._finish(HandshakeError(HandshakeFailure.MALFORMED))
                return
            self._phase = Phase.RESPONSE
            # The response phase gets its own budget: a big certificate flight must not eat
            # into the room for the echo.
            self._reader.reset_budget(self._max_bytes)
        elif msg_type not in _FLIGHT_TYPES:
            self._finish(HandshakeError(HandshakeFailure.UNEXPECTED_MESSAGE))

    def _on_response_piece(self, piece: RecordPiece) -> None:
        content_type = piece.content_type
        if content_type == ContentType.HEARTBEAT:
            state = self._matcher.feed(piece.data)
            if state is EchoState.MATCH:
                self._finish(Verdict(Outcome.VULNERABLE))
            elif state is EchoState.MISMATCH:
                self._finish(Verdict(Outcome.OTHER, OtherReason.WRONG_ECHO))
        elif content_type == ContentType.ALERT:
            alert = self._take_alert(piece)
            if alert is not None:
                self._finish(Verdict(Outcome.ALERT, alert=alert))
        elif content_type == ContentType.HANDSHAKE:
            self._finish(Verdict(Outcome.OTHER, OtherReason.UNEXPECTED_HANDSHAKE))
        else:
            self._finish(Verdict(Outcome.OTHER, OtherReason.UNEXPECTED_RECORD))
