"""``ssh``: version exchange, host key facts and pinning, optional login and one command.

Built on asyncssh, with every implicit source switched off: no ``~/.ssh/config``, no
``known_hosts`` of the user, no agent, no default identities, no PKCS#11, no GSSAPI, no
keyboard-interactive prompts, no forwarding. Keys and passwords come only from secrets.

Host keys are checked by us, in ``validate_host_public_key``, so the key the server
presented is exported even when it does not match (like certificate facts after a failed
TLS verification). Without login the run stops right after the key exchange: we refuse
the key on purpose, so no user name is ever sent and the server's auth log stays clean.
With login, the key must be pinned (fingerprints or a known_hosts file) or the module must
say ``accept_any_host_key = true``: credentials never go to an unverified server.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Literal, Self

import asyncssh
from asyncssh.public_key import get_public_key_algs
from pydantic import Field, PrivateAttr, field_validator, model_validator

from probed.probes.base import Env, Family, ProbeSpec, Reason, Settings, Target
from probed.probes.stream import StreamError, connect_socket, os_error, resolve
from probed.results import Recorder
from probed.secrets import SecretError, SecretRef

PHASES = Family(
    "probe_ssh_duration_seconds",
    "Duration of each phase (resolve, connect, handshake, auth, command) of the last run.",
)
VERSION_INFO = Family(
    "probe_ssh_version_info",
    "The server's SSH identification string: protocol, software and comments (bounded).",
)
HOST_KEY_INFO = Family(
    "probe_ssh_host_key_info",
    "The host key the server presented: algorithm and SHA-256 fingerprint.",
)
HOST_KEY_MATCH = Family(
    "probe_ssh_host_key_match",
    "With pinning: whether the presented host key is trusted (1) or not (0).",
)
COMMAND_EXIT_STATUS = Family(
    "probe_ssh_command_exit_status",
    "Exit status of the configured command (-1 if it ended by a signal).",
)
FAMILIES = (VERSION_INFO, HOST_KEY_INFO, HOST_KEY_MATCH, COMMAND_EXIT_STATUS)

_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")
_LABEL_TEXT = re.compile(r"[^\x21-\x7e ]")
_MAX_LABEL = 64
_KEY_ALGS = frozenset(alg.decode("ascii") for alg in get_public_key_algs())


class SSHConnectSettings(Settings):
    """How to reach and trust an SSH server, and whom to log in as (shared with ``backup``)."""

    ip_protocol: Literal["ip4", "ip6"] = "ip6"
    ip_protocol_fallback: bool = True
    host_key_fingerprints: tuple[str, ...] = ()
    known_hosts: str | None = None
    accept_any_host_key: bool = False
    host_key_algorithms: tuple[str, ...] = ()
    username: str | None = None
    password: SecretRef | None = None
    client_key: SecretRef | None = None
    _known: asyncssh.SSHKnownHosts | None = PrivateAttr(default=None)

    @field_validator("host_key_fingerprints")
    @classmethod
    def _fingerprints(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for fingerprint in value:
            if not _FINGERPRINT.fullmatch(fingerprint):
                raise ValueError(
                    f'invalid fingerprint "{fingerprint}" (write it as "ssh-keygen -lf" '
                    'prints it: "SHA256:" and 43 base64 characters)'
                )
        return value

    @field_validator("host_key_algorithms")
    @classmethod
    def _algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if name not in _KEY_ALGS:
                raise ValueError(f'unknown host key algorithm "{name}"')
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        pinned = bool(self.host_key_fingerprints) or self.known_hosts is not None
        if self.accept_any_host_key and pinned:
            raise ValueError(
                '"accept_any_host_key" contradicts "host_key_fingerprints"/"known_hosts"'
            )
        has_secret = self.password is not None or self.client_key is not None
        if self.username is None and has_secret:
            raise ValueError('"password" and "client_key" need "username"')
        if self.username is not None and not has_secret:
            raise ValueError('"username" needs "password" or "client_key" (a secret)')
        if self.username is not None and not (pinned or self.accept_any_host_key):
            raise ValueError(
                "logging in needs a trusted host key: set host_key_fingerprints or "
                "known_hosts, or accept_any_host_key = true"
            )
        if self.known_hosts is not None:
            # Read once at load (and on reload), never per run.
            try:
                self._known = asyncssh.read_known_hosts(self.known_hosts)
            except OSError as exc:
                raise ValueError(f'cannot read "{self.known_hosts}": {exc.strerror}') from None
            except (ValueError, asyncssh.KeyImportError) as exc:
                raise ValueError(f'"{self.known_hosts}" is not a known_hosts file: {exc}') from None
        return self

    @property
    def login(self) -> bool:
        return self.username is not None

    @property
    def pinned(self) -> bool:
        return bool(self.host_key_fingerprints) or self._known is not None

    def trusts(self, key: asyncssh.SSHKey, host: str, addr: str, port: int) -> str | None:
        """None if ``key`` is trusted for this host (or pinning is off), else why not."""
        if not self.pinned:
            return None
        fingerprint = key.get_fingerprint("sha256")
        if fingerprint in self.host_key_fingerprints:
            return None
        if self._known is not None:
            trusted, _, revoked, *_ = self._known.match(host, addr, None if port == 22 else port)
            if key in revoked:
                return f"host key {fingerprint} is revoked in {self.known_hosts}"
            if key in trusted:
                return None
        return f"host key {key.get_algorithm()} {fingerprint} is not pinned for {host}"


class SSHSettings(SSHConnectSettings):
    port: int | None = Field(default=None, ge=1, le=65535)
    command: str | None = Field(default=None, min_length=1)
    command_exit_status: int = Field(default=0, ge=0, le=255)
    command_output: str | None = None
    command_output_limit: int = Field(default=65536, ge=1, le=16 * 1024 * 1024)
    _output: re.Pattern[bytes] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _command(self) -> Self:
        if self.command is not None and not self.login:
            raise ValueError('"command" needs a login ("username" and a secret)')
        if self.command is None and self.command_output is not None:
            raise ValueError('"command_output" needs "command"')
        if self.command_output is not None:
            try:
                self._output = re.compile(self.command_output.encode("utf-8"), re.MULTILINE)
            except re.error as exc:
                raise ValueError(
                    f"invalid regular expression {self.command_output!r}: {exc}"
                ) from None
        return self

    @property
    def output_pattern(self) -> re.Pattern[bytes] | None:
        return self._output


class PhaseClock:
    """Phases that begin and end inside asyncssh's callbacks, where ``with`` cannot reach."""

    __slots__ = ("phase", "rec", "since")

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.phase = ""
        self.since = 0.0

    def enter(self, phase: str) -> None:
        """Close the running phase (adding its time) and start ``phase`` ("" for none)."""
        now = time.perf_counter()
        if self.phase:
            self.rec.phases[self.phase] = self.rec.phases.get(self.phase, 0.0) + now - self.since
        self.phase, self.since = phase, now
        if phase:
            self.rec.current_phase = phase


def _label(text: str) -> str:
    return _LABEL_TEXT.sub("?", text)[:_MAX_LABEL]


def record_version(rec: Recorder, version: str) -> None:
    """``SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u10`` -> protocol, software, comments."""
    identification, _, comments = version.partition(" ")
    parts = identification.split("-", 2)
    protocol = parts[1] if len(parts) > 1 else ""
    software = parts[2] if len(parts) > 2 else ""
    rec.set(
        VERSION_INFO,
        1.0,
        protocol=_label(protocol),
        software=_label(software),
        comments=_label(comments),
    )


class _Observer(asyncssh.SSHClient):
    """Records what the server shows and decides about its host key."""

    def __init__(
        self,
        rec: Recorder,
        clock: PhaseClock,
        settings: SSHConnectSettings,
        host: str,
        port: int,
    ) -> None:
        self.rec = rec
        self.clock = clock
        self.settings = settings
        self.host = host
        self.port = port
        self.conn: asyncssh.SSHClientConnection | None = None
        self.version_recorded = False
        self.mismatch: str | None = None
        self.stopped_after_key = False

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self.conn = conn

    def record_version(self) -> None:
        if self.version_recorded or self.conn is None:
            return
        version = self.conn.get_extra_info("server_version")
        if isinstance(version, str) and version:
            record_version(self.rec, version)
            self.version_recorded = True

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        del host, port  # asyncssh's view of them; ours is the target's
        self.record_version()
        fingerprint = key.get_fingerprint("sha256")
        self.rec.set(
            HOST_KEY_INFO, 1.0, algorithm=key.get_algorithm(), fingerprint_sha256=fingerprint
        )
        self.rec.debug("host key", algorithm=key.get_algorithm(), fingerprint=fingerprint)
        self.mismatch = self.settings.trusts(key, self.host, addr, self.port)
        if self.settings.pinned:
            self.rec.set(HOST_KEY_MATCH, 0.0 if self.mismatch else 1.0)
        if self.mismatch is not None:
            self.clock.enter("")
            return False
        if not self.settings.login:
            # Refuse on purpose: the run is complete and no user name is sent.
            self.stopped_after_key = True
            self.clock.enter("")
            return False
        self.clock.enter("auth")
        return True

    def auth_completed(self) -> None:
        self.clock.enter("")


@dataclass(frozen=True, slots=True)
class _Credentials:
    password: str | None
    key: asyncssh.SSHKey | None


def _credentials(settings: SSHConnectSettings, env: Env, rec: Recorder) -> _Credentials | None:
    try:
        password = None
        if settings.password is not None:
            password = env.secrets.resolve(settings.password).reveal()
            rec.redact(password)
        key = None
        if settings.client_key is not None:
            secret = env.secrets.resolve(settings.client_key)
            try:
                key = asyncssh.import_private_key(secret.reveal())
            except asyncssh.KeyImportError:
                # The library's message may quote the key material: name the source only.
                rec.fail(
                    Reason.SECRET_UNAVAILABLE,
                    f"client_key from {secret.source}: not an unencrypted private key",
                )
                return None
    except SecretError as exc:
        rec.fail(Reason.SECRET_UNAVAILABLE, str(exc))
        return None
    return _Credentials(password, key)


def _disconnect_reason(exc: asyncssh.Error, observer: _Observer) -> tuple[Reason, str]:
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return Reason.SSH_HOST_KEY_MISMATCH, observer.mismatch or f"host key: {exc.reason}"
    if isinstance(exc, asyncssh.PermissionDenied):
        return Reason.AUTH_FAILED, f"login as {observer.settings.username} refused"
    if isinstance(exc, asyncssh.ConnectionLost):
        return Reason.CONNECTION_CLOSED, f"connection closed: {exc.reason}"
    return Reason.PROTOCOL_ERROR, f"{type(exc).__name__}: {exc.reason}"


def _handshake_failure(exc: Exception) -> tuple[Reason, str] | None:
    """The reason for a handshake that failed outside asyncssh.Error, or None for a bug.

    Besides socket errors, asyncssh lets two hostile cases out as plain Python errors: an
    identification string that is not ASCII (UnicodeDecodeError), and a peer that reset
    before asyncssh asked for its address (TypeError unpacking a None peername).
    """
    if isinstance(exc, OSError):
        error = os_error(exc, "during the SSH handshake")
        return error.reason, error.detail
    if isinstance(exc, UnicodeDecodeError):
        return Reason.PROTOCOL_ERROR, "the SSH identification string is not ASCII"
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None and tb.tb_frame.f_code.co_name == "_connection_made":
        return Reason.CONNECTION_RESET, "the peer was gone before the SSH handshake began"
    return None


async def open_ssh(
    target: Target, port: int, settings: SSHConnectSettings, rec: Recorder, env: Env
) -> tuple[bool, asyncssh.SSHClientConnection | None]:
    """Resolve, connect, exchange versions and keys, check the host key, log in.

    ``(False, None)``: failed, reason recorded. ``(True, None)``: no login configured and
    the host key checks passed. ``(True, conn)``: logged in; the caller closes ``conn``.
    """
    credentials = _credentials(settings, env, rec) if settings.login else _Credentials(None, None)
    if credentials is None:
        return False, None
    try:
        addresses = await resolve(
            target.host, port, rec, settings.ip_protocol, settings.ip_protocol_fallback
        )
        sock = await connect_socket(addresses[0], rec)
    except StreamError as exc:
        return rec.fail(exc.reason, exc.detail), None
    clock = PhaseClock(rec)
    observer = _Observer(rec, clock, settings, target.host, port)
    clock.enter("handshake")
    try:
        conn = await asyncssh.connect(
            sock=sock,
            config=None,
            client_factory=lambda: observer,
            username=settings.username or "probed",
            # Nothing trusted up front: every key reaches validate_host_public_key.
            known_hosts=([], [], []),
            server_host_key_algs=list(settings.host_key_algorithms) or (),
            x509_trusted_certs=None,
            x509_trusted_cert_paths=[],
            client_keys=[credentials.key] if credentials.key is not None else None,
            agent_identities=None,
            agent_path=None,
            agent_forwarding=False,
            pkcs11_provider=None,
            password=credentials.password,
            public_key_auth=credentials.key is not None,
            password_auth=credentials.password is not None,
            kbdint_auth=False,
            gss_auth=False,
            gss_kex=False,
            host_based_auth=False,
            client_version="probed",
            keepalive_interval=0,
        )
    except asyncssh.Error as exc:
        observer.record_version()
        clock.enter("")
        if observer.stopped_after_key:
            return True, None
        reason, detail = _disconnect_reason(exc, observer)
        return rec.fail(reason, detail), None
    except (OSError, UnicodeDecodeError, TypeError) as exc:
        observer.record_version()
        clock.enter("")
        failure = _handshake_failure(exc)
        if failure is None:
            raise
        return rec.fail(*failure), None
    finally:
        clock.enter("")
    rec.debug("logged in", username=settings.username)
    return True, conn


async def _run_command(
    conn: asyncssh.SSHClientConnection, settings: SSHSettings, rec: Recorder
) -> bool:
    assert settings.command is not None
    limit = settings.command_output_limit
    output = bytearray()
    with rec.phase("command"):
        try:
            async with conn.create_process(
                settings.command, stdin=asyncssh.DEVNULL, stderr=asyncssh.STDOUT, encoding=None
            ) as process:
                while chunk := await process.stdout.read(65536):
                    output += chunk
                    if len(output) > limit:
                        return rec.fail(
                            Reason.TOO_LARGE, f"command printed more than {limit} bytes"
                        )
                await process.wait_closed()
                status = process.exit_status
        except asyncssh.ChannelOpenError as exc:
            return rec.fail(Reason.COMMAND_FAILED, f"session refused: {exc.reason}")
        except asyncssh.Error as exc:
            return rec.fail(Reason.CONNECTION_CLOSED, f"during the command: {exc.reason}")
    exit_status = -1 if status is None else status
    rec.set(COMMAND_EXIT_STATUS, float(exit_status))
    rec.debug("command done", exit_status=exit_status, output_bytes=len(output))
    if exit_status != settings.command_exit_status:
        return rec.fail(
            Reason.COMMAND_FAILED,
            f"command exited {exit_status}, expected {settings.command_exit_status}",
        )
    pattern = settings.output_pattern
    if pattern is not None and pattern.search(bytes(output)) is None:
        return rec.fail(
            Reason.EXPECT_MISMATCH, f"command output did not match /{pattern.pattern!r}/"
        )
    return True


async def probe(target: Target, settings: SSHSettings, rec: Recorder, env: Env) -> bool:
    assert target.port is not None
    ok, conn = await open_ssh(target, target.port, settings, rec, env)
    if conn is None:
        return ok
    try:
        if settings.command is not None:
            return await _run_command(conn, settings, rec)
        return True
    finally:
        conn.close()
        await conn.wait_closed()


SPEC = ProbeSpec(
    name="ssh",
    probe=probe,
    settings=SSHSettings,
    phase_family=PHASES,
    families=FAMILIES,
    default_port=22,
)
