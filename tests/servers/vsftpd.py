"""vsftpd with an anonymous read-only root, explicit TLS (AUTH TLS) optional.

``require_ssl_reuse`` defaults to NO here because ``ftplib.FTP_TLS`` does not reuse the TLS
session on the data channel (TEST-SERVERS.md §5); pass True to test a probe that does.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .certs import CertFiles, certs_for_server
from .common import (
    DEFAULT_TIMEOUT,
    LOCALHOST,
    ServerProcess,
    ServerStartError,
    free_port,
    require_binary,
    service_dir,
    started,
    wait_for_banner,
    write_file,
)

DEFAULT_BANNER = "probed test FTP"


@dataclass(frozen=True)
class VsftpdServer:
    host: str
    port: int
    tls: bool
    certs: CertFiles | None
    anon_root: Path
    anon_files: tuple[str, ...]
    """Relative paths of the files placed in the anonymous root."""
    banner: str
    data_dir: Path
    pid: int
    log_path: Path

    @property
    def ca_cert(self) -> Path | None:
        return None if self.certs is None else self.certs.ca_cert


def _yes(flag: bool) -> str:
    return "YES" if flag else "NO"


@contextlib.contextmanager
def run_vsftpd(
    *,
    tls: bool = True,
    certs: CertFiles | None = None,
    anon_files: Mapping[str, bytes] | None = None,
    banner: str = DEFAULT_BANNER,
    require_ssl_reuse: bool = False,
    implicit_ssl: bool = False,
    ssl_ciphers: str | None = None,
    extra_config: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Iterator[VsftpdServer]:
    """Start ``vsftpd`` (foreground) on 127.0.0.1; anonymous login, no password, read-only.

    ``anon_files`` (relative path -> content, default ``hello.txt``) make the anonymous root
    (dirs 0555, files 0644, root-owned). ``extra_config`` keys override the generated ones.
    ``implicit_ssl`` (needs ``tls``): TLS from the first byte, as on port 990.
    """
    vsftpd = require_binary("vsftpd", "vsftpd")
    files = {"hello.txt": b"hello from vsftpd\n"} if anon_files is None else dict(anon_files)
    with service_dir("vsftpd") as data:
        port = free_port()
        empty = data / "empty"
        empty.mkdir(mode=0o555)
        anon = data / "anon"
        anon.mkdir(mode=0o755)
        for rel, content in files.items():
            write_file(anon / rel, content, mode=0o644)
        for path in [anon, *anon.rglob("*")]:
            if path.is_dir():
                path.chmod(0o555)
        log_file = data / "vsftpd.log"
        options = {
            "listen": "YES",
            "listen_ipv6": "NO",
            "listen_address": LOCALHOST,
            "listen_port": str(port),
            "background": "NO",
            "anonymous_enable": "YES",
            "anon_root": str(anon),
            "no_anon_password": "YES",
            "local_enable": "NO",
            "write_enable": "NO",
            "pasv_enable": "YES",
            "pasv_address": LOCALHOST,
            "secure_chroot_dir": str(empty),
            "pam_service_name": "vsftpd",
            "vsftpd_log_file": str(log_file),
            "xferlog_enable": "YES",
            "dual_log_enable": "YES",
            "xferlog_file": str(data / "xferlog"),
            "delay_failed_login": "0",
            "ftpd_banner": banner,
            "ssl_enable": _yes(tls),
        }
        server_certs: CertFiles | None = None
        if tls:
            server_certs = certs_for_server(data / "tls", certs)
            options.update(
                {
                    "rsa_cert_file": str(server_certs.cert),
                    "rsa_private_key_file": str(server_certs.key),
                    "allow_anon_ssl": "YES",
                    "force_local_logins_ssl": "NO",
                    "force_local_data_ssl": "NO",
                    "force_anon_logins_ssl": "NO",
                    "force_anon_data_ssl": "NO",
                    "require_ssl_reuse": _yes(require_ssl_reuse),
                    "implicit_ssl": _yes(implicit_ssl),
                }
            )
            if ssl_ciphers is not None:
                options["ssl_ciphers"] = ssl_ciphers
        options.update(extra_config or {})
        conf = write_file(
            data / "vsftpd.conf",
            "".join(f"{key}={value}\n" for key, value in options.items()),
            mode=0o600,
        )
        log = data / "server.log"
        proc = ServerProcess("vsftpd", [vsftpd, str(conf)], log_path=log, extra_logs=[log_file])
        banner_tls: ssl.SSLContext | None = None
        if tls and implicit_ssl:
            banner_tls = ssl.create_default_context()
            banner_tls.check_hostname = False
            banner_tls.verify_mode = ssl.CERT_NONE
        with started(proc):
            try:
                greeting = wait_for_banner(
                    proc, LOCALHOST, port, b"\r\n", timeout=timeout, ssl_context=banner_tls
                )
            except ServerStartError as exc:
                if proc.popen.poll() == 2:
                    # vsftpd 3.0.3 exits 2 without a word on an unknown or malformed key.
                    raise ServerStartError(
                        f"{exc}\nhint: vsftpd exits 2 silently on an unrecognised config key; "
                        f"config: {options}"
                    ) from exc
                raise
            line = greeting.split(b"\r\n", 1)[0].decode("ascii", "replace")
            if not line.startswith("220"):
                raise proc.failure(f"unexpected FTP greeting {line!r}")
            yield VsftpdServer(
                host=LOCALHOST,
                port=port,
                tls=tls,
                certs=server_certs,
                anon_root=anon,
                anon_files=tuple(files),
                banner=line,
                data_dir=data,
                pid=proc.pid,
                log_path=log_file,
            )
