"""Each fixture server starts and speaks its protocol (stdlib asyncio clients only)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
import time
from pathlib import Path

import pytest

from .certs import CertAuthority, CertFiles, self_signed
from .common import MissingBinaryError, ServerStartError, require_binary
from .dovecot import DovecotServer
from .exim import EximServer
from .fixtures import StartServer
from .gnutls import GnutlsServer, run_in_netns
from .mariadb import CLIENT_SSL, MariaDBServer, parse_greeting
from .nginx import NginxServer, VirtualHost, run_nginx
from .prometheus import PrometheusStack
from .sshd import SshdServer
from .vsftpd import VsftpdServer

IO_TIMEOUT = 5.0

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def client_ctx(ca: Path | None) -> ssl.SSLContext:
    assert ca is not None
    return ssl.create_default_context(cafile=str(ca))


async def connect(host: str, port: int, **kwargs: object) -> Streams:
    return await asyncio.wait_for(
        asyncio.open_connection(host, port, **kwargs),  # type: ignore[arg-type]
        IO_TIMEOUT,
    )


async def line(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readline(), IO_TIMEOUT)


async def command(streams: Streams, text: str) -> bytes:
    """Send one CRLF-terminated command, return one reply line."""
    reader, writer = streams
    writer.write(text.encode() + b"\r\n")
    await writer.drain()
    return await line(reader)


async def reply(reader: asyncio.StreamReader) -> list[bytes]:
    """A complete SMTP/FTP reply: lines until ``NNN `` (space after the code)."""
    lines = [await line(reader)]
    while lines[-1][3:4] == b"-":
        lines.append(await line(reader))
    return lines


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await asyncio.wait_for(writer.wait_closed(), IO_TIMEOUT)


async def http_get(
    host: str, port: int, path: str, vhost: str = "localhost", **kwargs: object
) -> tuple[bytes, bytes]:
    """(status line, body) of ``GET path`` with ``Host: vhost`` and ``Connection: close``."""
    reader, writer = await connect(host, port, **kwargs)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {vhost}\r\nConnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), IO_TIMEOUT)
    await close(writer)
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0], body


# --- machinery ----------------------------------------------------------------------------


def test_missing_binary_fails_with_package_name() -> None:
    with pytest.raises(MissingBinaryError, match="probed-fake-pkg"):
        require_binary("probed-no-such-binary", "probed-fake-pkg")


def test_start_failure_reports_log_tail() -> None:
    with (
        pytest.raises(ServerStartError, match='unknown directive "bogus_directive"'),
        run_nginx(tls=False, extra_http="bogus_directive on;"),
    ):
        pass


# --- nginx --------------------------------------------------------------------------------


async def test_nginx_http_and_https(nginx_server: NginxServer) -> None:
    status, body = await http_get(nginx_server.host, nginx_server.http_port, "/")
    assert status.startswith(b"HTTP/1.1 200")
    assert body == b"ok\n"
    assert nginx_server.https_port is not None
    ctx = client_ctx(nginx_server.ca_cert)
    status, body = await http_get(
        nginx_server.host, nginx_server.https_port, "/", ssl=ctx, server_hostname="localhost"
    )
    assert status.startswith(b"HTTP/1.1 200")
    assert body == b"ok\n"


async def test_nginx_sni_vhosts(server_ca: CertAuthority, start_server: StartServer) -> None:
    a_cert = server_ca.issue("a", ["a.test"])
    server = start_server(
        run_nginx(
            [
                VirtualHost("a.test", return_body="A\n", certs=a_cert),
                VirtualHost(
                    "localhost",
                    default=True,
                    locations=("location /down { return 503; }",),
                ),
            ],
            certs=server_ca.localhost("nginx-default"),
        )
    )
    assert server.https_port is not None
    ctx = client_ctx(server_ca.ca_cert)
    # SNI picks the certificate, the Host header picks the server block.
    _, body = await http_get(
        server.host, server.https_port, "/", "a.test", ssl=ctx, server_hostname="a.test"
    )
    assert body == b"A\n"
    status, _ = await http_get(
        server.host, server.https_port, "/down", ssl=ctx, server_hostname="localhost"
    )
    assert status.startswith(b"HTTP/1.1 503")


# --- sshd ---------------------------------------------------------------------------------


async def test_sshd_banner(sshd_server: SshdServer) -> None:
    reader, writer = await connect(sshd_server.host, sshd_server.port)
    banner = await line(reader)
    await close(writer)
    assert banner.startswith(b"SSH-2.0-OpenSSH_")
    assert sshd_server.client_key.is_file()
    assert "rsa" in sshd_server.host_key_types


# --- MariaDB ------------------------------------------------------------------------------


async def read_packet(reader: asyncio.StreamReader) -> bytes:
    header = await asyncio.wait_for(reader.readexactly(4), IO_TIMEOUT)
    length = int.from_bytes(header[:3], "little")
    return header + await asyncio.wait_for(reader.readexactly(length), IO_TIMEOUT)


async def test_mariadb_greeting_without_tls(mariadb_server: MariaDBServer) -> None:
    reader, writer = await connect(mariadb_server.host, mariadb_server.port)
    greeting = parse_greeting(await read_packet(reader))
    await close(writer)
    assert "MariaDB" in greeting.version
    assert not greeting.capabilities & CLIENT_SSL


async def test_mariadb_greeting_and_tls(mariadb_tls_server: MariaDBServer) -> None:
    reader, writer = await connect(mariadb_tls_server.host, mariadb_tls_server.port)
    greeting = parse_greeting(await read_packet(reader))
    assert greeting.version.startswith("5.5.5-10.")
    assert greeting.capabilities & CLIENT_SSL
    # SSLRequest: CLIENT_LONG_PASSWORD | PROTOCOL_41 | SSL | SECURE_CONNECTION, seq 1.
    caps = 0x0001 | 0x0200 | CLIENT_SSL | 0x8000
    payload = struct.pack("<IIB23x", caps, 1 << 24, 33)
    writer.write(len(payload).to_bytes(3, "little") + b"\x01" + payload)
    await writer.drain()
    await asyncio.wait_for(
        writer.start_tls(client_ctx(mariadb_tls_server.ca_cert), server_hostname="localhost"),
        IO_TIMEOUT,
    )
    ssl_object = writer.get_extra_info("ssl_object")
    assert ssl_object is not None
    assert ssl_object.version() in {"TLSv1.2", "TLSv1.3"}
    await close(writer)


def test_mariadb_replica_runs(mariadb_replication: tuple[MariaDBServer, MariaDBServer]) -> None:
    primary, replica = mariadb_replication
    primary.sql(
        "CREATE DATABASE smoke; CREATE TABLE smoke.t (a INT); INSERT INTO smoke.t VALUES (7);"
    )
    deadline = time.monotonic() + 10
    rows: list[dict[str, str]] = []
    while not rows and time.monotonic() < deadline:
        with contextlib.suppress(ServerStartError):  # table not replicated yet
            rows = replica.query("SELECT a FROM smoke.t")
        time.sleep(0.05)
    assert rows == [{"a": "7"}]
    status = replica.replica_status()
    assert status["Slave_IO_Running"] == "Yes"
    assert status["Slave_SQL_Running"] == "Yes"
    assert replica.primary_port == primary.port


# --- Exim ---------------------------------------------------------------------------------


async def test_exim_starttls_and_delivery(exim_server: EximServer) -> None:
    streams = await connect(exim_server.host, exim_server.port)
    reader, writer = streams
    assert (await reply(reader))[0].startswith(b"220 ")
    writer.write(b"EHLO client.probed.test\r\n")
    ehlo = await reply(reader)
    assert any(item[4:].strip() == b"STARTTLS" for item in ehlo)
    assert (await command(streams, "STARTTLS")).startswith(b"220")
    await asyncio.wait_for(
        writer.start_tls(client_ctx(exim_server.ca_cert), server_hostname="localhost"), IO_TIMEOUT
    )
    assert writer.get_extra_info("ssl_object").version() in {"TLSv1.2", "TLSv1.3"}
    writer.write(b"EHLO client.probed.test\r\n")
    assert (await reply(reader))[-1].startswith(b"250 ")
    for cmd in ("MAIL FROM:<smoke@client.probed.test>", f"RCPT TO:<alice@{exim_server.domain}>"):
        writer.write(cmd.encode() + b"\r\n")
        assert (await reply(reader))[0].startswith(b"250")
    writer.write(b"DATA\r\n")
    assert (await reply(reader))[0].startswith(b"354")
    writer.write(b"Subject: smoke\r\n\r\nhello\r\n.\r\n")
    assert (await reply(reader))[0].startswith(b"250")
    writer.write(b"QUIT\r\n")
    await close(writer)
    for _ in range(100):  # delivery is immediate; allow up to 5 s
        if exim_server.delivered("alice"):
            break
        await asyncio.sleep(0.05)
    assert len(exim_server.delivered("alice")) == 1


# --- Dovecot ------------------------------------------------------------------------------


async def test_dovecot_pop3_stls_login(dovecot_server: DovecotServer) -> None:
    streams = await connect(dovecot_server.host, dovecot_server.pop3_port)
    reader, writer = streams
    assert (await line(reader)).startswith(b"+OK")
    assert (await command(streams, "STLS")).startswith(b"+OK")
    await asyncio.wait_for(
        writer.start_tls(client_ctx(dovecot_server.ca_cert), server_hostname="localhost"),
        IO_TIMEOUT,
    )
    assert (await command(streams, f"USER {dovecot_server.user}")).startswith(b"+OK")
    assert (await command(streams, f"PASS {dovecot_server.password}")).startswith(b"+OK")
    assert (await command(streams, "STAT")).startswith(b"+OK 1 ")
    await command(streams, "QUIT")
    await close(writer)


async def test_dovecot_imap_starttls_login(dovecot_server: DovecotServer) -> None:
    streams = await connect(dovecot_server.host, dovecot_server.imap_port)
    reader, writer = streams
    assert (await line(reader)).startswith(b"* OK")
    assert (await command(streams, "a1 STARTTLS")).startswith(b"a1 OK")
    await asyncio.wait_for(
        writer.start_tls(client_ctx(dovecot_server.ca_cert), server_hostname="localhost"),
        IO_TIMEOUT,
    )
    writer.write(f"a2 LOGIN {dovecot_server.user} {dovecot_server.password}\r\n".encode())
    answer = await line(reader)
    while answer.startswith(b"* "):
        answer = await line(reader)
    assert answer.startswith(b"a2 OK")
    await close(writer)


@pytest.mark.parametrize(
    ("port_attr", "greeting"), [("pop3s_port", b"+OK"), ("imaps_port", b"* OK")]
)
async def test_dovecot_implicit_tls(
    dovecot_server: DovecotServer, port_attr: str, greeting: bytes
) -> None:
    port = getattr(dovecot_server, port_attr)
    assert isinstance(port, int)
    reader, writer = await connect(
        dovecot_server.host,
        port,
        ssl=client_ctx(dovecot_server.ca_cert),
        server_hostname="localhost",
    )
    assert (await line(reader)).startswith(greeting)
    await close(writer)


# --- vsftpd -------------------------------------------------------------------------------


async def test_vsftpd_auth_tls(vsftpd_server: VsftpdServer) -> None:
    streams = await connect(vsftpd_server.host, vsftpd_server.port)
    reader, writer = streams
    assert (await reply(reader))[0].startswith(b"220")
    writer.write(b"AUTH TLS\r\n")
    assert (await reply(reader))[0].startswith(b"234")
    await asyncio.wait_for(
        writer.start_tls(client_ctx(vsftpd_server.ca_cert), server_hostname="localhost"),
        IO_TIMEOUT,
    )
    assert writer.get_extra_info("ssl_object").version() in {"TLSv1.2", "TLSv1.3"}
    writer.write(b"USER anonymous\r\n")
    assert (await reply(reader))[0].startswith(b"230")
    writer.write(b"QUIT\r\n")
    await close(writer)


# --- gnutls-serv --------------------------------------------------------------------------


async def test_gnutls_serv_in_namespace(gnutls_server: GnutlsServer) -> None:
    ctx = client_ctx(gnutls_server.ca_cert)
    reader, writer = await run_in_netns(
        gnutls_server.netns_path,
        connect(gnutls_server.host, gnutls_server.port, ssl=ctx, server_hostname="localhost"),
    )
    writer.write(b"ping\n")
    assert await line(reader) == b"ping\n"
    await close(writer)
    # Invisible from the host namespace.
    with pytest.raises(OSError):  # noqa: PT011 - refused or unreachable, either is fine
        await connect(gnutls_server.host, gnutls_server.port)


# --- Prometheus / Alertmanager ------------------------------------------------------------


async def test_prometheus_and_alertmanager_ready(prometheus_stack: PrometheusStack) -> None:
    prom, am = prometheus_stack.prometheus, prometheus_stack.alertmanager
    status, _ = await http_get(prom.host, prom.port, "/-/ready")
    assert status.startswith(b"HTTP/1.1 200")
    status, _ = await http_get(am.host, am.port, "/-/ready")
    assert status.startswith(b"HTTP/1.1 200")


async def _verify_error(certs: CertFiles, ca: Path) -> str:
    """Serve ``certs`` on a loopback asyncio TLS server; the client's verification error."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(certs.cert, certs.key)

    async def handle(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        _, writer = await connect(
            "127.0.0.1", port, ssl=client_ctx(ca), server_hostname="localhost"
        )
    except ssl.SSLCertVerificationError as exc:
        return str(exc.verify_message)
    else:
        await close(writer)
        return "ok"
    finally:
        server.close()


async def test_cert_helpers(server_ca: CertAuthority, server_certs: CertFiles) -> None:
    assert await _verify_error(server_certs, server_ca.ca_cert) == "ok"
    assert "expired" in await _verify_error(server_ca.expired(), server_ca.ca_cert)
    assert "not yet valid" in await _verify_error(server_ca.not_yet_valid(), server_ca.ca_cert)
    assert "mismatch" in await _verify_error(server_ca.wrong_name(), server_ca.ca_cert)
    selfsigned = self_signed(server_ca.directory)
    assert "self-signed" in await _verify_error(selfsigned, server_ca.ca_cert)
    assert await _verify_error(selfsigned, selfsigned.ca_cert) == "ok"
    for certs in (server_certs, selfsigned):
        assert certs.key.stat().st_mode & 0o777 == 0o644
