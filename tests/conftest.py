from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
import uvloop

from probed.resources import Resources
from probed.secrets import SecretStore

# The real-server fixtures (nginx, sshd, MariaDB, Exim, Dovecot, vsftpd, gnutls-serv,
# Prometheus) for every test module.
from tests.servers.fixtures import *  # noqa: F403


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Tests run on uvloop, the loop the daemon ships with."""
    del config, item
    return {"uvloop": uvloop.new_event_loop}


@dataclass(frozen=True)
class Certs:
    """Server contexts for each certificate case and the CA file a client trusts."""

    ca_file: Path
    valid: ssl.SSLContext
    expired: ssl.SSLContext
    not_yet_valid: ssl.SSLContext
    wrong_name: ssl.SSLContext
    unknown_issuer: ssl.SSLContext
    self_signed: ssl.SSLContext


def _server_ctx(cert: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    return ctx


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    ca = trustme.CA()
    other_ca = trustme.CA()  # untrusted: its leaf looks "self-signed"/unknown to clients
    now = dt.datetime.now(dt.UTC)
    directory = tmp_path_factory.mktemp("certs")
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    names = ("localhost", "127.0.0.1", "::1")
    return Certs(
        ca_file=ca_file,
        valid=_server_ctx(ca.issue_cert(*names)),
        expired=_server_ctx(
            ca.issue_cert(
                *names, not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1)
            )
        ),
        not_yet_valid=_server_ctx(
            ca.issue_cert(
                *names, not_before=now + dt.timedelta(days=1), not_after=now + dt.timedelta(days=30)
            )
        ),
        wrong_name=_server_ctx(ca.issue_cert("other.example")),
        unknown_issuer=_server_ctx(other_ca.issue_cert(*names)),
        self_signed=_self_signed(directory),
    )


def _self_signed(directory: Path) -> ssl.SSLContext:
    # A CA certificate served as the leaf: a certificate signed by its own key.
    ca = trustme.CA()
    cert, key = directory / "self.pem", directory / "self.key"
    ca.cert_pem.write_to_path(str(cert))
    ca.private_key_pem.write_to_path(str(key))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


@pytest.fixture
def env(tmp_path: Path) -> Resources:
    return Resources(SecretStore(tmp_path))
