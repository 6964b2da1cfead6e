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
# What ``starttls = "auto"`` picks by the target's port, as nmap does: the IANA ports of
# each plaintext protocol that upgrades. Implicit-TLS ports (443, 465, 993, 995, 990) and
# every other port mean direct TLS.
WELL_KNOWN_STARTTLS: dict[int, StartTLS] = {
    21: "ftp",
    25: "smtp",
    587: "smtp",
    110: "pop3",
    143: "imap",
    3306: "mysql",
    5432: "postgres",
    5222: "xmpp",
    5269: "xmpp",
}
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


async def read_reply(stream: Stream, what: str, *, free_text: bool = False) -> Reply:
    """``220-first`` ... ``220 last``; bounded in line length and count.

    ``free_text`` (FTP, RFC 959 4.2): lines inside a multi-line reply need not start with
    the code (``211-Features:`` / `` AUTH TLS`` / ``211 End``); SMTP keeps the strict form.
    """
    lines: list[str] = []
    code = ""
    for _ in range(MAX_REPLY_LINES):
        raw = await stream.read_line(MAX_LINE)
        match = _REPLY_LINE.match(raw)
        if match is None or (code and match.group(1).decode() != code):
            if free_text and code:
                lines.append(_decode(raw))
                continue
            raise StreamError(
                Reason.PROTOCOL_ERROR, f"{what}: not a reply line: {_decode(raw)[:120]!r}"
            )
        code = match.group(1).decode()
        lines.append(_decode(match.group(3)))
        if match.group(2) == b" ":
            return Reply(int(code), tuple(lines))
    raise StreamError(Reason.PROTOCOL_ERROR, f"{what}: more than {MAX_REPLY_LINES} reply lines")


async def command(stream: Stream, line: str, what: str, *, free_text: bool = False) -> Reply:
    stream.write(line.encode() + b"\r\n")
    return await read_reply(stream, what, free_text=free_text)


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


# -- SMTP -----------------------------------------------------------------------------------


async def smtp_ehlo(stream: Stream, ehlo_name: str) -> Reply:
    """EHLO; any answer but 250 is a protocol error (the caller may look at the code)."""
    ehlo = await command(stream, f"EHLO {ehlo_name}", "EHLO")
    if ehlo.code != 250:
        raise StreamError(Reason.PROTOCOL_ERROR, f"EHLO answered {ehlo.code}: {ehlo.text[:160]}")
    return ehlo


def smtp_extensions(ehlo: Reply) -> dict[str, str]:
    """EHLO lines after the first: ``KEYWORD params`` -> {KEYWORD: params}."""
    found: dict[str, str] = {}
    for line in ehlo.lines[1:]:
        keyword, _, params = line.strip().partition(" ")
        if keyword:
            found[keyword.upper()] = params.strip()
    return found


async def smtp_starttls(stream: Stream, extensions: dict[str, str]) -> Reply:
    """STARTTLS after EHLO; raises STARTTLS_REFUSED unless advertised and answered 220."""
    if "STARTTLS" not in extensions:
        raise StreamError(Reason.STARTTLS_REFUSED, "SMTP server does not advertise STARTTLS")
    reply = await command(stream, "STARTTLS", "STARTTLS")
    if reply.code != 220:
        raise _refused("SMTP", f"{reply.code} {reply.text}")
    return reply


async def smtp(stream: Stream, rec: Recorder, ehlo_name: str) -> Reply:
    greeting = await read_reply(stream, "SMTP greeting")
    if greeting.code != 220:
        raise StreamError(
            Reason.PROTOCOL_ERROR, f"SMTP greeting {greeting.code}: {greeting.text[:160]}"
        )
    # Exim refuses STARTTLS before EHLO, so always say EHLO first.
    ehlo = await smtp_ehlo(stream, ehlo_name)
    await smtp_starttls(stream, smtp_extensions(ehlo))
    rec.debug("smtp starttls accepted", greeting=greeting.lines[0][:80])
    return greeting


# -- POP3 -----------------------------------------------------------------------------------


async def pop3_command(stream: Stream, line: str, what: str) -> tuple[bool, str]:
    stream.write(line.encode() + b"\r\n")
    return await read_status_line(stream, what)


async def read_multiline(stream: Stream, what: str, max_lines: int = MAX_REPLY_LINES) -> list[str]:
    """POP3 multi-line body after ``+OK``: lines up to ``.``, dot-unstuffed, bounded."""
    lines: list[str] = []
    for _ in range(max_lines):
        line = _decode(await stream.read_line(MAX_LINE))
        if line == ".":
            return lines
        lines.append(line[1:] if line.startswith("..") else line)
    raise StreamError(Reason.PROTOCOL_ERROR, f"{what}: more than {max_lines} lines")


async def pop3_greeting(stream: Stream) -> str:
    ok, text = await read_status_line(stream, "POP3 greeting")
    if not ok:
        raise StreamError(Reason.PROTOCOL_ERROR, f"POP3 greeting -ERR {text[:160]}")
    return text


async def pop3_stls(stream: Stream) -> None:
    ok, answer = await pop3_command(stream, "STLS", "STLS")
    if not ok:
        raise _refused("POP3", answer)


async def pop3(stream: Stream, rec: Recorder) -> None:
    await pop3_greeting(stream)
    await pop3_stls(stream)
    rec.debug("pop3 stls accepted")


# -- IMAP -----------------------------------------------------------------------------------


async def imap_greeting(stream: Stream) -> str:
    greeting = _decode(await stream.read_line(MAX_LINE))
    if not greeting.upper().startswith(("* OK", "* PREAUTH")):
        raise StreamError(Reason.PROTOCOL_ERROR, f"IMAP greeting: {greeting[:160]!r}")
    return greeting


async def imap_command(
    stream: Stream, tag: str, line: str, what: str
) -> tuple[str, str, list[str]]:
    stream.write(f"{tag} {line}\r\n".encode())
    return await read_tagged(stream, tag, what)


def imap_quote(text: str) -> str:
    """An IMAP quoted string; CR, LF and NUL cannot be quoted (callers reject them)."""
    if any(c in text for c in "\r\n\0"):
        raise ValueError("CR, LF and NUL cannot be sent in an IMAP quoted string")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def imap_starttls(stream: Stream, tag: str = "a1") -> None:
    status, text, _ = await imap_command(stream, tag, "STARTTLS", "STARTTLS")
    if status != "OK":
        raise _refused("IMAP", f"{status} {text}")


async def imap(stream: Stream, rec: Recorder) -> None:
    await imap_greeting(stream)
    await imap_starttls(stream)
    rec.debug("imap starttls accepted")


# -- FTP ------------------------------------------------------------------------------------


def _oops(reply: Reply, what: str) -> StreamError | None:
    # vsftpd reports its own faults (bad config, TLS setup failed) as "500 OOPS: ...".
    if reply.lines and reply.lines[0].startswith("OOPS"):
        return StreamError(Reason.SERVER_ERROR, f"{what}: {reply.code} {reply.text[:160]}")
    return None


async def ftp_greeting(stream: Stream) -> Reply:
    greeting = await read_reply(stream, "FTP greeting", free_text=True)
    if greeting.code != 220:
        failure = _oops(greeting, "FTP greeting")
        raise failure or StreamError(
            Reason.PROTOCOL_ERROR, f"FTP greeting {greeting.code}: {greeting.text[:160]}"
        )
    return greeting


async def ftp_auth_tls(stream: Stream) -> Reply:
    reply = await command(stream, "AUTH TLS", "AUTH TLS", free_text=True)
    if reply.code != 234:
        failure = _oops(reply, "AUTH TLS")
        if failure is not None:
            raise failure
        # Some servers know only the older name.
        reply = await command(stream, "AUTH SSL", "AUTH SSL", free_text=True)
        if reply.code not in (234, 334):
            raise _oops(reply, "AUTH SSL") or _refused("FTP", f"{reply.code} {reply.text}")
    return reply


def plaintext_answer(stream: Stream) -> str | None:
    """The peer's plaintext line when it answered our ClientHello with text, not TLS."""
    head = stream.handshake_head
    if head[:1].isdigit() or head[:1] in (b"+", b"-", b"*"):
        return _decode(head.split(b"\n", 1)[0])
    return None


async def ftp(stream: Stream, rec: Recorder) -> None:
    await ftp_greeting(stream)
    await ftp_auth_tls(stream)
    rec.debug("ftp auth tls accepted")


CLIENT_SSL = 0x0800
_MYSQL_CLIENT_FLAGS = 0x0000_0200 | 0x0000_8000 | CLIENT_SSL  # PROTOCOL_41, SECURE_CONN
MYSQL_MAX_GREETING = 16384  # real greetings are ~100 bytes; the length field allows 16 MiB


@dataclass(frozen=True, slots=True)
class MySQLGreeting:
    """The facts of a MySQL/MariaDB initial handshake packet (protocol version 10)."""

    version: str
    """As sent: MariaDB prefixes ``5.5.5-`` for old clients (see ``server_version``)."""
    capabilities: int
    """Capability flags, lower and (when sent) upper 16 bits."""

    @property
    def tls_offered(self) -> bool:
        return bool(self.capabilities & CLIENT_SSL)

    @property
    def server_version(self) -> str:
        return self.version.removeprefix("5.5.5-")

    @property
    def flavor(self) -> str:
        return "mariadb" if "mariadb" in self.version.lower() else "mysql"


def parse_mysql_greeting(payload: bytes) -> MySQLGreeting:
    """The greeting's payload (after the 4-byte header) -> facts; StreamError if it is not one."""
    if not payload:
        raise StreamError(Reason.PROTOCOL_ERROR, "empty MySQL greeting")
    if payload[0] == 0xFF:
        # An error packet ("Host is blocked", "Too many connections"): code and text.
        code = int.from_bytes(payload[1:3], "little")
        message = payload[9:] if payload[3:4] == b"#" else payload[3:]  # optional SQLSTATE
        text = message.decode("utf-8", "replace")
        raise StreamError(
            Reason.PROTOCOL_ERROR, f"MySQL server refused the connection: {code} {text[:160]}"
        )
    if payload[0] != 10:
        raise StreamError(Reason.PROTOCOL_ERROR, f"MySQL protocol version {payload[0]} (want 10)")
    end = payload.find(b"\0", 1, 256)
    # version NUL, connection id (4), auth data (8), filler (1), capabilities low (2)
    caps_at = end + 1 + 4 + 8 + 1
    if end < 0 or len(payload) < caps_at + 2:
        raise StreamError(Reason.PROTOCOL_ERROR, "MySQL greeting too short")
    capabilities = int.from_bytes(payload[caps_at : caps_at + 2], "little")
    # charset (1), status (2), capabilities high (2)
    high_at = caps_at + 2 + 1 + 2
    if len(payload) >= high_at + 2:
        capabilities |= int.from_bytes(payload[high_at : high_at + 2], "little") << 16
    version = payload[1:end].decode("ascii", "replace")
    return MySQLGreeting(version=version, capabilities=capabilities)


async def read_mysql_greeting(stream: Stream) -> MySQLGreeting:
    """Read and parse the server's first packet; bounded by ``MYSQL_MAX_GREETING``."""
    header = await stream.read_exactly(4)
    length = int.from_bytes(header[:3], "little")
    if length < 1 or length > MYSQL_MAX_GREETING:
        raise StreamError(Reason.PROTOCOL_ERROR, f"MySQL greeting of {length} bytes")
    return parse_mysql_greeting(await stream.read_exactly(length))


def send_mysql_ssl_request(stream: Stream) -> None:
    """The SSLRequest packet (sequence 1): the client's cue to start the TLS handshake."""
    body = struct.pack("<IIB23x", _MYSQL_CLIENT_FLAGS, 16 * 1024 * 1024, 33)
    stream.write(len(body).to_bytes(3, "little") + b"\x01" + body)


async def mysql(stream: Stream, rec: Recorder) -> None:
    greeting = await read_mysql_greeting(stream)
    if not greeting.tls_offered:
        raise StreamError(
            Reason.STARTTLS_REFUSED, "MySQL server does not offer TLS (no CLIENT_SSL)"
        )
    send_mysql_ssl_request(stream)
    rec.debug("mysql ssl request sent", version=greeting.version[:60])


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
