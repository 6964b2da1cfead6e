"""``smtp``: greeting, EHLO, STARTTLS or implicit TLS, optional AUTH and an envelope test.

Hand-written on Stream + dialogue rather than aiosmtplib: aiosmtplib runs TLS on asyncio's
SSL transport, which is gone when certificate verification fails, so an expired MX
certificate could not be reported with its expiry; the shared Stream keeps the SSL object.
The SMTP we need (no message bodies beyond mailflow's small test message) is a few commands.
"""

from __future__ import annotations

import base64
import contextlib
import re
from typing import Literal, Self

from pydantic import field_validator, model_validator

from probed.probes import dialogue
from probed.probes.base import Env, Family, ProbeSpec, Reason, Target
from probed.probes.dialogue import Reply
from probed.probes.session import (
    Login,
    SessionSettings,
    run_session,
    secret_login,
    secure,
    target_parser,
)
from probed.probes.stream import Stream, StreamError
from probed.probes.tlsfacts import FAMILIES as TLS_FAMILIES
from probed.results import Recorder
from probed.secrets import SecretRef

PHASES = Family(
    "probe_smtp_duration_seconds",
    "Duration of each phase (resolve, connect, tls, greeting, ehlo, starttls, auth, "
    "transaction) of the last run.",
)
STATUS_CODE = Family("probe_smtp_status_code", "The last SMTP reply code the server sent.")
STARTTLS = Family(
    "probe_smtp_starttls", "Whether the session was upgraded with STARTTLS (1) or not (0)."
)
SSL = Family("probe_smtp_ssl", "Whether the SMTP session ran over TLS (1) or not (0).")
SERVER_INFO = Family(
    "probe_smtp_server_info", "The MTA software family the greeting names (bounded)."
)
EXTENSION = Family(
    "probe_smtp_extension_info", "Well-known ESMTP extensions the last EHLO advertised."
)
MAX_SIZE = Family(
    "probe_smtp_max_message_size_bytes", "The SIZE limit the server advertises (0: none)."
)
FAMILIES = (STATUS_CODE, STARTTLS, SSL, SERVER_INFO, EXTENSION, MAX_SIZE, *TLS_FAMILIES)

# Only these become label values: the EHLO list is server-controlled free text.
KNOWN_EXTENSIONS = frozenset(
    {
        "8BITMIME",
        "AUTH",
        "BINARYMIME",
        "CHUNKING",
        "DSN",
        "ENHANCEDSTATUSCODES",
        "ETRN",
        "PIPELINING",
        "REQUIRETLS",
        "SIZE",
        "SMTPUTF8",
        "STARTTLS",
        "VRFY",
    }
)
_SOFTWARE = (
    ("exim", re.compile(r"\bexim\b", re.IGNORECASE)),
    ("postfix", re.compile(r"\bpostfix\b", re.IGNORECASE)),
    ("sendmail", re.compile(r"\bsendmail\b", re.IGNORECASE)),
    ("exchange", re.compile(r"microsoft|exchange", re.IGNORECASE)),
    ("opensmtpd", re.compile(r"\bopensmtpd\b", re.IGNORECASE)),
    ("qmail", re.compile(r"qmail", re.IGNORECASE)),
    ("haraka", re.compile(r"\bharaka\b", re.IGNORECASE)),
    ("courier", re.compile(r"\bcourier\b", re.IGNORECASE)),
)
_ADDRESS = re.compile(r"[^\s<>]*")
_EHLO_NAME = re.compile(r"[A-Za-z0-9.\-\[\]:]+")


def software_family(greeting: str) -> str:
    return next((name for name, pattern in _SOFTWARE if pattern.search(greeting)), "other")


class SMTPSettings(SessionSettings):
    ehlo_name: str = "probed.invalid"
    username: str | None = None
    password: SecretRef | None = None
    auth_mechanism: Literal["auto", "PLAIN", "LOGIN"] = "auto"
    mail_from: str | None = None
    rcpt_to: tuple[str, ...] = ()
    expect_rcpt_rejected: bool = False

    @field_validator("ehlo_name")
    @classmethod
    def _ehlo(cls, value: str) -> str:
        if not _EHLO_NAME.fullmatch(value):
            raise ValueError(f'invalid EHLO name "{value}"')
        return value

    @field_validator("mail_from")
    @classmethod
    def _from(cls, value: str | None) -> str | None:
        if value is not None and not _ADDRESS.fullmatch(value):
            raise ValueError(f'invalid address "{value}" (no spaces or angle brackets)')
        return value

    @field_validator("rcpt_to")
    @classmethod
    def _rcpt(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for address in value:
            if not address or not _ADDRESS.fullmatch(address):
                raise ValueError(f'invalid address "{address}" (no spaces or angle brackets)')
        return value

    @model_validator(mode="after")
    def _pairs(self) -> Self:
        if (self.username is None) != (self.password is None):
            raise ValueError('"username" and "password" go together')
        if self.rcpt_to and self.mail_from is None:
            raise ValueError('"rcpt_to" needs "mail_from" ("" for the null sender)')
        if self.expect_rcpt_rejected and not self.rcpt_to:
            raise ValueError('"expect_rcpt_rejected" needs "rcpt_to"')
        return self


def _rejected(reply: Reply, what: str) -> StreamError:
    return StreamError(Reason.SMTP_REJECTED, f"{what} answered {reply.code}: {reply.text[:160]}")


class SMTPSession:
    """One SMTP conversation; failures raise StreamError, the last reply code is kept."""

    def __init__(self, stream: Stream, rec: Recorder) -> None:
        self.stream = stream
        self.rec = rec
        self.last_code = 0
        self.greeting = ""
        self.extensions: dict[str, str] = {}
        self.starttls = False

    async def command(self, line: str, what: str) -> Reply:
        reply = await dialogue.command(self.stream, line, what)
        self.last_code = reply.code
        return reply

    async def ehlo(self, name: str) -> None:
        with self.rec.phase("ehlo"):
            reply = await self.command(f"EHLO {name}", "EHLO")
        if reply.code != 250:
            raise _rejected(reply, "EHLO")
        self.extensions = dialogue.smtp_extensions(reply)

    async def open(
        self, settings: SMTPSettings, env: Env, host: str, *, tls_done: bool = False
    ) -> None:
        """Greeting, EHLO and the STARTTLS upgrade the settings ask for."""
        with self.rec.phase("greeting"):
            greeting = await dialogue.read_reply(self.stream, "SMTP greeting")
        self.last_code = greeting.code
        self.greeting = greeting.lines[0]
        if greeting.code != 220:
            raise _rejected(greeting, "greeting")
        await self.ehlo(settings.ehlo_name)
        wanted = settings.tls == "starttls" or (
            settings.tls == "opportunistic" and "STARTTLS" in self.extensions
        )
        if wanted and not tls_done:
            with self.rec.phase("starttls"):
                reply = await dialogue.smtp_starttls(self.stream, self.extensions)
            self.last_code = reply.code
            await secure(self.stream, env, settings.tls_config, host, self.rec)
            self.starttls = True
            # RFC 3207: forget what the server said before TLS and ask again.
            await self.ehlo(settings.ehlo_name)

    async def login(self, username: str, password: str, mechanism: str) -> None:
        offered = self.extensions.get("AUTH", "").upper().split()
        if not offered:
            raise StreamError(Reason.LOGIN_REFUSED, "the server does not offer AUTH here")
        if mechanism == "auto":
            mechanism = next((m for m in ("PLAIN", "LOGIN") if m in offered), "")
        if mechanism not in offered:
            raise StreamError(
                Reason.LOGIN_REFUSED, f"no usable AUTH mechanism among {' '.join(offered)[:120]}"
            )
        plain_token = _b64(f"\0{username}\0{password}")
        self.rec.redact(password, plain_token, _b64(password))
        with self.rec.phase("auth"):
            if mechanism == "PLAIN":
                token = plain_token
                reply = await self.command(f"AUTH PLAIN {token}", "AUTH PLAIN")
            else:
                reply = await self.command("AUTH LOGIN", "AUTH LOGIN")
                if reply.code == 334:
                    reply = await self.command(_b64(username), "AUTH LOGIN username")
                if reply.code == 334:
                    reply = await self.command(_b64(password), "AUTH LOGIN password")
        if reply.code != 235:
            # The reply never echoes our credentials; its text is the server's own.
            raise StreamError(
                Reason.AUTH_FAILED, f"AUTH {mechanism} answered {reply.code}: {reply.text[:160]}"
            )
        self.rec.debug("authenticated", mechanism=mechanism)

    async def envelope(self, mail_from: str, rcpt_to: tuple[str, ...]) -> list[Reply]:
        """MAIL FROM, then every RCPT TO; returns the RCPT replies (MAIL refused raises)."""
        reply = await self.command(f"MAIL FROM:<{mail_from}>", "MAIL FROM")
        if reply.code != 250:
            raise _rejected(reply, "MAIL FROM")
        return [await self.command(f"RCPT TO:<{rcpt}>", "RCPT TO") for rcpt in rcpt_to]

    async def data(self, message: bytes) -> Reply:
        reply = await self.command("DATA", "DATA")
        if reply.code != 354:
            raise _rejected(reply, "DATA")
        self.stream.write(dot_stuff(message) + b".\r\n")
        reply = await dialogue.read_reply(self.stream, "end of DATA")
        self.last_code = reply.code
        if reply.code != 250:
            raise _rejected(reply, "end of DATA")
        return reply

    def quit(self) -> None:
        # Polite but not waited for: a server slow to say 221 must not fail a good run.
        with contextlib.suppress(StreamError):
            self.stream.write(b"QUIT\r\n")

    def record(self) -> None:
        rec = self.rec
        if self.last_code:
            rec.set(STATUS_CODE, float(self.last_code))
        if self.greeting:
            rec.set(SERVER_INFO, 1.0, software=software_family(self.greeting))
        for name in sorted(KNOWN_EXTENSIONS.intersection(self.extensions)):
            rec.set(EXTENSION, 1.0, extension=name)
        if "SIZE" in self.extensions:
            size = self.extensions["SIZE"]
            rec.set(MAX_SIZE, float(size) if size.isdigit() else 0.0)
        rec.set(STARTTLS, 1.0 if self.starttls else 0.0)
        rec.set(SSL, 1.0 if self.stream.tls is not None else 0.0)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def dot_stuff(message: bytes) -> bytes:
    """CRLF line ends, a leading dot doubled, a final CRLF (RFC 5321 4.5.2)."""
    lines = message.replace(b"\r\n", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)


def credentials(settings: SMTPSettings, env: Env) -> Login:
    return secret_login(settings.username, settings.password, env)


async def probe(target: Target, settings: SMTPSettings, rec: Recorder, env: Env) -> bool:
    async def converse(session: SMTPSession, login: Login) -> bool:
        await _converse(session, target, settings, login, env)
        return True

    return await run_session(
        target,
        settings,
        rec,
        env,
        login=lambda: credentials(settings, env),
        session=lambda stream: SMTPSession(stream, rec),
        converse=converse,
    )


async def _converse(
    session: SMTPSession,
    target: Target,
    settings: SMTPSettings,
    login: Login,
    env: Env,
) -> None:
    await session.open(settings, env, target.host, tls_done=settings.tls == "implicit")
    if login is not None:
        await session.login(*login, settings.auth_mechanism)
    if settings.mail_from is None:
        return
    with session.rec.phase("transaction"):
        replies = await session.envelope(settings.mail_from, settings.rcpt_to)
        await session.command("RSET", "RSET")
    for rcpt, reply in zip(settings.rcpt_to, replies, strict=True):
        accepted = reply.code in (250, 251)
        if accepted == settings.expect_rcpt_rejected:
            session.last_code = reply.code
            if accepted:
                # An open relay: the server took a recipient it must refuse.
                raise StreamError(
                    Reason.EXPECT_MISMATCH,
                    f"RCPT TO <{rcpt}> accepted (expected a rejection): {reply.code}",
                )
            raise StreamError(
                Reason.SMTP_REJECTED, f"RCPT TO <{rcpt}> refused: {reply.code} {reply.text[:160]}"
            )


SPEC = ProbeSpec(
    name="smtp",
    probe=probe,
    settings=SMTPSettings,
    phase_family=PHASES,
    families=FAMILIES,
    default_port=25,
    parse_target=target_parser(25, 465),
)
