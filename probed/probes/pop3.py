"""``pop3``: greeting, CAPA, STLS or implicit TLS, optional USER/PASS login and STAT."""

from __future__ import annotations

import contextlib
from typing import ClassVar

from probed.probes import dialogue
from probed.probes.base import Env, Family, ProbeSpec, Reason, Target
from probed.probes.session import (
    Login,
    MailboxSettings,
    connect_mailbox,
    greet_and_login,
    run_session,
    secret_login,
    secure,
    target_parser,
)
from probed.probes.stream import Stream, StreamError
from probed.probes.tlsfacts import FAMILIES as TLS_FAMILIES
from probed.results import Recorder

PHASES = Family(
    "probe_pop3_duration_seconds",
    "Duration of each phase (resolve, connect, tls, greeting, capabilities, starttls, auth, "
    "transaction) of the last run.",
)
STLS = Family("probe_pop3_stls", "Whether the session was upgraded with STLS (1) or not (0).")
SSL = Family("probe_pop3_ssl", "Whether the POP3 session ran over TLS (1) or not (0).")
MESSAGES = Family("probe_pop3_messages", "Messages in the mailbox (STAT).")
MAILBOX_SIZE = Family("probe_pop3_mailbox_size_bytes", "Size of the mailbox in bytes (STAT).")
FAMILIES = (STLS, SSL, MESSAGES, MAILBOX_SIZE, *TLS_FAMILIES)


class POP3Settings(MailboxSettings):
    username_forbidden: ClassVar[str] = "\r\n\0 "


def _login_failure(text: str) -> StreamError:
    """-ERR after PASS: RFC 3206 response codes tell the cases apart."""
    upper = text.upper()
    if upper.startswith("[SYS/"):
        return StreamError(Reason.SERVER_ERROR, f"login: -ERR {text[:160]}")
    if "PLAINTEXT" in upper and "DISALLOWED" in upper:
        return StreamError(Reason.LOGIN_REFUSED, f"login: -ERR {text[:160]}")
    return StreamError(Reason.AUTH_FAILED, f"login: -ERR {text[:160]}")


class POP3Session:
    """One POP3 conversation; failures raise StreamError."""

    def __init__(self, stream: Stream, rec: Recorder) -> None:
        self.stream = stream
        self.rec = rec
        self.capabilities: set[str] | None = None  # None: CAPA not supported
        self.stls = False

    async def capa(self) -> None:
        with self.rec.phase("capabilities"):
            ok, _ = await dialogue.pop3_command(self.stream, "CAPA", "CAPA")
            lines = await dialogue.read_multiline(self.stream, "CAPA") if ok else None
        if lines is None:
            self.capabilities = None
        else:
            self.capabilities = {line.split(" ", 1)[0].upper() for line in lines if line}

    async def open(self, settings: POP3Settings, env: Env, host: str) -> None:
        with self.rec.phase("greeting"):
            await dialogue.pop3_greeting(self.stream)
        await self.capa()
        if settings.tls in ("starttls", "opportunistic"):
            offered = self.capabilities is None or "STLS" in self.capabilities
            if settings.tls == "starttls" and not offered:
                raise StreamError(Reason.STARTTLS_REFUSED, "POP3 server does not offer STLS")
            if offered:
                with self.rec.phase("starttls"):
                    await dialogue.pop3_stls(self.stream)
                await secure(self.stream, env, settings.tls_config, host, self.rec)
                self.stls = True
                await self.capa()

    async def login(self, username: str, password: str) -> None:
        self.rec.redact(password)
        if self.capabilities is not None and "USER" not in self.capabilities:
            raise StreamError(
                Reason.LOGIN_REFUSED, "CAPA does not offer USER (plaintext login disabled here?)"
            )
        with self.rec.phase("auth"):
            ok, text = await dialogue.pop3_command(self.stream, f"USER {username}", "USER")
            if ok:
                if any(c in password for c in "\r\n\0"):
                    raise StreamError(Reason.AUTH_FAILED, "the password contains CR, LF or NUL")
                ok, text = await dialogue.pop3_command(self.stream, f"PASS {password}", "PASS")
        if not ok:
            raise _login_failure(text)
        self.rec.debug("logged in")

    async def stat(self) -> tuple[int, int]:
        ok, text = await dialogue.pop3_command(self.stream, "STAT", "STAT")
        fields = text.split()
        if not ok:
            raise StreamError(Reason.MAILBOX_UNAVAILABLE, f"STAT: -ERR {text[:160]}")
        if len(fields) < 2 or not (fields[0].isdigit() and fields[1].isdigit()):
            raise StreamError(Reason.PROTOCOL_ERROR, f"STAT: unexpected answer {text[:120]!r}")
        return int(fields[0]), int(fields[1])

    async def headers(self, number: int) -> list[str]:
        """The header lines of message ``number`` (TOP n 0), bounded."""
        ok, text = await dialogue.pop3_command(self.stream, f"TOP {number} 0", "TOP")
        if not ok:
            raise StreamError(Reason.MAILBOX_UNAVAILABLE, f"TOP {number}: -ERR {text[:160]}")
        return await dialogue.read_multiline(self.stream, "TOP")

    async def delete(self, number: int) -> None:
        ok, text = await dialogue.pop3_command(self.stream, f"DELE {number}", "DELE")
        if not ok:
            raise StreamError(Reason.MAILBOX_UNAVAILABLE, f"DELE {number}: -ERR {text[:160]}")

    async def commit(self) -> None:
        """QUIT and wait for +OK: only then are deletions done (UPDATE state)."""
        ok, text = await dialogue.pop3_command(self.stream, "QUIT", "QUIT")
        if not ok:
            raise StreamError(Reason.MAILBOX_UNAVAILABLE, f"QUIT: -ERR {text[:160]}")

    def quit(self) -> None:
        with contextlib.suppress(StreamError):
            self.stream.write(b"QUIT\r\n")

    def record(self) -> None:
        self.rec.set(STLS, 1.0 if self.stls else 0.0)
        self.rec.set(SSL, 1.0 if self.stream.tls is not None else 0.0)


async def connect_and_login(
    host: str, port: int, settings: POP3Settings, rec: Recorder, env: Env
) -> POP3Session:
    """A greeted (and, with credentials, logged-in) session; raises StreamError or
    SecretError. The caller closes ``session.stream``."""
    return await connect_mailbox(
        host, port, settings, rec, env, session=lambda s: POP3Session(s, rec)
    )


async def probe(target: Target, settings: POP3Settings, rec: Recorder, env: Env) -> bool:
    async def converse(session: POP3Session, login: Login) -> bool:
        if await greet_and_login(session, settings, env, target.host, login):
            with rec.phase("transaction"):
                count, size = await session.stat()
            rec.set(MESSAGES, float(count))
            rec.set(MAILBOX_SIZE, float(size))
        return True

    return await run_session(
        target,
        settings,
        rec,
        env,
        login=lambda: secret_login(settings.username, settings.password, env),
        session=lambda stream: POP3Session(stream, rec),
        converse=converse,
    )


SPEC = ProbeSpec(
    name="pop3",
    probe=probe,
    settings=POP3Settings,
    phase_family=PHASES,
    families=FAMILIES,
    default_port=110,
    parse_target=target_parser(110, 995),
)
