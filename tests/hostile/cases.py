"""The table: which probe meets which hostile behaviour, and the reasons it may end with.

``none`` in an expected set means the run may succeed: the protocol lets it (answers framed
correctly around invalid UTF-8, a Heartbleed check that sees no echo). Every other entry is a
reason from the bounded enum (``probe_failure_info``). RELIABILITY.md is generated from this
table (``python -m tests.hostile.report``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.hostile.peers import Dialect

PASSWORD_FILE = "password"  # noqa: S105 - a file name
_SECRET = {"file": PASSWORD_FILE}
_LOGIN = {"username": "probe", "password": _SECRET}


@dataclass(frozen=True, slots=True)
class ProbeUnderTest:
    name: str
    dialect: Dialect
    module: Callable[[int], dict[str, Any]]
    """The module table, given a closed port (for a second service the run must not reach)."""
    target: str
    """With ``{port}`` for the hostile peer's port."""
    summary: str


def _fixed(table: dict[str, Any]) -> Callable[[int], dict[str, Any]]:
    return lambda closed: table


def _mailflow(closed: int) -> dict[str, Any]:
    return {
        "probe": "mailflow",
        "mail_from": "probe@example.org",
        "rcpt_to": "inbox@example.org",
        "smtp": {"tls": "none"},
        # The mailbox is on a closed port: the hostile SMTP side is what is tested.
        "imap": {"tls": "none", "port": closed, **_LOGIN},
        "deadline": "400ms",
        "poll_interval": "100ms",
    }


_TLS_OFF = {"insecure_skip_verify": True}
PROBES: tuple[ProbeUnderTest, ...] = (
    ProbeUnderTest(
        "tcp",
        Dialect.TCP,
        _fixed({"probe": "tcp", "query": [{"expect": "^OK"}, {"send": "QUIT\r\n"}]}),
        "127.0.0.1:{port}",
        'tcp, query `expect "^OK"`',
    ),
    ProbeUnderTest(
        "http", Dialect.HTTP, _fixed({"probe": "http"}), "http://127.0.0.1:{port}/", "http GET"
    ),
    ProbeUnderTest(
        "https",
        Dialect.TLS,
        _fixed({"probe": "http", "tls_config": _TLS_OFF}),
        "https://127.0.0.1:{port}/",
        "http GET over TLS (verification off)",
    ),
    ProbeUnderTest(
        "tls",
        Dialect.TLS,
        _fixed({"probe": "tls", "tls_config": _TLS_OFF}),
        "127.0.0.1:{port}",
        "tls handshake (verification off)",
    ),
    ProbeUnderTest(
        "heartbleed",
        Dialect.TLS,
        _fixed({"probe": "heartbleed", "response_timeout": "300ms"}),
        "127.0.0.1:{port}",
        "heartbleed, direct TLS",
    ),
    ProbeUnderTest(
        "heartbleed_smtp",
        Dialect.SMTP,
        _fixed({"probe": "heartbleed", "starttls": "smtp", "response_timeout": "300ms"}),
        "127.0.0.1:{port}",
        "heartbleed after SMTP STARTTLS",
    ),
    ProbeUnderTest(
        "smtp",
        Dialect.SMTP,
        _fixed(
            {
                "probe": "smtp",
                "tls": "none",
                "mail_from": "probe@example.org",
                "rcpt_to": ["postmaster@example.org"],
            }
        ),
        "127.0.0.1:{port}",
        "smtp, EHLO + MAIL/RCPT/RSET",
    ),
    ProbeUnderTest(
        "pop3",
        Dialect.POP3,
        _fixed({"probe": "pop3", "tls": "none", **_LOGIN}),
        "127.0.0.1:{port}",
        "pop3, CAPA + USER/PASS + STAT",
    ),
    ProbeUnderTest(
        "imap",
        Dialect.IMAP,
        _fixed({"probe": "imap", "tls": "none", **_LOGIN}),
        "127.0.0.1:{port}",
        "imap, CAPABILITY + LOGIN + EXAMINE",
    ),
    ProbeUnderTest(
        "ftp",
        Dialect.FTP,
        _fixed({"probe": "ftp", "tls": "none", **_LOGIN}),
        "127.0.0.1:{port}",
        "ftp, USER/PASS + PWD",
    ),
    ProbeUnderTest("ssh", Dialect.SSH, _fixed({"probe": "ssh"}), "127.0.0.1:{port}", "ssh, kex"),
    ProbeUnderTest(
        "mysql", Dialect.MYSQL, _fixed({"probe": "mysql"}), "127.0.0.1:{port}", "mysql greeting"
    ),
    ProbeUnderTest(
        "mysql_login",
        Dialect.MYSQL,
        _fixed({"probe": "mysql", **_LOGIN}),
        "127.0.0.1:{port}",
        "mysql login (aiomysql)",
    ),
    ProbeUnderTest(
        "mailflow",
        Dialect.SMTP,
        _mailflow,
        "127.0.0.1:{port}",
        "mailflow, hostile SMTP side",
    ),
    ProbeUnderTest(
        "backup_sftp",
        Dialect.SSH,
        _fixed(
            {
                "probe": "backup",
                "source": "sftp",
                "directory": "/",
                "max_age": "1d",
                "sftp": {**_LOGIN, "accept_any_host_key": True},
            }
        ),
        "127.0.0.1:{port}",
        "backup over SFTP",
    ),
    ProbeUnderTest(
        "backup_ftp",
        Dialect.FTP,
        _fixed(
            {
                "probe": "backup",
                "source": "ftp",
                "directory": "/",
                "max_age": "1d",
                "ftp": {"tls": "none", **_LOGIN},
            }
        ),
        "127.0.0.1:{port}",
        "backup over FTP",
    ),
    ProbeUnderTest(
        "backup_http",
        Dialect.HTTP,
        _fixed({"probe": "backup", "source": "http", "max_age": "1d"}),
        "http://127.0.0.1:{port}/backup.tar",
        "backup over HTTP (HEAD)",
    ),
)

_COMMON = ("silent", "close", "reset", "drip", "endless_stream", "random_bytes", "utf8_garbage")
_PLAINTEXT = ("endless_line", "absurd")
_TLS = ("tls_bogus_records", "tls_lying_length", "tls_endless_fragments", "tls_oversized_cert")

BEHAVIOUR_SUMMARY = {
    "silent": "accept, read, never answer",
    "close": "accept and close at once (FIN)",
    "reset": "accept and reset at once (RST)",
    "drip": "the protocol's greeting, one byte a second",
    "endless_stream": "printable 64-byte lines as fast as the client reads, forever",
    "random_bytes": "64 KiB of random bytes, then silence",
    "utf8_garbage": "protocol framing around invalid UTF-8 (TLS: invalid UTF-8 only)",
    "endless_line": "the start of a plausible line, then no newline, forever",
    "absurd": "protocol-valid but absurd: thousands of greeting/CAPA/untagged lines, "
    "thousands of HTTP headers, SSH banner lines forever, a MySQL length field of 2^24-1",
    "tls_bogus_records": "records of an undefined content type (0x63), forever",
    "tls_lying_length": "a ServerHello whose handshake header claims 2^24-1 bytes",
    "tls_endless_fragments": "ServerHello, then a Certificate header of 2^24-1 bytes fed "
    "one byte per record, forever",
    "tls_oversized_cert": "ServerHello, then a 16 MiB Certificate in full-size records",
    "tls_heartbeat_flood": "a complete plaintext flight, then heartbeat records that are "
    "not our echo, forever",
}


@dataclass(frozen=True, slots=True)
class Case:
    probe: ProbeUnderTest
    behaviour: str
    expected: frozenset[str]

    @property
    def id(self) -> str:
        return f"{self.probe.name}-{self.behaviour}"


def _behaviours(probe: ProbeUnderTest) -> tuple[str, ...]:
    if probe.dialect is Dialect.TLS:
        extra = ("tls_heartbeat_flood",) if probe.name == "heartbleed" else ()
        return _COMMON + _TLS + extra
    return _COMMON + _PLAINTEXT


def _set(text: str) -> frozenset[str]:
    return frozenset(text.split())


_OPENSSL = ("https", "tls")
_HANDSHAKE = _set("tls_handshake_failed")

# What a behaviour ends in unless a probe is listed below.
_BY_BEHAVIOUR: dict[str, frozenset[str]] = {
    "silent": _set("timeout"),
    "drip": _set("timeout"),
    # Whether the client sees the FIN/RST first or fails its own write depends on timing.
    "close": _set("connection_closed connection_reset"),
    "reset": _set("connection_reset connection_closed"),
    "endless_stream": _set("protocol_error"),
    "random_bytes": _set("protocol_error"),
    "utf8_garbage": _set("none"),
    "endless_line": _set("response_too_large"),
    "absurd": _set("protocol_error"),
    "tls_bogus_records": _HANDSHAKE,
    "tls_lying_length": _HANDSHAKE,
    "tls_endless_fragments": _HANDSHAKE,
    "tls_oversized_cert": _HANDSHAKE,
}
_OVERRIDES: dict[tuple[str, str], frozenset[str]] = {
    ("tcp", "close"): _set("expect_mismatch connection_reset"),
    ("tcp", "endless_stream"): _set("response_too_large"),
    ("tcp", "random_bytes"): _set("response_too_large"),
    ("tcp", "endless_line"): _set("none"),  # "OK" then junk: the expect matched
    ("tcp", "absurd"): _set("response_too_large"),
    ("http", "endless_stream"): _set("response_too_large timeout"),  # body_size_limit 10 MiB
    ("http", "absurd"): _set("response_too_large"),
    # HEAD: a body after the headers is read as the next (bad) status line.
    # A HEAD is answered by its head alone: the flood after it is never read; the 200 has
    # no Last-Modified, so no backup is found.
    ("backup_http", "endless_stream"): _set("backup_missing"),
    # llhttp accepts bytes >= 0x80 in header values (obs-text, RFC 9110 5.5); the garbage
    # Last-Modified does not parse as a date, so no backup is found.
    ("backup_http", "utf8_garbage"): _set("backup_missing"),
    ("backup_http", "absurd"): _set("response_too_large"),
    ("heartbleed", "close"): _set("connection_closed connection_reset"),
    ("heartbleed", "endless_stream"): _set("not_tls"),
    ("heartbleed", "random_bytes"): _set("not_tls"),
    ("heartbleed", "utf8_garbage"): _set("not_tls"),
    ("heartbleed", "tls_bogus_records"): _set("not_tls protocol_error"),
    # No decision until the claimed 16 MiB are skipped: the deadline or the byte budget.
    ("heartbleed", "tls_lying_length"): _set("timeout protocol_error response_too_large"),
    ("heartbleed", "tls_endless_fragments"): _set("response_too_large timeout"),
    ("heartbleed", "tls_oversized_cert"): _set("response_too_large"),
    ("heartbleed", "tls_heartbeat_flood"): _set("none"),  # not our echo: not vulnerable
    ("heartbleed_smtp", "utf8_garbage"): _set("starttls_refused"),  # no STARTTLS in EHLO
    ("mailflow", "utf8_garbage"): _set("connect_refused"),  # SMTP done; mailbox port closed
    ("backup_ftp", "utf8_garbage"): _set("ftp_data_failed"),  # PASV answered 502
    ("mysql_login", "close"): _set("connect_error connection_closed connection_reset"),
    ("mysql_login", "utf8_garbage"): _set("timeout"),  # greeting fine, login never answered
    ("mysql_login", "absurd"): _set("protocol_error"),  # greeting of 2^24-1 bytes
    ("ssh", "random_bytes"): _set("timeout protocol_error"),
    ("backup_sftp", "random_bytes"): _set("timeout protocol_error"),
    ("ssh", "utf8_garbage"): _set("protocol_error"),
    ("backup_sftp", "utf8_garbage"): _set("protocol_error"),
    ("ssh", "endless_line"): _set("protocol_error"),
    ("backup_sftp", "endless_line"): _set("protocol_error"),
    ("mysql", "endless_line"): _set("protocol_error"),
    ("mysql_login", "endless_line"): _set("protocol_error"),
}
for _name in _OPENSSL:
    _OVERRIDES[(_name, "endless_stream")] = _HANDSHAKE
    _OVERRIDES[(_name, "random_bytes")] = _HANDSHAKE
    _OVERRIDES[(_name, "utf8_garbage")] = _HANDSHAKE


def expected(probe: str, behaviour: str) -> frozenset[str]:
    found = _OVERRIDES.get((probe, behaviour)) or _BY_BEHAVIOUR.get(behaviour)
    assert found is not None, f"no expected outcome for {probe} x {behaviour}"
    return found


def _cases() -> tuple[Case, ...]:
    return tuple(
        Case(probe, behaviour, expected(probe.name, behaviour))
        for probe in PROBES
        for behaviour in _behaviours(probe)
    )


CASES = _cases()
