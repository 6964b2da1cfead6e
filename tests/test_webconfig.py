"""The web config file: real HTTPS with client certificates and basic auth, and its errors."""

from __future__ import annotations

import asyncio
import base64
import ssl
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import bcrypt
import pytest
import trustme

from probed import webconfig
from probed.config import ConfigError
from tests.helpers import free_port

PASSWORD = "correct horse"  # noqa: S105 - a throwaway test password


@dataclass(frozen=True)
class Files:
    directory: Path
    ca: Path
    client: Path  # client certificate and key, one PEM file
    stranger: Path  # a client certificate from a CA the server does not trust


def _hash(password: str, rounds: int = 4) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    directory = tmp_path_factory.mktemp("web")
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.cert_chain_pems[0].write_to_path(str(directory / "web.crt"))
    server.private_key_pem.write_to_path(str(directory / "web.key"))
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    ca.issue_cert("scraper@example.org").private_key_and_cert_chain_pem.write_to_path(
        str(directory / "client.pem")
    )
    other.issue_cert("scraper@example.org").private_key_and_cert_chain_pem.write_to_path(
        str(directory / "stranger.pem")
    )
    other.issue_cert("127.0.0.1").private_key_pem.write_to_path(str(directory / "other.key"))
    return Files(
        directory, directory / "ca.pem", directory / "client.pem", directory / "stranger.pem"
    )


def _client_context(files: Files, cert: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(files.ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert))
    return ctx


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
async def https_daemon(files: Files, tmp_path: Path) -> AsyncIterator[str]:
    """`probed run --web.config.file` with TLS 1.3, a required client cert and basic auth."""
    web = tmp_path / "web.yml"
    # Relative paths resolve against the web config file's directory.
    for name in ("web.crt", "web.key", "ca.pem"):
        (tmp_path / name).write_bytes((files.directory / name).read_bytes())
    web.write_text(
        "tls_server_config:\n"
        "  cert_file: web.crt\n"
        "  key_file: web.key\n"
        "  client_ca_file: ca.pem\n"
        "  client_auth_type: RequireAndVerifyClientCert\n"
        "  min_version: TLS13\n"
        "basic_auth_users:\n"
        f"  prometheus: '{_hash(PASSWORD)}'\n"
    )
    listen = free_port()
    cfg = tmp_path / "probes.toml"
    cfg.write_text(f'[server]\nlisten = "127.0.0.1:{listen}"\nshutdown_grace = "1s"\n')
    log = tmp_path / "probed.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "probed", "--log-format", "json", "run", "-c", str(cfg)),
            *("--web.config.file", str(web)),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"https://127.0.0.1:{listen}"
    try:
        ctx = _client_context(files, files.client)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
            loop = asyncio.get_running_loop()
            end = loop.time() + 15
            while True:
                try:
                    async with session.get(f"{base}/-/healthy") as resp:
                        assert resp.status == 401
                        break
                except aiohttp.ClientConnectorError:
                    if loop.time() > end or proc.returncode is not None:
                        pytest.fail(f"probed never listened:\n{log.read_text()[-3000:]}")
                    await asyncio.sleep(0.1)
        yield base
        proc.send_signal(2)  # SIGINT: the same clean stop as SIGTERM
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_https_client_cert_and_basic_auth(https_daemon: str, files: Files) -> None:
    base = https_daemon
    good = _basic("prometheus", PASSWORD)
    ctx = _client_context(files, files.client)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        for path in ("/metrics", "/-/healthy", "/-/ready", "/"):
            async with session.get(f"{base}{path}", headers=good) as resp:
                assert resp.status == 200, path
                if path == "/metrics":
                    assert "probed_build_info" in await resp.text()
        async with session.post(f"{base}/-/reload", headers=good) as resp:
            assert resp.status == 200
        for headers in (
            {},
            _basic("prometheus", "wrong"),
            _basic("nobody", PASSWORD),
            {"Authorization": "Bearer abc"},
            {"Authorization": "Basic !!!"},
        ):
            for path in ("/metrics", "/-/healthy", "/probe?module=x&target=y"):
                async with session.get(f"{base}{path}", headers=headers) as resp:
                    assert resp.status == 401, (path, headers)
                    assert resp.headers["WWW-Authenticate"].startswith('Basic realm="probed"')
        async with session.post(f"{base}/-/reload") as resp:
            assert resp.status == 401

    # No client certificate, or one from a CA the server does not trust: refused in TLS.
    for cert in (None, files.stranger):
        connector = aiohttp.TCPConnector(ssl=_client_context(files, cert))
        async with aiohttp.ClientSession(connector=connector) as session:
            with pytest.raises(aiohttp.ClientError):
                async with session.get(f"{base}/metrics", headers=good) as resp:
                    await resp.read()

    # min_version TLS13: a TLS 1.2 client is refused.
    old = _client_context(files, files.client)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=old)) as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(f"{base}/metrics", headers=good) as resp:
                await resp.read()

    # Plain HTTP on the TLS port gets nothing.
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(base.replace("https", "http") + "/metrics") as resp:
                await resp.read()


async def test_basic_auth_caches_success_and_runs_bcrypt_off_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(threading.get_ident())
        return real(password, hashed)

    auth = webconfig.BasicAuth({"alice": _hash("secret"), "bob": _hash("other")})
    monkeypatch.setattr(bcrypt, "checkpw", counting)
    header = "Basic " + base64.b64encode(b"alice:secret").decode()
    assert await auth.check(header) == "alice"
    assert await auth.check(header) == "alice"
    assert len(calls) == 1  # the second check came from the cache
    assert threading.get_ident() not in calls  # bcrypt ran in a worker thread
    # Failures are not cached, and a cached success does not open the door to others.
    wrong = "Basic " + base64.b64encode(b"alice:secreT").decode()
    assert await auth.check(wrong) is None
    assert await auth.check(wrong) is None
    assert len(calls) == 3
    assert await auth.check("Basic " + base64.b64encode(b"bob:secret").decode()) is None
    # An unknown user still pays for one bcrypt (no timing oracle for user names).
    assert await auth.check("Basic " + base64.b64encode(b"eve:secret").decode()) is None
    assert len(calls) == 5
    # bcrypt >= 5 raises on passwords over 72 bytes: that is a failed login, not a 500.
    long = "Basic " + base64.b64encode(b"alice:" + b"x" * 100).decode()
    assert await auth.check(long) is None


def test_client_auth_modes(files: Files, tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text(
        f"tls_server_config:\n  cert_file: {files.directory}/web.crt\n"
        f"  key_file: {files.directory}/web.key\n"
        f"  client_ca_file: {files.ca}\n  client_auth_type: VerifyClientCertIfGiven\n"
    )
    cfg = webconfig.load(web)
    assert cfg.ssl_context is not None
    assert cfg.ssl_context.verify_mode == ssl.CERT_OPTIONAL
    assert cfg.ssl_context.minimum_version == ssl.TLSVersion.TLSv1_2  # the default
    assert cfg.auth is None
    web.write_text("")  # an empty file: plain HTTP, no auth, as exporter-toolkit
    empty = webconfig.load(web)
    assert empty.ssl_context is None
    assert empty.auth is None


BAD_HASH = 'not a bcrypt hash (want "$2y$10$...", as htpasswd -nBC 10)'
BAD_CASES: dict[str, tuple[str, str]] = {
    "unknown_top": ("basic_auth_user: {}\n", 'top level: unknown key "basic_auth_user"'),
    "unknown_tls": (
        "tls_server_config: {cert_fil: a, key_file: b}\n",
        'tls_server_config: unknown key "cert_fil" (did you mean "cert_file"?)',
    ),
    "missing_key": (
        "tls_server_config: {cert_file: web.crt}\n",
        'tls_server_config: missing key "key_file"',
    ),
    "bad_hash": ("basic_auth_users: {alice: hunter2}\n", f"basic_auth_users.alice: {BAD_HASH}"),
    "colon_user": (
        "basic_auth_users: {'a:b': '$2y$04$" + "a" * 53 + "'}\n",
        "basic_auth_users.a:b: a user name must be non-empty and have no colon",
    ),
    "missing_file": (
        "tls_server_config: {cert_file: nope.crt, key_file: web.key}\n",
        "tls_server_config.cert_file: cannot read {dir}/nope.crt: No such file or directory",
    ),
    "key_is_cert": (
        "tls_server_config: {cert_file: web.crt, key_file: web.crt}\n",
        "tls_server_config.key_file: {dir}/web.crt holds no PEM private key",
    ),
    "key_mismatch": (
        "tls_server_config: {cert_file: web.crt, key_file: other.key}\n",
        "tls_server_config.key_file: cannot use {dir}/other.key with {dir}/web.crt: "
        "KEY_VALUES_MISMATCH",
    ),
    "bad_version": (
        "tls_server_config: {cert_file: web.crt, key_file: web.key, min_version: TLS14}\n",
        "tls_server_config.min_version: Input should be 'TLS10', 'TLS11', 'TLS12' or 'TLS13'",
    ),
    "versions_crossed": (
        "tls_server_config: {cert_file: web.crt, key_file: web.key, min_version: TLS13,"
        " max_version: TLS12}\n",
        "tls_server_config: min_version TLS13 is above max_version",
    ),
    "unverified_client_certs": (
        "tls_server_config: {cert_file: web.crt, key_file: web.key, client_ca_file: ca.pem,"
        " client_auth_type: RequireAnyClientCert}\n",
        'tls_server_config.client_auth_type: "RequireAnyClientCert" is not supported',
    ),
    "ca_without_policy": (
        "tls_server_config: {cert_file: web.crt, key_file: web.key, client_ca_file: ca.pem}\n",
        "tls_server_config: client_ca_file is set but client_auth_type is not",
    ),
    "policy_without_ca": (
        "tls_server_config: {cert_file: web.crt, key_file: web.key,"
        " client_auth_type: RequireAndVerifyClientCert}\n",
        'tls_server_config: client_auth_type "RequireAndVerifyClientCert" needs client_ca_file',
    ),
    "cipher_suites": (
        "tls_server_config: {cert_file: web.crt, key_file: web.key, cipher_suites: [x]}\n",
        "tls_server_config.cipher_suites: not supported by probed",
    ),
    "not_a_mapping": ("- a\n- b\n", "top level: expected a mapping"),
    "bad_yaml": ("tls_server_config: [\n", "invalid YAML: "),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_web_config_names_file_and_key(case: str, files: Files) -> None:
    text, expected = BAD_CASES[case]
    path = files.directory / f"{case}.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        webconfig.load(path)
    message = str(info.value)
    assert f"{path}: {expected.format(dir=files.directory)}" in message, message


def test_bad_web_config_stops_the_daemon_with_exit_2(files: Files, tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  alice: hunter2\n")
    cfg = tmp_path / "probes.toml"
    cfg.write_text(f'[server]\nlisten = "127.0.0.1:{free_port()}"\n')
    for command in ("run", "check-config"):
        args = ["-c", str(cfg)] if command == "run" else [str(cfg)]
        out = subprocess.run(
            [sys.executable, "-m", "probed", command, *args, "--web.config.file", str(web)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert out.returncode == 2, (command, out.stdout, out.stderr)
        assert f"{web}: basic_auth_users.alice: {BAD_HASH}" in out.stderr
