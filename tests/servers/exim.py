"""Exim 4 as a foreground SMTP daemon delivering to maildirs, STARTTLS optional.

Run by root with ``-C`` Exim drops to Debian-exim for the whole daemon, so spool, log and mail
directories belong to Debian-exim, and the TLS key is world-readable (throwaway).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .certs import CertFiles, certs_for_server
from .common import (
    DEFAULT_TIMEOUT,
    LOCALHOST,
    ServerProcess,
    chown_tree,
    free_port,
    require_binary,
    service_dir,
    started,
    user_ids,
    wait_for_banner,
    write_file,
)

EXIM_USER = "Debian-exim"


@dataclass(frozen=True)
class EximServer:
    host: str
    port: int
    domain: str
    hostname: str
    local_parts: tuple[str, ...]
    tls: bool
    certs: CertFiles | None
    data_dir: Path
    mail_dir: Path
    """``mail_dir/<local_part>/Maildir`` receives mail for ``<local_part>@<domain>``."""
    uid: int
    gid: int
    """Debian-exim's ids (the owner of delivered mail)."""
    banner: str
    pid: int
    log_path: Path

    @property
    def ca_cert(self) -> Path | None:
        return None if self.certs is None else self.certs.ca_cert

    def maildir(self, local_part: str) -> Path:
        return self.mail_dir / local_part / "Maildir"

    def delivered(self, local_part: str) -> list[Path]:
        """Messages in ``Maildir/new`` of ``local_part`` (sorted)."""
        new = self.maildir(local_part) / "new"
        return sorted(new.iterdir()) if new.is_dir() else []


@contextlib.contextmanager
def run_exim(
    *,
    tls: bool = True,
    certs: CertFiles | None = None,
    domain: str = "probed.test",
    hostname: str = "mx.probed.test",
    local_parts: Sequence[str] = ("alice", "bob"),
    tls_require_ciphers: str | None = None,
    extra_main: Sequence[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
) -> Iterator[EximServer]:
    """Start ``exim4 -bdf`` on 127.0.0.1 accepting mail for ``local_parts@domain``.

    With ``tls`` EHLO advertises STARTTLS (``certs`` or a fresh CA + localhost leaf); without
    it, no STARTTLS. Other recipients get ``550 relay not permitted``. ``extra_main`` lines go
    into the main section (e.g. ``"smtp_banner = ..."``).
    """
    exim = require_binary("exim4", "exim4-daemon-light")
    uid, gid = user_ids(EXIM_USER)
    with service_dir("exim") as data:
        port = free_port()
        for sub in ("spool", "log", "mail"):
            (data / sub).mkdir(mode=0o755)
        parts = " : ".join(local_parts)
        server_certs: CertFiles | None = None
        tls_lines = ["tls_advertise_hosts ="]
        if tls:
            server_certs = certs_for_server(data / "tls", certs)
            tls_lines = [
                "tls_advertise_hosts = *",
                f"tls_certificate = {server_certs.cert}",
                f"tls_privatekey = {server_certs.key}",
            ]
            if tls_require_ciphers is not None:
                tls_lines.append(f"tls_require_ciphers = {tls_require_ciphers}")
        main = [
            "keep_environment =",
            f"primary_hostname = {hostname}",
            f"domainlist local_domains = {domain}",
            f"local_interfaces = <; {LOCALHOST}",
            f"spool_directory = {data}/spool",
            f"log_file_path = {data}/log/%slog",
            f"exim_user = {EXIM_USER}",
            "never_users = root",
            "host_lookup =",
            "rfc1413_hosts =",
            *tls_lines,
            "acl_smtp_rcpt = acl_check_rcpt",
            *extra_main,
        ]
        config = (
            "\n".join(main)
            + f"""

begin acl

acl_check_rcpt:
  accept domains = +local_domains
         local_parts = {parts}
  deny   message = relay not permitted

begin routers

to_maildir:
  driver = accept
  domains = +local_domains
  local_parts = {parts}
  transport = maildir_delivery

begin transports

maildir_delivery:
  driver = appendfile
  directory = {data}/mail/$local_part_data/Maildir
  maildir_format
  create_directory
  user = {EXIM_USER}
"""
        )
        conf = write_file(data / "exim.conf", config)
        chown_tree(data / "spool", uid, gid)
        chown_tree(data / "log", uid, gid)
        chown_tree(data / "mail", uid, gid)
        log = data / "server.log"
        proc = ServerProcess(
            "exim4",
            [exim, "-C", str(conf), "-bdf", "-oX", str(port)],
            log_path=log,
            extra_logs=[data / "log" / "mainlog", data / "log" / "paniclog"],
        )
        with started(proc):
            greeting = wait_for_banner(proc, LOCALHOST, port, b"\r\n", timeout=timeout)
            banner = greeting.split(b"\r\n", 1)[0].decode("ascii", "replace")
            if not banner.startswith("220 "):
                raise proc.failure(f"unexpected SMTP greeting {banner!r}")
            yield EximServer(
                host=LOCALHOST,
                port=port,
                domain=domain,
                hostname=hostname,
                local_parts=tuple(local_parts),
                tls=tls,
                certs=server_certs,
                data_dir=data,
                mail_dir=data / "mail",
                uid=uid,
                gid=gid,
                banner=banner,
                pid=proc.pid,
                log_path=data / "log" / "mainlog",
            )
