"""TLS record layer, sans-IO: record headers and an incremental, bounded record reader.

The reader never holds a record body. It hands out the body bytes of each record as they
arrive (as ``memoryview`` slices of the caller's buffer, valid only until ``feed`` returns),
so a 16 KiB record, or a peer that drips a record forever, costs no memory here. What it does
buffer is at most the 4 bytes of a half-received record header.
"""

from __future__ import annotations

import enum
import struct
from typing import Final, NamedTuple

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_RECORD_LENGTH",
    "RECORD_HEADER_LENGTH",
    "VERSION_NAMES",
    "ContentType",
    "FaultKind",
    "RecordFault",
    "RecordHeader",
    "RecordPiece",
    "RecordReader",
    "encode_record",
    "version_name",
]

RECORD_HEADER_LENGTH: Final = 5
# RFC 5246 6.2.3: a TLSCiphertext fragment is at most 2^14 + 2048 bytes. Nothing larger can come
# from a real TLS stack (OpenSSL rejects it as record_overflow), so a bigger length field is a
# protocol violation we can judge at the header, before reading any of the body.
MAX_RECORD_LENGTH: Final = 2**14 + 2048
# The check reads a ServerHello flight and one heartbeat response; 64 KiB per phase is far more
# than either needs and bounds a hostile or endless peer.
DEFAULT_MAX_BYTES: Final = 64 * 1024

_HEADER: Final = struct.Struct("!BHH")


class ContentType(enum.IntEnum):
    """Record content types (RFC 5246, RFC 6520)."""

    CHANGE_CIPHER_SPEC = 20
    ALERT = 21
    HANDSHAKE = 22
    APPLICATION_DATA = 23
    HEARTBEAT = 24


_CONTENT_TYPES: Final = frozenset(int(t) for t in ContentType)

VERSION_NAMES: Final[dict[int, str]] = {
    0x0300: "SSL 3.0",
    0x0301: "TLS 1.0",
    0x0302: "TLS 1.1",
    0x0303: "TLS 1.2",
    0x0304: "TLS 1.3",
}


def version_name(version: int) -> str:
    """Human name of a protocol version, in the spelling blackbox_exporter uses ("TLS 1.2")."""
    return VERSION_NAMES.get(version, f"0x{version:04x}")


class RecordHeader(NamedTuple):
    content_type: int
    version: int
    length: int


def encode_record(content_type: int, version: int, fragment: bytes) -> bytes:
    """One record. The caller keeps ``fragment`` within ``MAX_RECORD_LENGTH``."""
    return _HEADER.pack(content_type, version, len(fragment)) + fragment


class RecordPiece(NamedTuple):
    """Some body bytes of one record.

    A record arrives as one or more pieces: ``first`` marks the piece produced when its header
    completed (its ``data`` may be empty), ``last`` the piece that ends the record. ``data`` is
    a view into the buffer given to ``RecordReader.feed`` and is valid only during that call.
    """

    content_type: int
    version: int
    data: memoryview
    first: bool
    last: bool


class FaultKind(enum.Enum):
    NOT_TLS = "not_tls"  # the bytes cannot be a TLS record header
    OVERSIZED_RECORD = "oversized_record"  # length field above MAX_RECORD_LENGTH
    TOO_LARGE = "too_large"  # the byte budget of the reader is spent


class RecordFault(NamedTuple):
    """Why the reader stopped. ``records_seen`` says whether any header was complete before."""

    kind: FaultKind
    records_seen: bool


class RecordReader:
    """Cuts a byte stream into record pieces, with a hard budget of bytes it will accept.

    ``feed`` returns the pieces found in the data, possibly followed by one ``RecordFault``;
    after a fault the reader is finished and every later ``feed`` returns ``[fault]``. Header
    bytes are validated as soon as they arrive, so plaintext such as ``500 OOPS`` is recognised
    from its first byte rather than after a record's worth of waiting.
    """

    __slots__ = ("_budget", "_current", "_fault", "_header", "_records_seen", "_remaining")

    def __init__(self, max_bytes: int | None = DEFAULT_MAX_BYTES) -> None:
        self._budget = max_bytes
        self._header = bytearray()
        self._current: tuple[int, int] | None = None  # (content_type, version) of the open record
        self._remaining = 0
        self._fault: RecordFault | None = None
        self._records_seen = False

    @property
    def buffered(self) -> int:
        """Bytes held between calls (at most a partial record header)."""
        return len(self._header)

    @property
    def in_record(self) -> bool:
        """True while a record header or body is partly received."""
        return bool(self._header) or self._current is not None

    @property
    def fault(self) -> RecordFault | None:
        return self._fault

    def reset_budget(self, max_bytes: int | None) -> None:
        """Start a new byte budget (the exchange gives each phase its own)."""
        self._budget = max_bytes

    def feed(self, data: bytes | bytearray | memoryview) -> list[RecordPiece | RecordFault]:
        if self._fault is not None:
            return [self._fault]
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        over_budget = False
        if self._budget is not None:
            if len(view) > self._budget:
                view = view[: self._budget]
                over_budget = True
            self._budget -= len(view)
        out: list[RecordPiece | RecordFault] = []
        self._parse(view, out)
        if over_budget and self._fault is None:
            self._fault = RecordFault(FaultKind.TOO_LARGE, self._records_seen)
            out.append(self._fault)
        return out

    def _parse(self, view: memoryview, out: list[RecordPiece | RecordFault]) -> None:
        pos = 0
        end = len(view)
        while pos < end:
            current = self._current
            if current is None:
                pos = self._take_header(view, pos, out)
                if self._fault is not None:
                    return
                continue
            take = min(self._remaining, end - pos)
            self._remaining -= take
            last = self._remaining == 0
            out.append(RecordPiece(current[0], current[1], view[pos : pos + take], False, last))
            pos += take
            if last:
                self._current = None

    def _take_header(self, view: memoryview, pos: int, out: list[RecordPiece | RecordFault]) -> int:
        header = self._header
        if not header and len(view) - pos >= RECORD_HEADER_LENGTH:
            # Fast path: the whole header is in this chunk; no copy into the buffer.
            content_type, version, length = _HEADER.unpack_from(view, pos)
            pos += RECORD_HEADER_LENGTH
        else:
            need = RECORD_HEADER_LENGTH - len(header)
            header += view[pos : pos + need]
            pos += min(need, len(view) - pos)
            if not self._plausible_prefix(header):
                self._fault = RecordFault(FaultKind.NOT_TLS, self._records_seen)
                out.append(self._fault)
                return pos
            if len(header) < RECORD_HEADER_LENGTH:
                return pos
            content_type, version, length = _HEADER.unpack(header)
            header.clear()
        if content_type not in _CONTENT_TYPES or version >> 8 != 3 or version & 0xFF > 4:
            self._fault = RecordFault(FaultKind.NOT_TLS, self._records_seen)
            out.append(self._fault)
            return pos
        if length > MAX_RECORD_LENGTH:
            self._fault = RecordFault(FaultKind.OVERSIZED_RECORD, self._records_seen)
            out.append(self._fault)
            return pos
        self._records_seen = True
        take = min(length, len(view) - pos)
        last = take == length
        out.append(RecordPiece(content_type, version, view[pos : pos + take], True, last))
        pos += take
        if not last:
            self._current = (content_type, version)
            self._remaining = length - take
        return pos

    @staticmethod
    def _plausible_prefix(header: bytearray) -> bool:
        # Judge a partial header by the bytes we have, so a stalling plaintext peer is told
        # apart at once.
        if header and header[0] not in _CONTENT_TYPES:
            return False
        if len(header) >= 2 and header[1] != 3:
            return False
        return not (len(header) >= 3 and header[2] > 4)
