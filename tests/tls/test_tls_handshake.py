"""ClientHello layout, handshake reassembly, ServerHello parsing."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from probed.tls import (
    CIPHER_SUITES,
    HandshakeMessage,
    HandshakeReassembler,
    build_client_hello,
    parse_client_hello,
    parse_server_hello,
)

from .wire import handshake, record, server_hello

VERSIONS = [0x0303, 0x0302, 0x0301, 0x0300]


def split_record(data: bytes) -> tuple[int, int, bytes]:
    content_type, version, length = struct.unpack("!BHH", data[:5])
    assert length == len(data) - 5
    return content_type, version, data[5:]


def ext_types(data: bytes) -> list[int]:
    _, _, message = split_record(data)
    hello = parse_client_hello(message[4:])
    assert hello is not None
    return [ext_type for ext_type, _ in hello.extensions]


@pytest.mark.parametrize("version", VERSIONS)
def test_client_hello_layout(version: int) -> None:
    data = build_client_hello(version, random=bytes(range(32)))
    content_type, record_version, message = split_record(data)
    assert (content_type, record_version) == (22, 0x0301)
    assert message[0] == 1
    assert int.from_bytes(message[1:4], "big") == len(message) - 4
    assert message[4:6] == version.to_bytes(2, "big")
    hello = parse_client_hello(message[4:])
    assert hello is not None
    assert hello.version == version
    assert hello.random == bytes(range(32))
    assert hello.session_id == b""
    assert hello.cipher_suites == CIPHER_SUITES
    assert {0xC014, 0x0035, 0x002F, 0x0005, 0xC02F, 0xC030, 0x009C}.issubset(hello.cipher_suites)
    assert hello.cipher_suites[-1] == 0x00FF
    assert hello.compression_methods == b"\x00"
    expected = [0x000B, 0x000A] + ([0x000D] if version == 0x0303 else []) + [0x000F]
    assert [t for t, _ in hello.extensions] == expected
    assert hello.extensions[-1] == (0x000F, b"\x01")
    assert hello.extension(0x0000) is None  # no SNI unless asked
    assert len(data) < 256


def test_client_hello_with_sni() -> None:
    data = build_client_hello(0x0303, "mail.example.test")
    _, _, message = split_record(data)
    hello = parse_client_hello(message[4:])
    assert hello is not None
    sni = hello.extension(0x0000)
    assert sni == b"\x00\x14\x00\x00\x11mail.example.test"
    assert hello.extensions[-1] == (0x000F, b"\x01")


@given(st.sampled_from(VERSIONS), st.integers(1, 253))
def test_client_hello_never_256_to_511_bytes(version: int, name_length: int) -> None:
    data = build_client_hello(version, "a" * name_length)
    assert len(data) < 256 or len(data) - 5 >= 512
    types = ext_types(data)
    assert types[-1] == 0x000F
    if len(data) >= 256:
        assert types[-2] == 0x0015  # padding sits right before the heartbeat extension


def test_client_hello_is_fresh_random_each_time() -> None:
    assert build_client_hello(0x0303) != build_client_hello(0x0303)


@pytest.mark.parametrize(
    ("version", "server_name"),
    [(0x0304, None), (0x0200, None), (0x0303, "127.0.0.1"), (0x0303, "::1"), (0x0303, "bücher")],
)
def test_client_hello_rejects_bad_arguments(version: int, server_name: str | None) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies; the type is the contract
        build_client_hello(version, server_name)


# -- reassembly ---------------------------------------------------------------------------------


def test_message_split_across_three_records() -> None:
    message = handshake(2, b"A" * 90)
    reassembler = HandshakeReassembler(keep={2})
    assert reassembler.feed(message[:2]) == []
    assert reassembler.in_progress
    assert reassembler.feed(message[2:50]) == []
    assert reassembler.feed(message[50:]) == [HandshakeMessage(2, 90, b"A" * 90)]
    assert not reassembler.in_progress


def test_three_messages_in_one_record() -> None:
    data = handshake(2, b"hello") + handshake(11, b"C" * 300) + handshake(14, b"")
    got = HandshakeReassembler(keep={2}).feed(data)
    assert got == [
        HandshakeMessage(2, 5, b"hello"),
        HandshakeMessage(11, 300, None),  # not kept: skipped as it streamed past
        HandshakeMessage(14, 0, None),
    ]


def test_skipped_bodies_are_not_buffered() -> None:
    reassembler = HandshakeReassembler(keep={2})
    message = handshake(11, bytes(50_000))
    for i in range(0, len(message), 1000):
        reassembler.feed(message[i : i + 1000])
        assert reassembler.buffered <= 4
    assert not reassembler.in_progress


def test_kept_message_over_the_limit_is_not_kept() -> None:
    got = HandshakeReassembler(keep={2}, max_kept_length=10).feed(handshake(2, bytes(11)))
    assert got == [HandshakeMessage(2, 11, None)]


def test_byte_by_byte_reassembly() -> None:
    data = handshake(2, b"xy") + handshake(14, b"")
    reassembler = HandshakeReassembler(keep={2, 14})
    got: list[HandshakeMessage] = []
    for byte in data:
        got += reassembler.feed(bytes([byte]))
    assert got == [HandshakeMessage(2, 2, b"xy"), HandshakeMessage(14, 0, b"")]


# -- ServerHello --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [None, 1, 2])
def test_server_hello_heartbeat_modes(mode: int | None) -> None:
    hello = parse_server_hello(server_hello(0x0302, 0x0035, heartbeat_mode=mode)[4:])
    assert hello is not None
    assert (hello.version, hello.cipher_suite, hello.heartbeat_mode) == (0x0302, 0x0035, mode)
    assert (0xFF01, b"\x00") in hello.extensions


def test_server_hello_without_extensions_block() -> None:
    hello = parse_server_hello(server_hello(0x0300, extensions=False)[4:])
    assert hello is not None
    assert hello.extensions == ()
    assert hello.heartbeat_mode is None


def sh_body(exts: bytes) -> bytes:
    return b"\x03\x03" + bytes(32) + b"\x00\xc0\x2f\x00" + struct.pack("!H", len(exts)) + exts


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x03\x03" + bytes(10),  # truncated random
        b"\x03\x03" + bytes(32) + b"\x21" + bytes(33) + b"\xc0\x2f\x00",  # session id > 32
        sh_body(b"\x00\x0f\x00\x01\x03"),  # heartbeat mode 3
        sh_body(b"\x00\x0f\x00\x02\x01\x01"),  # heartbeat extension of 2 bytes
        sh_body(b"\x00\x0f\x00\x05\x01"),  # extension longer than the block
        sh_body(b"\x00\x0f\x00\x01\x01") + b"junk",  # bytes after the extensions
        b"\x03\x03" + bytes(32) + b"\x00\xc0\x2f\x00\x00",  # half an extensions length
    ],
)
def test_malformed_server_hello_is_none(body: bytes) -> None:
    assert parse_server_hello(body) is None


def test_parse_client_hello_rejects_garbage() -> None:
    assert parse_client_hello(b"") is None
    assert parse_client_hello(b"\x03\x03" + bytes(32) + b"\x00\x00\x01\x00\x01\x00") is None


def test_record_helper_matches_reader_layout() -> None:
    assert record(22, 0x0303, b"ab") == b"\x16\x03\x03\x00\x02ab"
