"""``ftp``: greeting, AUTH TLS or implicit TLS, optional login, PWD, passive listing.

:func:`list_directory` is the reusable part (backups stored on FTP): connect, secure, log in,
list one directory over a passive data connection and return its entries with name, size and
modification time. With TLS the data connection resumes the control connection's TLS session,
as vsftpd requires by default (``require_ssl_reuse``).
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import re
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Self

from pydantic import field_validator, model_validator

from probed.durations import Duration
from probed.probes import dialogue
from probed.probes.base import Env, Family, ProbeSpec, Reason, Target
from probed.probes.dialogue import Reply
from probed.probes.session import (
    READ_LIMIT,
    Login,
    SessionSettings,
    connect_session,
    run_session,
    secure,
    target_parser,
)
from probed.probes.stream import Stream, StreamError, os_error
from probed.probes.tlsfacts import FAMILIES as TLS_FAMILIES
from probed.probes.tlsfacts import context_for
from probed.results import Recorder
from probed.secrets import SecretRef

PHASES = Family(
    "probe_ftp_duration_seconds",
    "Duration of each phase (resolve, connect, tls, greeting, starttls, auth, transaction, "
    "list) of the last run.",
)
STATUS_CODE = Family("probe_ftp_status_code", "The last FTP reply code the server sent.")
AUTH_TLS = Family("probe_ftp_auth_tls", "Whether the session was upgraded with AUTH TLS (1).")
SSL = Family("probe_ftp_ssl", "Whether the FTP control connection ran over TLS (1) or not (0).")
ENTRIES = Family("probe_ftp_directory_entries", "Entries in the listed directory.")
NEWEST_TIME = Family(
    "probe_ftp_newest_file_timestamp_seconds",
    "Modification time (Unix time) of the newest file in the listed directory.",
)
NEWEST_AGE = Family(
    "probe_ftp_newest_file_age_seconds", "Age of the newest file when the run looked at it."
)
NEWEST_SIZE = Family("probe_ftp_newest_file_size_bytes", "Size of the newest file.")
FAMILIES = (
    STATUS_CODE,
    AUTH_TLS,
    SSL,
    ENTRIES,
    NEWEST_TIME,
    NEWEST_AGE,
    NEWEST_SIZE,
    *TLS_FAMILIES,
)

MAX_LISTING = 4 * 1024 * 1024
MAX_ENTRIES = 100_000
_EPSV = re.compile(r"\(([!-~])\1\1(\d+)\1\)")
_PASV = re.compile(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)")
_MDTM = re.compile(r"^(\d{14})")
_UNIX = re.compile(
    r"^([-dlbcps])\S{9}\S*\s+\d+\s+\S+\s+\S+\s+(\d+)\s+"
    r"([A-Za-z]{3})\s+(\d{1,2})\s+(\d{1,2}:\d{2}|\d{4})\s(.+)$"
)
_DOS = re.compile(
    r"^(\d{2})-(\d{2})-(\d{2,4})\s+(\d{1,2}):(\d{2})([AP]M)\s+(<DIR>|\d+)\s+(.+)$", re.IGNORECASE
)
_MONTHS = {m: i for i, m in enumerate(calendar.month_abbr) if m}


@dataclass(frozen=True, slots=True)
class FTPEntry:
    """One directory entry. ``mtime`` is Unix time (UTC), None if the server gave none."""

    name: str
    size: int | None
    mtime: float | None
    is_dir: bool


class FTPSettings(SessionSettings):
    username: str | None = None
    password: SecretRef | None = None
    directory: str | None = None
    max_file_age: Duration | None = None

    @field_validator("username", "directory")
    @classmethod
    def _no_control(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c in value for c in "\r\n\0")):
            raise ValueError("may not be empty or contain CR, LF or NUL")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.password is not None and self.username is None:
            raise ValueError('"password" needs "username"')
        if self.max_file_age is not None and self.directory is None:
            raise ValueError('"max_file_age" needs "directory"')
        if self.directory is not None and self.username is None:
            raise ValueError('"directory" needs a login: set "username" ("anonymous" works)')
        return self


def _failed(reply: Reply, what: str, reason: Reason = Reason.PROTOCOL_ERROR) -> StreamError:
    if reply.lines and reply.lines[0].startswith("OOPS"):
        reason = Reason.SERVER_ERROR
    return StreamError(reason, f"{what} answered {reply.code}: {reply.text[:160]}")


class FTPSession:
    """One FTP control connection; failures raise StreamError."""

    def __init__(self, stream: Stream, rec: Recorder, env: Env, settings: FTPSettings) -> None:
        self.stream = stream
        self.rec = rec
        self.env = env
        self.settings = settings
        self.last_code = 0
        self.auth_tls = False
        self.protected = False
        self.features: set[str] = set()

    async def command(self, line: str, what: str) -> Reply:
        reply = await dialogue.command(self.stream, line, what, free_text=True)
        self.last_code = reply.code
        return reply

    async def open(self, host: str) -> None:
        with self.rec.phase("greeting"):
            greeting = await dialogue.ftp_greeting(self.stream)
        self.last_code = greeting.code
        mode = self.settings.tls
        if mode in ("starttls", "opportunistic"):
            try:
                with self.rec.phase("starttls"):
                    reply = await dialogue.ftp_auth_tls(self.stream)
            except StreamError as exc:
                if mode == "starttls" or exc.reason is not Reason.STARTTLS_REFUSED:
                    raise
            else:
                self.last_code = reply.code
                await secure(self.stream, self.env, self.settings.tls_config, host, self.rec)
                self.auth_tls = True

    async def login(self, username: str, password: str) -> None:
        self.rec.redact(password)
        with self.rec.phase("auth"):
            reply = await self.command(f"USER {username}", "USER")
            if reply.code == 331:
                if any(c in password for c in "\r\n\0"):
                    raise StreamError(Reason.AUTH_FAILED, "the password contains CR, LF or NUL")
                reply = await self.command(f"PASS {password}", "PASS")
        if reply.code not in (230, 202):
            raise _failed(reply, "login", Reason.AUTH_FAILED)
        self.rec.debug("logged in", user=username)

    async def prepare(self) -> None:
        """FEAT, and the data-channel protection to match the control connection."""
        reply = await self.command("FEAT", "FEAT")
        if reply.code == 211:
            self.features = {line.strip().split(" ")[0].upper() for line in reply.lines[1:-1]}
        if self.stream.tls is not None:
            await self.command("PBSZ 0", "PBSZ")
            reply = await self.command("PROT P", "PROT")
            if reply.code != 200:
                raise _failed(reply, "PROT P", Reason.FTP_DATA_FAILED)
            self.protected = True

    async def pwd(self) -> str:
        reply = await self.command("PWD", "PWD")
        if reply.code != 257:
            raise _failed(reply, "PWD")
        return reply.lines[0]

    async def cwd(self, directory: str) -> None:
        reply = await self.command(f"CWD {directory}", "CWD")
        if reply.code != 250:
            raise _failed(reply, f"CWD {directory}", Reason.FTP_PATH_UNAVAILABLE)

    async def _passive(self) -> tuple[str, int]:
        peer = self._peer()
        reply = await self.command("EPSV", "EPSV")
        if reply.code == 229:
            match = _EPSV.search(reply.text)
            if match is not None:
                return peer, int(match.group(2))
        reply = await self.command("PASV", "PASV")
        match = _PASV.search(reply.text) if reply.code == 227 else None
        if match is None:
            raise _failed(reply, "PASV", Reason.FTP_DATA_FAILED)
        # The address in the reply is ignored (NAT, FTP bounce): the data comes from the
        # host we are talking to.
        return peer, int(match.group(5)) * 256 + int(match.group(6))

    def _peer(self) -> str:
        peer = self.stream.peer
        if peer is None:
            raise StreamError(Reason.CONNECTION_CLOSED, "control connection has no peer")
        return peer

    async def retrieve_listing(self, host: str) -> bytes:
        """MLSD (when offered) or LIST of the current directory over a passive connection."""
        address = await self._passive()
        verb = "MLSD" if "MLST" in self.features else "LIST"
        data = await _open_data(address)
        with data:
            reply = await self.command(verb, verb)
            if reply.code not in (125, 150):
                raise _failed(reply, verb, Reason.FTP_PATH_UNAVAILABLE)
            if self.protected:
                assert self.stream.tls is not None
                context = context_for(self.env, self.settings.tls_config)
                name = self.settings.tls_config.server_name or host
                try:
                    await data.start_tls(context, name, session=self.stream.tls.session)
                except ssl.SSLError as exc:
                    raise StreamError(Reason.FTP_DATA_FAILED, f"data TLS: {exc}") from None
            chunks = bytearray()
            while chunk := await data.read_some():
                chunks += chunk
                if len(chunks) > MAX_LISTING:
                    raise StreamError(Reason.TOO_LARGE, f"listing over {MAX_LISTING} bytes")
        reply = await dialogue.read_reply(self.stream, f"end of {verb}", free_text=True)
        self.last_code = reply.code
        if reply.code not in (226, 250):
            raise _failed(reply, f"end of {verb}", Reason.FTP_DATA_FAILED)
        return bytes(chunks)

    async def mdtm(self, name: str) -> float | None:
        if "MDTM" not in self.features:
            return None
        reply = await self.command(f"MDTM {name}", "MDTM")
        match = _MDTM.match(reply.text) if reply.code == 213 else None
        if match is None:
            return None
        return _ftp_time(match.group(1))

    def quit(self) -> None:
        with contextlib.suppress(StreamError):
            self.stream.write(b"QUIT\r\n")

    def record(self) -> None:
        if self.last_code:
            self.rec.set(STATUS_CODE, float(self.last_code))
        self.rec.set(AUTH_TLS, 1.0 if self.auth_tls else 0.0)
        self.rec.set(SSL, 1.0 if self.stream.tls is not None else 0.0)


async def _open_data(address: tuple[str, int]) -> Stream:
    """The passive data connection (no phase or IP facts of its own: the control has them)."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, address)
        _, stream = await loop.create_connection(lambda: Stream(READ_LIMIT), sock=sock)
    except OSError as exc:
        sock.close()
        error = os_error(exc, f"data connection to port {address[1]}")
        raise StreamError(Reason.FTP_DATA_FAILED, error.detail) from None
    except BaseException:
        sock.close()
        raise
    return stream


def parse_listing(text: str, now: float | None = None) -> list[FTPEntry]:
    """MLSD facts, Unix ``ls -l`` or DOS/IIS lines; ``.``/``..`` and unknown lines skipped."""
    now = time.time() if now is None else now
    entries: list[FTPEntry] = []
    for line in text.splitlines()[:MAX_ENTRIES]:
        entry = _mlsd(line) if "=" in line.split(" ", 1)[0] else _unix(line, now) or _dos(line)
        if entry is not None and entry.name not in (".", ".."):
            entries.append(entry)
    return entries


def _mlsd(line: str) -> FTPEntry | None:
    facts_text, _, name = line.partition(" ")
    facts = dict(part.split("=", 1) for part in facts_text.lower().split(";") if "=" in part)
    kind = facts.get("type", "")
    if kind in ("cdir", "pdir") or not name:
        return None
    size = facts.get("size", "")
    mtime: float | None = None
    modify = facts.get("modify", "")[:14]
    if len(modify) == 14 and modify.isdigit():
        mtime = _ftp_time(modify)
    return FTPEntry(name, int(size) if size.isdigit() else None, mtime, kind == "dir")


def _ftp_time(digits: str) -> float | None:
    """``YYYYMMDDHHMMSS`` (MLSD ``modify``, MDTM) -> Unix time; None for an impossible date
    (``00000000000000``, month 13): the server's text, not ours to crash on."""
    try:
        return float(calendar.timegm(time.strptime(digits, "%Y%m%d%H%M%S")))
    except (ValueError, OverflowError):
        return None


def _unix(line: str, now: float) -> FTPEntry | None:
    match = _UNIX.match(line)
    if match is None:
        return None
    kind, size, month, day, clock, name = match.groups()
    if kind == "l":
        name = name.split(" -> ", 1)[0]
    month_number = _MONTHS.get(month.title())
    if month_number is None:
        return None
    if ":" in clock:
        # ls omits the year for the last six months: the most recent such date not in the
        # future (a day of slack for clock and time-zone skew).
        hour, minute = (int(x) for x in clock.split(":"))
        year = time.gmtime(now).tm_year
        stamp = _timestamp(year, month_number, int(day), hour, minute)
        if stamp is not None and stamp > now + 86400:
            stamp = _timestamp(year - 1, month_number, int(day), hour, minute)
    else:
        stamp = _timestamp(int(clock), month_number, int(day), 0, 0)
    return FTPEntry(name, int(size), stamp, kind == "d")


def _dos(line: str) -> FTPEntry | None:
    match = _DOS.match(line)
    if match is None:
        return None
    month, day, year, hour, minute, half, size, name = match.groups()
    full_year = int(year) + (2000 if len(year) == 2 else 0)
    hour_24 = int(hour) % 12 + (12 if half.upper() == "PM" else 0)
    stamp = _timestamp(full_year, int(month), int(day), hour_24, int(minute))
    is_dir = size.upper() == "<DIR>"
    return FTPEntry(name, None if is_dir else int(size), stamp, is_dir)


def _timestamp(year: int, month: int, day: int, hour: int, minute: int) -> float | None:
    try:
        return float(calendar.timegm((year, month, day, hour, minute, 0, 0, 0, 0)))
    except (ValueError, OverflowError):
        return None


def credentials(settings: FTPSettings, env: Env) -> Login:
    """(username, password); anonymous logins get a conventional address as password."""
    if settings.username is None:
        return None
    if settings.password is None:
        return settings.username, "probed@"
    return settings.username, env.secrets.resolve(settings.password).reveal()


async def open_ftp(
    host: str, port: int, settings: FTPSettings, rec: Recorder, env: Env
) -> FTPSession:
    """A greeted, secured and (with a username) logged-in session; raises StreamError or
    SecretError. The caller closes ``session.stream``."""
    login = credentials(settings, env)

    async def start(session: FTPSession) -> None:
        await session.open(host)
        if login is not None:
            await session.login(*login)

    return await connect_session(
        host,
        port,
        settings,
        rec,
        env,
        session=lambda stream: FTPSession(stream, rec, env, settings),
        start=start,
    )


async def list_in_session(
    session: FTPSession, host: str, directory: str, exact_times: int = 1
) -> list[FTPEntry]:
    """List ``directory``; the ``exact_times`` newest files get MDTM's second-exact times
    (ls-style listings carry minutes at best)."""
    await session.prepare()
    await session.cwd(directory)
    raw = await session.retrieve_listing(host)
    entries = parse_listing(raw.decode("utf-8", "replace"))
    files = sorted((e for e in entries if not e.is_dir), key=lambda e: e.mtime or 0.0, reverse=True)
    exact: dict[str, float] = {}
    for entry in files[:exact_times]:
        mtime = await session.mdtm(entry.name)
        if mtime is not None:
            exact[entry.name] = mtime
    return [
        FTPEntry(e.name, e.size, exact.get(e.name, e.mtime), e.is_dir) if e.name in exact else e
        for e in entries
    ]


async def list_directory(
    host: str,
    port: int,
    settings: FTPSettings,
    rec: Recorder,
    env: Env,
    *,
    directory: str,
    exact_times: int = 1,
) -> list[FTPEntry]:
    """Connect, secure, log in and list ``directory`` (phase ``list``); raises StreamError
    (reason set) or SecretError. For other probes, such as backups stored on FTP."""
    session = await open_ftp(host, port, settings, rec, env)
    with session.stream:
        with rec.phase("list"):
            entries = await list_in_session(session, host, directory, exact_times)
        session.quit()
    return entries


def newest_file(entries: list[FTPEntry]) -> FTPEntry | None:
    files = [e for e in entries if not e.is_dir and e.mtime is not None]
    return max(files, key=lambda e: e.mtime or 0.0, default=None)


async def probe(target: Target, settings: FTPSettings, rec: Recorder, env: Env) -> bool:
    async def converse(session: FTPSession, login: Login) -> bool:
        await session.open(target.host)
        if login is not None:
            await session.login(*login)
            with rec.phase("transaction"):
                await session.pwd()
        if settings.directory is None:
            return True
        with rec.phase("list"):
            entries = await list_in_session(session, target.host, settings.directory)
        return _record_listing(entries, settings, rec)

    return await run_session(
        target,
        settings,
        rec,
        env,
        login=lambda: credentials(settings, env),
        session=lambda stream: FTPSession(stream, rec, env, settings),
        converse=converse,
    )


def _record_listing(entries: list[FTPEntry], settings: FTPSettings, rec: Recorder) -> bool:
    rec.set(ENTRIES, float(len(entries)))
    newest = newest_file(entries)
    if newest is None or newest.mtime is None:
        if settings.max_file_age is not None:
            return rec.fail(Reason.FILE_TOO_OLD, "no file with a modification time")
        return True
    age = time.time() - newest.mtime
    rec.set(NEWEST_TIME, newest.mtime)
    rec.set(NEWEST_AGE, age)
    if newest.size is not None:
        rec.set(NEWEST_SIZE, float(newest.size))
    if settings.max_file_age is not None and age > settings.max_file_age:
        return rec.fail(
            Reason.FILE_TOO_OLD,
            f"newest file {newest.name[:80]!r} is {age / 3600:.1f} h old "
            f"(max_file_age {settings.max_file_age / 3600:g} h)",
        )
    return True


SPEC = ProbeSpec(
    name="ftp",
    probe=probe,
    settings=FTPSettings,
    phase_family=PHASES,
    families=FAMILIES,
    default_port=21,
    parse_target=target_parser(21, 990),
)
