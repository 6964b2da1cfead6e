"""The http probe against a real nginx (virtual hosts with their own certificates, redirects,
status codes, large and slow bodies, auth) and aiohttp or hand-written peers for what nginx
cannot do (request echo, HTTP/1.0, cookies, hostile servers)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from probed.probes.base import Reason
from probed.probes.http import HTTPTarget, parse_target
from probed.resources import Resources
from probed.results import Outcome
from probed.runner import execute
from probed.secrets import SecretStore
from tests.helpers import job, never_answer, serve
from tests.servers.certs import CertAuthority, CertFiles, self_signed
from tests.servers.nginx import NginxServer, VirtualHost, run_nginx

BIG = 3 * 2**20
BASIC = "Basic YWxpY2U6czNjcjN0"  # alice:s3cr3t
LOCATIONS = (
    'location = /ok { add_header X-Probe "yes" always; return 200 "ok\\n"; }',
    "location = /r1 { return 302 /r2; }",
    "location = /r2 { return 301 /ok; }",
    "location = /loop { return 302 /loop; }",
    "location = /down { return 503; }",
    "location = /slow.txt { limit_rate 4k; }",
    f'location = /auth {{ if ($http_authorization != "{BASIC}") {{ return 401; }} '
    'return 200 "welcome\\n"; }',
    'location = /bearer { if ($http_authorization != "Bearer t0ken") { return 401; } '
    'return 200 "token ok\\n"; }',
)


@pytest.fixture(scope="module")
def nginx(server_ca: CertAuthority) -> Iterator[NginxServer]:
    """One nginx: ``localhost`` (default, static files and LOCATIONS) and a virtual host
    per certificate case on the same address."""
    vhosts = [
        VirtualHost("localhost", return_status=None, locations=LOCATIONS, default=True),
        VirtualHost(
            "valid.test", return_body="valid.test\n", certs=server_ca.issue("valid", ["valid.test"])
        ),
        VirtualHost(
            "expired.test",
            return_body="expired.test\n",
            certs=server_ca.expired("expired", ["expired.test"]),
        ),
        VirtualHost(
            "wrong.test",
            return_body="wrong.test\n",
            certs=server_ca.wrong_name("other", ["other.test"]),
        ),
        VirtualHost(
            "selfsigned.test",
            return_body="selfsigned.test\n",
            certs=self_signed(server_ca.directory, "selfsigned", ("selfsigned.test",)),
        ),
    ]
    files = {"big.bin": b"b" * BIG, "slow.txt": b"s" * 262144, "page.html": b"<html></html>\n"}
    with run_nginx(vhosts, certs=server_ca.localhost("nginx-default"), static_files=files) as srv:
        yield srv


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Resources]:
    """Resources whose HTTP session is closed in the test's own loop."""
    resources = Resources(SecretStore(tmp_path, {"API_TOKEN": "t0ken"}))
    yield resources
    await resources.close()


def _facts(outcome: Outcome) -> dict[str, list[tuple[str, float]]]:
    out: dict[str, list[tuple[str, float]]] = {}
    for family, labels, value in outcome.samples:
        out.setdefault(family.name, []).append((labels, value))
    return out


def _value(outcome: Outcome, name: str) -> float:
    values = _facts(outcome)[name]
    assert len(values) == 1, values  # one series per family and job
    return values[0][1]


async def _run(
    tmp_path: Path, env: Resources, module: dict[str, Any], target: str, deadline: str = "3s"
) -> Outcome:
    return await execute(
        job(tmp_path, {"probe": "http", **module}, target, timeout=deadline), env, capture_log=True
    )


def _https(server: NginxServer, site: str, path: str = "/") -> str:
    return f"https://{site}:{server.https_port}{path} via 127.0.0.1"


def _ca(ca: CertAuthority) -> dict[str, Any]:
    return {"tls_config": {"ca_file": str(ca.ca_cert)}}


# -- target syntax ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "host", "port", "url", "pinned"),
    [
        (
            "https://shop.example/cart?x=1",
            "shop.example",
            443,
            "https://shop.example/cart?x=1",
            False,
        ),
        ("shop.example:8080", "shop.example", 8080, "http://shop.example:8080/", False),
        ("https://shop.example/ via 10.0.0.5", "10.0.0.5", 443, "https://shop.example/", True),
        ("http://shop.example/ via web1:8080", "web1", 8080, "http://shop.example/", True),
        ("https://[::1]:8443/x#frag", "::1", 8443, "https://[::1]:8443/x", False),
        ("https://s.example/  via  [2001:db8::1]", "2001:db8::1", 443, "https://s.example/", True),
    ],
)
def test_target_syntax(raw: str, host: str, port: int, url: str, pinned: bool) -> None:
    target = parse_target(raw, None)
    assert isinstance(target, HTTPTarget)
    assert (target.host, target.port, str(target.url), target.pinned) == (host, port, url, pinned)
    assert target.raw == raw.strip()


@pytest.mark.parametrize(
    "raw", ["ftp://x/", "https://u:pw@x/", "https:///nohost", "https://x/ via ", "a b c"]
)
def test_target_syntax_errors(raw: str) -> None:
    with pytest.raises(ValueError, match=r'^"') as info:
        parse_target(raw, None)
    assert "pw" not in str(info.value)


# -- nginx: plain HTTP --------------------------------------------------------------------


async def test_plain_get_exports_blackbox_facts(
    tmp_path: Path, env: Resources, nginx: NginxServer
) -> None:
    outcome = await _run(tmp_path, env, {}, f"http://127.0.0.1:{nginx.http_port}/ok")
    assert outcome.success, outcome.detail
    assert _value(outcome, "probe_http_status_code") == 200
    assert _value(outcome, "probe_http_content_length") == 3
    assert _value(outcome, "probe_http_uncompressed_body_length") == 3
    assert _value(outcome, "probe_http_version") == 1.1
    assert _value(outcome, "probe_http_ssl") == 0
    assert _value(outcome, "probe_http_redirects") == 0
    assert _value(outcome, "probe_ip_protocol") == 4
    assert "probe_failed_due_to_regex" not in _facts(outcome)  # no regex configured
    phases = dict(outcome.phases)
    assert set(phases) == {"resolve", "connect", "tls", "processing", "transfer"}
    assert phases["connect"] > 0
    assert phases["processing"] > 0
    assert phases["tls"] == 0


async def test_last_modified_of_a_static_file(
    tmp_path: Path, env: Resources, nginx: NginxServer
) -> None:
    path = nginx.www_dir / "page.html"
    outcome = await _run(tmp_path, env, {}, f"http://127.0.0.1:{nginx.http_port}/page.html")
    assert outcome.success, outcome.detail
    assert _value(outcome, "probe_http_last_modified_timestamp_seconds") == int(
        path.stat().st_mtime
    )


async def test_redirect_chain_is_followed_and_each_hop_logged(
    tmp_path: Path, env: Resources, nginx: NginxServer
) -> None:
    module = {"fail_if_body_not_matches_regexp": ["^ok$"]}
    outcome = await _run(tmp_path, env, module, f"http://127.0.0.1:{nginx.http_port}/r1")
    assert outcome.success, outcome.detail
    assert _value(outcome, "probe_http_redirects") == 2
    assert _value(outcome, "probe_failed_due_to_regex") == 0
    assert outcome.log is not None
    hops = [line for line in outcome.log if " redirect " in line]
    assert len(hops) == 2
    assert "/r2" in hops[0]
    assert "/ok" in hops[1]


async def test_redirect_not_followed_is_the_final_response(
    tmp_path: Path, env: Resources, nginx: NginxServer
) -> None:
    target = f"http://127.0.0.1:{nginx.http_port}/r1"
    outcome = await _run(tmp_path, env, {"follow_redirects": False}, target)
    assert outcome.reason is Reason.HTTP_STATUS
    assert _value(outcome, "probe_http_status_code") == 302
    module = {"follow_redirects": False, "valid_status_codes": ["3xx"]}
    assert (await _run(tmp_path, env, module, target)).success


async def test_redirect_loop_stops_at_the_limit(
    tmp_path: Path, env: Resources, nginx: NginxServer
) -> None:
    target = f"http://127.0.0.1:{nginx.http_port}/loop"
    outcome = await _run(tmp_path, env, {"max_redirects": 3}, target)
    assert outcome.reason is Reason.TOO_MANY_REDIRECTS
    assert _value(outcome, "probe_http_redirects") == 3


@pytest.mark.parametrize(
    ("codes", "success"),
    [([], False), (["5xx"], True), (["500-503"], True), ([200, "404"], False), ([503], True)],
)
async def test_status_codes(
    tmp_path: Path, env: Resources, nginx: NginxServer, codes: list[Any], success: bool
) -> None:
    module = {"valid_status_codes": codes} if codes else {}
    outcome = await _run(tmp_path, env, module, f"http://127.0.0.1:{nginx.http_port}/down")
    assert outcome.success is success
    assert _value(outcome, "probe_http_status_code") == 503
    if not success:
        assert outcome.reason is Reason.HTTP_STATUS


@pytest.mark.parametrize(
    ("module", "success"),
    [
        ({"fail_if_body_matches_regexp": ["^ok"]}, False),
        ({"fail_if_body_not_matches_regexp": ["^nope$"]}, False),
        ({"fail_if_header_not_matches": [{"header": "X-Probe", "regexp": "^yes$"}]}, True),
        ({"fail_if_header_matches": [{"header": "x-probe", "regexp": "y"}]}, False),
        ({"fail_if_header_not_matches": [{"header": "X-Absent", "regexp": "."}]}, False),
        (
            {
                "fail_if_header_not_matches": [
                    {"header": "X-Absent", "regexp": ".", "allow_missing": True}
                ]
            },
            True,
        ),
    ],
)
async def test_regexes(
    tmp_path: Path, env: Resources, nginx: NginxServer, module: dict[str, Any], success: bool
) -> None:
    outcome = await _run(tmp_path, env, module, f"http://127.0.0.1:{nginx.http_port}/ok")
    assert outcome.success is success, outcome.detail
    assert _value(outcome, "probe_failed_due_to_regex") == (0 if success else 1)
    if not success:
        assert outcome.reason is Reason.HTTP_REGEX


async def test_large_body_is_counted_or_capped(
    tmp_path: Path, env: Resources, nginx: NginxServer
) -> None:
    target = f"http://127.0.0.1:{nginx.http_port}/big.bin"
    outcome = await _run(tmp_path, env, {}, target)
    assert outcome.success, outcome.detail
    assert _value(outcome, "probe_http_uncompressed_body_length") == BIG
    assert _value(outcome, "probe_http_content_length") == BIG
    capped = await _run(tmp_path, env, {"body_size_limit": "1MiB"}, target)
    assert capped.reason is Reason.TOO_LARGE


async def test_slow_body_ends_at_the_deadline_in_transfer(
    tmp_path: Path, env: Resources, nginx: NginxServer
) -> None:
    target = f"http://127.0.0.1:{nginx.http_port}/slow.txt"
    outcome = await _run(tmp_path, env, {}, target, deadline="500ms")
    assert outcome.reason is Reason.TIMEOUT
    assert "phase transfer" in outcome.detail
    assert dict(outcome.phases)["transfer"] > 0.3
    assert outcome.duration < 1.5


async def test_fail_if_ssl_and_not_ssl(tmp_path: Path, env: Resources, nginx: NginxServer) -> None:
    plain = f"http://127.0.0.1:{nginx.http_port}/ok"
    outcome = await _run(tmp_path, env, {"fail_if_not_ssl": True}, plain)
    assert outcome.reason is Reason.HTTP_SSL_REQUIRED
    assert (await _run(tmp_path, env, {"fail_if_ssl": True}, plain)).success


# -- nginx: virtual hosts over TLS on one address -------------------------------------------


async def test_pinned_virtual_host_over_tls(
    tmp_path: Path, env: Resources, nginx: NginxServer, server_ca: CertAuthority
) -> None:
    module = {"fail_if_body_not_matches_regexp": ["^valid\\.test$"], **_ca(server_ca)}
    outcome = await _run(tmp_path, env, module, _https(nginx, "valid.test"))
    assert outcome.success, outcome.detail
    facts = _facts(outcome)
    assert _value(outcome, "probe_http_ssl") == 1
    assert _value(outcome, "probe_tls_certificate_verified") == 1
    (info,) = facts["probe_ssl_last_chain_info"]
    assert 'subjectalternative="valid.test"' in info[0]  # SNI picked the site's certificate
    assert facts["probe_tls_version_info"][0][0] in {'version="TLS 1.2"', 'version="TLS 1.3"'}
    assert "probe_ssl_earliest_cert_expiry" in facts
    assert dict(outcome.phases)["tls"] > 0


@pytest.mark.parametrize(
    ("site", "reason"),
    [
        ("expired.test", Reason.TLS_CERT_EXPIRED),
        ("wrong.test", Reason.TLS_CERT_NAME_MISMATCH),
        ("selfsigned.test", Reason.TLS_CERT_SELF_SIGNED),
    ],
)
async def test_certificate_failures_keep_the_chain_facts(
    tmp_path: Path,
    env: Resources,
    *,
    nginx: NginxServer,
    server_ca: CertAuthority,
    site: str,
    reason: Reason,
) -> None:
    outcome = await _run(tmp_path, env, _ca(server_ca), _https(nginx, site))
    assert outcome.reason is reason, outcome.detail
    assert _value(outcome, "probe_tls_certificate_verified") == 0
    assert _value(outcome, "probe_ssl_earliest_cert_expiry") > 0
    assert "probe_http_status_code" not in _facts(outcome)


async def test_verification_off_reaches_an_expired_site(
    tmp_path: Path, env: Resources, nginx: NginxServer
) -> None:
    module = {"tls_config": {"insecure_skip_verify": True}, "fail_if_ssl": True}
    outcome = await _run(tmp_path, env, module, _https(nginx, "expired.test"))
    assert outcome.reason is Reason.HTTP_SSL_FORBIDDEN  # the response came, over TLS
    assert _value(outcome, "probe_tls_certificate_verified") == 0
    assert _value(outcome, "probe_http_status_code") == 200


async def test_minimum_tls_version_refused(
    tmp_path: Path, env: Resources, server_ca: CertAuthority, start_server: Any
) -> None:
    server = start_server(
        run_nginx(certs=server_ca.localhost("tls12-only"), ssl_protocols="TLSv1.2")
    )
    module = {"tls_config": {"ca_file": str(server_ca.ca_cert), "min_version": "TLS13"}}
    outcome = await _run(
        tmp_path, env, module, f"https://localhost:{server.https_port}/ via 127.0.0.1"
    )
    assert outcome.reason is Reason.TLS_HANDSHAKE, outcome.detail


# -- nginx: credentials from secrets --------------------------------------------------------


async def test_basic_auth_from_a_secret_file(
    tmp_path: Path, env: Resources, nginx: NginxServer
) -> None:
    (tmp_path / "pw").write_text("s3cr3t\n")
    module = {"basic_auth": {"username": "alice", "password": {"file": "pw"}}}
    target = f"http://127.0.0.1:{nginx.http_port}/auth"
    outcome = await _run(tmp_path, env, module, target)
    assert outcome.success, outcome.detail
    (tmp_path / "pw").write_text("wrong")
    fresh = Resources(SecretStore(tmp_path))  # secrets are read once per store
    wrong = await _run(tmp_path, fresh, module, target)
    await fresh.close()
    assert wrong.reason is Reason.HTTP_STATUS
    assert _value(wrong, "probe_http_status_code") == 401
    assert wrong.log is not None
    assert not any("wrong" in line or "Basic" in line for line in wrong.log)


async def test_bearer_token_from_the_environment(
    tmp_path: Path, env: Resources, nginx: NginxServer
) -> None:
    target = f"http://127.0.0.1:{nginx.http_port}/bearer"
    outcome = await _run(tmp_path, env, {"bearer_token": {"env": "API_TOKEN"}}, target)
    assert outcome.success, outcome.detail
    missing = await _run(tmp_path, env, {"bearer_token": {"env": "NOT_SET"}}, target)
    assert missing.reason is Reason.SECRET_UNAVAILABLE
    assert "NOT_SET" in missing.detail


# -- aiohttp and hand-written peers ----------------------------------------------------------


@contextlib.asynccontextmanager
async def web_app(
    routes: list[web.RouteDef], ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[int]:
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def _server_context(certs: CertFiles) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs.cert, certs.key)
    return ctx


async def test_request_method_headers_body_and_site_host(tmp_path: Path, env: Resources) -> None:
    seen: list[tuple[str, dict[str, str], bytes]] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append((request.method, dict(request.headers), await request.read()))
        return web.Response(status=201, text="created")

    async with web_app([web.post("/submit", echo)]) as port:
        module = {
            "method": "POST",
            "headers": {"Content-Type": "application/json", "X-Tenant": "a"},
            "body": '{"ping": true}',
            "valid_status_codes": [201],
        }
        outcome = await _run(tmp_path, env, module, f"http://shop.test:{port}/submit via 127.0.0.1")
    assert outcome.success, outcome.detail
    ((method, headers, body),) = seen
    assert (method, body) == ("POST", b'{"ping": true}')
    assert headers["Host"] == f"shop.test:{port}"
    assert headers["X-Tenant"] == "a"
    assert headers["User-Agent"].startswith("probed/")
    assert "Accept-Encoding" not in headers  # only with compression, as blackbox does
    assert "Cookie" not in headers


async def test_no_cookies_leak_between_runs(tmp_path: Path, env: Resources) -> None:
    cookies: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        cookies.append(request.headers.get("Cookie"))
        response = web.Response(text="ok")
        response.set_cookie("session", "abc")
        return response

    async with web_app([web.get("/", handler)]) as port:
        for _ in range(2):
            assert (await _run(tmp_path, env, {}, f"http://127.0.0.1:{port}/")).success
    assert cookies == [None, None]


async def test_gzip_compression(tmp_path: Path, env: Resources) -> None:
    text = b"compressed hello " * 100

    async def handler(request: web.Request) -> web.Response:
        assert request.headers.get("Accept-Encoding") == "gzip"
        return web.Response(body=gzip.compress(text), headers={"Content-Encoding": "gzip"})

    async with web_app([web.get("/", handler)]) as port:
        module = {"compression": "gzip", "fail_if_body_not_matches_regexp": ["^compressed hello"]}
        outcome = await _run(tmp_path, env, module, f"http://127.0.0.1:{port}/")
    assert outcome.success, outcome.detail
    assert _value(outcome, "probe_http_uncompressed_body_length") == len(text)


async def test_http10_response_and_valid_versions(tmp_path: Path, env: Resources) -> None:
    async def http10(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    async with serve(http10) as port:
        target = f"http://127.0.0.1:{port}/"
        outcome = await _run(tmp_path, env, {}, target)
        assert outcome.success, outcome.detail
        assert _value(outcome, "probe_http_version") == 1.0
        strict = await _run(tmp_path, env, {"valid_http_versions": ["HTTP/1.1"]}, target)
    assert strict.reason is Reason.HTTP_VERSION


async def test_pin_follows_a_redirect_to_https_on_the_same_site(
    tmp_path: Path, env: Resources, server_ca: CertAuthority
) -> None:
    async def secure(_: web.Request) -> web.Response:
        return web.Response(text="secure")

    site_ctx = _server_context(server_ca.issue("site", ["site.test"]))
    async with web_app([web.get("/", secure)], site_ctx) as tls:

        async def upgrade(_: web.Request) -> web.Response:
            raise web.HTTPMovedPermanently(f"https://site.test:{tls}/")

        async with web_app([web.get("/", upgrade)]) as plain:
            module = {"fail_if_not_ssl": True, **_ca(server_ca)}
            outcome = await _run(tmp_path, env, module, f"http://site.test:{plain}/ via 127.0.0.1")
    assert outcome.success, outcome.detail
    assert _value(outcome, "probe_http_redirects") == 1
    assert _value(outcome, "probe_http_ssl") == 1


async def test_credentials_stay_with_their_host_on_redirect(tmp_path: Path, env: Resources) -> None:
    seen: list[str | None] = []

    async def final(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.Response(text="ok")

    async with web_app([web.get("/", final)]) as other:

        async def first(request: web.Request) -> web.Response:
            seen.append(request.headers.get("Authorization"))
            raise web.HTTPFound(f"http://localhost:{other}/")

        async with web_app([web.get("/", first)]) as port:
            module = {"bearer_token": {"env": "API_TOKEN"}, "ip_protocol": "ip4"}
            outcome = await _run(tmp_path, env, module, f"http://127.0.0.1:{port}/")
    assert outcome.success, outcome.detail
    assert seen == ["Bearer t0ken", None]


# -- hostile peers: each run ends by its deadline (or a limit) with the right reason --------


async def _read_request(reader: asyncio.StreamReader) -> None:
    await reader.readuntil(b"\r\n\r\n")


async def headers_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\n")
    for n in range(100_000):
        writer.write(b"X-Tarpit-%d: 1\r\n" % n)
        await writer.drain()
        await asyncio.sleep(0.02)


async def header_flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\n")
    for n in range(100_000):
        writer.write(b"X-Flood-%d: 1\r\n" % n)
        await writer.drain()


async def endless_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
    chunk = b"z" * 65536
    for _ in range(100_000):
        writer.write(chunk)
        await writer.drain()


@pytest.mark.parametrize(
    ("peer", "module", "reason", "phase"),
    [
        (headers_forever, {}, Reason.TIMEOUT, "processing"),
        (header_flood, {}, Reason.TOO_LARGE, ""),
        (endless_body, {"body_size_limit": 0}, Reason.TIMEOUT, "transfer"),
        (endless_body, {"body_size_limit": "4MiB"}, Reason.TOO_LARGE, ""),
    ],
)
async def test_hostile_http_peers(
    tmp_path: Path,
    env: Resources,
    *,
    peer: Any,
    module: dict[str, Any],
    reason: Reason,
    phase: str,
) -> None:
    async with serve(peer) as port:
        outcome = await _run(tmp_path, env, module, f"http://127.0.0.1:{port}/", deadline="500ms")
    assert outcome.reason is reason, outcome.detail
    assert outcome.duration < 1.5
    if phase:
        assert f"phase {phase}" in outcome.detail


async def test_stalled_tls_handshake_times_out_in_tls(tmp_path: Path, env: Resources) -> None:
    async with serve(never_answer) as port:
        outcome = await _run(tmp_path, env, {}, f"https://127.0.0.1:{port}/", deadline="500ms")
    assert outcome.reason is Reason.TIMEOUT
    assert "phase tls" in outcome.detail
    assert dict(outcome.phases)["tls"] > 0.3


async def test_refused(tmp_path: Path, env: Resources) -> None:
    async with serve(never_answer) as port:
        pass  # the port was just free and has no listener now
    outcome = await _run(tmp_path, env, {}, f"http://127.0.0.1:{port}/")
    assert outcome.reason is Reason.CONNECT_REFUSED
