"""The mysql probe against MariaDB (fixtures: plain, TLS, a replica) and hostile peers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from probed.probes.base import Reason
from probed.resources import Resources
from probed.results import Outcome
from probed.runner import execute
from tests.helpers import job, serve
from tests.servers.mariadb import MariaDBServer


def _facts(outcome: Outcome) -> dict[str, list[tuple[str, float]]]:
    out: dict[str, list[tuple[str, float]]] = {}
    for family, labels, value in outcome.samples:
        out.setdefault(family.name, []).append((labels, value))
    return out


def _value(outcome: Outcome, name: str) -> float:
    [(_, value)] = _facts(outcome)[name]
    return value


def _login(tmp_path: Path, server: MariaDBServer, **extra: Any) -> dict[str, Any]:
    (tmp_path / "dbpw").write_text(server.password + "\n")
    return {"probe": "mysql", "username": server.user, "password": {"file": "dbpw"}, **extra}


def _target(server: MariaDBServer) -> str:
    return f"{server.host}:{server.port}"


async def test_greeting_without_credentials(
    tmp_path: Path, env: Resources, mariadb_server: MariaDBServer
) -> None:
    outcome = await execute(job(tmp_path, {"probe": "mysql"}, _target(mariadb_server)), env)
    assert outcome.success, outcome.detail
    [(labels, _)] = _facts(outcome)["probe_mysql_version_info"]
    assert 'flavor="mariadb"' in labels
    assert 'version="10.' in labels  # MariaDB's "5.5.5-" prefix is dropped
    assert _value(outcome, "probe_mysql_tls_offered") == 0.0
    assert set(dict(outcome.phases)) == {"connect", "greeting"}
    refused = await execute(
        job(tmp_path, {"probe": "mysql", "tls": True}, _target(mariadb_server)), env
    )
    assert refused.reason is Reason.STARTTLS_REFUSED, refused.detail


async def test_greeting_with_tls_and_certificate_facts(
    tmp_path: Path, env: Resources, mariadb_tls_server: MariaDBServer
) -> None:
    assert mariadb_tls_server.ca_cert is not None
    module = {
        "probe": "mysql",
        "tls": True,
        "tls_config": {"ca_file": str(mariadb_tls_server.ca_cert)},
    }
    outcome = await execute(job(tmp_path, module, _target(mariadb_tls_server)), env)
    assert outcome.success, outcome.detail
    facts = _facts(outcome)
    assert facts["probe_mysql_tls_offered"] == [("", 1.0)]
    assert facts["probe_tls_certificate_verified"] == [("", 1.0)]
    assert "probe_ssl_earliest_cert_expiry" in facts
    untrusted = await execute(
        job(tmp_path, {"probe": "mysql", "tls": True}, _target(mariadb_tls_server)), env
    )
    # MariaDB sends the CA along: OpenSSL calls that a self-signed certificate in the chain.
    assert untrusted.reason is Reason.TLS_CERT_SELF_SIGNED, untrusted.detail
    assert "probe_ssl_earliest_cert_expiry" in _facts(untrusted)


async def test_login_query_and_connections(
    tmp_path: Path, env: Resources, mariadb_server: MariaDBServer
) -> None:
    module = _login(tmp_path, mariadb_server, query="SELECT 40 + 2", query_expect="^42$")
    outcome = await execute(job(tmp_path, module, _target(mariadb_server)), env, capture_log=True)
    assert outcome.success, outcome.detail
    facts = _facts(outcome)
    assert facts["probe_mysql_max_connections"] == [("", 151.0)]
    assert facts["probe_mysql_connections"][0][1] >= 1
    assert facts["probe_mysql_replica"] == [("", 0.0)]
    assert set(dict(outcome.phases)) == {"connect", "query", "status", "replication"}
    assert mariadb_server.password not in repr(outcome)

    wrong = _login(tmp_path, mariadb_server, query="SELECT 41", query_expect="^42$")
    outcome = await execute(job(tmp_path, wrong, _target(mariadb_server)), env)
    assert outcome.reason is Reason.EXPECT_MISMATCH, outcome.detail
    broken = _login(tmp_path, mariadb_server, query="SELECT * FROM nowhere.nothing")
    outcome = await execute(job(tmp_path, broken, _target(mariadb_server)), env)
    assert outcome.reason is Reason.QUERY_FAILED, outcome.detail
    required = _login(tmp_path, mariadb_server, replication="required")
    outcome = await execute(job(tmp_path, required, _target(mariadb_server)), env)
    assert outcome.reason is Reason.REPLICATION_BROKEN, outcome.detail


async def test_wrong_password_and_missing_secret(
    tmp_path: Path, env: Resources, mariadb_server: MariaDBServer
) -> None:
    (tmp_path / "bad").write_text("wrong-password\n")
    module = {"probe": "mysql", "username": "probe", "password": {"file": "bad"}}
    outcome = await execute(job(tmp_path, module, _target(mariadb_server)), env)
    assert outcome.reason is Reason.AUTH_FAILED, outcome.detail
    assert "wrong-password" not in repr(outcome)
    module["password"] = {"env": "PROBED_TEST_UNSET_VARIABLE"}
    outcome = await execute(job(tmp_path, module, _target(mariadb_server)), env)
    assert outcome.reason is Reason.SECRET_UNAVAILABLE, outcome.detail


async def test_login_over_tls(
    tmp_path: Path,
    env: Resources,
    mariadb_tls_server: MariaDBServer,
    mariadb_server: MariaDBServer,
) -> None:
    assert mariadb_tls_server.ca_cert is not None
    tls = {"tls": True, "tls_config": {"ca_file": str(mariadb_tls_server.ca_cert)}}
    module = _login(tmp_path, mariadb_tls_server, **tls)
    outcome = await execute(job(tmp_path, module, _target(mariadb_tls_server)), env)
    assert outcome.success, outcome.detail
    facts = _facts(outcome)
    assert facts["probe_tls_certificate_verified"] == [("", 1.0)]
    assert any('version="TLS 1.3"' in labels for labels, _ in facts["probe_tls_version_info"])
    untrusted = _login(tmp_path, mariadb_tls_server, tls=True)
    outcome = await execute(job(tmp_path, untrusted, _target(mariadb_tls_server)), env)
    assert outcome.reason is Reason.TLS_CERT_SELF_SIGNED, outcome.detail
    assert "probe_ssl_earliest_cert_expiry" in _facts(outcome)
    # TLS required, not offered: the credentials are never sent.
    plain = _login(tmp_path, mariadb_server, **tls)
    outcome = await execute(job(tmp_path, plain, _target(mariadb_server)), env)
    assert outcome.reason is Reason.STARTTLS_REFUSED, outcome.detail


def _wait_for(check: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


async def test_replication_running_stopped_and_lagging(
    tmp_path: Path, env: Resources, mariadb_replication: tuple[MariaDBServer, MariaDBServer]
) -> None:
    primary, replica = mariadb_replication
    module = _login(tmp_path, replica, replication="required", max_replication_lag="1s")
    target = _target(replica)

    outcome = await execute(job(tmp_path, module, target), env)
    assert outcome.success, outcome.detail
    facts = _facts(outcome)
    assert facts["probe_mysql_replica"] == [("", 1.0)]
    assert facts["probe_mysql_replication_io_running"] == [("", 1.0)]
    assert facts["probe_mysql_replication_sql_running"] == [("", 1.0)]
    assert facts["probe_mysql_replication_lag_seconds"] == [("", 0.0)]

    replica.sql("STOP SLAVE SQL_THREAD")
    outcome = await execute(job(tmp_path, module, target), env)
    assert outcome.reason is Reason.REPLICATION_BROKEN, outcome.detail
    facts = _facts(outcome)
    assert facts["probe_mysql_replication_sql_running"] == [("", 0.0)]
    assert facts["probe_mysql_replication_io_running"] == [("", 1.0)]
    assert "probe_mysql_replication_lag_seconds" not in facts  # NULL while stopped

    replica.sql("STOP SLAVE; CHANGE MASTER TO MASTER_DELAY=30; START SLAVE;")
    primary.sql("CREATE DATABASE lagtest")

    def lagging() -> bool:
        lag = replica.replica_status().get("Seconds_Behind_Master", "NULL")
        return lag != "NULL" and int(lag) >= 2

    await asyncio.to_thread(_wait_for, lagging, "replica never lagged")
    outcome = await execute(job(tmp_path, module, target), env)
    assert outcome.reason is Reason.REPLICATION_LAG, outcome.detail
    assert _value(outcome, "probe_mysql_replication_lag_seconds") >= 2


async def _absurd_length(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"\xff\xff\xff\x00" + b"\x0a5.7.0\x00" + b"A" * 4000)
    await writer.drain()
    await reader.read(1)


async def _garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"\x20\x00\x00\x00" + bytes(range(200, 232)))
    await writer.drain()
    await reader.read(1)


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(3600)


async def test_hostile_greetings(tmp_path: Path, env: Resources) -> None:
    (tmp_path / "pw").write_text("pw\n")
    login = {"probe": "mysql", "username": "u", "password": {"file": "pw"}}
    for handler, reason in (
        (_absurd_length, Reason.PROTOCOL_ERROR),
        (_garbage, Reason.PROTOCOL_ERROR),
    ):
        async with serve(handler) as port:
            bare = await execute(job(tmp_path, {"probe": "mysql"}, f"127.0.0.1:{port}"), env)
            assert bare.reason is reason, (handler.__name__, bare.detail)
            # aiomysql's own reader: it waits for the 16 MiB that never come, or gives up.
            spec = job(tmp_path, login, f"127.0.0.1:{port}", timeout="500ms")
            logged = await execute(spec, env)
            assert logged.reason in {Reason.TIMEOUT, Reason.PROTOCOL_ERROR}, logged.detail
    async with serve(_silent) as port:
        spec = job(tmp_path, {"probe": "mysql"}, f"127.0.0.1:{port}", timeout="300ms")
        outcome = await execute(spec, env)
    assert outcome.reason is Reason.TIMEOUT
    assert "greeting" in outcome.detail
