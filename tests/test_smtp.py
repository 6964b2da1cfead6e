"""The smtp probe against a real Exim (STARTTLS, AUTH, envelope tests, an expired
certificate) and hostile peers written here (floods, endless lines, stalls)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from probed.probes.base import Reason
from probed.probes.smtp import dot_stuff, software_family
from probed.resources import Resources
from probed.results import Outcome
from probed.runner import execute
from tests.conftest import Certs
from tests.helpers import job as make_job
from tests.helpers import serve
from tests.servers.certs import CertAuthority
from tests.servers.exim import EximServer, run_exim
from tests.servers.fixtures import StartServer

AUTH_PLAIN = (
    "begin authenticators",
    "plain_server:",
    "  driver = plaintext",
    "  public_name = PLAIN",
    "  server_condition = ${if and {{eq{$auth2}{alice}}{eq{$auth3}{alicepw}}}}",
    "  server_set_id = $auth2",
    "login_server:",
    "  driver = plaintext",
    "  public_name = LOGIN",
    '  server_prompts = "Username:: : Password::"',
    "  server_condition = ${if and {{eq{$auth1}{alice}}{eq{$auth2}{alicepw}}}}",
    "  server_set_id = $auth1",
)


def facts(outcome: Outcome) -> dict[str, list[tuple[str, float]]]:
    out: dict[str, list[tuple[str, float]]] = {}
    for family, labels, value in outcome.samples:
        out.setdefault(family.name, []).append((labels, value))
    return out


async def run(
    tmp_path: Path, env: Resources, module: dict[str, Any], target: str, deadline: str = "5s"
) -> Outcome:
    spec = make_job(tmp_path, {"probe": "smtp", **module}, target, timeout=deadline)
    return await execute(spec, env, capture_log=True)


def tls_for(server: EximServer) -> dict[str, str]:
    assert server.ca_cert is not None
    return {"ca_file": str(server.ca_cert), "server_name": "localhost"}


async def test_exim_starttls_and_envelope(
    tmp_path: Path, env: Resources, exim_server: EximServer
) -> None:
    module = {
        "tls_config": tls_for(exim_server),
        "mail_from": "probe@probed.test",
        "rcpt_to": ["alice@probed.test"],
    }
    outcome = await run(tmp_path, env, module, f"127.0.0.1:{exim_server.port}")
    assert outcome.success, outcome.detail
    found = facts(outcome)
    assert found["probe_smtp_starttls"] == [("", 1.0)]
    assert found["probe_smtp_ssl"] == [("", 1.0)]
    assert found["probe_smtp_server_info"] == [('software="exim"', 1.0)]
    assert found["probe_smtp_status_code"] == [("", 250.0)]
    assert ('extension="PIPELINING"', 1.0) in found["probe_smtp_extension_info"]
    assert found["probe_tls_certificate_verified"] == [("", 1.0)]
    assert "probe_ssl_earliest_cert_expiry" in found
    assert {"connect", "greeting", "ehlo", "starttls", "tls", "transaction"} <= {
        name for name, _ in outcome.phases
    }
    assert not exim_server.delivered("alice"), "the acceptance test must not send mail"


async def test_relay_refused_and_open_relay_check(
    tmp_path: Path, env: Resources, exim_server: EximServer
) -> None:
    module: dict[str, Any] = {
        "tls": "opportunistic",
        "tls_config": tls_for(exim_server),
        "mail_from": "",
        "rcpt_to": ["someone@example.com"],
    }
    target = f"127.0.0.1:{exim_server.port}"
    refused = await run(tmp_path, env, module, target)
    assert refused.reason is Reason.SMTP_REJECTED, refused.detail
    assert facts(refused)["probe_smtp_status_code"] == [("", 550.0)]
    closed_relay = await run(tmp_path, env, {**module, "expect_rcpt_rejected": True}, target)
    assert closed_relay.success, closed_relay.detail


async def test_auth_plain_login_and_wrong_password(
    tmp_path: Path, env: Resources, start_server: StartServer, server_ca: CertAuthority
) -> None:
    exim = start_server(run_exim(certs=server_ca.localhost("smtp-auth"), extra_main=AUTH_PLAIN))
    (tmp_path / "good.pw").write_text("alicepw\n")
    (tmp_path / "bad.pw").write_text("wrong\n")
    base = {"tls_config": tls_for(exim), "username": "alice"}
    target = f"127.0.0.1:{exim.port}"
    for mechanism in ("PLAIN", "LOGIN"):
        module = {**base, "password": {"file": "good.pw"}, "auth_mechanism": mechanism}
        outcome = await run(tmp_path, env, module, target)
        assert outcome.success, (mechanism, outcome.detail)
        assert "auth" in dict(outcome.phases)
    bad = await run(tmp_path, env, {**base, "password": {"file": "bad.pw"}}, target)
    assert bad.reason is Reason.AUTH_FAILED, bad.detail
    assert facts(bad)["probe_smtp_status_code"] == [("", 535.0)]
    assert "wrong" not in bad.detail
    assert "wrong" not in "".join(bad.log or ())
    missing = await run(tmp_path, env, {**base, "password": {"file": "nope.pw"}}, target)
    assert missing.reason is Reason.SECRET_UNAVAILABLE


async def test_no_auth_offered_is_login_refused(
    tmp_path: Path, env: Resources, exim_server: EximServer
) -> None:
    (tmp_path / "pw").write_text("x")
    module = {"tls_config": tls_for(exim_server), "username": "a", "password": {"file": "pw"}}
    outcome = await run(tmp_path, env, module, f"127.0.0.1:{exim_server.port}")
    assert outcome.reason is Reason.LOGIN_REFUSED, outcome.detail


async def test_expired_certificate_still_reports_expiry(
    tmp_path: Path, env: Resources, start_server: StartServer, server_ca: CertAuthority
) -> None:
    exim = start_server(run_exim(certs=server_ca.expired("smtp-expired")))
    outcome = await run(tmp_path, env, {"tls_config": tls_for(exim)}, f"127.0.0.1:{exim.port}")
    assert outcome.reason is Reason.TLS_CERT_EXPIRED, outcome.detail
    found = facts(outcome)
    assert found["probe_tls_certificate_verified"] == [("", 0.0)]
    assert "probe_ssl_earliest_cert_expiry" in found
    assert found["probe_smtp_starttls"] == [("", 0.0)]


async def test_starttls_required_but_not_offered(
    tmp_path: Path, env: Resources, start_server: StartServer
) -> None:
    exim = start_server(run_exim(tls=False))
    target = f"127.0.0.1:{exim.port}"
    outcome = await run(tmp_path, env, {}, target)
    assert outcome.reason is Reason.STARTTLS_REFUSED, outcome.detail
    plain = await run(tmp_path, env, {"tls": "opportunistic"}, target)
    assert plain.success, plain.detail
    assert facts(plain)["probe_smtp_ssl"] == [("", 0.0)]


# -- scripted peers -------------------------------------------------------------------------


def scripted(greeting: bytes, after_starttls: bytes | None = None) -> Any:
    """A minimal SMTP server: greets, answers EHLO/STARTTLS/QUIT; after STARTTLS it answers
    the ClientHello with ``after_starttls`` (None: silence), then holds the connection."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        await writer.drain()
        while line := await reader.readline():
            verb = line.split()[0].upper() if line.split() else b""
            if verb == b"EHLO":
                writer.write(b"250-mx.test\r\n250-STARTTLS\r\n250 SIZE 1000\r\n")
            elif verb == b"STARTTLS":
                writer.write(b"220 go ahead\r\n")
                await writer.drain()
                if after_starttls is not None:
                    await reader.read(1)  # the ClientHello
                    writer.write(after_starttls)
                    await writer.drain()
                await asyncio.sleep(30)
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                return
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()

    return handler


async def test_implicit_tls_on_a_tls_port(tmp_path: Path, env: Resources, certs: Certs) -> None:
    handler = scripted(b"220 mx.test ESMTP Postfix (Debian/GNU)\r\n")
    async with serve(handler, ssl_context=certs.valid) as port:
        module = {"tls": "implicit", "tls_config": {"ca_file": str(certs.ca_file)}}
        outcome = await run(tmp_path, env, module, f"localhost:{port}")
    assert outcome.success, outcome.detail
    found = facts(outcome)
    assert found["probe_smtp_starttls"] == [("", 0.0)]
    assert found["probe_smtp_ssl"] == [("", 1.0)]
    assert found["probe_smtp_server_info"] == [('software="postfix"', 1.0)]
    assert found["probe_smtp_max_message_size_bytes"] == [("", 1000.0)]


async def test_greeting_that_never_ends(tmp_path: Path, env: Resources) -> None:
    handler = scripted(b"220-hello\r\n" * 5000)
    async with serve(handler) as port:
        outcome = await run(tmp_path, env, {"tls": "none"}, f"127.0.0.1:{port}")
    assert outcome.reason is Reason.PROTOCOL_ERROR, outcome.detail
    assert "more than" in outcome.detail


async def test_line_that_never_ends(tmp_path: Path, env: Resources) -> None:
    handler = scripted(b"220 " + b"x" * 200_000)
    async with serve(handler) as port:
        outcome = await run(tmp_path, env, {"tls": "none"}, f"127.0.0.1:{port}")
    assert outcome.reason is Reason.TOO_LARGE, outcome.detail


async def test_stall_after_starttls_ends_at_the_deadline(tmp_path: Path, env: Resources) -> None:
    async with serve(scripted(b"220 mx.test ESMTP\r\n")) as port:
        outcome = await run(tmp_path, env, {}, f"127.0.0.1:{port}", deadline="500ms")
    assert outcome.reason is Reason.TIMEOUT, outcome.detail
    assert "phase tls" in outcome.detail
    assert dict(outcome.phases)["starttls"] >= 0


async def test_plaintext_after_starttls(tmp_path: Path, env: Resources) -> None:
    handler = scripted(b"220 mx.test ESMTP\r\n", after_starttls=b"454 TLS not available\r\n")
    async with serve(handler) as port:
        outcome = await run(tmp_path, env, {}, f"127.0.0.1:{port}")
    assert outcome.reason is Reason.SERVER_ERROR, outcome.detail
    assert "454 TLS not available" in outcome.detail


def test_software_family_and_dot_stuffing() -> None:
    assert software_family("mx.example ESMTP Exim 4.96") == "exim"
    assert software_family("Microsoft ESMTP MAIL Service ready") == "exchange"
    assert software_family("hello") == "other"
    assert dot_stuff(b"a\n.b\r\n..c") == b"a\r\n..b\r\n...c\r\n"
