"""``mailflow``: the mail round trip. Send a uniquely tagged message through SMTP, poll the
mailbox over IMAP or POP3 until it arrives, delete it, export the delivery latency.

A message not found by ``deadline`` (counted from the start of the run) is ``message_lost``.
The deadline must leave room in the job timeout (checked at config load), so a slow mailbox
ends as a loss or a mailbox failure, never as a bare timeout of the whole run.
"""

from __future__ import annotations

import asyncio
import secrets
from email.utils import formatdate
from typing import Any, Self

from pydantic import Field, field_validator, model_validator

from probed.durations import Duration, format_duration
from probed.probes.base import Env, Family, ProbeSpec, Reason, Settings, Target
from probed.probes.imap import IMAPSession, IMAPSettings
from probed.probes.imap import connect_and_login as imap_login
from probed.probes.pop3 import POP3Session, POP3Settings
from probed.probes.pop3 import connect_and_login as pop3_login
from probed.probes.session import open_session
from probed.probes.smtp import SMTPSession, SMTPSettings
from probed.probes.smtp import credentials as smtp_credentials
from probed.probes.stream import StreamError
from probed.probes.tlsfacts import FAMILIES as TLS_FAMILIES
from probed.results import Recorder
from probed.secrets import SecretError
from probed.targets import parse_host_port

PHASES = Family(
    "probe_mailflow_duration_seconds",
    "Duration of each phase of the last run: the SMTP session's (connect, tls, greeting, "
    "ehlo, starttls, auth), submit, deliver (polling until found) and cleanup.",
)
DELIVERED = Family(
    "probe_mailflow_delivered", "Whether the tagged message arrived before the deadline (1)."
)
LATENCY = Family(
    "probe_mailflow_delivery_seconds",
    "From the SMTP server accepting the message to the poll that found it "
    "(resolution: poll_interval).",
)
POLLS = Family("probe_mailflow_polls", "Mailbox polls the last run made.")
FAMILIES = (DELIVERED, LATENCY, POLLS, *TLS_FAMILIES)

TAG_HEADER = "X-Probed-Mailflow"
DEADLINE_SHARE = 0.8


class MailflowSettings(Settings):
    smtp: SMTPSettings = Field(default_factory=SMTPSettings)
    imap: IMAPSettings | None = None
    pop3: POP3Settings | None = None
    mailbox_host: str | None = None
    mail_from: str
    rcpt_to: str
    deadline: Duration = 30.0
    poll_interval: Duration = 1.0
    pop3_scan: int = Field(default=50, ge=1, le=1000)

    @field_validator("mail_from", "rcpt_to")
    @classmethod
    def _address(cls, value: str) -> str:
        if not value or any(c in value for c in " <>\r\n\0"):
            raise ValueError(f'invalid address "{value}"')
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.imap is None) == (self.pop3 is None):
            raise ValueError("set exactly one mailbox: an [imap] or a [pop3] table")
        mailbox = self.imap or self.pop3
        assert mailbox is not None
        if mailbox.username is None:
            raise ValueError('the mailbox needs "username" and "password"')
        if self.smtp.mail_from is not None or self.smtp.rcpt_to:
            raise ValueError('set "mail_from" and "rcpt_to" on the mailflow module, not in [smtp]')
        if not 0.1 <= self.poll_interval <= 60:
            raise ValueError("poll_interval must be between 100ms and 1m")
        if self.poll_interval >= self.deadline:
            raise ValueError("poll_interval must be shorter than deadline")
        return self

    def job_problem(self, timeout: float) -> str | None:
        if self.deadline > DEADLINE_SHARE * timeout:
            return (
                f"mailflow deadline {format_duration(self.deadline)} must be at most 80% of "
                f"the timeout {format_duration(timeout)} (the rest is for the last poll "
                "and the cleanup)"
            )
        return None


def parse_target(raw: str, settings: Any) -> Target:
    smtp: SMTPSettings = settings.smtp
    return parse_host_port(raw, smtp.port or (465 if smtp.tls == "implicit" else 25))


def build_message(token: str, mail_from: str, rcpt_to: str) -> bytes:
    return (
        f"From: <{mail_from}>\r\n"
        f"To: <{rcpt_to}>\r\n"
        f"Subject: probed mail round trip {token}\r\n"
        f"Date: {formatdate(usegmt=True)}\r\n"
        f"Message-ID: <{token}@probed.invalid>\r\n"
        f"{TAG_HEADER}: {token}\r\n"
        "Auto-Submitted: auto-generated\r\n"
        "\r\n"
        "A probed mail round-trip test; it deletes itself when found.\r\n"
    ).encode()


async def submit(
    target: Target, settings: MailflowSettings, message: bytes, rec: Recorder, env: Env
) -> None:
    """One SMTP session delivering ``message``; raises StreamError or SecretError."""
    assert target.port is not None
    login = smtp_credentials(settings.smtp, env)
    stream = await open_session(target.host, target.port, settings.smtp, rec, env)
    with stream:
        session = SMTPSession(stream, rec)
        await session.open(
            settings.smtp, env, target.host, tls_done=settings.smtp.tls == "implicit"
        )
        if login is not None:
            await session.login(*login, settings.smtp.auth_mechanism)
        with rec.phase("submit"):
            (reply,) = await session.envelope(settings.mail_from, (settings.rcpt_to,))
            if reply.code not in (250, 251):
                raise StreamError(
                    Reason.SMTP_REJECTED,
                    f"RCPT TO <{settings.rcpt_to}> refused: {reply.code} {reply.text[:160]}",
                )
            await session.data(message)
        session.quit()


class Found:
    """An open mailbox session holding our message, ready for the cleanup."""

    def __init__(self, session: IMAPSession | POP3Session, ref: list[int]) -> None:
        self.session = session
        self.ref = ref

    async def delete(self) -> None:
        if isinstance(self.session, IMAPSession):
            await self.session.delete(self.ref)
            self.session.quit()
        else:
            await self.session.delete(self.ref[0])
            await self.session.commit()


async def poll(
    host: str, settings: MailflowSettings, token: str, rec: Recorder, env: Env
) -> Found | None:
    """One look into the mailbox: a session holding the message, or None (closed)."""
    if settings.imap is not None:
        port = settings.imap.port or (993 if settings.imap.tls == "implicit" else 143)
        imap = await imap_login(host, port, settings.imap, rec, env)
        try:
            await imap.open_mailbox(settings.imap.mailbox, readonly=False)
            uids = await imap.search_header(TAG_HEADER, token)
        except BaseException:
            imap.stream.close()
            raise
        if uids:
            return Found(imap, uids)
        imap.quit()
        imap.stream.close()
        return None
    assert settings.pop3 is not None
    port = settings.pop3.port or (995 if settings.pop3.tls == "implicit" else 110)
    pop3 = await pop3_login(host, port, settings.pop3, rec, env)
    try:
        count, _ = await pop3.stat()
        for number in range(count, max(0, count - settings.pop3_scan), -1):
            headers = await pop3.headers(number)
            if any(_tagged(line, token) for line in headers):
                return Found(pop3, [number])
    except BaseException:
        pop3.stream.close()
        raise
    pop3.quit()
    pop3.stream.close()
    return None


def _tagged(line: str, token: str) -> bool:
    name, _, value = line.partition(":")
    return name.strip().lower() == TAG_HEADER.lower() and value.strip() == token


async def probe(target: Target, settings: MailflowSettings, rec: Recorder, env: Env) -> bool:
    loop = asyncio.get_running_loop()
    deadline_at = loop.time() + settings.deadline
    token = secrets.token_hex(12)
    message = build_message(token, settings.mail_from, settings.rcpt_to)
    try:
        await submit(target, settings, message, rec, env)
    except SecretError as exc:
        return rec.fail(Reason.SECRET_UNAVAILABLE, str(exc))
    except StreamError as exc:
        return rec.fail(exc.reason, exc.detail)
    accepted_at = loop.time()
    rec.debug("message accepted", token=token)
    host = settings.mailbox_host or target.host
    polls = 0
    found: Found | None = None
    try:
        with rec.phase("deliver"):
            while found is None:
                polls += 1
                found = await _poll_once(host, settings, token, rec, env, deadline_at=deadline_at)
                if found is None:
                    if loop.time() + settings.poll_interval > deadline_at:
                        rec.set(DELIVERED, 0.0)
                        return rec.fail(
                            Reason.MESSAGE_LOST,
                            f"not in the mailbox {format_duration(settings.deadline)} after "
                            f"the run started ({polls} polls)",
                        )
                    await asyncio.sleep(settings.poll_interval)
        latency = loop.time() - accepted_at
        with found.session.stream, rec.phase("cleanup"):
            await found.delete()
    except SecretError as exc:
        return rec.fail(Reason.SECRET_UNAVAILABLE, str(exc))
    except StreamError as exc:
        return rec.fail(exc.reason, exc.detail)
    finally:
        rec.set(POLLS, float(polls))
    rec.set(DELIVERED, 1.0)
    rec.set(LATENCY, latency)
    return True


async def _poll_once(
    host: str,
    settings: MailflowSettings,
    token: str,
    rec: Recorder,
    env: Env,
    *,
    deadline_at: float,
) -> Found | None:
    # Each poll runs on a scratch recorder: its TLS facts and phases would repeat per poll
    # (duplicate series); its debug lines are kept.
    scratch = Recorder(capture_log=rec.log is not None)
    try:
        async with asyncio.timeout_at(deadline_at):
            return await poll(host, settings, token, scratch, env)
    except TimeoutError:
        raise StreamError(
            Reason.TIMEOUT, "the mailbox was still answering a poll at the deadline"
        ) from None
    finally:
        # The poll's login secrets: the failure it raises is recorded on ``rec``.
        rec.redact(*scratch.redacted)
        if rec.log is not None and scratch.log:
            rec.log.extend(f"(poll) {line}" for line in scratch.log)


SPEC = ProbeSpec(
    name="mailflow",
    probe=probe,
    settings=MailflowSettings,
    phase_family=PHASES,
    families=FAMILIES,
    default_port=25,
    parse_target=parse_target,
)
