"""The mail round trip through real servers: Exim delivers into a maildir that Dovecot
serves (as Debian-exim, TEST-SERVERS.md §4), read over IMAP and over POP3; a message that
goes elsewhere is ``message_lost``; the deadline must fit in the job timeout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from probed import config
from probed.config import ConfigError
from probed.probes.base import Reason
from probed.resources import Resources
from probed.results import Outcome
from probed.runner import execute
from tests.helpers import job
from tests.servers.certs import CertAuthority
from tests.servers.common import chown_tree
from tests.servers.dovecot import DovecotServer, run_dovecot
from tests.servers.exim import EximServer, run_exim
from tests.servers.fixtures import StartServer
from tests.test_smtp import facts


@pytest.fixture
def mail_pair(
    start_server: StartServer, server_ca: CertAuthority
) -> tuple[EximServer, DovecotServer]:
    certs = server_ca.localhost("mailflow")
    exim = start_server(run_exim(certs=certs))
    for user in ("alice", "bob"):
        for sub in ("cur", "new", "tmp"):
            (exim.maildir(user) / sub).mkdir(parents=True, exist_ok=True)
    chown_tree(exim.mail_dir, exim.uid, exim.gid)
    dovecot = start_server(
        run_dovecot(certs=certs, mail_user="Debian-exim", home_base=exim.mail_dir, messages=())
    )
    return exim, dovecot


def module(
    tmp_path: Path, exim: EximServer, dovecot: DovecotServer, mailbox: str, **extra: Any
) -> dict[str, Any]:
    assert exim.ca_cert is not None
    (tmp_path / "mailbox.pw").write_text(dovecot.password)
    tls = {"ca_file": str(exim.ca_cert), "server_name": "localhost"}
    port = dovecot.imap_port if mailbox == "imap" else dovecot.pop3_port
    return {
        "probe": "mailflow",
        "mail_from": "probe@probed.test",
        "rcpt_to": "alice@probed.test",
        "deadline": "3s",
        "poll_interval": "200ms",
        "smtp": {"tls_config": tls},
        mailbox: {
            "port": port,
            "tls_config": tls,
            "username": dovecot.user,
            "password": {"file": "mailbox.pw"},
        },
        **extra,
    }


async def run(tmp_path: Path, env: Resources, spec: dict[str, Any], exim: EximServer) -> Outcome:
    target = f"127.0.0.1:{exim.port}"
    return await execute(job(tmp_path, spec, target, timeout="4s"), env, capture_log=True)


def messages(exim: EximServer, user: str) -> list[Path]:
    maildir = exim.maildir(user)
    return [p for sub in ("new", "cur") for p in (maildir / sub).iterdir()]


@pytest.mark.parametrize("mailbox", ["imap", "pop3"])
async def test_round_trip_and_cleanup(
    tmp_path: Path, env: Resources, mail_pair: tuple[EximServer, DovecotServer], mailbox: str
) -> None:
    exim, dovecot = mail_pair
    outcome = await run(tmp_path, env, module(tmp_path, exim, dovecot, mailbox), exim)
    assert outcome.success, (outcome.detail, outcome.log)
    found = facts(outcome)
    assert found["probe_mailflow_delivered"] == [("", 1.0)]
    assert found["probe_mailflow_polls"][0][1] >= 1
    assert 0 <= found["probe_mailflow_delivery_seconds"][0][1] < 3
    # One set of TLS facts (the SMTP session's), however many polls ran.
    assert len(found["probe_tls_version_info"]) == 1
    assert {"connect", "starttls", "tls", "submit", "deliver", "cleanup"} <= {
        name for name, _ in outcome.phases
    }
    assert messages(exim, "alice") == [], "the test message must be deleted"


async def test_lost_message(
    tmp_path: Path, env: Resources, mail_pair: tuple[EximServer, DovecotServer]
) -> None:
    exim, dovecot = mail_pair
    spec = module(tmp_path, exim, dovecot, "imap", rcpt_to="bob@probed.test", deadline="1s")
    outcome = await run(tmp_path, env, spec, exim)
    assert outcome.reason is Reason.MESSAGE_LOST, outcome.detail
    assert facts(outcome)["probe_mailflow_delivered"] == [("", 0.0)]
    assert len(messages(exim, "bob")) == 1


async def test_refused_recipient_and_bad_mailbox_login(
    tmp_path: Path, env: Resources, mail_pair: tuple[EximServer, DovecotServer]
) -> None:
    exim, dovecot = mail_pair
    refused = await run(
        tmp_path, env, module(tmp_path, exim, dovecot, "pop3", rcpt_to="x@example.com"), exim
    )
    assert refused.reason is Reason.SMTP_REJECTED, refused.detail
    spec = module(tmp_path, exim, dovecot, "imap")
    (tmp_path / "wrong.pw").write_text("wrong")
    spec["imap"]["password"] = {"file": "wrong.pw"}
    bad = await run(tmp_path, env, spec, exim)
    assert bad.reason is Reason.AUTH_FAILED, bad.detail


def test_deadline_must_fit_in_the_timeout(tmp_path: Path) -> None:
    raw = {
        "defaults": {"interval": "1m", "timeout": "10s"},
        "modules": {
            "flow": {
                "probe": "mailflow",
                "mail_from": "a@b.test",
                "rcpt_to": "c@b.test",
                "deadline": "9s",
                "imap": {"username": "u", "password": {"env": "X"}},
            }
        },
        "probes": [{"module": "flow", "target": "mx.b.test"}],
    }
    with pytest.raises(ConfigError) as info:
        config.build(raw, tmp_path / "probes.toml")
    assert "must be at most 80% of the timeout 10s" in str(info.value)
