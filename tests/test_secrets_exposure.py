"""Secrets and server memory never leave the run.

Every probe that takes a secret runs with canary values (files in tmp_path) against scripted
peers that refuse the login (and peers that echo what we sent back in their error), once in
process with the run's own log captured and once through ``probed run`` (``/metrics``,
``/probe?debug=true``, its debug log on stdout). No canary may appear anywhere: outcome,
detail, log lines, report, metrics, nor in any string reachable from the outcome.

The Heartbleed check must not keep what a vulnerable server sends: a peer pads its echo with
a recognisable marker, and the marker must not appear either.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import os
import signal
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncssh
import pytest
from aiohttp import web

from probed.exposition import job_labels, render_outcome
from probed.probes.base import Reason
from probed.report import report
from probed.resources import Resources
from probed.results import Outcome
from probed.runner import execute
from probed.secrets import SecretStore
from tests import toml_text
from tests.helpers import free_port, job
from tests.hostile.peers import HostilePeer, small_flight, tls_record

USER = "probe"
SECRET_FILES = ("http", "bearer", "smtp", "pop3", "imap", "ftp", "ssh", "mysql", "junk_key")
MARKER = b"SERVER-MEMORY-MARKER-"


def canary(name: str) -> str:
    return f"canary-{name}-{os.urandom(6).hex()}"


@dataclass
class Canaries:
    values: dict[str, str]
    ssh_key_lines: list[str]
    """Lines of the private key's body: the key is a secret as a whole."""

    def forms(self) -> list[str]:
        """Every spelling a canary could leak in: raw and as the probes encode it."""
        out = []
        for name, value in self.values.items():
            out.append(value)
            out.append(base64.b64encode(value.encode()).decode())
            out.append(base64.b64encode(f"{USER}:{value}".encode()).decode())
            out.append(base64.b64encode(f"\0{USER}\0{value}".encode()).decode())
            if name == "junk_key":
                continue
        out += self.ssh_key_lines
        return out


def write_secrets(directory: Path) -> Canaries:
    values = {name: canary(name) for name in SECRET_FILES}
    for name in SECRET_FILES:
        (directory / name).write_text(values[name] + "\n")
    # A junk key that quotes the canary: the error must name the file, not its content.
    (directory / "junk_key").write_text(
        f"-----BEGIN OPENSSH PRIVATE KEY-----\n{values['junk_key']}\n"
    )
    key = asyncssh.generate_private_key("ssh-ed25519")
    pem = key.export_private_key().decode()
    (directory / "ssh_key").write_text(pem)
    body = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    return Canaries(values, [line for line in body if len(line) >= 16])


# -- scripted peers ------------------------------------------------------------------------------

Responder = Callable[[bytes], bytes | None]


def line_peer(greeting: bytes, respond: Responder) -> Any:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        await writer.drain()
        for _ in range(200):
            line = await reader.readline()
            if not line:
                return
            answer = respond(line)
            if answer is None:
                return
            writer.write(answer)
            await writer.drain()

    return handler


def smtp_responder(echo: bool, accept: bool = False) -> Responder:
    state = {"data": False}

    def respond(line: bytes) -> bytes | None:  # noqa: PLR0911 - one answer per verb
        if state["data"]:
            if line == b".\r\n":
                state["data"] = False
                return b"250 queued\r\n"
            return b""
        verb = line[:4].upper()
        if verb == b"EHLO":
            return b"250-mx\r\n250-AUTH PLAIN LOGIN\r\n250 SIZE 1000000\r\n"
        if verb == b"AUTH":
            if accept:
                return b"235 2.7.0 ok\r\n"
            said = b": " + line.strip() if echo else b""
            return b"535 5.7.8 authentication failed" + said + b"\r\n"
        if verb == b"DATA":
            state["data"] = True
            return b"354 go ahead\r\n"
        if verb == b"QUIT":
            return None
        return b"250 ok\r\n"

    return respond


def pop3_responder(echo: bool) -> Responder:
    def respond(line: bytes) -> bytes | None:
        upper = line.upper()
        if upper.startswith(b"CAPA"):
            return b"+OK\r\nUSER\r\n.\r\n"
        if upper.startswith(b"PASS"):
            said = b" " + line.strip() if echo else b""
            return b"-ERR [AUTH] Authentication failed" + said + b"\r\n"
        if upper.startswith(b"QUIT"):
            return None
        return b"+OK\r\n"

    return respond


def imap_responder(echo: bool) -> Responder:
    def respond(line: bytes) -> bytes | None:
        tag, _, rest = line.strip().partition(b" ")
        verb = rest.split(b" ", 1)[0].upper()
        if verb == b"CAPABILITY":
            return b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n" + tag + b" OK done\r\n"
        if verb == b"LOGIN":
            said = b" " + rest if echo else b""
            return tag + b" NO [AUTHENTICATIONFAILED] failed" + said + b"\r\n"
        if verb == b"LOGOUT":
            return None
        return tag + b" OK\r\n"

    return respond


def ftp_responder(echo: bool) -> Responder:
    def respond(line: bytes) -> bytes | None:
        verb = line.split(b" ", 1)[0].strip().upper()
        if verb == b"USER":
            return b"331 password please\r\n"
        if verb == b"PASS":
            said = b" " + line.strip() if echo else b""
            return b"530 Login incorrect" + said + b"\r\n"
        if verb == b"QUIT":
            return None
        return b"502 no\r\n"

    return respond


def _mysql_greeting() -> bytes:
    payload = (
        b"\x0a10.11.6-MariaDB\x00"
        + struct.pack("<I", 9)
        + b"abcdefgh\x00"
        + struct.pack("<HBHH", 0xF7FF & ~0x0800, 0x21, 0x0002, 0x0008)
        + b"\x15"
        + bytes(10)
        + b"ijklmnopqrst\x00mysql_native_password\x00"
    )
    return len(payload).to_bytes(3, "little") + b"\x00" + payload


def mysql_peer(echo: bool) -> Any:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_mysql_greeting())
        header = await reader.readexactly(4)
        login = await reader.readexactly(int.from_bytes(header[:3], "little"))
        text = b"Access denied for user 'probe'@'localhost' (using password: YES)"
        if echo:
            text += b" " + login
        error = b"\xff" + struct.pack("<H", 1045) + b"#28000" + text
        writer.write(len(error).to_bytes(3, "little") + b"\x02" + error)
        await writer.drain()
        await reader.read(1)

    return handler


class _RefusingSSHServer(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return False


@contextlib.asynccontextmanager
async def ssh_server() -> AsyncIterator[int]:
    server = await asyncssh.create_server(
        _RefusingSSHServer,
        "127.0.0.1",
        0,
        server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
    )
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def http_server() -> AsyncIterator[int]:
    async def handle(request: web.Request) -> web.Response:
        # Refuses whatever it gets, and quotes the Authorization header back in the body.
        return web.Response(status=401, text=request.headers.get("Authorization", ""))

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        assert site._server is not None
        yield int(site._server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
    finally:
        await runner.cleanup()


def _heartbeat_echo(record: bytes) -> bytes:
    payload_length = int.from_bytes(record[1:3], "big")
    payload = record[3 : 3 + payload_length]
    padding = (MARKER * 200)[:8000]
    return tls_record(24, b"\x02" + record[1:3] + payload + padding)


async def marker_heartbleed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """OpenSSL 1.0.1f-like: echoes the heartbeat and pads it with "memory" (the marker), and
    sends another marker-filled heartbeat record after it."""
    await reader.read(65536)
    writer.write(small_flight())
    await writer.drain()
    for _ in range(8):
        header = await reader.readexactly(5)
        body = await reader.readexactly(int.from_bytes(header[3:5], "big"))
        if header[0] == 24:
            writer.write(_heartbeat_echo(body) + tls_record(24, (MARKER * 100)[:2000]))
            await writer.drain()


# -- the modules ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    name: str
    module: dict[str, Any]
    target: str


def _login(secret: str) -> dict[str, Any]:
    return {"username": USER, "password": {"file": secret}}


@contextlib.asynccontextmanager
async def peers(echo: bool) -> AsyncIterator[list[Setup]]:
    """Every secret-taking module, each against its own refusing peer."""
    async with contextlib.AsyncExitStack() as stack:

        async def line(greeting: bytes, respond: Responder) -> int:
            peer = await stack.enter_async_context(HostilePeer(line_peer(greeting, respond)))
            return peer.port

        http = await stack.enter_async_context(http_server())
        ssh = await stack.enter_async_context(ssh_server())
        smtp = await line(b"220 mx ESMTP\r\n", smtp_responder(echo))
        smtp_ok = await line(b"220 mx ESMTP\r\n", smtp_responder(echo, accept=True))
        pop3 = await line(b"+OK ready\r\n", pop3_responder(echo))
        imap = await line(b"* OK ready\r\n", imap_responder(echo))
        ftp = await line(b"220 ready\r\n", ftp_responder(echo))
        mysql = (await stack.enter_async_context(HostilePeer(mysql_peer(echo)))).port
        hb = (await stack.enter_async_context(HostilePeer(marker_heartbleed))).port
        plain = {"tls": "none"}
        any_key = {"accept_any_host_key": True}
        yield [
            Setup(
                "http_basic",
                {"probe": "http", "basic_auth": _login("http")},
                f"http://127.0.0.1:{http}/",
            ),
            Setup(
                "http_bearer",
                {"probe": "http", "bearer_token": {"file": "bearer"}},
                f"http://127.0.0.1:{http}/bearer",
            ),
            Setup("smtp", {"probe": "smtp", **plain, **_login("smtp")}, f"127.0.0.1:{smtp}"),
            Setup(
                "smtp_login",
                {"probe": "smtp", **plain, **_login("smtp"), "auth_mechanism": "LOGIN"},
                f"127.0.0.1:{smtp}",
            ),
            Setup("pop3", {"probe": "pop3", **plain, **_login("pop3")}, f"127.0.0.1:{pop3}"),
            Setup("imap", {"probe": "imap", **plain, **_login("imap")}, f"127.0.0.1:{imap}"),
            Setup("ftp", {"probe": "ftp", **plain, **_login("ftp")}, f"127.0.0.1:{ftp}"),
            Setup("ssh_password", {"probe": "ssh", **_login("ssh"), **any_key}, f"127.0.0.1:{ssh}"),
            Setup(
                "ssh_key",
                {"probe": "ssh", "username": USER, "client_key": {"file": "ssh_key"}, **any_key},
                f"127.0.0.1:{ssh}",
            ),
            Setup(
                "ssh_junk_key",
                {"probe": "ssh", "username": USER, "client_key": {"file": "junk_key"}, **any_key},
                f"127.0.0.1:{ssh}",
            ),
            Setup("mysql", {"probe": "mysql", **_login("mysql")}, f"127.0.0.1:{mysql}"),
            Setup(
                "mailflow",
                {
                    "probe": "mailflow",
                    "mail_from": "probe@example.org",
                    "rcpt_to": "inbox@example.org",
                    "smtp": {**plain, **_login("smtp")},
                    "imap": {**plain, "port": imap, **_login("imap")},
                    "deadline": "1s",
                    "poll_interval": "100ms",
                },
                f"127.0.0.1:{smtp_ok}",
            ),
            Setup(
                "backup_sftp",
                {
                    "probe": "backup",
                    "source": "sftp",
                    "directory": "/",
                    "max_age": "1d",
                    "sftp": {**_login("ssh"), **any_key},
                },
                f"127.0.0.1:{ssh}",
            ),
            Setup(
                "backup_ftp",
                {
                    "probe": "backup",
                    "source": "ftp",
                    "directory": "/",
                    "max_age": "1d",
                    "ftp": {**plain, **_login("ftp")},
                },
                f"127.0.0.1:{ftp}",
            ),
            Setup(
                "backup_http",
                {
                    "probe": "backup",
                    "source": "http",
                    "max_age": "1d",
                    "http": {"basic_auth": _login("http")},
                },
                f"http://127.0.0.1:{http}/backup.tar",
            ),
            Setup(
                "heartbleed", {"probe": "heartbleed", "response_timeout": "1s"}, f"127.0.0.1:{hb}"
            ),
        ]


# -- checks ------------------------------------------------------------------------------------


def reachable_strings(root: object, limit: int = 20_000) -> Iterator[str | bytes]:
    """Strings and bytes reachable from ``root`` through gc referents (bounded walk; the
    enum, class and module objects are not followed: they are shared, not the run's)."""
    seen: set[int] = set()
    stack = [root]
    while stack and len(seen) < limit:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, str | bytes | bytearray | memoryview):
            yield bytes(item) if isinstance(item, bytearray | memoryview) else item
            continue
        if isinstance(item, type) or type(item).__name__ in {"module", "function"}:
            continue
        if isinstance(item, Reason):
            continue
        stack.extend(gc.get_referents(item))


def texts_of(setup_job: Any, outcome: Outcome) -> list[str]:
    labels = job_labels(setup_job.module, setup_job.target.raw, setup_job.labels)
    metrics = "".join(render_outcome(labels, setup_job.spec, outcome).values())
    return [
        outcome.detail,
        repr(outcome),
        "\n".join(outcome.log or ()),
        report(setup_job, outcome, with_log=True),
        metrics,
    ]


def assert_absent(forms: list[str], texts: list[str], where: str) -> None:
    for form in forms:
        for text in texts:
            assert form not in text, f"{where}: a secret leaked: {text[:300]!r}"


@pytest.mark.parametrize("echo", [False, True], ids=["refusing", "echoing"])
async def test_no_secret_in_outcome_log_report_or_metrics(tmp_path: Path, echo: bool) -> None:
    canaries = write_secrets(tmp_path)
    forms = canaries.forms()
    async with peers(echo) as setups:
        for setup in setups:
            spec = job(tmp_path, setup.module, setup.target, timeout="3s")
            env = Resources(SecretStore(tmp_path))
            outcome = await execute(spec, env, capture_log=True)
            await env.close()
            if setup.name != "heartbleed":
                assert not outcome.success, f"{setup.name}: the peer refuses every login"
                assert outcome.reason is not Reason.INTERNAL_ERROR, outcome.detail
            texts = texts_of(spec, outcome)
            assert_absent(forms, texts, setup.name)
            reachable = list(reachable_strings(outcome))
            for form in forms:
                needle = form.encode()
                assert not any(
                    (needle in item) if isinstance(item, bytes) else (form in item)
                    for item in reachable
                ), f"{setup.name}: reachable from the outcome"


async def test_heartbleed_keeps_no_server_bytes(tmp_path: Path) -> None:
    async with HostilePeer(marker_heartbleed) as peer:
        spec = job(
            tmp_path, {"probe": "heartbleed", "response_timeout": "1s"}, f"127.0.0.1:{peer.port}"
        )
        outcome = await execute(spec, Resources(SecretStore(tmp_path)), capture_log=True)
    assert outcome.reason is Reason.HEARTBLEED_VULNERABLE, outcome.detail
    marker = MARKER.decode()
    assert_absent([marker, MARKER.hex()], texts_of(spec, outcome), "heartbleed")
    for item in reachable_strings(outcome):
        assert (MARKER not in item) if isinstance(item, bytes) else (marker not in item)


# -- through the daemon ----------------------------------------------------------------------


def _daemon_config(tmp_path: Path, setups: list[Setup], listen: int) -> Path:
    modules = {f"m_{s.name}": s.module for s in setups}
    doc = {
        "server": {"listen": f"127.0.0.1:{listen}", "shutdown_grace": "1s"},
        "defaults": {"interval": "2s", "timeout": "1500ms"},
        "modules": modules,
        "probes": [{"module": f"m_{s.name}", "target": s.target} for s in setups],
    }
    path = tmp_path / "probes.toml"
    path.write_text(toml_text.document(doc))
    return path


async def _wait_all_ran(session: aiohttp.ClientSession, base: str, jobs: int) -> str:
    loop = asyncio.get_running_loop()
    end = loop.time() + 20
    text = ""
    while loop.time() < end:
        with contextlib.suppress(aiohttp.ClientConnectorError):
            async with session.get(f"{base}/metrics") as resp:
                text = await resp.text()
            if text.count("\nprobe_success{") + text.startswith("probe_success{") >= jobs:
                return text
        await asyncio.sleep(0.2)
    pytest.fail(f"not every job ran:\n{text[-2000:]}")


@pytest.mark.parametrize("echo", [False, True], ids=["refusing", "echoing"])
async def test_no_secret_through_the_daemon(tmp_path: Path, echo: bool) -> None:
    canaries = write_secrets(tmp_path)
    forms = [*canaries.forms(), MARKER.decode(), MARKER.hex()]
    listen = free_port()
    async with peers(echo) as setups:
        config = _daemon_config(tmp_path, setups, listen)
        log = tmp_path / "probed.log"
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "probed", "--log-level", "debug"),
                *("--log-format", "json", "run", "-c", str(config)),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        texts: list[str] = []
        try:
            base = f"http://127.0.0.1:{listen}"
            async with aiohttp.ClientSession() as session:
                texts.append(await _wait_all_ran(session, base, len(setups)))
                for setup in setups:
                    params = {"module": f"m_{setup.name}", "target": setup.target, "debug": "true"}
                    async with session.get(f"{base}/probe", params=params) as resp:
                        assert resp.status == 200
                        texts.append(await resp.text())
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    texts.append(log.read_text(errors="replace"))
    assert "probe failed" in texts[-1]
    assert_absent(forms, texts, "daemon")
