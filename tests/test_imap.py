"""The imap probe against a real Dovecot (STARTTLS, IMAPS, LOGIN, EXAMINE) and hostile
peers."""

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
from tests.test_pop3 import login
from tests.test_smtp import facts


async def run(
    tmp_path: Path, env: Resources, module: dict[str, Any], target: str, deadline: str = "5s"
) -> Outcome:
    spec = job(tmp_path, {"probe": "imap", **module}, target, timeout=deadline)
    return await execute(spec, env, capture_log=True)


async def test_starttls_login_and_examine(
    tmp_path: Path, env: Resources, dovecot_server: DovecotServer
) -> None:
    module = login(dovecot_server, tmp_path)
    outcome = await run(tmp_path, env, module, f"127.0.0.1:{dovecot_server.imap_port}")
    assert outcome.success, outcome.detail
    found = facts(outcome)
    assert found["probe_imap_starttls"] == [("", 1.0)]
    assert found["probe_imap_ssl"] == [("", 1.0)]
    assert found["probe_imap_messages"] == [("", 1.0)]
    assert found["probe_tls_version_info"] == [('version="TLS 1.3"', 1.0)]
    assert {"greeting", "capabilities", "starttls", "tls", "auth", "transaction"} <= {
        name for name, _ in outcome.phases
    }
    module["tls"] = "implicit"
    implicit = await run(tmp_path, env, module, f"127.0.0.1:{dovecot_server.imaps_port}")
    assert implicit.success, implicit.detail
    assert facts(implicit)["probe_imap_starttls"] == [("", 0.0)]
    module["mailbox"] = "Nope"
    missing = await run(tmp_path, env, module, f"127.0.0.1:{dovecot_server.imaps_port}")
    assert missing.reason is Reason.MAILBOX_UNAVAILABLE, missing.detail


async def test_wrong_password_is_auth_failed(
    tmp_path: Path, env: Resources, dovecot_server: DovecotServer
) -> None:
    module = login(dovecot_server, tmp_path, wrong='with "quotes" \\ too')
    outcome = await run(tmp_path, env, module, f"127.0.0.1:{dovecot_server.imap_port}")
    assert outcome.reason is Reason.AUTH_FAILED, outcome.detail
    assert "quotes" not in outcome.detail
    assert "quotes" not in "".join(outcome.log or ())


def scripted(capabilities: bytes, *, flood: int = 0) -> Any:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK ready\r\n")
        while line := await reader.readline():
            tag, _, rest = line.partition(b" ")
            verb = rest.split()[0].upper() if rest.split() else b""
            if verb == b"CAPABILITY":
                writer.write(b"* OK noise\r\n" * flood)
                writer.write(b"* CAPABILITY " + capabilities + b"\r\n" + tag + b" OK done\r\n")
            elif verb == b"STARTTLS":
                writer.write(tag + b" OK begin TLS\r\n")
                await writer.drain()
                await asyncio.sleep(30)
            else:
                writer.write(tag + b" BAD what\r\n")
            await writer.drain()

    return handler


async def test_logindisabled_is_login_refused(tmp_path: Path, env: Resources) -> None:
    (tmp_path / "pw").write_text("x")
    module = {"tls": "opportunistic", "username": "a", "password": {"file": "pw"}}
    async with serve(scripted(b"IMAP4rev1 LOGINDISABLED")) as port:
        outcome = await run(tmp_path, env, module, f"127.0.0.1:{port}")
    assert outcome.reason is Reason.LOGIN_REFUSED, outcome.detail


async def test_stall_after_starttls(tmp_path: Path, env: Resources) -> None:
    async with serve(scripted(b"IMAP4rev1 STARTTLS")) as port:
        outcome = await run(tmp_path, env, {}, f"127.0.0.1:{port}", deadline="500ms")
    assert outcome.reason is Reason.TIMEOUT, outcome.detail
    assert "phase tls" in outcome.detail


async def test_untagged_flood_is_bounded(tmp_path: Path, env: Resources) -> None:
    async with serve(scripted(b"IMAP4rev1", flood=5000)) as port:
        outcome = await run(tmp_path, env, {"tls": "none"}, f"127.0.0.1:{port}")
    assert outcome.reason is Reason.PROTOCOL_ERROR, outcome.detail
