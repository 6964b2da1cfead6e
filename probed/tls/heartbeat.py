"""Heartbeat messages (RFC 6520): the unpadded request and the echo check.

The request carries ``payload_length`` equal to the payload we really send and no padding.
RFC 6520 requires 16 bytes of padding, so a fixed server must discard it; only a server that
trusts ``payload_length`` without checking the record answers, and then with our own bytes.
"""

from __future__ import annotations

import enum
from typing import Final

from .records import ContentType, encode_record

__all__ = [
    "DEFAULT_PAYLOAD_LENGTH",
    "HEARTBEAT_REQUEST",
    "HEARTBEAT_RESPONSE",
    "MAX_PAYLOAD_LENGTH",
    "EchoMatcher",
    "EchoState",
    "build_heartbeat_request",
    "build_sentinel",
]

HEARTBEAT_REQUEST: Final = 1
HEARTBEAT_RESPONSE: Final = 2
# 4096 bytes make the vulnerable answer (3 + 4096 + 16) overflow OpenSSL's 4096-byte write
# buffer, so it is sent even if nothing else flushes that buffer.
DEFAULT_PAYLOAD_LENGTH: Final = 4096
# type (1) + length (2) + payload must fit one plaintext record (2^14).
MAX_PAYLOAD_LENGTH: Final = 2**14 - 3


def build_heartbeat_request(version: int, payload: bytes) -> bytes:
    """The heartbeat record ``18 VV VV | 01 LL LL | payload``, deliberately without padding."""
    if not 0 < len(payload) <= MAX_PAYLOAD_LENGTH:
        raise ValueError(f"heartbeat payload must be 1..{MAX_PAYLOAD_LENGTH} bytes")
    message = bytes((HEARTBEAT_REQUEST,)) + len(payload).to_bytes(2, "big") + payload
    return encode_record(ContentType.HEARTBEAT, version, message)


def build_sentinel(version: int) -> bytes:
    """A one-byte plaintext application-data record: ``17 VV VV 00 01 00``.

    Before the handshake completes it is unexpected, so a patched OpenSSL answers with alert 10
    at once (instead of staying silent) and flushes its buffered output, including any echo.
    """
    return encode_record(ContentType.APPLICATION_DATA, version, b"\x00")


class EchoState(enum.Enum):
    PARTIAL = "partial"  # everything so far is our echo; more is needed
    MATCH = "match"  # ``02 LL LL`` + the whole payload arrived
    MISMATCH = "mismatch"  # some byte differs: not our echo


class EchoMatcher:
    """Compares a heartbeat body stream with the response a vulnerable server would send.

    Keeps only an offset: each chunk is compared and then dropped, so nothing the server sent is
    stored. Bytes after the payload (the server's padding) are never looked at.
    """

    __slots__ = ("_expected", "_offset", "_state")

    def __init__(self, payload: bytes) -> None:
        expected = bytes((HEARTBEAT_RESPONSE,)) + len(payload).to_bytes(2, "big") + payload
        self._expected = expected
        self._offset = 0
        self._state = EchoState.PARTIAL

    @property
    def state(self) -> EchoState:
        return self._state

    @property
    def matched(self) -> int:
        """How many bytes of the expected response matched so far."""
        return self._offset

    def feed(self, data: bytes | memoryview) -> EchoState:
        if self._state is not EchoState.PARTIAL:
            return self._state
        start = self._offset
        chunk = data[: len(self._expected) - start]
        stop = start + len(chunk)
        # bytes == bytes is a memcmp; comparing memoryviews goes item by item and is 20x slower.
        # The temporary copy of the server's chunk dies with this comparison.
        if self._expected[start:stop] != bytes(chunk):
            self._state = EchoState.MISMATCH
        elif stop == len(self._expected):
            self._state = EchoState.MATCH
        self._offset = stop
        return self._state
