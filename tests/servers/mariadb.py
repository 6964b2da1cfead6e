"""MariaDB primary (optionally with TLS) and a GTID replica of it.

Administration goes through the ``mariadb`` command-line client as root over the unix socket;
a throwaway TCP user (``probe``/``probepw`` at ``%``, with ``SLAVE MONITOR`` and ``PROCESS``)
is created for tests. Users are created with ``sql_log_bin=0`` so that a replica replaying the
primary's binlog never collides with its own local users.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .certs import CertFiles, certs_for_server
from .common import (
    DEFAULT_TIMEOUT,
    LOCALHOST,
    ServerProcess,
    ServerStartError,
    free_port,
    require_binary,
    run_checked,
    service_dir,
    started,
    tail,
    wait_until,
)

CLIENT_SSL = 0x0800
PROBE_USER = "probe"
PROBE_PASSWORD = "probepw"  # noqa: S105 - throwaway test credential
REPL_USER = "repl"
REPL_PASSWORD = "replpw"  # noqa: S105 - throwaway test credential


@dataclass(frozen=True)
class Greeting:
    protocol: int
    version: str
    capabilities: int
    """Capability flags (lower and upper 16 bits combined)."""

    @property
    def ssl(self) -> bool:
        return bool(self.capabilities & CLIENT_SSL)


def parse_greeting(packet: bytes) -> Greeting:
    """Parse a MySQL/MariaDB initial handshake packet (header included)."""
    if len(packet) < 4:
        raise ValueError(f"short packet {packet!r}")
    length = int.from_bytes(packet[:3], "little")
    payload = packet[4 : 4 + length]
    if len(payload) < length:
        raise ValueError("truncated greeting")
    protocol = payload[0]
    if protocol != 10:
        raise ValueError(f"not a v10 handshake: {payload[:64]!r}")
    end = payload.index(b"\0", 1)
    version = payload[1:end].decode("ascii", "replace")
    pos = end + 1 + 4 + 8 + 1  # thread id, auth data part 1, filler
    (cap_low,) = struct.unpack_from("<H", payload, pos)
    cap_high = 0
    if len(payload) >= pos + 2 + 1 + 2 + 2:
        (cap_high,) = struct.unpack_from("<H", payload, pos + 2 + 1 + 2)
    return Greeting(protocol=protocol, version=version, capabilities=cap_low | (cap_high << 16))


def read_greeting(host: str, port: int, timeout: float = 2.0) -> Greeting:
    """Connect and parse the server's greeting (blocking, for fixtures)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        data = b""
        while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:3], "little"):
            chunk = sock.recv(4096)
            if not chunk:
                raise ValueError(f"closed after {data!r}")
            data += chunk
        return parse_greeting(data)


@dataclass(frozen=True)
class MariaDBServer:
    host: str
    port: int
    socket: Path
    data_dir: Path
    server_id: int
    tls: bool
    certs: CertFiles | None
    user: str
    password: str
    version: str
    pid: int
    log_path: Path
    primary_port: int | None = None
    """For a replica: the port of the primary it replicates from."""

    @property
    def ca_cert(self) -> Path | None:
        return None if self.certs is None else self.certs.ca_cert

    def sql(self, statement: str, *, timeout: float = DEFAULT_TIMEOUT) -> str:
        """Run SQL as root over the socket; raw tab-separated output without column names."""
        return run_checked(
            [_client(), "--no-defaults", "-S", str(self.socket), "-uroot", "-B", "-N"],
            what="mariadb client",
            timeout=timeout,
            input_text=statement,
        )

    def query(self, statement: str) -> list[dict[str, str]]:
        """Run one SELECT/SHOW as root; rows as dicts (``NULL`` stays the string ``"NULL"``)."""
        out = run_checked(
            [_client(), "--no-defaults", "-S", str(self.socket), "-uroot", "-B"],
            what="mariadb client",
            input_text=statement,
        )
        lines = out.splitlines()
        if not lines:
            return []
        header = lines[0].split("\t")
        return [dict(zip(header, line.split("\t"), strict=False)) for line in lines[1:]]

    def replica_status(self) -> dict[str, str]:
        """``SHOW SLAVE STATUS`` as a dict (empty if not a replica)."""
        rows = self.query("SHOW SLAVE STATUS")
        return rows[0] if rows else {}


def _client() -> str:
    return require_binary("mariadb", "mariadb-client-core")


_template: list[Path] = []
_template_lock = threading.Lock()


def _fresh_datadir(data: Path) -> None:
    """Copy a pristine datadir made once per process by ``mariadb-install-db`` (0.6 s -> 0.04 s)."""
    with _template_lock:
        if not _template:
            base = Path(tempfile.mkdtemp(prefix="probed-mariadb-template-", dir="/tmp"))
            atexit.register(shutil.rmtree, base, ignore_errors=True)
            _install_db(base / "data")
            _template.append(base / "data")
    shutil.copytree(_template[0], data)


def _install_db(data: Path) -> None:
    install = require_binary("mariadb-install-db", "mariadb-server")
    run_checked(
        [
            install,
            "--no-defaults",
            f"--datadir={data}",
            "--user=root",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--innodb-log-file-size=4M",
        ],
        what="mariadb-install-db",
        timeout=60,
    )


@contextlib.contextmanager
def run_mariadb(
    *,
    tls: bool = False,
    certs: CertFiles | None = None,
    server_id: int = 1,
    log_bin: bool = True,
    replica: bool = False,
    require_secure_transport: bool = False,
    extra_args: Sequence[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
) -> Iterator[MariaDBServer]:
    """Start ``mariadbd`` on 127.0.0.1 with a fresh datadir (root has no password).

    ``tls`` passes ``--ssl-cert/--ssl-key/--ssl-ca`` (``certs`` or a fresh CA + localhost leaf),
    which sets CLIENT_SSL in the greeting. ``replica=True`` adds a relay log and
    ``--read-only=1`` (use :func:`run_mariadb_replica` to wire it to a primary).
    """
    mariadbd = require_binary("mariadbd", "mariadb-server")
    with service_dir("mariadb") as base:
        data = base / "data"
        _fresh_datadir(data)
        port = free_port()
        sock = base / "sock"
        err_log = base / "err.log"
        argv = [
            mariadbd,
            "--no-defaults",
            f"--datadir={data}",
            f"--socket={sock}",
            f"--port={port}",
            f"--bind-address={LOCALHOST}",
            "--user=root",
            f"--log-error={err_log}",
            f"--pid-file={base / 'mariadbd.pid'}",
            "--innodb-log-file-size=4M",
            "--innodb-buffer-pool-size=16M",
            "--skip-name-resolve",
            "--max-connect-errors=1000000",
            f"--server-id={server_id}",
        ]
        if log_bin:
            argv.append(f"--log-bin={data / 'mysql-bin'}")
        if replica:
            argv += [f"--relay-log={data / 'relay-bin'}", "--read-only=1"]
        server_certs: CertFiles | None = None
        if tls:
            server_certs = certs_for_server(base / "tls", certs)
            argv += [
                f"--ssl-cert={server_certs.cert}",
                f"--ssl-key={server_certs.key}",
                f"--ssl-ca={server_certs.ca_cert}",
            ]
        if require_secure_transport:
            argv.append("--require-secure-transport=ON")
        argv += list(extra_args)
        proc = ServerProcess("mariadbd", argv, log_path=base / "server.log", extra_logs=[err_log])
        with started(proc):
            greeting = wait_until(
                lambda: read_greeting(LOCALHOST, port),
                proc=proc,
                what=f"MariaDB greeting on {LOCALHOST}:{port}",
                timeout=timeout,
            )
            if tls and not greeting.ssl:
                raise proc.failure("TLS configured but greeting lacks CLIENT_SSL")
            server = MariaDBServer(
                host=LOCALHOST,
                port=port,
                socket=sock,
                data_dir=data,
                server_id=server_id,
                tls=tls,
                certs=server_certs,
                user=PROBE_USER,
                password=PROBE_PASSWORD,
                version=greeting.version,
                pid=proc.pid,
                log_path=err_log,
            )
            try:
                server.sql(
                    "SET sql_log_bin=0;\n"
                    f"CREATE USER '{PROBE_USER}'@'%' IDENTIFIED BY '{PROBE_PASSWORD}';\n"
                    f"GRANT SLAVE MONITOR, PROCESS ON *.* TO '{PROBE_USER}'@'%';\n"
                )
            except ServerStartError as exc:
                raise proc.failure(f"creating the probe user failed: {exc}") from exc
            yield server


@contextlib.contextmanager
def run_mariadb_replica(
    primary: MariaDBServer,
    *,
    server_id: int = 2,
    delay: int = 0,
    timeout: float = DEFAULT_TIMEOUT,
) -> Iterator[MariaDBServer]:
    """Start a replica of ``primary`` (GTID ``slave_pos``, connect retry 1 s).

    Yields once ``Slave_IO_Running`` and ``Slave_SQL_Running`` are both ``Yes``. Drive states
    with ``replica.sql("STOP SLAVE SQL_THREAD")`` etc.; ``delay`` sets ``MASTER_DELAY``.
    """
    primary.sql(
        "SET sql_log_bin=0;\n"
        f"CREATE USER IF NOT EXISTS '{REPL_USER}'@'127.0.0.1' IDENTIFIED BY '{REPL_PASSWORD}';\n"
        f"GRANT REPLICATION SLAVE ON *.* TO '{REPL_USER}'@'127.0.0.1';\n"
    )
    with run_mariadb(server_id=server_id, replica=True, timeout=timeout) as replica:
        replica.sql(
            f"CHANGE MASTER TO MASTER_HOST='{primary.host}', MASTER_PORT={primary.port}, "
            f"MASTER_USER='{REPL_USER}', MASTER_PASSWORD='{REPL_PASSWORD}', "
            f"MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1, MASTER_DELAY={delay};\n"
            "START SLAVE;\n"
        )
        deadline = time.monotonic() + timeout
        status: dict[str, str] = {}
        while time.monotonic() < deadline:
            status = replica.replica_status()
            if status.get("Slave_IO_Running") == "Yes" and status.get("Slave_SQL_Running") == "Yes":
                break
            time.sleep(0.1)
        else:
            raise ServerStartError(
                f"replica of 127.0.0.1:{primary.port} not running within {timeout:.0f} s: "
                f"IO={status.get('Slave_IO_Running')} SQL={status.get('Slave_SQL_Running')} "
                f"io_error={status.get('Last_IO_Error')!r} "
                f"sql_error={status.get('Last_SQL_Error')!r}\n"
                f"--- {replica.log_path} ---\n{tail(replica.log_path)}"
            )
        yield MariaDBServer(
            host=replica.host,
            port=replica.port,
            socket=replica.socket,
            data_dir=replica.data_dir,
            server_id=server_id,
            tls=False,
            certs=None,
            user=replica.user,
            password=replica.password,
            version=replica.version,
            pid=replica.pid,
            log_path=replica.log_path,
            primary_port=primary.port,
        )
