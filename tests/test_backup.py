"""The backup probe: a directory of files with known ages, over SFTP (sshd) and FTP (vsftpd)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from probed.probes.base import Reason
from probed.resources import Resources
from probed.results import Outcome
from probed.runner import execute
from tests.helpers import job
from tests.servers.fixtures import StartServer
from tests.servers.nginx import VirtualHost, run_nginx
from tests.servers.sshd import SshdServer
from tests.servers.vsftpd import VsftpdServer

HOUR = 3600.0


def _facts(outcome: Outcome) -> dict[str, float]:
    return {family.name: value for family, labels, value in outcome.samples if not labels}


@pytest.fixture
def backups(tmp_path: Path) -> Path:
    """db-old (3 days, 5000 B), db-new (1 h, 500 B), notes.txt (new), a matching directory."""
    directory = tmp_path / "backups"
    directory.mkdir()
    now = time.time()
    for name, size, age in (
        ("db-old.sql.gz", 5000, 72 * HOUR),
        ("db-new.sql.gz", 500, 1 * HOUR),
        ("notes.txt", 10, 0.0),
    ):
        path = directory / name
        path.write_bytes(b"x" * size)
        os.utime(path, (now - age, now - age))
    (directory / "db-dir.sql.gz").mkdir()  # matches the pattern, is not a file
    return directory


def _sftp(tmp_path: Path, server: SshdServer, directory: Path, **extra: Any) -> dict[str, Any]:
    (tmp_path / "id_backup").write_text(server.client_key.read_text())
    keys = [f"{server.host_keys[i]}.pub" for i in range(len(server.host_keys))]
    pins = [str(asyncssh.read_public_key(k).get_fingerprint("sha256")) for k in keys]
    return {
        "probe": "backup",
        "source": "sftp",
        "directory": str(directory),
        "pattern": "db-*.sql.gz",
        "max_age": "2h",
        "sftp": {
            "username": "root",
            "client_key": {"file": "id_backup"},
            "host_key_fingerprints": pins,
        },
        **extra,
    }


async def test_newest_backup_over_sftp(
    tmp_path: Path, env: Resources, sshd_server: SshdServer, backups: Path
) -> None:
    target = f"{sshd_server.host}:{sshd_server.port}"
    outcome = await execute(job(tmp_path, _sftp(tmp_path, sshd_server, backups), target), env)
    assert outcome.success, outcome.detail
    facts = _facts(outcome)
    assert facts["probe_backup_files"] == 2
    assert facts["probe_backup_size_bytes"] == 500
    assert HOUR - 60 < facts["probe_backup_age_seconds"] < HOUR + 60
    assert "list" in dict(outcome.phases)


@pytest.mark.parametrize(
    "case",
    [
        ({"max_age": "30m"}, Reason.BACKUP_TOO_OLD),
        ({"min_size": "1KiB"}, Reason.BACKUP_TOO_SMALL),
        ({"pattern": "web-*.tar"}, Reason.BACKUP_MISSING),
    ],
)
async def test_backup_verdicts(
    tmp_path: Path,
    env: Resources,
    sshd_server: SshdServer,
    backups: Path,
    case: tuple[dict[str, Any], Reason],
) -> None:
    extra, reason = case
    module = _sftp(tmp_path, sshd_server, backups, **extra)
    outcome = await execute(job(tmp_path, module, f"{sshd_server.host}:{sshd_server.port}"), env)
    assert outcome.reason is reason, outcome.detail


async def test_missing_directory_and_bad_pin(
    tmp_path: Path, env: Resources, sshd_server: SshdServer, backups: Path
) -> None:
    target = f"{sshd_server.host}:{sshd_server.port}"
    module = _sftp(tmp_path, sshd_server, backups / "absent")
    outcome = await execute(job(tmp_path, module, target), env)
    assert outcome.reason is Reason.BACKUP_MISSING, outcome.detail
    module = _sftp(tmp_path, sshd_server, backups)
    module["sftp"]["host_key_fingerprints"] = ["SHA256:" + "A" * 43]
    outcome = await execute(job(tmp_path, module, target), env)
    assert outcome.reason is Reason.SSH_HOST_KEY_MISMATCH, outcome.detail
    assert "list" not in dict(outcome.phases)


async def test_newest_backup_over_ftp(
    tmp_path: Path, env: Resources, vsftpd_server: VsftpdServer
) -> None:
    module = {
        "probe": "backup",
        "source": "ftp",
        "directory": "/",
        "pattern": "*.txt",
        "max_age": "1h",
        "ftp": {"username": "anonymous", "tls": "none"},
    }
    target = f"{vsftpd_server.host}:{vsftpd_server.port}"
    outcome = await execute(job(tmp_path, module, target), env)
    assert outcome.success, outcome.detail
    facts = _facts(outcome)
    assert facts["probe_backup_files"] >= 1
    assert facts["probe_backup_age_seconds"] < HOUR


async def test_http_source_reads_last_modified_from_nginx(
    tmp_path: Path, env: Resources, start_server: StartServer
) -> None:
    nginx = start_server(
        run_nginx(
            tls=False,
            vhosts=(VirtualHost("localhost", return_status=None),),
            static_files={"nightly/db.sql.gz": b"x" * 5000},
        )
    )
    stamp = time.time() - 2 * HOUR
    os.utime(nginx.www_dir / "nightly" / "db.sql.gz", (stamp, stamp))
    base = f"http://127.0.0.1:{nginx.http_port}/nightly"

    fresh = {"probe": "backup", "source": "http", "max_age": "3h", "min_size": 4000}
    outcome = await execute(job(tmp_path, fresh, f"{base}/db.sql.gz"), env)
    assert outcome.success, outcome.detail
    facts = _facts(outcome)
    assert abs(facts["probe_backup_age_seconds"] - 2 * HOUR) < 60
    assert facts["probe_backup_size_bytes"] == 5000
    assert facts["probe_http_status_code"] == 200

    old = {**fresh, "max_age": "1h"}
    outcome = await execute(job(tmp_path, old, f"{base}/db.sql.gz"), env)
    assert outcome.reason is Reason.BACKUP_TOO_OLD

    outcome = await execute(job(tmp_path, fresh, f"{base}/missing.sql.gz"), env)
    assert outcome.reason is Reason.BACKUP_MISSING, outcome.detail
