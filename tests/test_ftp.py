"""The ftp probe against a real vsftpd (AUTH TLS with TLS session reuse on the data
channel, implicit TLS, anonymous listing, refused logins) and hostile peers (vsftpd's
``500 OOPS`` after AUTH TLS, floods); the listing parser on the formats servers use."""

from __future__ import annotations

import asyncio
import calendar
import os
import time
from pathlib import Path
from typing import Any

from probed.probes.base import Reason
from probed.probes.ftp import FTPSettings, list_directory, parse_listing
from probed.resources import Resources
from probed.results import Outcome, Recorder
from probed.runner import execute
from tests.conftest import Certs
from tests.helpers import job, serve
from tests.servers.certs import CertAuthority
from tests.servers.fixtures import StartServer
from tests.servers.vsftpd import VsftpdServer, run_vsftpd
from tests.test_smtp import facts

FILES = {"backups/old.tar": b"o" * 10, "backups/new.tar": b"n" * 1234, "hello.txt": b"hi\n"}


async def run(
    tmp_path: Path, env: Resources, module: dict[str, Any], target: str, deadline: str = "5s"
) -> Outcome:
    spec = job(tmp_path, {"probe": "ftp", **module}, target, timeout=deadline)
    return await execute(spec, env, capture_log=True)


def tls_for(server: VsftpdServer) -> dict[str, str]:
    assert server.ca_cert is not None
    return {"ca_file": str(server.ca_cert), "server_name": "localhost"}


def _age_files(server: VsftpdServer) -> float:
    """Give the backups distinct ages; returns the newest file's mtime."""
    old = time.time() - 3 * 86400
    os.utime(server.anon_root / "backups" / "old.tar", (old, old))
    new = float(int(time.time()) - 3600)
    os.utime(server.anon_root / "backups" / "new.tar", (new, new))
    return new


async def test_auth_tls_listing_with_session_reuse(
    tmp_path: Path, env: Resources, start_server: StartServer, server_ca: CertAuthority
) -> None:
    # vsftpd's default: the data connection must resume the control connection's session.
    server = start_server(
        run_vsftpd(certs=server_ca.localhost("ftp"), anon_files=FILES, require_ssl_reuse=True)
    )
    newest = _age_files(server)
    module = {
        "tls_config": tls_for(server),
        "username": "anonymous",
        "directory": "/backups",
        "max_file_age": "2h",
    }
    outcome = await run(tmp_path, env, module, f"127.0.0.1:{server.port}")
    assert outcome.success, (outcome.detail, outcome.log)
    found = facts(outcome)
    assert found["probe_ftp_auth_tls"] == [("", 1.0)]
    assert found["probe_ftp_ssl"] == [("", 1.0)]
    assert found["probe_ftp_directory_entries"] == [("", 2.0)]
    assert found["probe_ftp_newest_file_timestamp_seconds"] == [("", newest)]
    assert found["probe_ftp_newest_file_size_bytes"] == [("", 1234.0)]
    assert found["probe_ftp_status_code"] == [("", 213.0)]  # MDTM of the newest
    assert {"greeting", "starttls", "tls", "auth", "transaction", "list"} <= {
        name for name, _ in outcome.phases
    }
    stale = await run(tmp_path, env, {**module, "max_file_age": "30m"}, f"127.0.0.1:{server.port}")
    assert stale.reason is Reason.FILE_TOO_OLD, stale.detail
    missing = await run(tmp_path, env, {**module, "directory": "/nope"}, f"127.0.0.1:{server.port}")
    assert missing.reason is Reason.FTP_PATH_UNAVAILABLE, missing.detail

    # The reusable function a backup probe calls.
    rec = Recorder()
    settings = FTPSettings.model_validate({"tls_config": tls_for(server), "username": "ftp"})
    entries = await list_directory(
        "127.0.0.1", server.port, settings, rec, env, directory="/backups"
    )
    by_name = {e.name: e for e in entries}
    assert set(by_name) == {"old.tar", "new.tar"}
    assert by_name["new.tar"].size == 1234
    assert by_name["new.tar"].mtime == newest
    assert by_name["old.tar"].mtime is not None
    assert abs(by_name["old.tar"].mtime - (time.time() - 3 * 86400)) < 120


async def test_implicit_tls_and_plain(
    tmp_path: Path, env: Resources, start_server: StartServer, server_ca: CertAuthority
) -> None:
    server = start_server(run_vsftpd(certs=server_ca.localhost("ftps"), implicit_ssl=True))
    module = {"tls": "implicit", "tls_config": tls_for(server), "username": "anonymous"}
    outcome = await run(tmp_path, env, {**module, "directory": "/"}, f"127.0.0.1:{server.port}")
    assert outcome.success, outcome.detail
    found = facts(outcome)
    assert found["probe_ftp_auth_tls"] == [("", 0.0)]
    assert found["probe_ftp_ssl"] == [("", 1.0)]
    assert found["probe_ftp_directory_entries"] == [("", 1.0)]


async def test_plain_and_refused_login(
    tmp_path: Path, env: Resources, vsftpd_server: VsftpdServer
) -> None:
    target = f"127.0.0.1:{vsftpd_server.port}"
    plain = await run(
        tmp_path, env, {"tls": "none", "username": "anonymous", "directory": "/"}, target
    )
    assert plain.success, plain.detail
    assert facts(plain)["probe_ftp_ssl"] == [("", 0.0)]
    (tmp_path / "ftp.pw").write_text("secret-pw")
    module = {
        "tls_config": tls_for(vsftpd_server),
        "username": "bob",
        "password": {"file": "ftp.pw"},
    }
    refused = await run(tmp_path, env, module, target)
    assert refused.reason is Reason.AUTH_FAILED, refused.detail
    assert facts(refused)["probe_ftp_status_code"] == [("", 530.0)]
    assert "secret-pw" not in "".join(refused.log or ())


def scripted(auth_answer: bytes, after_hello: bytes = b"") -> Any:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted FTP\r\n")
        while line := await reader.readline():
            if line.upper().startswith(b"AUTH"):
                writer.write(auth_answer)
                await writer.drain()
                if after_hello:
                    await reader.read(1)  # the ClientHello
                    writer.write(after_hello)
                    await writer.drain()
                    return
            else:
                writer.write(b"502 no\r\n")
            await writer.drain()

    return handler


async def test_oops_after_auth_tls(tmp_path: Path, env: Resources, certs: Certs) -> None:
    oops = b"500 OOPS: SSL: cannot load RSA certificate\r\n"
    async with serve(scripted(b"234 Proceed with negotiation.\r\n", oops)) as port:
        outcome = await run(tmp_path, env, {}, f"localhost:{port}")
    assert outcome.reason is Reason.SERVER_ERROR, outcome.detail
    assert "500 OOPS" in outcome.detail
    async with serve(scripted(oops)) as port:
        outcome = await run(tmp_path, env, {}, f"localhost:{port}")
    assert outcome.reason is Reason.SERVER_ERROR, outcome.detail
    async with serve(scripted(b"530 not here\r\n")) as port:
        refused = await run(tmp_path, env, {}, f"localhost:{port}")
        plain = await run(tmp_path, env, {"tls": "opportunistic"}, f"localhost:{port}")
    assert refused.reason is Reason.STARTTLS_REFUSED, refused.detail
    assert plain.success, plain.detail


async def test_greeting_flood(tmp_path: Path, env: Resources) -> None:
    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220-welcome\r\n" * 5000)
        await writer.drain()
        await reader.read(1)

    async with serve(flood) as port:
        outcome = await run(tmp_path, env, {}, f"127.0.0.1:{port}")
    assert outcome.reason is Reason.PROTOCOL_ERROR, outcome.detail


def test_parse_listing_formats() -> None:
    now = calendar.timegm((2024, 3, 10, 12, 0, 0, 0, 0, 0))
    text = "\r\n".join(
        [
            "total 8",
            "drwxr-xr-x    2 0        0            4096 Mar 01 10:00 sub dir",
            "-rw-r--r--    1 0        0              18 Mar 09 11:30 new file.tar",
            "-rw-r--r--    1 0        0              99 Dec 30 23:59 december.tar",
            "-rw-r--r--    1 0        0               5 Jan 02  2019 ancient.tar",
            "lrwxrwxrwx    1 0        0               5 Mar 09 11:30 link -> new file.tar",
            "type=file;size=42;modify=20240309113000; m.tar",
            "type=cdir;modify=20240309113000; .",
            "03-09-24  11:30AM                 7 dos.tar",
            "03-09-24  01:05PM       <DIR>          dosdir",
            "garbage line",
        ]
    )
    entries = {e.name: e for e in parse_listing(text, now)}
    assert set(entries) == {
        "sub dir",
        "new file.tar",
        "december.tar",
        "ancient.tar",
        "link",
        "m.tar",
        "dos.tar",
        "dosdir",
    }
    assert entries["sub dir"].is_dir
    assert entries["new file.tar"].mtime == calendar.timegm((2024, 3, 9, 11, 30, 0, 0, 0, 0))
    # No year and "in the future": last year's December.
    assert entries["december.tar"].mtime == calendar.timegm((2023, 12, 30, 23, 59, 0, 0, 0, 0))
    assert entries["ancient.tar"].mtime == calendar.timegm((2019, 1, 2, 0, 0, 0, 0, 0, 0))
    assert entries["m.tar"].size == 42
    assert entries["dos.tar"].mtime == calendar.timegm((2024, 3, 9, 11, 30, 0, 0, 0, 0))
    assert entries["dosdir"].is_dir
    assert entries["dosdir"].mtime == calendar.timegm((2024, 3, 9, 13, 5, 0, 0, 0, 0))
