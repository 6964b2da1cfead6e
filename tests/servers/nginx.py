"""nginx with a list of virtual hosts on one plain and one TLS port (SNI picks the cert)."""

from __future__ import annotations

import contextlib
import re
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .certs import CertFiles, certs_for_server, copy_cert
from .common import (
    DEFAULT_TIMEOUT,
    LOCALHOST,
    ServerProcess,
    free_ports,
    http_get,
    read_banner,
    require_binary,
    service_dir,
    started,
    wait_until,
    write_file,
)


@dataclass(frozen=True)
class VirtualHost:
    """One ``server {}`` block.

    ``return_status``/``return_body`` become ``location / { return <status> "<body>"; }``
    (for 301/302 the body is the URL; ``return_body=None`` gives a bare ``return <status>;``;
    ``return_status=None`` serves static files from the server's ``www_dir`` instead).
    ``locations`` are raw nginx blocks such as ``'location /down { return 503; }'``; one of
    them may replace ``location /``. ``certs=None`` uses the server's default certificate.
    Note: nginx expands ``$variables`` in return bodies.
    """

    server_name: str
    return_status: int | None = 200
    return_body: str | None = "ok\n"
    locations: tuple[str, ...] = ()
    certs: CertFiles | None = None
    default: bool = False


@dataclass(frozen=True)
class NginxServer:
    host: str
    http_port: int
    https_port: int | None
    data_dir: Path
    www_dir: Path
    config_path: Path
    certs: CertFiles | None
    vhosts: tuple[VirtualHost, ...]
    pid: int
    log_path: Path

    @property
    def ca_cert(self) -> Path | None:
        return None if self.certs is None else self.certs.ca_cert

    def url(self, path: str = "/", *, tls: bool = False, host: str | None = None) -> str:
        port = self.https_port if tls else self.http_port
        if port is None:
            raise ValueError("this nginx runs without TLS")
        return f"{'https' if tls else 'http'}://{host or self.host}:{port}{path}"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_ROOT_LOCATION = re.compile(r"^\s*location\s+/\s*\{")


def _server_block(
    vhost: VirtualHost,
    *,
    is_default: bool,
    http_port: int,
    https_port: int | None,
    cert: CertFiles | None,
    www_dir: Path,
) -> str:
    flag = " default_server" if is_default else ""
    lines = [
        "  server {",
        f"    listen {LOCALHOST}:{http_port}{flag};",
        f"    server_name {vhost.server_name};",
        f"    root {www_dir};",
    ]
    if https_port is not None and cert is not None:
        lines += [
            f"    listen {LOCALHOST}:{https_port} ssl{flag};",
            f"    ssl_certificate {cert.cert};",
            f"    ssl_certificate_key {cert.key};",
        ]
    if not any(_ROOT_LOCATION.match(loc) for loc in vhost.locations):
        if vhost.return_status is None:
            lines.append("    location / { try_files $uri $uri/ =404; }")
        elif vhost.return_body is None:
            lines.append(f"    location / {{ return {vhost.return_status}; }}")
        else:
            lines.append(
                f"    location / {{ return {vhost.return_status} {_quote(vhost.return_body)}; }}"
            )
    lines += [f"    {loc}" for loc in vhost.locations]
    lines.append("  }")
    return "\n".join(lines)


@contextlib.contextmanager
def run_nginx(
    vhosts: Sequence[VirtualHost] = (),
    *,
    tls: bool = True,
    certs: CertFiles | None = None,
    ssl_protocols: str = "TLSv1.2 TLSv1.3",
    ssl_ciphers: str | None = None,
    static_files: dict[str, bytes] | None = None,
    extra_http: str = "",
    timeout: float = DEFAULT_TIMEOUT,
) -> Iterator[NginxServer]:
    """Start nginx on 127.0.0.1 with a plain and (if ``tls``) a TLS port.

    Without ``vhosts`` there is one default host ``localhost`` answering ``200 "ok\\n"``.
    ``certs`` is the default certificate (a fresh CA + localhost leaf if None). For TLS
    1.0/1.1 pass ``ssl_protocols="TLSv1 TLSv1.1 TLSv1.2 TLSv1.3"`` and
    ``ssl_ciphers="DEFAULT:@SECLEVEL=0"``.
    ``static_files`` (relative path -> bytes) go into ``www_dir``, the root of every host.
    """
    nginx = require_binary("nginx", "nginx")
    hosts = tuple(vhosts) or (VirtualHost("localhost"),)
    with service_dir("nginx") as data:
        http_port, https_port_ = free_ports(2)
        https_port = https_port_ if tls else None
        default_cert = certs_for_server(data / "tls", certs) if tls else None
        www = data / "www"
        www.mkdir(mode=0o755)
        for rel, content in (static_files or {}).items():
            write_file(www / rel, content)
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (data / "temp" / sub).mkdir(parents=True, mode=0o755)
        default_index = next((i for i, v in enumerate(hosts) if v.default), 0)
        blocks = []
        for index, vhost in enumerate(hosts):
            cert = default_cert
            if vhost.certs is not None and tls:
                cert = copy_cert(vhost.certs, data / "tls", f"vhost{index}")
            blocks.append(
                _server_block(
                    vhost,
                    is_default=index == default_index,
                    http_port=http_port,
                    https_port=https_port,
                    cert=cert,
                    www_dir=www,
                )
            )
        tls_lines = ""
        if tls:
            tls_lines = f"  ssl_protocols {ssl_protocols};\n"
            if ssl_ciphers is not None:
                tls_lines += f"  ssl_ciphers {ssl_ciphers};\n"
        server_blocks = "\n".join(blocks)
        config = f"""user root;
worker_processes 1;
pid {data}/nginx.pid;
error_log stderr info;
events {{
  worker_connections 256;
}}
http {{
  access_log {data}/access.log;
  client_body_temp_path {data}/temp/body;
  proxy_temp_path {data}/temp/proxy;
  fastcgi_temp_path {data}/temp/fastcgi;
  uwsgi_temp_path {data}/temp/uwsgi;
  scgi_temp_path {data}/temp/scgi;
  default_type text/plain;
  server_names_hash_bucket_size 128;
{tls_lines}{extra_http}
{server_blocks}
}}
"""
        conf = write_file(data / "nginx.conf", config)
        log = data / "server.log"
        proc = ServerProcess(
            "nginx",
            [nginx, "-e", "stderr", "-p", f"{data}/", "-c", str(conf), "-g", "daemon off;"],
            log_path=log,
            extra_logs=[data / "access.log"],
        )
        with started(proc):
            wait_until(
                lambda: http_get(f"http://{LOCALHOST}:{http_port}/")[0],
                proc=proc,
                what=f"HTTP on {LOCALHOST}:{http_port}",
                timeout=timeout,
            )
            if https_port is not None:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                send = f"HEAD / HTTP/1.0\r\nHost: {hosts[default_index].server_name}\r\n\r\n"
                wait_until(
                    lambda: read_banner(
                        LOCALHOST,
                        https_port,
                        expect=b"HTTP/1.",
                        ssl_context=ctx,
                        send=send.encode(),
                    ),
                    proc=proc,
                    what=f"HTTPS on {LOCALHOST}:{https_port}",
                    timeout=timeout,
                )
            yield NginxServer(
                host=LOCALHOST,
                http_port=http_port,
                https_port=https_port,
                data_dir=data,
                www_dir=www,
                config_path=conf,
                certs=default_cert,
                vhosts=hosts,
                pid=proc.pid,
                log_path=log,
            )
