"""The record reader: pieces, partial headers, early plaintext detection, bounds."""

from __future__ import annotations

from probed.tls import FaultKind, RecordFault, RecordPiece, RecordReader

from .wire import record


def pieces(items: list[RecordPiece | RecordFault]) -> list[tuple[int, int, bytes, bool, bool]]:
    out = []
    for item in items:
        assert isinstance(item, RecordPiece)
        out.append((item.content_type, item.version, bytes(item.data), item.first, item.last))
    return out


def test_complete_records_in_one_chunk() -> None:
    reader = RecordReader()
    data = record(22, 0x0303, b"abc") + record(21, 0x0301, b"\x02\x28")
    assert pieces(reader.feed(data)) == [
        (22, 0x0303, b"abc", True, True),
        (21, 0x0301, b"\x02\x28", True, True),
    ]
    assert not reader.in_record
    assert reader.buffered == 0


def test_header_and_body_split_byte_by_byte() -> None:
    reader = RecordReader()
    out: list[RecordPiece | RecordFault] = []
    for byte in record(24, 0x0302, b"xyz"):
        out += reader.feed(bytes([byte]))
    got = pieces(out)
    assert got[0][3] is True  # the header piece opens the record, with no data yet
    assert b"".join(p[2] for p in got) == b"xyz"
    assert [p[4] for p in got] == [False, False, False, True]
    assert reader.buffered == 0


def test_zero_length_record_is_one_piece() -> None:
    assert pieces(RecordReader().feed(record(23, 0x0303, b""))) == [(23, 0x0303, b"", True, True)]


def test_plaintext_is_not_tls_from_the_first_byte() -> None:
    reader = RecordReader()
    assert reader.feed(b"5") == [RecordFault(FaultKind.NOT_TLS, records_seen=False)]
    assert reader.feed(record(22, 0x0303, b"x")) == [RecordFault(FaultKind.NOT_TLS, False)]


def test_bad_version_byte_is_not_tls() -> None:
    assert RecordReader().feed(b"\x16\x02") == [RecordFault(FaultKind.NOT_TLS, False)]
    assert RecordReader().feed(b"\x16\x03\x09\x00\x01") == [RecordFault(FaultKind.NOT_TLS, False)]


def test_garbage_after_a_record_says_records_were_seen() -> None:
    out = RecordReader().feed(record(22, 0x0303, b"x") + b"\x00\x00")
    assert out[-1] == RecordFault(FaultKind.NOT_TLS, records_seen=True)


def test_oversized_length_is_judged_at_the_header() -> None:
    out = RecordReader().feed(b"\x18\x03\x03\xff\xff" + bytes(100))
    assert out == [RecordFault(FaultKind.OVERSIZED_RECORD, False)]


def test_budget_processes_up_to_the_limit_then_faults() -> None:
    reader = RecordReader(max_bytes=15)
    out = reader.feed(record(22, 0x0303, b"abc") + record(22, 0x0303, b"defgh"))
    assert pieces(out[:-1]) == [(22, 0x0303, b"abc", True, True), (22, 0x0303, b"de", True, False)]
    assert out[-1] == RecordFault(FaultKind.TOO_LARGE, True)
    assert reader.feed(b"more") == [out[-1]]


def test_reset_budget_gives_a_fresh_allowance() -> None:
    reader = RecordReader(max_bytes=8)
    assert len(reader.feed(record(22, 0x0303, b"abc"))) == 1
    reader.reset_budget(8)
    assert pieces(reader.feed(record(22, 0x0303, b"def"))) == [(22, 0x0303, b"def", True, True)]
