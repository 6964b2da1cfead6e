"""The tls probe: certificate facts and verification reasons (trustme peers), the expiry
warning, STARTTLS through a real Exim, implicit TLS on a real nginx, hostile peers."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import time
from pathlib import Path
from typing import Any

import pytest

from probed.probes.base import Reason
from probed.resources import Resources
from probed.results import Outcome
from probed.runner import execute
from tests.conftest import Certs
from tests.helpers import banner, job, never_answer, serve
from tests.servers.certs import CertAuthority
from tests.servers.exim import EximServer
from tests.servers.nginx import NginxServer


def _facts(outcome: Outcome) -> dict[str, list[tuple[str, float]]]:
    out: dict[str, list[tuple[str, float]]] = {}
    for family, labels, value in outcome.samples:
        out.setdefault(family.name, []).append((labels, value))
    return out


async def _hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    del writer
    await reader.read(1)


async def _run(
    tmp_path: Path, env: Resources, module: dict[str, Any], target: str, deadline: str = "3s"
) -> Outcome:
    return await execute(
        job(tmp_path, {"probe": "tls", **module}, target, timeout=deadline), env, capture_log=True
    )


async def test_valid_certificate_facts(tmp_path: Path, env: Resources, certs: Certs) -> None:
    async with serve(_hold, ssl_context=certs.valid) as port:
        module = {"tls_config": {"ca_file": str(certs.ca_file)}}
        outcome = await _run(tmp_path, env, module, f"127.0.0.1:{port}")
    assert outcome.success, outcome.detail
    facts = _facts(outcome)
    assert facts["probe_tls_certificate_verified"] == [("", 1.0)]
    assert facts["probe_tls_version_info"][0][0] == 'version="TLS 1.3"'
    assert len(facts["probe_tls_cipher_info"]) == 1
    ((info, _),) = facts["probe_ssl_last_chain_info"]
    assert 'subjectalternative="localhost,127.0.0.1,0:0:0:0:0:0:0:1' in info
    assert "fingerprint_sha256=" in info
    assert "serialnumber=" in info
    assert facts["probe_ssl_earliest_cert_expiry"][0][1] > time.time()
    assert "probe_ssl_last_chain_expiry_timestamp_seconds" in facts
    assert set(dict(outcome.phases)) == {"connect", "tls"}


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("expired", Reason.TLS_CERT_EXPIRED),
        ("not_yet_valid", Reason.TLS_CERT_NOT_YET_VALID),
        ("wrong_name", Reason.TLS_CERT_NAME_MISMATCH),
        ("unknown_issuer", Reason.TLS_CERT_UNKNOWN_ISSUER),
        ("self_signed", Reason.TLS_CERT_SELF_SIGNED),
    ],
)
async def test_verification_failure_reason_and_expiry(
    tmp_path: Path, env: Resources, certs: Certs, case: str, reason: Reason
) -> None:
    context: ssl.SSLContext = getattr(certs, case)
    async with serve(_hold, ssl_context=context) as port:
        module = {"tls_config": {"ca_file": str(certs.ca_file)}}
        outcome = await _run(tmp_path, env, module, f"127.0.0.1:{port}")
    assert outcome.reason is reason, outcome.detail
    facts = _facts(outcome)
    assert facts["probe_tls_certificate_verified"] == [("", 0.0)]
    expiry = facts["probe_ssl_earliest_cert_expiry"][0][1]
    if case == "expired":
        assert expiry < time.time()
    assert len(facts["probe_ssl_last_chain_info"]) == 1


@pytest.mark.parametrize(("min_remaining", "success"), [("14d", False), ("2d", True)])
async def test_min_remaining(
    tmp_path: Path, env: Resources, server_ca: CertAuthority, min_remaining: str, success: bool
) -> None:
    files = server_ca.expiring_in(dt.timedelta(days=5), stem=f"five-days-{min_remaining}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.cert, files.key)
    async with serve(_hold, ssl_context=context) as port:
        module = {"min_remaining": min_remaining, "tls_config": {"ca_file": str(files.ca_cert)}}
        outcome = await _run(tmp_path, env, module, f"127.0.0.1:{port}")
    assert outcome.success is success, outcome.detail
    if not success:
        assert outcome.reason is Reason.TLS_CERT_EXPIRING
        assert "4.9 days" in outcome.detail or "5.0 days" in outcome.detail


async def test_starttls_smtp_on_real_exim(
    tmp_path: Path, env: Resources, exim_server: EximServer
) -> None:
    assert exim_server.certs is not None
    module = {
        "starttls": "smtp",
        "tls_config": {"ca_file": str(exim_server.certs.ca_cert), "server_name": "localhost"},
    }
    outcome = await _run(tmp_path, env, module, f"127.0.0.1:{exim_server.port}")
    assert outcome.success, outcome.detail
    assert {"connect", "starttls", "tls"} <= set(dict(outcome.phases))
    assert _facts(outcome)["probe_tls_certificate_verified"] == [("", 1.0)]


async def test_implicit_tls_on_real_nginx(
    tmp_path: Path, env: Resources, nginx_server: NginxServer
) -> None:
    assert nginx_server.certs is not None
    module = {
        "tls_config": {"ca_file": str(nginx_server.certs.ca_cert), "server_name": "localhost"},
        "min_remaining": "1d",
    }
    outcome = await _run(tmp_path, env, module, f"127.0.0.1:{nginx_server.https_port}")
    assert outcome.success, outcome.detail


async def test_stalled_handshake_ends_by_the_deadline(tmp_path: Path, env: Resources) -> None:
    async with serve(never_answer) as port:
        outcome = await _run(tmp_path, env, {}, f"127.0.0.1:{port}", deadline="500ms")
    assert outcome.reason is Reason.TIMEOUT
    assert "phase tls" in outcome.detail
    assert outcome.duration < 1.5


async def test_plaintext_peer_fails_the_handshake(tmp_path: Path, env: Resources) -> None:
    async with serve(banner(b"SSH-2.0-OpenSSH_9.2p1\r\n" * 20)) as port:
        outcome = await _run(tmp_path, env, {}, f"127.0.0.1:{port}")
    assert outcome.reason is Reason.TLS_HANDSHAKE, outcome.detail


async def test_default_port_is_443(tmp_path: Path) -> None:
    assert job(tmp_path, {"probe": "tls"}, "shop.example").target.port == 443
    smtp = job(tmp_path, {"probe": "tls", "port": 25, "starttls": "smtp"}, "mx.example")
    assert smtp.target.port == 25
