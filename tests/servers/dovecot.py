"""Dovecot POP3/IMAP on four OS-picked ports (pop3, pop3s, imap, imaps), TLS optional.

Pitfalls (see TEST-SERVERS.md §4): loopback counts as "secured", so plaintext login works on
127.0.0.1 even with ``disable_plaintext_auth``; connect from ``127.0.0.2`` to see a refusal.
Failed logins add a per-source-IP penalty of seconds: prefer a fresh instance per test.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .certs import CertFiles, certs_for_server, dh_params
from .common import (
    DEFAULT_TIMEOUT,
    LOCALHOST,
    ServerProcess,
    chown_tree,
    free_ports,
    require_binary,
    service_dir,
    started,
    user_ids,
    wait_for_banner,
    write_file,
)

DEFAULT_MESSAGE = (
    b"From: sender@probed.test\r\n"
    b"To: alice@probed.test\r\n"
    b"Subject: fixture message\r\n"
    b"Message-ID: <fixture-1@probed.test>\r\n"
    b"\r\n"
    b"Hello from the dovecot fixture.\r\n"
)


@dataclass(frozen=True)
class DovecotServer:
    host: str
    pop3_port: int
    imap_port: int
    pop3s_port: int | None
    """Implicit-TLS ports; None when started with ``tls=False``."""
    imaps_port: int | None
    tls: bool
    certs: CertFiles | None
    users: tuple[tuple[str, str], ...]
    """(name, password) of each throwaway mail user."""
    homes: tuple[Path, ...]
    """Home of each user (same order); mail is in ``<home>/Maildir``."""
    mail_uid: int
    mail_gid: int
    data_dir: Path
    pid: int
    log_path: Path

    @property
    def ca_cert(self) -> Path | None:
        return None if self.certs is None else self.certs.ca_cert

    @property
    def user(self) -> str:
        return self.users[0][0]

    @property
    def password(self) -> str:
        return self.users[0][1]

    def maildir(self, user: str | None = None) -> Path:
        names = [name for name, _ in self.users]
        return self.homes[names.index(user or self.user)] / "Maildir"


def _write_message(maildir: Path, index: int, message: bytes) -> None:
    write_file(maildir / "new" / f"170000000{index}.M{index}P1.fixture", message, mode=0o600)


@contextlib.contextmanager
def run_dovecot(
    *,
    tls: bool = True,
    certs: CertFiles | None = None,
    users: Mapping[str, str] | None = None,
    mail_user: str = "nobody",
    home_base: Path | None = None,
    messages: Sequence[bytes] = (DEFAULT_MESSAGE,),
    disable_plaintext_auth: bool = False,
    ssl_min_protocol: str | None = None,
    ssl_cipher_list: str | None = None,
    extra_config: str = "",
    timeout: float = DEFAULT_TIMEOUT,
) -> Iterator[DovecotServer]:
    """Start ``dovecot -F`` on 127.0.0.1.

    ``users`` maps name -> password (default ``alice``/``alicepw``); mail processes run as
    ``mail_user``. Homes are ``<data>/home/<name>`` holding a Maildir seeded with ``messages``,
    unless ``home_base`` is given (homes ``home_base/<name>``, nothing seeded): pass
    ``mail_user="Debian-exim", home_base=exim.mail_dir`` to read what an Exim fixture delivers.
    ``tls=False`` gives ``ssl = no`` and no pop3s/imaps listeners. For TLS 1.0 pass
    ``ssl_min_protocol="TLSv1", ssl_cipher_list="ALL:@SECLEVEL=0"``.
    """
    dovecot = require_binary("dovecot", "dovecot-core")
    require_binary("/usr/lib/dovecot/pop3-login", "dovecot-pop3d")
    require_binary("/usr/lib/dovecot/imap-login", "dovecot-imapd")
    accounts = dict(users or {"alice": "alicepw"})
    uid, gid = user_ids(mail_user)
    with service_dir("dovecot") as data:
        pop3, pop3s, imap, imaps = free_ports(4)
        (data / "run").mkdir(mode=0o755)
        (data / "state").mkdir(mode=0o755)
        homes: list[Path] = []
        passwd_lines = []
        for name, password in accounts.items():
            if home_base is None:
                home = data / "home" / name
                for sub in ("cur", "new", "tmp"):
                    (home / "Maildir" / sub).mkdir(parents=True, mode=0o700)
                for index, message in enumerate(messages):
                    _write_message(home / "Maildir", index, message)
                chown_tree(home, uid, gid)
            else:
                home = home_base / name
            homes.append(home)
            passwd_lines.append(f"{name}:{{PLAIN}}{password}:{uid}:{gid}::{home}::")
        if home_base is None:
            (data / "home").chmod(0o755)
        passwd = write_file(data / "passwd", "\n".join(passwd_lines) + "\n")
        server_certs: CertFiles | None = None
        if tls:
            server_certs = certs_for_server(data / "tls", certs)
            dh = dh_params(data / "tls")
            ssl_lines = [
                "ssl = yes",
                f"ssl_cert = <{server_certs.cert}",
                f"ssl_key = <{server_certs.key}",
                f"ssl_dh = <{dh}",
            ]
            if ssl_min_protocol is not None:
                ssl_lines.append(f"ssl_min_protocol = {ssl_min_protocol}")
            if ssl_cipher_list is not None:
                ssl_lines.append(f"ssl_cipher_list = {ssl_cipher_list}")
        else:
            ssl_lines = ["ssl = no"]

        def service(proto: str, plain: int, secure: int) -> str:
            secure_block = ""
            if tls:
                secure_block = (
                    f"  inet_listener {proto}s {{\n    port = {secure}\n    ssl = yes\n  }}\n"
                )
            return (
                f"service {proto}-login {{\n"
                f"  inet_listener {proto} {{\n    port = {plain}\n  }}\n"
                f"{secure_block}}}\n"
            )

        ssl_config = "\n".join(ssl_lines)
        config = f"""base_dir = {data}/run
state_dir = {data}/state
protocols = imap pop3
listen = {LOCALHOST}
log_path = /dev/stderr
{ssl_config}
disable_plaintext_auth = {"yes" if disable_plaintext_auth else "no"}
auth_mechanisms = plain login
auth_failure_delay = 0
first_valid_uid = 1
first_valid_gid = 1
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {passwd}
}}
{service("imap", imap, imaps)}
{service("pop3", pop3, pop3s)}
{extra_config}
"""
        conf = write_file(data / "dovecot.conf", config)
        log = data / "server.log"
        # On SIGTERM the master lingers ~1 s for its log process; the data is throwaway.
        proc = ServerProcess(
            "dovecot", [dovecot, "-F", "-c", str(conf)], log_path=log, stop_timeout=0.3
        )
        with started(proc):
            wait_for_banner(proc, LOCALHOST, pop3, b"+OK", timeout=timeout)
            wait_for_banner(proc, LOCALHOST, imap, b"* OK", timeout=timeout)
            if tls:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                wait_for_banner(proc, LOCALHOST, pop3s, b"+OK", ssl_context=ctx, timeout=timeout)
                wait_for_banner(proc, LOCALHOST, imaps, b"* OK", ssl_context=ctx, timeout=timeout)
            yield DovecotServer(
                host=LOCALHOST,
                pop3_port=pop3,
                imap_port=imap,
                pop3s_port=pop3s if tls else None,
                imaps_port=imaps if tls else None,
                tls=tls,
                certs=server_certs,
                users=tuple(accounts.items()),
                homes=tuple(homes),
                mail_uid=uid,
                mail_gid=gid,
                data_dir=data,
                pid=proc.pid,
                log_path=log,
            )
