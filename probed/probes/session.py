"""Sessions of the mail and FTP probes (smtp, pop3, imap, ftp): shared settings, connect
with optional implicit TLS, the TLS upgrade, and the probe skeleton they all follow."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Literal, Protocol, Self, TypeVar

from pydantic import Field, model_validator

from probed.probes.base import Env, Reason, Settings, Target
from probed.probes.dialogue import plaintext_answer
from probed.probes.stream import Stream, StreamError, connect, resolve
from probed.probes.tlsfacts import TLSSettings, handshake
from probed.results import Recorder
from probed.secrets import SecretError, SecretRef
from probed.targets import parse_host_port

TLSMode = Literal["starttls", "opportunistic", "implicit", "none"]
READ_LIMIT = 64 * 1024
_ERROR_LINE = re.compile(r"^(?:[45]\d\d[ -]|-ERR|\S+ (?:NO|BAD) )")


class SessionSettings(Settings):
    """Connection settings the smtp, pop3, imap and ftp probes share.

    ``tls``: ``starttls`` (upgrade required), ``opportunistic`` (upgrade when offered),
    ``implicit`` (TLS from the first byte: 465, 995, 993, 990) or ``none``.
    """

    port: int | None = Field(default=None, ge=1, le=65535)
    tls: TLSMode = "starttls"
    tls_config: TLSSettings = Field(default_factory=TLSSettings)
    ip_protocol: Literal["ip4", "ip6"] = "ip6"
    ip_protocol_fallback: bool = True


def target_parser(plain: int, implicit: int) -> Callable[[str, Any], Target]:
    """``host[:port]`` whose default port follows the module's TLS mode."""

    def parse(raw: str, settings: Any) -> Target:
        port = settings.port or (implicit if settings.tls == "implicit" else plain)
        return parse_host_port(raw, port)

    return parse


async def open_session(
    host: str, port: int, settings: SessionSettings, rec: Recorder, env: Env
) -> Stream:
    """Resolve, connect and, for implicit TLS, handshake; raises StreamError."""
    addresses = await resolve(host, port, rec, settings.ip_protocol, settings.ip_protocol_fallback)
    stream = await connect(addresses[0], rec, READ_LIMIT)
    if settings.tls == "implicit":
        try:
            await secure(stream, env, settings.tls_config, host, rec)
        except BaseException:
            stream.close()
            raise
    return stream


async def secure(
    stream: Stream, env: Env, tls_config: TLSSettings, host: str, rec: Recorder
) -> None:
    """The shared TLS handshake and facts (phase ``tls``); raises StreamError on failure.

    A server that answers the ClientHello with a plaintext line (vsftpd's ``500 OOPS: ...``
    when its TLS setup fails) gets a reason of its own rather than a bare handshake error.
    """
    if await handshake(stream, env, tls_config, host, rec):
        return
    line = plaintext_answer(stream)
    if rec.reason is Reason.TLS_HANDSHAKE and line is not None:
        # The handshake recorded the generic reason first; refine it with what we saw.
        rec.reason = Reason.SERVER_ERROR if _ERROR_LINE.match(line) else Reason.NOT_TLS
        rec.detail = f"plaintext answer to the TLS handshake: {line[:160]!r}"
    raise StreamError(rec.reason, rec.detail)


Login = tuple[str, str] | None


def secret_login(username: str | None, password: SecretRef | None, env: Env) -> Login:
    """(username, password) or None; raises SecretError naming the source, never a value."""
    if username is None or password is None:
        return None
    return username, env.secrets.resolve(password).reveal()


class ProtocolSession(Protocol):
    """What the skeleton needs of a protocol's session class."""

    @property
    def stream(self) -> Stream: ...

    def record(self) -> None:
        """Export the session's facts (STARTTLS used, TLS on); also after a failure."""

    def quit(self) -> None:
        """Say goodbye without waiting for the answer."""


_S = TypeVar("_S", bound=ProtocolSession)


async def run_session(
    target: Target,
    settings: SessionSettings,
    rec: Recorder,
    env: Env,
    *,
    login: Callable[[], Login],
    session: Callable[[Stream], _S],
    converse: Callable[[_S, Login], Awaitable[bool]],
) -> bool:
    """The probe skeleton of smtp, pop3, imap and ftp: read the secrets, connect (implicit
    TLS included), run the protocol's conversation, record the session's facts whatever
    happened, and say goodbye. Failures become the run's reason."""
    assert target.port is not None
    try:
        credentials = login()
    except SecretError as exc:
        return rec.fail(Reason.SECRET_UNAVAILABLE, str(exc))
    try:
        stream = await open_session(target.host, target.port, settings, rec, env)
    except StreamError as exc:
        return rec.fail(exc.reason, exc.detail)
    conversation = session(stream)
    with stream:
        try:
            ok = await converse(conversation, credentials)
        except StreamError as exc:
            return rec.fail(exc.reason, exc.detail)
        finally:
            conversation.record()
        conversation.quit()
    return ok


async def connect_session(
    host: str,
    port: int,
    settings: SessionSettings,
    rec: Recorder,
    env: Env,
    *,
    session: Callable[[Stream], _S],
    start: Callable[[_S], Awaitable[None]],
) -> _S:
    """A connected session on which ``start`` (greeting, STARTTLS, login) ran; raises
    StreamError or SecretError. The caller closes ``session.stream``."""
    stream = await open_session(host, port, settings, rec, env)
    conversation = session(stream)
    try:
        await start(conversation)
    except BaseException:
        stream.close()
        raise
    return conversation


# -- mailboxes: pop3 and imap (and mailflow's mailbox side) -----------------------------------


class MailboxSettings(SessionSettings):
    """A mailbox login: ``username`` and ``password`` come together or not at all."""

    username: str | None = None
    password: SecretRef | None = None
    # Characters the protocol cannot carry in a user name (POP3's USER adds the space).
    username_forbidden: ClassVar[str] = "\r\n\0"

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if (self.username is None) != (self.password is None):
            raise ValueError('"username" and "password" go together')
        if self.username is not None and any(c in self.username for c in self.username_forbidden):
            what = (
                "spaces or control characters"
                if " " in self.username_forbidden
                else ("control characters")
            )
            raise ValueError(f'"username" may not contain {what}')
        return self


class MailboxSession(ProtocolSession, Protocol):
    async def open(self, settings: Any, env: Env, host: str) -> None:
        """Greeting, capabilities and (per the settings) STARTTLS."""

    async def login(self, username: str, password: str) -> None: ...


_M = TypeVar("_M", bound=MailboxSession)


async def greet_and_login(
    session: MailboxSession, settings: MailboxSettings, env: Env, host: str, login: Login
) -> bool:
    """Open the session and, with credentials, log in; True when logged in."""
    await session.open(settings, env, host)
    if login is None:
        return False
    await session.login(*login)
    return True


async def connect_mailbox(
    host: str,
    port: int,
    settings: MailboxSettings,
    rec: Recorder,
    env: Env,
    *,
    session: Callable[[Stream], _M],
) -> _M:
    """A greeted (and, with credentials, logged-in) session; raises StreamError or
    SecretError. The caller closes ``session.stream``."""
    login = secret_login(settings.username, settings.password, env)

    async def start(opened: _M) -> None:
        await greet_and_login(opened, settings, env, host, login)

    return await connect_session(host, port, settings, rec, env, session=session, start=start)
