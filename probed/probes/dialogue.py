"""Plaintext dialogue mechanics shared by the mail, FTP and Heartbleed probes: bounded
line reads, multi-line replies, and the STARTTLS negotiation of each protocol (up to the
point where the TLS handshake starts). Written once; every read is bounded."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Literal

from probed.probes.base import Reason
from probed.probes.stream import Stream, StreamError
from probed.results import Recorder

StartTLS = Literal["smtp", "pop3", "imap", "ftp", "mysql", "postgres", "xmpp"]
STARTTLS_PROTOCOLS: tuple[StartTLS, ...] = (
    "smtp",
    "pop3",
    "imap",
    "ftp",
    "mysql",
    "postgres",
    "xmpp",
)
MAX_LINE = 8192
MAX_REPLY_LINES = 512  # an SMTP EHLO reply has a few dozen; thousands means hostile
_REPLY_LINE = re.compile(rb"^(\d{3})([ -])(.*?)\r?\n$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Reply:
    """A numeric multi-line reply (SMTP, FTP): the code and every line's text."""

    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return " / ".join(self.lines)


def _decode(line: bytes) -> str:
    return line.decode("utf-8", "replace").rstrip("\r\n")


async def read_reply(stream: Stream, what: str) -> Reply:
    """``220-first`` ... ``220 last``; bounded in line length and count."""
    lines: list[str] = []
    code = ""
    for _ in range(MAX_REPLY_LINES):
        raw = await stream.read_line(MAX_LINE)
        match = _REPLY_LINE.match(raw)
        if match is None or (code and match.group(1).decode() != code):
            raise StreamError(
                Reason.PROTOCOL_ERROR, f"{what}: not a reply line: {_decode(raw)[:120]!r}"
            )
        code = match.group(1).decode()
        lines.append(_decode(match.group(3)))
        if match.group(2) == b" ":
            return Reply(int(code), tuple(lines))
    raise StreamError(Reason.PROTOCOL_ERROR, f"{what}: more than {MAX_REPLY_LINES} reply lines")


async def command(stream: Stream, line: str, what: str) -> Reply:
    stream.write(line.encode() + b"\r\n")
    return await read_reply(stream, what)


async def read_status_line(stream: Stream, what: str) -> tuple[bool, str]:
    """POP3: ``+OK text`` or ``-ERR text``."""
    line = _decode(await stream.read_line(MAX_LINE))
    if line.startswith("+OK"):
        return True, line[3:].strip()
    if line.startswith("-ERR"):
        return False, line[4:].strip()
    raise StreamError(Reason.PROTOCOL_ERROR, f"{what}: not a POP3 status line: {line[:120]!r}")


async def read_tagged(stream: Stream, tag: str, what: str) -> tuple[str, str, list[str]]:
    """IMAP: skip (and return) untagged lines until ``TAG OK|NO|BAD text``."""
    untagged: list[str] = []
    for _ in range(MAX_REPLY_LINES):
        line = _decode(await stream.read_line(MAX_LINE))
        if line.startswith(tag + " "):
            status, _, text = line[len(tag) + 1 :].partition(" ")
            return status.upper(), text, untagged
        untagged.append(line)
    raise StreamError(Reason.PROTOCOL_ERROR, f"{what}: more than {MAX_REPLY_LINES} lines")


def _refused(protocol: str, answer: str) -> StreamError:
    return StreamError(Reason.STARTTLS_REFUSED, f"{protocol} STARTTLS refused: {answer[:160]!r}")


async def smtp(stream: Stream, rec: Recorder, ehlo_name: str) -> Reply:
    greeting = await read_reply(stream, "SMTP greeting")
    if greeting.code != 220:
        raise StreamError(
            Reason.PROTOCOL_ERROR, f"SMTP greeting {greeting.code}: {greeting.text[:160]}"
        )
    # Exim refuses STARTTLS before EHLO, so always say EHLO first.
    ehlo = await command(stream, f"EHLO {ehlo_name}", "EHLO")
    if ehlo.code != 250:
        raise StreamError(Reason.PROTOCOL_ERROR, f"EHLO answered {ehlo.code}: {ehlo.text[:160]}")
    if not any(line.upper().split(" ", 1)[0] == "STARTTLS" for line in ehlo.lines[1:]):
        raise StreamError(Reason.STARTTLS_REFUSED, "SMTP server does not advertise STARTTLS")
    reply = await command(stream, "STARTTLS", "STARTTLS")
    if reply.code != 220:
        raise _refused("SMTP", f"{reply.code} {reply.text}")
    rec.debug("smtp starttls accepted", greeting=greeting.lines[0][:80])
    return greeting


async def pop3(stream: Stream, rec: Recorder) -> None:
    ok, text = await read_status_line(stream, "POP3 greeting")
    if not ok:
        raise StreamError(Reason.PROTOCOL_ERROR, f"POP3 greeting -ERR {text[:160]}")
    stream.write(b"STLS\r\n")
    ok, answer = await read_status_line(stream, "STLS")
    if not ok:
        raise _refused("POP3", answer)
    rec.debug("pop3 stls accepted")


async def imap(stream: Stream, rec: Recorder) -> None:
    greeting = _decode(await stream.read_line(MAX_LINE))
    if not greeting.upper().startswith(("* OK", "* PREAUTH")):
        raise StreamError(Reason.PROTOCOL_ERROR, f"IMAP greeting: {greeting[:160]!r}")
    stream.write(b"a1 STARTTLS\r\n")
    status, text, _ = await read_tagged(stream, "a1", "STARTTLS")
    if status != "OK":
        raise _refused("IMAP", f"{status} {text}")
    rec.debug("imap starttls accepted")


async def ftp(stream: Stream, rec: Recorder) -> None:
    greeting = await read_reply(stream, "FTP greeting")
    if greeting.code != 220:
        raise StreamError(
            Reason.PROTOCOL_ERROR, f"FTP greeting {greeting.code}: {greeting.text[:160]}"
        )
    reply = await command(stream, "AUTH TLS", "AUTH TLS")
    if reply.code != 234:
        # Some servers know only the older name.
        reply = await command(stream, "AUTH SSL", "AUTH SSL")
        if reply.code not in (234, 334):
            raise _refused("FTP", f"{reply.code} {reply.text}")
    rec.debug("ftp auth tls accepted")


CLIENT_SSL = 0x0800
_MYSQL_CLIENT_FLAGS = 0x0000_0200 | 0x0000_8000 | CLIENT_SSL  # PROTOCOL_41, SECURE_CONN


async def mysql(stream: Stream, rec: Recorder) -> None:
    header = await stream.read_exactly(4)
    length = int.from_bytes(header[:3], "little")
    if length < 1 or length > 16384:
        raise StreamError(Reason.PROTOCOL_ERROR, f"MySQL greeting of {length} bytes")
    payload = await stream.read_exactly(length)
    if payload[0] == 0xFF:
        raise StreamError(Reason.PROTOCOL_ERROR, "MySQL server sent an error instead of a greeting")
    if payload[0] != 10:
        raise StreamError(Reason.PROTOCOL_ERROR, f"MySQL protocol version {payload[0]} (want 10)")
    end = payload.find(b"\0", 1)
    # version NUL, connection id (4), auth data (8), filler (1), capabilities low (2)
    caps_at = end + 1 + 4 + 8 + 1
    if end < 0 or len(payload) < caps_at + 2:
        raise StreamError(Reason.PROTOCOL_ERROR, "MySQL greeting too short")
    capabilities = int.from_bytes(payload[caps_at : caps_at + 2], "little")
    if not capabilities & CLIENT_SSL:
        raise StreamError(
            Reason.STARTTLS_REFUSED, "MySQL server does not offer TLS (no CLIENT_SSL)"
        )
    body = struct.pack("<IIB23x", _MYSQL_CLIENT_FLAGS, 16 * 1024 * 1024, 33)
    stream.write(len(body).to_bytes(3, "little") + b"\x01" + body)
    rec.debug("mysql ssl request sent", version=payload[1:end].decode("ascii", "replace")[:60])


async def postgres(stream: Stream, rec: Recorder) -> None:
    stream.write(bytes.fromhex("0000000804d2162f"))
    answer = await stream.read_exactly(1)
    if answer != b"S":
        raise _refused("PostgreSQL", answer.decode("latin-1"))
    rec.debug("postgres ssl accepted")


async def xmpp(stream: Stream, rec: Recorder, domain: str) -> None:
    stream.write(
        (
            "<?xml version='1.0'?><stream:stream to='"
            + domain.replace("'", "")
            + "' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
            " version='1.0'>"
        ).encode()
    )
    features = await stream.expect(re.compile(rb"</stream:features>|<stream:error"))
    if features.group(0) != b"</stream:features>":
        raise StreamError(Reason.PROTOCOL_ERROR, "XMPP stream error before features")
    stream.write(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    answer = await stream.expect(re.compile(rb"<proceed[^>]*>|<failure[^>]*>"))
    if not answer.group(0).startswith(b"<proceed"):
        raise _refused("XMPP", answer.group(0).decode("utf-8", "replace"))
    rec.debug("xmpp starttls accepted")


async def negotiate(
    protocol: StartTLS, stream: Stream, rec: Recorder, *, hostname: str, ehlo_name: str
) -> None:
    """Run ``protocol``'s plaintext dialogue up to the TLS handshake (phase ``starttls``)."""
    with rec.phase("starttls"):
        if protocol == "smtp":
            await smtp(stream, rec, ehlo_name)
        elif protocol == "pop3":
            await pop3(stream, rec)
        elif protocol == "imap":
            await imap(stream, rec)
        elif protocol == "ftp":
            await ftp(stream, rec)
        elif protocol == "mysql":
            await mysql(stream, rec)
        elif protocol == "postgres":
            await postgres(stream, rec)
        else:
            await xmpp(stream, rec, hostname)
