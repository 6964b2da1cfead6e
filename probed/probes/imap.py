"""``imap``: greeting, CAPABILITY, STARTTLS or implicit TLS, optional LOGIN and EXAMINE."""

from __future__ import annotations

import contextlib
import re

from pydantic import field_validator

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
    "probe_imap_duration_seconds",
    "Duration of each phase (resolve, connect, tls, greeting, capabilities, starttls, auth, "
    "transaction) of the last run.",
)
STARTTLS = Family(
    "probe_imap_starttls", "Whether the session was upgraded with STARTTLS (1) or not (0)."
)
SSL = Family("probe_imap_ssl", "Whether the IMAP session ran over TLS (1) or not (0).")
MESSAGES = Family("probe_imap_messages", "Messages in the examined mailbox (EXISTS).")
RECENT = Family("probe_imap_recent_messages", "Recent messages in the examined mailbox.")
FAMILIES = (STARTTLS, SSL, MESSAGES, RECENT, *TLS_FAMILIES)

_COUNT = re.compile(r"^\* (\d+) (EXISTS|RECENT)\b", re.IGNORECASE)
_CAPABILITY = re.compile(r"^\* CAPABILITY (.*)$|\[CAPABILITY ([^\]]*)\]", re.IGNORECASE)
_CODE = re.compile(r"^\[([A-Z-]+)")


class IMAPSettings(MailboxSettings):
    mailbox: str = "INBOX"

    @field_validator("mailbox")
    @classmethod
    def _mailbox(cls, value: str) -> str:
        if not value or not value.isascii() or any(c in value for c in "\r\n\0"):
            raise ValueError(f'invalid mailbox "{value}" (ASCII, no control characters)')
        return value


def _refusal(status: str, text: str, what: str) -> StreamError:
    """A tagged NO/BAD after LOGIN: RFC 5530 response codes tell the cases apart."""
    match = _CODE.match(text.upper())
    code = match.group(1) if match else ""
    if status == "BAD":
        return StreamError(Reason.PROTOCOL_ERROR, f"{what}: BAD {text[:160]}")
    if code in ("UNAVAILABLE", "SERVERBUG", "CONTACTADMIN"):
        return StreamError(Reason.SERVER_ERROR, f"{what}: NO {text[:160]}")
    if code == "PRIVACYREQUIRED":
        return StreamError(Reason.LOGIN_REFUSED, f"{what}: NO {text[:160]}")
    return StreamError(Reason.AUTH_FAILED, f"{what}: NO {text[:160]}")


class IMAPSession:
    """One IMAP conversation; failures raise StreamError."""

    def __init__(self, stream: Stream, rec: Recorder) -> None:
        self.stream = stream
        self.rec = rec
        self.capabilities: set[str] = set()
        self.starttls = False
        self._tag = 0

    async def command(self, line: str, what: str) -> tuple[str, str, list[str]]:
        self._tag += 1
        status, text, untagged = await dialogue.imap_command(
            self.stream, f"p{self._tag}", line, what
        )
        for entry in untagged:
            self._note_capabilities(entry)
        return status, text, untagged

    def _note_capabilities(self, line: str) -> None:
        match = _CAPABILITY.search(line)
        if match is not None:
            words = (match.group(1) or match.group(2) or "").upper().split()
            self.capabilities = set(words)

    async def capability(self) -> None:
        with self.rec.phase("capabilities"):
            status, text, _ = await self.command("CAPABILITY", "CAPABILITY")
        if status != "OK":
            raise StreamError(Reason.PROTOCOL_ERROR, f"CAPABILITY: {status} {text[:160]}")

    async def open(self, settings: IMAPSettings, env: Env, host: str) -> None:
        with self.rec.phase("greeting"):
            await dialogue.imap_greeting(self.stream)
        await self.capability()
        offered = "STARTTLS" in self.capabilities
        if settings.tls == "starttls" and not offered:
            raise StreamError(Reason.STARTTLS_REFUSED, "IMAP server does not offer STARTTLS")
        if offered and settings.tls in ("starttls", "opportunistic"):
            self._tag += 1
            with self.rec.phase("starttls"):
                await dialogue.imap_starttls(self.stream, f"p{self._tag}")
            await secure(self.stream, env, settings.tls_config, host, self.rec)
            self.starttls = True
            self.capabilities = set()
            await self.capability()

    async def login(self, username: str, password: str) -> None:
        self.rec.redact(password)
        if "LOGINDISABLED" in self.capabilities:
            raise StreamError(Reason.LOGIN_REFUSED, "the server announces LOGINDISABLED")
        try:
            quoted = dialogue.imap_quote(password)
            self.rec.redact(quoted)
            line = f"LOGIN {dialogue.imap_quote(username)} {quoted}"
        except ValueError:
            raise StreamError(Reason.AUTH_FAILED, "credentials contain CR, LF or NUL") from None
        with self.rec.phase("auth"):
            status, text, _ = await self.command(line, "LOGIN")
        if status != "OK":
            raise _refusal(status, text, "LOGIN")
        self.rec.debug("logged in")

    async def open_mailbox(self, mailbox: str, *, readonly: bool) -> dict[str, int]:
        """EXAMINE or SELECT; returns the EXISTS and RECENT counts."""
        verb = "EXAMINE" if readonly else "SELECT"
        status, text, untagged = await self.command(f"{verb} {dialogue.imap_quote(mailbox)}", verb)
        if status != "OK":
            raise StreamError(Reason.MAILBOX_UNAVAILABLE, f"{verb}: {status} {text[:160]}")
        counts: dict[str, int] = {}
        for line in untagged:
            match = _COUNT.match(line)
            if match is not None:
                counts[match.group(2).upper()] = int(match.group(1))
        return counts

    async def search_header(self, name: str, value: str) -> list[int]:
        """UIDs of the messages whose header ``name`` contains ``value``."""
        query = f"UID SEARCH HEADER {dialogue.imap_quote(name)} {dialogue.imap_quote(value)}"
        status, text, untagged = await self.command(query, "SEARCH")
        if status != "OK":
            raise StreamError(Reason.MAILBOX_UNAVAILABLE, f"SEARCH: {status} {text[:160]}")
        uids: list[int] = []
        for line in untagged:
            if line.upper().startswith("* SEARCH"):
                uids += [int(word) for word in line.split()[2:] if word.isdigit()]
        return uids

    async def delete(self, uids: list[int]) -> None:
        """Flag ``uids`` deleted and expunge them (only them, with UIDPLUS)."""
        numbers = ",".join(str(uid) for uid in uids)
        status, text, _ = await self.command(
            f"UID STORE {numbers} +FLAGS.SILENT (\\Deleted)", "STORE"
        )
        if status == "OK":
            verb = f"UID EXPUNGE {numbers}" if "UIDPLUS" in self.capabilities else "EXPUNGE"
            status, text, _ = await self.command(verb, "EXPUNGE")
        if status != "OK":
            raise StreamError(Reason.MAILBOX_UNAVAILABLE, f"delete: {status} {text[:160]}")

    def quit(self) -> None:
        with contextlib.suppress(StreamError):
            self.stream.write(b"z LOGOUT\r\n")

    def record(self) -> None:
        self.rec.set(STARTTLS, 1.0 if self.starttls else 0.0)
        self.rec.set(SSL, 1.0 if self.stream.tls is not None else 0.0)


async def connect_and_login(
    host: str, port: int, settings: IMAPSettings, rec: Recorder, env: Env
) -> IMAPSession:
    """A greeted (and, with credentials, logged-in) session; raises StreamError or
    SecretError. The caller closes ``session.stream``."""
    return await connect_mailbox(
        host, port, settings, rec, env, session=lambda s: IMAPSession(s, rec)
    )


async def probe(target: Target, settings: IMAPSettings, rec: Recorder, env: Env) -> bool:
    async def converse(session: IMAPSession, login: Login) -> bool:
        if await greet_and_login(session, settings, env, target.host, login):
            with rec.phase("transaction"):
                counts = await session.open_mailbox(settings.mailbox, readonly=True)
            rec.set(MESSAGES, float(counts.get("EXISTS", 0)))
            rec.set(RECENT, float(counts.get("RECENT", 0)))
        return True

    return await run_session(
        target,
        settings,
        rec,
        env,
        login=lambda: secret_login(settings.username, settings.password, env),
        session=lambda stream: IMAPSession(stream, rec),
        converse=converse,
    )


SPEC = ProbeSpec(
    name="imap",
    probe=probe,
    settings=IMAPSettings,
    phase_family=PHASES,
    families=FAMILIES,
    default_port=143,
    parse_target=target_parser(143, 993),
)
