"""The heartbleed probe against real, patched Debian servers: every one must come out
"not vulnerable" with a verdict (never a false positive, never "could not check"), over
direct TLS and each STARTTLS dialogue they speak."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from probed.resources import Resources
from probed.results import Outcome
from probed.runner import execute
from tests.helpers import job
from tests.servers.dovecot import DovecotServer
from tests.servers.exim import EximServer
from tests.servers.gnutls import GnutlsServer, run_in_netns
from tests.servers.mariadb import MariaDBServer
from tests.servers.nginx import NginxServer
from tests.servers.vsftpd import VsftpdServer


def facts(outcome: Outcome) -> dict[str, Any]:
    return {f.name: (labels, value) if labels else value for f, labels, value in outcome.samples}


async def check(tmp_path: Path, env: Resources, target: str, **module: Any) -> Outcome:
    spec = {"probe": "heartbleed", "response_timeout": "2s", **module}
    return await execute(job(tmp_path, spec, target, timeout="8s"), env, capture_log=True)


def assert_not_vulnerable(
    outcome: Outcome, responses: tuple[str, ...] = ("alert",)
) -> dict[str, Any]:
    f = facts(outcome)
    assert outcome.success, f"{outcome.reason}: {outcome.detail}\n{outcome.log}"
    assert f["probe_heartbleed_vulnerable"] == 0.0
    assert f["probe_heartbleed_inconclusive"] == 0.0
    assert f["probe_heartbleed_response_info"][0] in {f'response="{r}"' for r in responses}
    return f


async def test_gnutls_serv_with_heartbeat(
    tmp_path: Path, env: Resources, gnutls_server: GnutlsServer
) -> None:
    outcome = await run_in_netns(
        gnutls_server.netns_path,
        check(tmp_path, env, f"127.0.0.1:{gnutls_server.port}"),
    )
    f = assert_not_vulnerable(outcome)
    # GnuTLS echoes the extension (peer_allowed_to_send) and refuses the early heartbeat.
    assert f["probe_tls_heartbeat_extension"] == 1.0
    assert f["probe_tls_version_info"] == ('version="TLS 1.2"', 1.0)


async def test_nginx_openssl3(tmp_path: Path, env: Resources, nginx_server: NginxServer) -> None:
    outcome = await check(tmp_path, env, f"127.0.0.1:{nginx_server.https_port}")
    f = assert_not_vulnerable(outcome)
    assert f["probe_tls_heartbeat_extension"] == 0.0


async def test_exim_smtp_starttls(tmp_path: Path, env: Resources, exim_server: EximServer) -> None:
    outcome = await check(tmp_path, env, f"127.0.0.1:{exim_server.port}", starttls="smtp")
    f = assert_not_vulnerable(outcome)
    assert f["probe_heartbleed_starttls_info"] == ('protocol="smtp"', 1.0)


async def test_dovecot_pop3_imap_starttls_and_implicit(
    tmp_path: Path, env: Resources, dovecot_server: DovecotServer
) -> None:
    d = dovecot_server
    assert d.pop3s_port is not None
    assert d.imaps_port is not None
    # Dovecot's login process hangs up on the unexpected record (EOF) rather than alerting.
    either = ("alert", "eof")
    for port, starttls in ((d.pop3_port, "pop3"), (d.imap_port, "imap")):
        outcome = await check(tmp_path, env, f"127.0.0.1:{port}", starttls=starttls)
        assert_not_vulnerable(outcome, either)
    for port in (d.pop3s_port, d.imaps_port):
        assert_not_vulnerable(await check(tmp_path, env, f"127.0.0.1:{port}"), either)


async def test_vsftpd_auth_tls(tmp_path: Path, env: Resources, vsftpd_server: VsftpdServer) -> None:
    outcome = await check(tmp_path, env, f"127.0.0.1:{vsftpd_server.port}", starttls="ftp")
    # vsftpd may answer with OpenSSL's alert or its plaintext "500 OOPS": never vulnerable.
    assert_not_vulnerable(outcome, ("alert", "other", "eof"))


async def test_mariadb_ssl_request(
    tmp_path: Path, env: Resources, mariadb_tls_server: MariaDBServer
) -> None:
    outcome = await check(tmp_path, env, f"127.0.0.1:{mariadb_tls_server.port}", starttls="mysql")
    assert_not_vulnerable(outcome)
