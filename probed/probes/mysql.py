"""``mysql``: the server greeting, or a login with a query, replication and connection facts.

Without ``username`` the run reads the greeting through our own bounded reader (the parser
the Heartbleed STARTTLS path shares, in ``dialogue``): version and whether TLS is offered;
with ``tls = true`` it then sends the SSLRequest and verifies the certificate through
``tlsfacts``. With ``username`` the run logs in through aiomysql (TLS where configured),
runs ``query``, reads ``Threads_connected`` against ``max_connections`` and the replica
status (MariaDB and MySQL syntax).

aiomysql is driven through a small subclass: it must refuse to log in when TLS is required
but the greeting does not offer it (aiomysql would silently carry on in plaintext), and it
must check the certificate against the target's name although we connect to the address
we resolved (aiomysql uses its ``host`` argument as the TLS server name).
"""

from __future__ import annotations

import contextvars
import re
import ssl
import struct
from typing import Any, Literal, Self

import aiomysql
from pydantic import Field, PrivateAttr, model_validator

from probed.durations import Duration
from probed.probes.base import Env, Family, ProbeSpec, Reason, Settings, Target
from probed.probes.dialogue import (
    CLIENT_SSL,
    MYSQL_MAX_GREETING,
    MySQLGreeting,
    read_mysql_greeting,
    send_mysql_ssl_request,
)
from probed.probes.stream import Address, StreamError, connect, os_error, resolve
from probed.probes.tlsfacts import FAMILIES as TLS_FAMILIES
from probed.probes.tlsfacts import (
    TLSSettings,
    build_context,
    handshake,
    record_facts,
    verify_reason,
)
from probed.results import Recorder
from probed.secrets import SecretError, SecretRef

PHASES = Family(
    "probe_mysql_duration_seconds",
    "Duration of each phase (resolve, connect, greeting, tls, query, status, replication) "
    "of the last run.",
)
VERSION_INFO = Family(
    "probe_mysql_version_info", "The server version from its greeting, and its flavor."
)
TLS_OFFERED = Family(
    "probe_mysql_tls_offered", "Whether the server's greeting offers TLS (CLIENT_SSL)."
)
CONNECTIONS = Family("probe_mysql_connections", "Connections in use (Threads_connected).")
MAX_CONNECTIONS = Family("probe_mysql_max_connections", "The server's max_connections.")
REPLICA = Family(
    "probe_mysql_replica", "Whether the server is a replica (its replica status has a row)."
)
IO_RUNNING = Family(
    "probe_mysql_replication_io_running", "Whether the replica's IO thread is running."
)
SQL_RUNNING = Family(
    "probe_mysql_replication_sql_running", "Whether the replica's SQL thread is running."
)
LAG = Family(
    "probe_mysql_replication_lag_seconds",
    "Seconds behind the source (absent while the replica threads are stopped).",
)
FAMILIES = (
    VERSION_INFO,
    TLS_OFFERED,
    CONNECTIONS,
    MAX_CONNECTIONS,
    REPLICA,
    IO_RUNNING,
    SQL_RUNNING,
    LAG,
    *TLS_FAMILIES,
)

# Server error codes that mean "these credentials may not log in here".
_AUTH_ERRORS = frozenset({1044, 1045, 1049, 1130, 1698, 1862})
_ER_SYNTAX = 1064
_ER_ACCESS = frozenset({1142, 1227})
_MAX_TEXT = 160


class MySQLSettings(Settings):
    port: int | None = Field(default=None, ge=1, le=65535)
    ip_protocol: Literal["ip4", "ip6"] = "ip6"
    ip_protocol_fallback: bool = True
    tls: bool = False
    tls_config: TLSSettings = Field(default_factory=TLSSettings)
    username: str | None = None
    password: SecretRef | None = None
    database: str | None = None
    query: str = Field(default="SELECT 1", min_length=1)
    query_expect: str | None = None
    replication: Literal["auto", "required", "off"] = "auto"
    max_replication_lag: Duration | None = None
    _expect: re.Pattern[str] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.username is None:
            login_only = [
                name
                for name in ("password", "database", "query_expect", "max_replication_lag")
                if getattr(self, name) is not None
            ]
            if self.replication == "required":
                login_only.append("replication")
            if "query" in self.model_fields_set:
                login_only.append("query")
            if login_only:
                raise ValueError(f'"{login_only[0]}" needs a login ("username")')
        if self.query_expect is not None:
            try:
                self._expect = re.compile(self.query_expect)
            except re.error as exc:
                raise ValueError(
                    f"invalid regular expression {self.query_expect!r}: {exc}"
                ) from None
        return self

    @property
    def expect(self) -> re.Pattern[str] | None:
        return self._expect


async def probe(target: Target, settings: MySQLSettings, rec: Recorder, env: Env) -> bool:
    assert target.port is not None
    try:
        addresses = await resolve(
            target.host, target.port, rec, settings.ip_protocol, settings.ip_protocol_fallback
        )
    except StreamError as exc:
        return rec.fail(exc.reason, exc.detail)
    if settings.username is None:
        return await _greeting_only(addresses[0], target, settings, rec, env)
    return await _session(addresses[0], target, settings, rec, env)


def _record_greeting(rec: Recorder, greeting: MySQLGreeting) -> None:
    rec.set(VERSION_INFO, 1.0, version=greeting.server_version[:64], flavor=greeting.flavor)
    rec.set(TLS_OFFERED, 1.0 if greeting.tls_offered else 0.0)


async def _greeting_only(
    address: Address, target: Target, settings: MySQLSettings, rec: Recorder, env: Env
) -> bool:
    try:
        stream = await connect(address, rec)
    except StreamError as exc:
        return rec.fail(exc.reason, exc.detail)
    with stream:
        with rec.phase("greeting"):
            try:
                greeting = await read_mysql_greeting(stream)
            except StreamError as exc:
                return rec.fail(exc.reason, exc.detail)
        _record_greeting(rec, greeting)
        rec.debug("greeting", version=greeting.version[:64], tls=greeting.tls_offered)
        if not settings.tls:
            return True
        if not greeting.tls_offered:
            return rec.fail(Reason.STARTTLS_REFUSED, "the server does not offer TLS")
        try:
            send_mysql_ssl_request(stream)
        except StreamError as exc:
            return rec.fail(exc.reason, exc.detail)
        return await handshake(stream, env, settings.tls_config, target.host, rec)


# -- logged-in checks (aiomysql) ----------------------------------------------------------


class _TLSWatch:
    """Per run: the SSL object aiomysql's handshake used (its facts survive a failure)."""

    __slots__ = ("ssl_object",)

    def __init__(self) -> None:
        self.ssl_object: ssl.SSLObject | None = None


_WATCH: contextvars.ContextVar[_TLSWatch | None] = contextvars.ContextVar(
    "probed_mysql_tls", default=None
)


class _WatchedSSLObject(ssl.SSLObject):
    def do_handshake(self) -> None:
        # The first step runs inside the probe's task (loop.create_connection).
        watch = _WATCH.get()
        if watch is not None and watch.ssl_object is None:
            watch.ssl_object = self
        super().do_handshake()


class _TLSNotOfferedError(Exception):
    """TLS is required and the greeting lacks CLIENT_SSL: no credentials are sent."""


class _PacketTooLargeError(aiomysql.Error):  # type: ignore[misc]  # aiomysql ships no types
    """The server announced a packet above the limit; nothing of it was read."""

    def __init__(self, size: int, limit: int, *, greeting: bool) -> None:
        what = "MySQL greeting" if greeting else "packet"
        super().__init__(f"the server announced a {what} of {size} bytes (limit {limit})")
        # An absurd greeting is a protocol error, as on the greeting-only path.
        self.reason = Reason.PROTOCOL_ERROR if greeting else Reason.TOO_LARGE


# aiomysql reads whatever length a packet announces (16 MiB, then more for a continued one),
# so a hostile server could make one run hold tens of MiB. Greetings are ~100 bytes and the
# probe's own answers (status rows, a small query) a few KiB.
_MAX_GREETING_PACKET = MYSQL_MAX_GREETING
_MAX_PACKET = 1024 * 1024


class _Connection(aiomysql.Connection):  # type: ignore[misc]  # aiomysql ships no types
    """aiomysql's connection with two guards before the credentials go out, and bounded
    packet reads."""

    def __init__(self, *, server_name: str | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._probed_server_name = server_name
        self._probed_packet_limit = _MAX_GREETING_PACKET

    async def _read_bytes(self, num_bytes: int) -> bytes:
        if num_bytes > self._probed_packet_limit:
            self.close()
            raise _PacketTooLargeError(
                num_bytes,
                self._probed_packet_limit,
                greeting=self._probed_packet_limit == _MAX_GREETING_PACKET,
            )
        data: bytes = await super()._read_bytes(num_bytes)
        return data

    async def _get_server_information(self) -> None:
        await super()._get_server_information()
        self._probed_packet_limit = _MAX_PACKET

    async def _request_authentication(self) -> None:
        if self._probed_server_name is not None:
            if not self.server_capabilities & CLIENT_SSL:
                raise _TLSNotOfferedError
            # aiomysql passes its host (our resolved address) as the TLS server name.
            self._host = self._probed_server_name
        await super()._request_authentication()


def _context(env: Env, settings: TLSSettings) -> ssl.SSLContext:
    def build() -> ssl.SSLContext:
        ctx = build_context(settings)
        ctx.sslobject_class = _WatchedSSLObject
        return ctx

    # Its own cache key: the shared tlsfacts context stays untouched.
    return env.ssl_context(("mysql", settings), build)


def _error_code(exc: BaseException) -> int:
    return exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0


def _error_text(exc: BaseException) -> str:
    text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
    return text[:_MAX_TEXT]


def _transport_failure(cause: BaseException | None) -> tuple[Reason, str] | None:
    """The TLS or socket error aiomysql wrapped into its OperationalError, if any."""
    if isinstance(cause, ssl.SSLCertVerificationError):
        return verify_reason(cause), f"certificate: {cause.verify_message}"
    if isinstance(cause, ssl.SSLError):
        return Reason.TLS_HANDSHAKE, f"TLS handshake: {cause.reason or cause}"
    if isinstance(cause, OSError):
        error = os_error(cause, "talking to the server")
        return error.reason, error.detail
    return None


def _login_failure(exc: BaseException, username: str) -> tuple[Reason, str]:
    if isinstance(exc, _PacketTooLargeError):
        return exc.reason, str(exc)
    if isinstance(exc, _TLSNotOfferedError):
        return Reason.STARTTLS_REFUSED, "the server does not offer TLS; no credentials sent"
    code = _error_code(exc)
    if code in _AUTH_ERRORS:
        return Reason.AUTH_FAILED, f"login as {username} refused: {code} {_error_text(exc)}"
    failure = _transport_failure(exc.__cause__)
    if failure is None and isinstance(exc, aiomysql.OperationalError) and code:
        failure = Reason.CONNECT_ERROR, f"server refused: {code} {_error_text(exc)}"
    return failure or (Reason.PROTOCOL_ERROR, f"{type(exc).__name__}: {_error_text(exc)}")


# What a hostile or broken greeting makes aiomysql's parser raise.
_WIRE_ERRORS = (
    aiomysql.Error,
    _TLSNotOfferedError,
    struct.error,
    IndexError,
    ValueError,
    UnicodeDecodeError,
    KeyError,
)


async def _session(
    address: Address, target: Target, settings: MySQLSettings, rec: Recorder, env: Env
) -> bool:
    assert settings.username is not None
    try:
        secret = None if settings.password is None else env.secrets.resolve(settings.password)
    except SecretError as exc:
        return rec.fail(Reason.SECRET_UNAVAILABLE, str(exc))
    if secret is not None:
        rec.redact(secret.reveal())
    watch = _TLSWatch()
    _WATCH.set(watch)  # this run's task context only
    conn = _Connection(
        server_name=(settings.tls_config.server_name or target.host) if settings.tls else None,
        host=address[1][0],
        port=address[1][1],
        user=settings.username,
        password="" if secret is None else secret.reveal(),
        db=settings.database,
        ssl=_context(env, settings.tls_config) if settings.tls else None,
        autocommit=True,
        local_infile=False,
        program_name="probed",
    )
    try:
        with rec.phase("connect"):
            try:
                # aiomysql.connect() would lose the connection object on cancellation; this
                # is its body, with the object kept so the finally below always closes it.
                await conn._connect()
            except _WIRE_ERRORS as exc:
                _tls_facts(rec, watch)
                reason, detail = _login_failure(exc, settings.username)
                return rec.fail(reason, detail)
        _record_greeting(
            rec, MySQLGreeting(version=conn.server_version, capabilities=conn.server_capabilities)
        )
        _tls_facts(rec, watch)
        ok = await _checks(conn, settings, rec)
        if ok:
            await conn.ensure_closed()  # COM_QUIT: a clean goodbye, not an aborted client
        return ok
    finally:
        conn.close()


def _tls_facts(rec: Recorder, watch: _TLSWatch) -> None:
    obj = watch.ssl_object
    if obj is not None:
        # A finished handshake with verification on means the chain and name were verified.
        verified = obj.version() is not None and obj.context.verify_mode != ssl.CERT_NONE
        record_facts(rec, obj, verified=verified)


async def _checks(conn: Any, settings: MySQLSettings, rec: Recorder) -> bool:
    try:
        with rec.phase("query"):
            value = await _first_value(conn, settings.query)
        rec.debug("query answered", value=None if value is None else str(value)[:80])
        expect = settings.expect
        if expect is not None and (value is None or expect.search(str(value)) is None):
            shown = "no row" if value is None else repr(str(value)[:80])
            return rec.fail(
                Reason.EXPECT_MISMATCH, f"query answered {shown}, expected /{expect.pattern}/"
            )
        with rec.phase("status"):
            status = await _rows(conn, "SHOW GLOBAL STATUS LIKE 'Threads_connected'")
            limit = await _first_value(conn, "SELECT @@GLOBAL.max_connections")
        if status:
            rec.set(CONNECTIONS, float(status[0]["Value"]))
        if limit is not None:
            rec.set(MAX_CONNECTIONS, float(limit))
        if settings.replication == "off":
            return True
        with rec.phase("replication"):
            replica = await _replica_status(conn)
    except aiomysql.Error as exc:
        code = _error_code(exc)
        if code in _ER_ACCESS:
            return rec.fail(Reason.QUERY_FAILED, f"permission denied: {_error_text(exc)}")
        if isinstance(exc, aiomysql.ProgrammingError | aiomysql.InternalError) and code:
            return rec.fail(Reason.QUERY_FAILED, f"{code} {_error_text(exc)}")
        return rec.fail(*_login_failure(exc, settings.username or ""))
    return _judge_replica(replica, settings, rec)


async def _rows(conn: Any, statement: str) -> list[dict[str, Any]]:
    async with conn.cursor(aiomysql.DictCursor) as cursor:
        await cursor.execute(statement)
        rows: list[dict[str, Any]] = list(await cursor.fetchmany(16))
        return rows


async def _first_value(conn: Any, statement: str) -> Any:
    # Unbuffered: a query returning a million rows costs one row of memory.
    async with conn.cursor(aiomysql.SSCursor) as cursor:
        await cursor.execute(statement)
        row = await cursor.fetchone()
    return None if not row else row[0]


async def _replica_status(conn: Any) -> dict[str, Any] | None:
    try:
        rows = await _rows(conn, "SHOW REPLICA STATUS")
    except aiomysql.ProgrammingError as exc:
        if _error_code(exc) != _ER_SYNTAX:
            raise
        rows = await _rows(conn, "SHOW SLAVE STATUS")  # MySQL before 8.0.22, MariaDB < 10.5
    return rows[0] if rows else None


def _column(row: dict[str, Any], *names: str) -> Any:
    for name in names:
        if name in row:
            return row[name]
    return None


def _judge_replica(row: dict[str, Any] | None, settings: MySQLSettings, rec: Recorder) -> bool:
    rec.set(REPLICA, 0.0 if row is None else 1.0)
    if row is None:
        if settings.replication == "required":
            return rec.fail(Reason.REPLICATION_BROKEN, "not a replica (replica status is empty)")
        return True
    io = _column(row, "Replica_IO_Running", "Slave_IO_Running")
    sql = _column(row, "Replica_SQL_Running", "Slave_SQL_Running")
    lag = _column(row, "Seconds_Behind_Source", "Seconds_Behind_Master")
    rec.set(IO_RUNNING, 1.0 if io == "Yes" else 0.0)
    rec.set(SQL_RUNNING, 1.0 if sql == "Yes" else 0.0)
    if lag is not None:
        rec.set(LAG, float(lag))
    rec.debug("replica", io=io, sql=sql, lag=lag)
    if io != "Yes" or sql != "Yes":
        error = row.get("Last_SQL_Error") or row.get("Last_IO_Error") or ""
        return rec.fail(
            Reason.REPLICATION_BROKEN,
            f"IO thread {io}, SQL thread {sql}" + (f": {str(error)[:_MAX_TEXT]}" if error else ""),
        )
    limit = settings.max_replication_lag
    if limit is not None and lag is not None and float(lag) > limit:
        return rec.fail(Reason.REPLICATION_LAG, f"{lag} s behind the source (limit {limit:g} s)")
    return True


SPEC = ProbeSpec(
    name="mysql",
    probe=probe,
    settings=MySQLSettings,
    phase_family=PHASES,
    families=FAMILIES,
    default_port=3306,
)
