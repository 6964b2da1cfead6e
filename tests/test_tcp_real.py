"""The tcp probe against real Debian servers: OpenSSH's banner, Exim's STARTTLS dialogue
with certificate verification, and nginx over implicit TLS."""

from __future__ import annotations

from pathlib import Path

from probed.resources import Resources
from probed.runner import execute
from tests.helpers import job
from tests.servers.exim import EximServer
from tests.servers.nginx import NginxServer
from tests.servers.sshd import SshdServer


async def test_openssh_banner(tmp_path: Path, env: Resources, sshd_server: SshdServer) -> None:
    module = {"probe": "tcp", "query": [{"expect": "^SSH-2\\.0-OpenSSH_"}]}
    outcome = await execute(job(tmp_path, module, f"127.0.0.1:{sshd_server.port}"), env)
    assert outcome.success, outcome.detail


async def test_exim_starttls_dialogue(
    tmp_path: Path, env: Resources, exim_server: EximServer
) -> None:
    assert exim_server.certs is not None
    module = {
        "probe": "tcp",
        "tls_config": {"ca_file": str(exim_server.certs.ca_cert), "server_name": "localhost"},
        "query": [
            {"expect": "^220 .*Exim"},
            {"send": "EHLO probed.test\r\n"},
            {"expect": "^250-STARTTLS"},
            {"expect": "^250 "},
            {"send": "STARTTLS\r\n"},
            {"expect": "^220 "},
            {"starttls": True},
            {"send": "EHLO probed.test\r\n"},
            {"expect": "^250 "},
            {"send": "QUIT\r\n"},
            {"expect": "^221 "},
        ],
    }
    outcome = await execute(job(tmp_path, module, f"127.0.0.1:{exim_server.port}"), env)
    assert outcome.success, outcome.detail
    names = {family.name for family, _, _ in outcome.samples}
    assert "probe_ssl_earliest_cert_expiry" in names


async def test_nginx_implicit_tls(
    tmp_path: Path, env: Resources, nginx_server: NginxServer
) -> None:
    assert nginx_server.certs is not None
    module = {
        "probe": "tcp",
        "tls": True,
        "tls_config": {"ca_file": str(nginx_server.certs.ca_cert)},
        "query": [
            {"send": "GET / HTTP/1.0\r\nHost: localhost\r\n\r\n"},
            {"expect": "^HTTP/1.1 200"},
        ],
    }
    outcome = await execute(job(tmp_path, module, f"localhost:{nginx_server.https_port}"), env)
    assert outcome.success, outcome.detail
