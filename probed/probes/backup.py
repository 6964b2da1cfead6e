"""``backup``: the newest file matching ``pattern`` in ``directory`` is fresh and big enough.

The listing comes from a source, one small function each: ``sftp`` (through the ssh probe's
connection code), ``ftp`` (through the ftp probe's ``list_directory``) and ``http`` (the
http probe itself, by default a HEAD of one URL, whose ``Last-Modified`` and
``Content-Length`` describe the one file). Every source yields the same ``BackupFile``
entries, so the judgement is written once.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Self

import asyncssh
from pydantic import Field, field_validator, model_validator

from probed.durations import Duration
from probed.probes import http
from probed.probes.base import Env, Family, ProbeSpec, Reason, Settings, Target
from probed.probes.ftp import FTPSettings, list_directory
from probed.probes.http import ByteSize, HTTPSettings
from probed.probes.ssh import SSHConnectSettings, open_ssh
from probed.probes.stream import StreamError
from probed.results import Recorder
from probed.secrets import SecretError
from probed.targets import parse_host_port

PHASES = Family(
    "probe_backup_duration_seconds",
    "Duration of each phase (resolve, connect, handshake, auth, list, ...) of the last run.",
)
AGE = Family("probe_backup_age_seconds", "Age of the newest matching file when the run looked.")
SIZE = Family("probe_backup_size_bytes", "Size of the newest matching file.")
FILES = Family("probe_backup_files", "How many files in the directory match the pattern.")
NEWEST = Family(
    "probe_backup_newest_timestamp_seconds",
    "Modification time (Unix time) of the newest matching file.",
)
FAMILIES = (AGE, SIZE, FILES, NEWEST)


@dataclass(frozen=True, slots=True)
class BackupFile:
    name: str
    size: int | None
    mtime: float | None


class BackupSettings(Settings):
    source: Literal["sftp", "ftp", "http"] = "sftp"
    directory: str | None = Field(default=None, min_length=1)
    pattern: str = Field(default="*", min_length=1)
    max_age: Duration
    min_size: ByteSize = 1
    max_entries: int = Field(default=100_000, ge=1, le=10_000_000)
    port: int | None = Field(default=None, ge=1, le=65535)
    sftp: SSHConnectSettings | None = None
    ftp: FTPSettings | None = None
    http: HTTPSettings = Field(default_factory=lambda: HTTPSettings(method="HEAD"))

    @field_validator("http", mode="before")
    @classmethod
    def _head_by_default(cls, value: object) -> object:
        # A GET would download the whole backup; the headers are all we need.
        if isinstance(value, dict) and "method" not in value:
            return {**value, "method": "HEAD"}
        return value

    @model_validator(mode="after")
    def _source_table(self) -> Self:
        if self.source == "sftp":
            if self.sftp is None or not self.sftp.login:
                raise ValueError('source "sftp" needs an [sftp] table with "username" and a secret')
        elif self.source == "ftp" and (self.ftp is None or self.ftp.username is None):
            raise ValueError('source "ftp" needs an [ftp] table with "username"')
        for other in ("sftp", "ftp"):
            if other != self.source and getattr(self, other) is not None:
                raise ValueError(f'"{other}" table given but source is "{self.source}"')
        if (self.source == "http") != (self.directory is None):
            raise ValueError(
                'source "http" takes the file\'s URL as the target and no "directory"'
                if self.source == "http"
                else f'source "{self.source}" needs a "directory"'
            )
        return self


def parse_target(raw: str, settings: Any) -> Target:
    assert isinstance(settings, BackupSettings)
    if settings.source == "http":
        # The file's URL, optionally "via SERVER", exactly as the http probe reads it.
        return http.parse_target(raw, settings.http)
    if settings.port is not None:
        return parse_host_port(raw, settings.port)
    if settings.source == "ftp":
        assert settings.ftp is not None
        implicit = settings.ftp.tls == "implicit"
        return parse_host_port(raw, settings.ftp.port or (990 if implicit else 21))
    return parse_host_port(raw, 22)


Lister = Callable[[Target, BackupSettings, Recorder, Env], Awaitable[list[BackupFile] | None]]


async def _list_sftp(
    target: Target, settings: BackupSettings, rec: Recorder, env: Env
) -> list[BackupFile] | None:
    """None: failed, reason recorded."""
    assert settings.sftp is not None
    assert target.port is not None
    ok, conn = await open_ssh(target, target.port, settings.sftp, rec, env)
    if conn is None:
        return [] if ok else None
    try:
        with rec.phase("list"):
            return await _scan(conn, settings)
    except StreamError as exc:
        rec.fail(exc.reason, exc.detail)
        return None
    finally:
        conn.close()
        await conn.wait_closed()


async def _scan(conn: asyncssh.SSHClientConnection, settings: BackupSettings) -> list[BackupFile]:
    """Matching regular files of the directory; StreamError with the reason otherwise."""
    assert settings.directory is not None
    files: list[BackupFile] = []
    try:
        async with conn.start_sftp_client() as sftp:
            seen = 0
            async for entry in sftp.scandir(settings.directory):
                seen += 1
                if seen > settings.max_entries:
                    raise StreamError(
                        Reason.TOO_LARGE,
                        f"more than {settings.max_entries} entries in {settings.directory}",
                    )
                attrs = entry.attrs
                name = str(entry.filename)
                if attrs.type == asyncssh.FILEXFER_TYPE_REGULAR and fnmatch.fnmatchcase(
                    name, settings.pattern
                ):
                    files.append(BackupFile(name, attrs.size, attrs.mtime))
    except (
        asyncssh.SFTPNoSuchFile,
        asyncssh.SFTPNoSuchPath,
        asyncssh.SFTPPermissionDenied,
    ) as exc:
        raise StreamError(Reason.BACKUP_MISSING, f"{settings.directory}: {exc.reason}") from None
    except asyncssh.SFTPError as exc:
        raise StreamError(Reason.PROTOCOL_ERROR, f"SFTP: {exc.reason}") from None
    except asyncssh.Error as exc:
        raise StreamError(Reason.CONNECTION_CLOSED, f"during SFTP: {exc.reason}") from None
    return files


async def _list_ftp(
    target: Target, settings: BackupSettings, rec: Recorder, env: Env
) -> list[BackupFile] | None:
    assert settings.ftp is not None
    assert settings.directory is not None
    assert target.port is not None
    try:
        entries = await list_directory(
            target.host, target.port, settings.ftp, rec, env, directory=settings.directory
        )
    except StreamError as exc:
        if exc.reason is Reason.FTP_PATH_UNAVAILABLE:
            rec.fail(Reason.BACKUP_MISSING, exc.detail)
        else:
            rec.fail(exc.reason, exc.detail)
        return None
    except SecretError as exc:
        rec.fail(Reason.SECRET_UNAVAILABLE, str(exc))
        return None
    if len(entries) > settings.max_entries:
        rec.fail(Reason.TOO_LARGE, f"more than {settings.max_entries} entries")
        return None
    return [
        BackupFile(e.name, e.size, e.mtime)
        for e in entries
        if not e.is_dir and fnmatch.fnmatchcase(e.name, settings.pattern)
    ]


async def _list_http(
    target: Target, settings: BackupSettings, rec: Recorder, env: Env
) -> list[BackupFile] | None:
    """The http probe's own run (status, redirects, TLS facts, its metrics) on the file's
    URL; the response's Last-Modified and Content-Length describe the file."""
    with rec.phase("list"):
        ok = await http.probe(target, settings.http, rec, env)
    if not ok:
        if rec.reason is Reason.HTTP_STATUS:
            rec.reason = Reason.BACKUP_MISSING
        return None
    facts = {family: value for family, _, value in rec.samples}
    length = facts.get(http.CONTENT_LENGTH, -1.0)
    return [
        BackupFile(
            name=target.raw,
            size=int(length) if length >= 0 else None,
            mtime=facts.get(http.LAST_MODIFIED),
        )
    ]


LISTERS: dict[str, Lister] = {"sftp": _list_sftp, "ftp": _list_ftp, "http": _list_http}


def judge(files: list[BackupFile], settings: BackupSettings, rec: Recorder, now: float) -> bool:
    """The same verdict for every source."""
    rec.set(FILES, float(len(files)))
    dated = [f for f in files if f.mtime is not None]
    if not dated:
        where = (
            f"{settings.directory}/{settings.pattern}"
            if settings.directory is not None
            else "the URL (no Last-Modified)"
        )
        return rec.fail(Reason.BACKUP_MISSING, f"no file matches {where}")
    newest = max(dated, key=lambda f: f.mtime or 0.0)
    assert newest.mtime is not None
    age = max(0.0, now - newest.mtime)
    rec.set(NEWEST, newest.mtime)
    rec.set(AGE, age)
    if newest.size is not None:
        rec.set(SIZE, float(newest.size))
    rec.debug("newest backup", name=newest.name[:120], age=round(age), size=newest.size)
    if age > settings.max_age:
        return rec.fail(
            Reason.BACKUP_TOO_OLD,
            f"newest backup {newest.name[:80]!r} is {age / 3600:.1f} h old "
            f"(max_age {settings.max_age / 3600:.1f} h)",
        )
    if newest.size is not None and newest.size < settings.min_size:
        return rec.fail(
            Reason.BACKUP_TOO_SMALL,
            f"newest backup {newest.name[:80]!r} has {newest.size} bytes "
            f"(min_size {settings.min_size})",
        )
    return True


async def probe(target: Target, settings: BackupSettings, rec: Recorder, env: Env) -> bool:
    files = await LISTERS[settings.source](target, settings, rec, env)
    if files is None:
        return False
    return judge(files, settings, rec, time.time())


SPEC = ProbeSpec(
    name="backup",
    probe=probe,
    settings=BackupSettings,
    phase_family=PHASES,
    families=FAMILIES,
    parse_target=parse_target,
)
