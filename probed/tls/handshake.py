"""Handshake messages, sans-IO: the ClientHello we send, the ServerHello we read, reassembly.

Parsers return ``None`` for bytes that are not a well-formed message; they never raise on
input, whatever it is.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import struct
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from .records import ContentType, encode_record

__all__ = [
    "CIPHER_SUITES",
    "CLIENT_VERSIONS",
    "EXT_EC_POINT_FORMATS",
    "EXT_HEARTBEAT",
    "EXT_PADDING",
    "EXT_RENEGOTIATION_INFO",
    "EXT_SERVER_NAME",
    "EXT_SIGNATURE_ALGORITHMS",
    "EXT_SUPPORTED_GROUPS",
    "ClientHello",
    "HandshakeMessage",
    "HandshakeReassembler",
    "HandshakeType",
    "ServerHello",
    "build_client_hello",
    "encode_handshake",
    "parse_client_hello",
    "parse_server_hello",
]


class HandshakeType(enum.IntEnum):
    HELLO_REQUEST = 0
    CLIENT_HELLO = 1
    SERVER_HELLO = 2
    CERTIFICATE = 11
    SERVER_KEY_EXCHANGE = 12
    CERTIFICATE_REQUEST = 13
    SERVER_HELLO_DONE = 14
    CERTIFICATE_STATUS = 22
    SUPPLEMENTAL_DATA = 23


EXT_SERVER_NAME: Final = 0x0000
EXT_SUPPORTED_GROUPS: Final = 0x000A
EXT_EC_POINT_FORMATS: Final = 0x000B
EXT_SIGNATURE_ALGORITHMS: Final = 0x000D
EXT_HEARTBEAT: Final = 0x000F
EXT_PADDING: Final = 0x0015
EXT_RENEGOTIATION_INFO: Final = 0xFF01

CLIENT_VERSIONS: Final = frozenset({0x0300, 0x0301, 0x0302, 0x0303})

# What 1.0.1-era servers accept: the broad list the 2014 checkers offered (ECDHE/DHE/RSA with
# AES, Camellia, SEED, 3DES, RC4, DES and export suites; a server must find one it likes or we
# learn nothing), then the TLS 1.2 GCM suites, then the renegotiation SCSV last.
CIPHER_SUITES: Final[tuple[int, ...]] = (
    # AES-256 CBC
    0xC014, 0xC00A, 0xC022, 0xC021, 0x0039, 0x0038, 0x0088, 0x0087, 0xC00F, 0xC005,
    0x0035, 0x0084,
    # 3DES
    0xC012, 0xC008, 0xC01C, 0xC01B, 0x0016, 0x0013, 0xC00D, 0xC003, 0x000A,
    # AES-128 CBC, SEED, Camellia-128
    0xC013, 0xC009, 0xC01F, 0xC01E, 0x0033, 0x0032, 0x009A, 0x0099, 0x0045, 0x0044,
    0xC00E, 0xC004, 0x002F, 0x0096, 0x0041,
    # RC4
    0xC011, 0xC007, 0xC00C, 0xC002, 0x0005, 0x0004,
    # DES and export
    0x0015, 0x0012, 0x0009, 0x0014, 0x0011, 0x0008, 0x0006, 0x0003,
    # TLS 1.2 AEAD (servers without any CBC suite left still answer)
    0xC02B, 0xC02F, 0xC02C, 0xC030, 0x009E, 0x009F, 0x009C, 0x009D,
    # TLS_EMPTY_RENEGOTIATION_INFO_SCSV
    0x00FF,
)  # fmt: skip

# x25519, secp256r1, secp384r1, secp521r1, secp256k1: what OpenSSL 1.0.1 and today's servers
# have in common, kept short so the hello stays under 256 bytes.
_SUPPORTED_GROUPS: Final = (0x001D, 0x0017, 0x0018, 0x0019, 0x0016)
# {sha512, sha384, sha256, sha224, sha1} x {rsa, ecdsa}, the TLS 1.2 pairs 1.0.1 knows.
_SIGNATURE_ALGORITHMS: Final = (
    0x0601, 0x0603, 0x0501, 0x0503, 0x0401, 0x0403, 0x0301, 0x0303, 0x0201, 0x0203,
)  # fmt: skip

# F5 BIG-IP devices hang on a ClientHello of 256..511 bytes (RFC 7685); stay below 256 with
# the record header, or pad the handshake message itself to 512 or more.
_SMALL_HELLO_LIMIT: Final = 256
_PADDED_HELLO_LENGTH: Final = 512
# RFC 6520: peer_allowed_to_send. We announce that we can answer heartbeats.
_HEARTBEAT_EXTENSION: Final = struct.pack("!HHB", EXT_HEARTBEAT, 1, 1)


def _extension(ext_type: int, data: bytes) -> bytes:
    return struct.pack("!HH", ext_type, len(data)) + data


def _u16_list(values: tuple[int, ...]) -> bytes:
    return struct.pack(f"!H{len(values)}H", 2 * len(values), *values)


_CIPHER_SUITE_BYTES: Final = _u16_list(CIPHER_SUITES)
_COMMON_EXTENSIONS: Final = _extension(EXT_EC_POINT_FORMATS, b"\x03\x00\x01\x02") + _extension(
    EXT_SUPPORTED_GROUPS, _u16_list(_SUPPORTED_GROUPS)
)
_SIGNATURE_EXTENSION: Final = _extension(EXT_SIGNATURE_ALGORITHMS, _u16_list(_SIGNATURE_ALGORITHMS))


def encode_handshake(msg_type: int, body: bytes) -> bytes:
    """A handshake message: type, 24-bit length, body."""
    return bytes((msg_type,)) + len(body).to_bytes(3, "big") + body


def _server_name_extension(server_name: str) -> bytes:
    try:
        ipaddress.ip_address(server_name)
    except ValueError:
        pass
    else:
        raise ValueError("SNI must be a host name, not an IP address (RFC 6066)")
    name = server_name.rstrip(".").encode("ascii")  # A-labels only; raises for anything else
    if not 0 < len(name) <= 253:
        raise ValueError("SNI host name must be 1..253 characters")
    entry = b"\x00" + struct.pack("!H", len(name)) + name
    return _extension(EXT_SERVER_NAME, struct.pack("!H", len(entry)) + entry)


def build_client_hello(
    version: int, server_name: str | None = None, *, random: bytes | None = None
) -> bytes:
    """The ClientHello record, as HEARTBLEED.md describes it.

    Record version 0x0301 (the most compatible), ``client_version`` = ``version``, the broad
    cipher list, compression ``01 00``, extensions ec_point_formats, supported_groups,
    signature_algorithms (TLS 1.2 only), SNI if asked, and the heartbeat extension last. The
    record is either under 256 bytes or its handshake message is padded to 512+ bytes.

    Raises ``ValueError`` for an unknown version or an unusable server name (caller errors).
    """
    if version not in CLIENT_VERSIONS:
        raise ValueError(f"unsupported client version 0x{version:04x}")
    client_random = os.urandom(32) if random is None else random
    if len(client_random) != 32:
        raise ValueError("client random must be 32 bytes")
    extensions = [_COMMON_EXTENSIONS]
    if version >= 0x0303:
        extensions.append(_SIGNATURE_EXTENSION)
    if server_name is not None:
        extensions.append(_server_name_extension(server_name))
    head = struct.pack("!H", version) + client_random + b"\x00" + _CIPHER_SUITE_BYTES + b"\x01\x00"
    ext_bytes = b"".join(extensions)
    # 5 record + 4 handshake header + head + 2 extensions length + extensions + heartbeat.
    total = 5 + 4 + len(head) + 2 + len(ext_bytes) + len(_HEARTBEAT_EXTENSION)
    if total >= _SMALL_HELLO_LIMIT:
        handshake_length = total - 5
        padding = max(0, _PADDED_HELLO_LENGTH - handshake_length - 4)
        # Padding goes before the heartbeat extension: that one must stay last.
        ext_bytes += _extension(EXT_PADDING, bytes(padding))
    ext_bytes += _HEARTBEAT_EXTENSION
    body = head + struct.pack("!H", len(ext_bytes)) + ext_bytes
    return encode_record(ContentType.HANDSHAKE, 0x0301, encode_handshake(1, body))


@dataclass(frozen=True, slots=True)
class ClientHello:
    version: int
    random: bytes
    session_id: bytes
    cipher_suites: tuple[int, ...]
    compression_methods: bytes
    extensions: tuple[tuple[int, bytes], ...]

    def extension(self, ext_type: int) -> bytes | None:
        for found, data in self.extensions:
            if found == ext_type:
                return data
        return None


@dataclass(frozen=True, slots=True)
class ServerHello:
    version: int
    random: bytes = field(repr=False)
    session_id: bytes = field(repr=False)
    cipher_suite: int
    compression_method: int
    extensions: tuple[tuple[int, bytes], ...]
    # None: no extension 15; 1: peer_allowed_to_send; 2: peer_not_allowed_to_send.
    heartbeat_mode: int | None


class _Cursor:
    """Bounds-checked reads over a message body; ``ok`` turns False on the first overrun."""

    __slots__ = ("data", "ok", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.ok = True

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            self.ok = False
            return b""
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, length_bytes: int) -> bytes:
        return self.take(self.uint(length_bytes))

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos


def _parse_extensions(cur: _Cursor) -> tuple[tuple[int, bytes], ...] | None:
    if cur.remaining == 0:
        return ()  # extensions are optional in both hellos
    block = cur.vector(2)
    if not cur.ok or cur.remaining:
        return None
    inner = _Cursor(block)
    found: list[tuple[int, bytes]] = []
    while inner.remaining:
        ext_type = inner.uint(2)
        data = inner.vector(2)
        if not inner.ok:
            return None
        found.append((ext_type, data))
    return tuple(found)


def parse_client_hello(body: bytes) -> ClientHello | None:
    """A ClientHello body (after the 4-byte handshake header), or None if malformed."""
    cur = _Cursor(body)
    version = cur.uint(2)
    random = cur.take(32)
    session_id = cur.vector(1)
    suites = cur.vector(2)
    compression = cur.vector(1)
    if not cur.ok or len(suites) % 2 or not suites or not compression:
        return None
    extensions = _parse_extensions(cur)
    if extensions is None:
        return None
    return ClientHello(
        version=version,
        random=random,
        session_id=session_id,
        cipher_suites=struct.unpack(f"!{len(suites) // 2}H", suites),
        compression_methods=compression,
        extensions=extensions,
    )


def parse_server_hello(body: bytes) -> ServerHello | None:
    """A ServerHello body (after the 4-byte handshake header), or None if malformed.

    A heartbeat extension whose body is not exactly one byte of mode 1 or 2 is malformed
    (RFC 6520 has the receiver abort with illegal_parameter).
    """
    cur = _Cursor(body)
    version = cur.uint(2)
    random = cur.take(32)
    session_id = cur.vector(1)
    cipher_suite = cur.uint(2)
    compression_method = cur.uint(1)
    if not cur.ok or len(session_id) > 32:
        return None
    extensions = _parse_extensions(cur)
    if extensions is None:
        return None
    heartbeat_mode: int | None = None
    for ext_type, data in extensions:
        if ext_type == EXT_HEARTBEAT:
            if len(data) != 1 or data[0] not in (1, 2):
                return None
            heartbeat_mode = data[0]
    return ServerHello(
        version=version,
        random=random,
        session_id=session_id,
        cipher_suite=cipher_suite,
        compression_method=compression_method,
        extensions=extensions,
        heartbeat_mode=heartbeat_mode,
    )


class HandshakeMessage(NamedTuple):
    """One complete handshake message. ``body`` is None when it was not kept (see below)."""

    msg_type: int
    length: int
    body: bytes | None


class HandshakeReassembler:
    """Cuts the handshake byte stream (the bodies of type-22 records) into messages.

    Messages may span records and records may hold several messages, so this works on the
    stream, not on records. Only bodies of the types in ``keep`` and no longer than
    ``max_kept_length`` are stored; all others (certificate chains, CA lists) are skipped
    as they stream past and reported with ``body=None``, so a large flight costs no memory.
    """

    __slots__ = ("_body", "_header", "_keep", "_length", "_max_kept", "_remaining", "_type")

    def __init__(self, keep: Collection[int], max_kept_length: int = 64 * 1024) -> None:
        self._keep = frozenset(keep)
        self._max_kept = max_kept_length
        self._header = bytearray()
        self._type = -1  # -1: between messages
        self._length = 0
        self._remaining = 0
        self._body: bytearray | None = None

    @property
    def in_progress(self) -> bool:
        """True if part of a message has been received but not all of it."""
        return bool(self._header) or self._type >= 0

    @property
    def buffered(self) -> int:
        return len(self._header) + (len(self._body) if self._body is not None else 0)

    def feed(self, data: bytes | memoryview) -> list[HandshakeMessage]:
        out: list[HandshakeMessage] = []
        pos = 0
        end = len(data)
        while pos < end:
            if self._type < 0:
                pos = self._take_header(data, pos, out)
                continue
            take = min(self._remaining, end - pos)
            if self._body is not None:
                self._body += data[pos : pos + take]
            pos += take
            self._remaining -= take
            if self._remaining == 0:
                body = bytes(self._body) if self._body is not None else None
                out.append(HandshakeMessage(self._type, self._length, body))
                self._type = -1
                self._body = None
        return out

    def _take_header(self, data: bytes | memoryview, pos: int, out: list[HandshakeMessage]) -> int:
        header = self._header
        need = 4 - len(header)
        header += data[pos : pos + need]
        pos += min(need, len(data) - pos)
        if len(header) < 4:
            return pos
        msg_type = header[0]
        length = int.from_bytes(header[1:4], "big")
        header.clear()
        kept = msg_type in self._keep and length <= self._max_kept
        if length == 0:
            out.append(HandshakeMessage(msg_type, 0, b"" if kept else None))
            return pos
        if kept and len(data) - pos >= length:
            # Fast path: the whole body is in this chunk.
            out.append(HandshakeMessage(msg_type, length, bytes(data[pos : pos + length])))
            return pos + length
        self._type = msg_type
        self._length = length
        self._remaining = length
        self._body = bytearray() if kept else None
        return pos
