"""pytest fixtures over the real-server context managers (load with ``pytest_plugins``).

Scopes: servers whose state tests do not change and whose start-up is shared are session-scoped
(nginx, sshd, vsftpd, gnutls-serv, the CA); MariaDB and the Prometheus stack are module-scoped;
servers tests mutate or that penalise failed logins (Exim, Dovecot, a MariaDB replica) are
function-scoped. For a custom configuration use ``start_server(run_nginx(vhosts=...))``.
A missing Debian package makes the fixture raise :class:`MissingBinaryError` (an error, never a
skip).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol, TypeVar

import pytest

from .certs import CertAuthority, CertFiles, cert_authority
from .dovecot import DovecotServer, run_dovecot
from .exim import EximServer, run_exim
from .gnutls import GnutlsServer, run_gnutls_serv
from .mariadb import MariaDBServer, run_mariadb, run_mariadb_replica
from .nginx import NginxServer, run_nginx
from .prometheus import PrometheusStack, run_prometheus_stack
from .sshd import SshdServer, run_sshd
from .vsftpd import VsftpdServer, run_vsftpd

__all__ = [
    "StartServer",
    "dovecot_server",
    "exim_server",
    "gnutls_server",
    "mariadb_replication",
    "mariadb_server",
    "mariadb_tls_server",
    "nginx_server",
    "prometheus_stack",
    "server_ca",
    "server_certs",
    "sshd_server",
    "start_server",
    "vsftpd_server",
]

_T = TypeVar("_T")


class StartServer(Protocol):
    def __call__(self, manager: contextlib.AbstractContextManager[_T]) -> _T: ...


@pytest.fixture(scope="session")
def server_ca() -> Iterator[CertAuthority]:
    """A session-wide trustme CA writing PEM files into a 0755 temp dir."""
    with cert_authority() as ca:
        yield ca


@pytest.fixture(scope="session")
def server_certs(server_ca: CertAuthority) -> CertFiles:
    """Leaf for localhost/127.0.0.1 signed by ``server_ca``; the session servers all use it."""
    return server_ca.localhost()


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    """``start_server(run_xxx(...))`` enters the manager and stops it after the test."""
    with contextlib.ExitStack() as stack:

        def start(manager: contextlib.AbstractContextManager[_T]) -> _T:
            return stack.enter_context(manager)

        yield start


@pytest.fixture(scope="session")
def nginx_server(server_certs: CertFiles) -> Iterator[NginxServer]:
    """Default host ``localhost`` answering 200 ``ok\\n`` on HTTP and HTTPS (TLS 1.2/1.3)."""
    with run_nginx(certs=server_certs) as server:
        yield server


@pytest.fixture(scope="session")
def sshd_server() -> Iterator[SshdServer]:
    with run_sshd(extra_host_key_types=("rsa",)) as server:
        yield server


@pytest.fixture(scope="module")
def mariadb_server() -> Iterator[MariaDBServer]:
    """Primary without TLS (binlog on)."""
    with run_mariadb() as server:
        yield server


@pytest.fixture(scope="module")
def mariadb_tls_server(server_certs: CertFiles) -> Iterator[MariaDBServer]:
    with run_mariadb(tls=True, certs=server_certs) as server:
        yield server


@pytest.fixture
def mariadb_replication() -> Iterator[tuple[MariaDBServer, MariaDBServer]]:
    """(primary, replica), replica running (IO and SQL ``Yes``); fresh per test."""
    with run_mariadb() as primary, run_mariadb_replica(primary) as replica:
        yield primary, replica


@pytest.fixture
def exim_server(server_certs: CertFiles) -> Iterator[EximServer]:
    """STARTTLS on; accepts alice/bob@probed.test into maildirs; fresh per test."""
    with run_exim(certs=server_certs) as server:
        yield server


@pytest.fixture
def dovecot_server(server_certs: CertFiles) -> Iterator[DovecotServer]:
    """POP3/POP3S/IMAP/IMAPS; user alice/alicepw with one message; fresh per test."""
    with run_dovecot(certs=server_certs) as server:
        yield server


@pytest.fixture(scope="session")
def vsftpd_server(server_certs: CertFiles) -> Iterator[VsftpdServer]:
    """Anonymous read-only FTP with AUTH TLS; ``hello.txt`` in the root."""
    with run_vsftpd(certs=server_certs) as server:
        yield server


@pytest.fixture(scope="session")
def gnutls_server(server_certs: CertFiles) -> Iterator[GnutlsServer]:
    """``gnutls-serv --heartbeat --echo`` in its own network namespace."""
    with run_gnutls_serv(certs=server_certs) as server:
        yield server


@pytest.fixture(scope="module")
def prometheus_stack() -> Iterator[PrometheusStack]:
    """Prometheus scraping a static target, alerting to Alertmanager, which posts to a webhook."""
    with run_prometheus_stack() as stack:
        yield stack
