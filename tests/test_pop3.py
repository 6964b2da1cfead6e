"""The pop3 probe against a real Dovecot (STLS, POP3S, login, STAT) and hostile peers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from probed.probes.base import Reason
from probed.resources import Resources
from probed.results import Outcome
from probed.runner import execute
from tests.helpers import job, serve
from tests.servers.dovecot import DovecotServer
from tests.test_smtp import facts


async def run(
    tmp_path: Path, env: Resources, module: dict[str, Any], target: str, deadline: str = "5s"
) -> Outcome:
    spec = job(tmp_path, {"probe": "pop3", **module}, target, timeout=deadline)
    return await execute(spec, env, capture_log=True)


def login(server: DovecotServer, tmp_path: Path, wrong: str | None = None) -> dict[str, Any]:
    assert server.ca_cert is not None
    (tmp_path / "pop3.pw").write_text(wrong or server.password)
    return {
        "tls_config": {"ca_file": str(server.ca_cert), "server_name": "localhost"},
        "username": server.user,
        "password": {"file": "pop3.pw"},
    }


async def test_stls_login_and_stat(
    tmp_path: Path, env: Resources, dovecot_server: DovecotServer
) -> None:
    module = login(dovecot_server, tmp_path)
    outcome = await run(tmp_path, env, module, f"127.0.0.1:{dovecot_server.pop3_port}")
    assert outcome.success, outcome.detail
    found = facts(outcome)
    assert found["probe_pop3_stls"] == [("", 1.0)]
    assert found["probe_pop3_ssl"] == [("", 1.0)]
    assert found["probe_pop3_messages"] == [("", 1.0)]
    assert found["probe_pop3_mailbox_size_bytes"][0][1] > 0
    assert found["probe_tls_certificate_verified"] == [("", 1.0)]
    assert {"greeting", "capabilities", "starttls", "tls", "auth", "transaction"} <= {
        name for name, _ in outcome.phases
    }
    # Implicit TLS on the POP3S port, same session otherwise.
    module["tls"] = "implicit"
    implicit = await run(tmp_path, env, module, f"127.0.0.1:{dovecot_server.pop3s_port}")
    assert implicit.success, implicit.detail
    assert facts(implicit)["probe_pop3_stls"] == [("", 0.0)]
    assert facts(implicit)["probe_pop3_ssl"] == [("", 1.0)]


async def test_wrong_password_is_auth_failed(
    tmp_path: Path, env: Resources, dovecot_server: DovecotServer
) -> None:
    module = login(dovecot_server, tmp_path, wrong="not-it")
    outcome = await run(tmp_path, env, module, f"127.0.0.1:{dovecot_server.pop3_port}")
    assert outcome.reason is Reason.AUTH_FAILED, outcome.detail
    assert "not-it" not in outcome.detail
    assert "not-it" not in "".join(outcome.log or ())


async def test_greeting_only_without_credentials(
    tmp_path: Path, env: Resources, dovecot_server: DovecotServer
) -> None:
    module = login(dovecot_server, tmp_path)
    del module["username"], module["password"]
    outcome = await run(tmp_path, env, module, f"127.0.0.1:{dovecot_server.pop3_port}")
    assert outcome.success, outcome.detail
    assert "probe_pop3_messages" not in facts(outcome)


def scripted(capa: bytes) -> Any:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"+OK ready\r\n")
        while line := await reader.readline():
            verb = line.split()[0].upper() if line.split() else b""
            if verb == b"CAPA":
                writer.write(b"+OK\r\n" + capa)
            elif verb == b"STLS":
                writer.write(b"+OK begin TLS\r\n")
                await writer.drain()
                await asyncio.sleep(30)
            else:
                writer.write(b"-ERR what\r\n")
            await writer.drain()

    return handler


async def test_capa_that_never_ends(tmp_path: Path, env: Resources) -> None:
    async with serve(scripted(b"USER\r\n" * 5000)) as port:
        outcome = await run(tmp_path, env, {"tls": "none"}, f"127.0.0.1:{port}")
    assert outcome.reason is Reason.PROTOCOL_ERROR, outcome.detail


async def test_stall_after_stls(tmp_path: Path, env: Resources) -> None:
    async with serve(scripted(b"STLS\r\n.\r\n")) as port:
        outcome = await run(tmp_path, env, {}, f"127.0.0.1:{port}", deadline="500ms")
    assert outcome.reason is Reason.TIMEOUT, outcome.detail
    assert "phase tls" in outcome.detail


async def test_no_user_command_is_login_refused(tmp_path: Path, env: Resources) -> None:
    (tmp_path / "pw").write_text("x")
    module = {"tls": "opportunistic", "username": "a", "password": {"file": "pw"}}
    async with serve(scripted(b"SASL PLAIN\r\n.\r\n")) as port:
        outcome = await run(tmp_path, env, module, f"127.0.0.1:{port}")
    assert outcome.reason is Reason.LOGIN_REFUSED, outcome.detail
    assert facts(outcome)["probe_pop3_ssl"] == [("", 0.0)]
