"""The heartbleed probe against the test peer (every mode, every STARTTLS front-end).
Real, non-vulnerable servers (gnutls-serv --heartbeat, nginx, Exim, Dovecot, vsftpd,
MariaDB) are in test_heartbleed_real.py."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from probed.probes.base import Reason
from probed.resources import Resources
from probed.results import Outcome
from probed.runner import execute
from tests.helpers import job, serve
from tests.peers.heartbleed_server import heartbleed_server


def facts(outcome: Outcome) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for family, labels, value in outcome.samples:
        out[family.name] = (labels, value) if labels else value
    return out


async def check(
    tmp_path: Path, env: Resources, mode: str, *, deadline: str = "5s", **module: Any
) -> Outcome:
    peer_args = {k: module.pop(k) for k in ("max_version", "heartbeat_extension") if k in module}
    async with heartbleed_server(mode, starttls=module.get("starttls"), **peer_args) as port:
        spec = {"probe": "heartbleed", "response_timeout": "1s", **module}
        return await execute(
            job(tmp_path, spec, f"127.0.0.1:{port}", timeout=deadline), env, capture_log=True
        )


@pytest.mark.parametrize("mode", ["vulnerable", "big_cert", "coalesced", "split"])
async def test_vulnerable_modes(tmp_path: Path, env: Resources, mode: str) -> None:
    outcome = await check(tmp_path, env, mode)
    f = facts(outcome)
    assert f["probe_heartbleed_vulnerable"] == 1.0, outcome.detail
    assert not outcome.success
    assert outcome.reason is Reason.HEARTBLEED_VULNERABLE
    assert f["probe_heartbleed_response_info"] == ('response="echo"', 1.0)
    assert f["probe_tls_version_info"] == ('version="TLS 1.2"', 1.0)
    assert f["probe_tls_heartbeat_extension"] == 1.0
    assert f["probe_heartbleed_inconclusive"] == 0.0


async def test_vulnerable_without_the_extension(tmp_path: Path, env: Resources) -> None:
    # 1.0.1f answers heartbeats even when it did not echo extension 15.
    outcome = await check(tmp_path, env, "vulnerable", heartbeat_extension=False)
    f = facts(outcome)
    assert f["probe_heartbleed_vulnerable"] == 1.0
    assert f["probe_tls_heartbeat_extension"] == 0.0


@pytest.mark.parametrize(
    ("mode", "response"),
    [
        ("patched", "alert"),
        ("gnutls", "alert"),
        ("no_heartbeat", "alert"),
        ("plaintext_oops", "other"),
        ("echo_wrong", "other"),
        ("endless_heartbeat", "other"),
    ],
)
async def test_not_vulnerable_modes(
    tmp_path: Path, env: Resources, mode: str, response: str
) -> None:
    outcome = await check(tmp_path, env, mode)
    f = facts(outcome)
    assert outcome.success, outcome.detail
    assert f["probe_heartbleed_vulnerable"] == 0.0
    assert f["probe_heartbleed_response_info"] == (f'response="{response}"', 1.0)


async def test_patched_answers_at_once_thanks_to_the_sentinel(
    tmp_path: Path, env: Resources
) -> None:
    outcome = await check(tmp_path, env, "patched")
    assert facts(outcome)["probe_heartbleed_inconclusive"] == 0.0
    assert dict(outcome.phases)["heartbeat"] < 1.0  # an alert, not the 1 s response timeout


async def test_no_heartbeat_reports_absent_extension(tmp_path: Path, env: Resources) -> None:
    outcome = await check(tmp_path, env, "no_heartbeat")
    assert facts(outcome)["probe_tls_heartbeat_extension"] == 0.0


async def test_fallback_to_tls10(tmp_path: Path, env: Resources) -> None:
    outcome = await check(tmp_path, env, "tls10_only")
    f = facts(outcome)
    assert f["probe_heartbleed_vulnerable"] == 1.0
    assert f["probe_tls_version_info"] == ('version="TLS 1.0"', 1.0)
    assert f["probe_heartbleed_attempts"] == 3.0


async def test_record_version_follows_negotiation(tmp_path: Path, env: Resources) -> None:
    # A TLS 1.1 server: the heartbeat must use 03 02 or 1.0.1f alerts (a false negative).
    outcome = await check(tmp_path, env, "vulnerable", max_version=0x0302)
    f = facts(outcome)
    assert f["probe_tls_version_info"] == ('version="TLS 1.1"', 1.0)
    assert f["probe_heartbleed_vulnerable"] == 1.0
    assert f["probe_heartbleed_attempts"] == 1.0


async def test_stall_after_heartbeat_is_inconclusive(tmp_path: Path, env: Resources) -> None:
    outcome = await check(tmp_path, env, "stall", deadline="3s")
    # The stall peer never even answers the ClientHello: no verdict, a timeout.
    assert outcome.reason is Reason.TIMEOUT
    assert "probe_heartbleed_vulnerable" not in facts(outcome)


@pytest.mark.parametrize(
    ("mode", "reason"), [("close", Reason.CONNECTION_CLOSED), ("garbage", Reason.NOT_TLS)]
)
async def test_no_verdict(tmp_path: Path, env: Resources, mode: str, reason: Reason) -> None:
    outcome = await check(tmp_path, env, mode)
    assert not outcome.success
    assert outcome.reason is reason, outcome.detail
    assert "probe_heartbleed_vulnerable" not in facts(outcome)


@pytest.mark.parametrize("protocol", ["smtp", "pop3", "imap", "ftp", "mysql", "postgres", "xmpp"])
async def test_starttls_front_ends_vulnerable(
    tmp_path: Path, env: Resources, protocol: str
) -> None:
    outcome = await check(tmp_path, env, "vulnerable", starttls=protocol)
    f = facts(outcome)
    assert f["probe_heartbleed_vulnerable"] == 1.0, outcome.detail
    assert f["probe_heartbleed_starttls_info"] == (f'protocol="{protocol}"', 1.0)
    assert "starttls" in dict(outcome.phases)


@pytest.mark.parametrize("protocol", ["smtp", "imap"])
async def test_starttls_front_ends_patched(tmp_path: Path, env: Resources, protocol: str) -> None:
    outcome = await check(tmp_path, env, "patched", starttls=protocol)
    assert outcome.success
    assert facts(outcome)["probe_heartbleed_vulnerable"] == 0.0


async def test_starttls_to_an_implicit_tls_server_times_out_in_starttls(
    tmp_path: Path, env: Resources
) -> None:
    async with heartbleed_server("vulnerable") as port:
        spec = {"probe": "heartbleed", "starttls": "smtp"}
        outcome = await execute(job(tmp_path, spec, f"127.0.0.1:{port}", timeout="500ms"), env)
    assert outcome.reason is Reason.TIMEOUT
    assert "starttls" in outcome.detail
    assert "probe_heartbleed_vulnerable" not in facts(outcome)


async def test_smtp_without_starttls_is_refused(tmp_path: Path, env: Resources) -> None:
    async def no_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220-mx\r\n220 ESMTP\r\n")
        await reader.readline()
        writer.write(b"250-mx\r\n250-PIPELINING\r\n250 SIZE 1000\r\n")
        await writer.drain()
        await reader.read(1)

    async with serve(no_tls) as port:
        spec = {"probe": "heartbleed", "starttls": "smtp"}
        outcome = await execute(job(tmp_path, spec, f"127.0.0.1:{port}"), env)
    assert outcome.reason is Reason.STARTTLS_REFUSED, outcome.detail


async def test_no_server_bytes_in_log_or_outcome(tmp_path: Path, env: Resources) -> None:
    outcome = await check(tmp_path, env, "vulnerable")
    assert outcome.log is not None
    text = repr(outcome)
    # Nothing but short facts: no payload-sized blobs anywhere in the outcome or its log.
    assert len(text) < 8000
    assert all(len(line) < 300 for line in outcome.log)


async def _scan(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "probed", "scan", *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_scan_finds_the_vulnerable_ones(tmp_path: Path) -> None:
    async with (
        heartbleed_server("vulnerable") as bad,
        heartbleed_server("patched") as good,
        heartbleed_server("vulnerable", starttls="smtp") as bad_smtp,
    ):
        hosts = tmp_path / "hosts.txt"
        hosts.write_text(f"# fleet\n127.0.0.1:{good}\n127.0.0.1:{bad}\n")
        code, out, err = await _scan(
            "heartbleed", f"127.0.0.1:{bad}", "--hosts-file", str(hosts), "--format", "json"
        )
        assert code == 1, err
        rows = {r["target"]: r for r in json.loads(out)}
        assert len(rows) == 2, "duplicates dropped"
        assert rows[f"127.0.0.1:{bad}"]["verdict"] == "VULNERABLE"
        assert rows[f"127.0.0.1:{good}"]["verdict"] == "ok"
        assert rows[f"127.0.0.1:{good}"]["response"] == "alert"

        # Hosts may follow options.
        code, out, _ = await _scan(
            "heartbleed", "--set", "starttls=smtp", f"127.0.0.1:{bad_smtp}", "--format", "csv"
        )
        assert code == 1
        assert out.splitlines()[0].startswith("target,verdict,reason")
        assert ",VULNERABLE," in out

        code, out, _ = await _scan("heartbleed", f"127.0.0.1:{good}")
        assert code == 0
        assert "1 targets: 0 vulnerable, 0 could not be checked" in out


async def test_scan_picks_starttls_by_well_known_port() -> None:
    # One sweep over a mixed host:port list, as an operator writes it on day one: port 25
    # and 143 speak STARTTLS first, 465 is direct TLS. The ports are the real ones, on an
    # address of the test's own.
    host = "127.0.0.61"
    async with (
        heartbleed_server("vulnerable", host=host, port=25, starttls="smtp"),
        heartbleed_server("patched", host=host, port=143, starttls="imap"),
        heartbleed_server("vulnerable", host=host, port=465),
    ):
        targets = [f"{host}:25", f"{host}:143", f"{host}:465"]
        code, out, err = await _scan("heartbleed", *targets, "--format", "json")
        assert code == 1, err
        verdicts = {r["target"]: r["verdict"] for r in json.loads(out)}
        assert verdicts == {targets[0]: "VULNERABLE", targets[1]: "ok", targets[2]: "VULNERABLE"}
        # "none" forces direct TLS: the SMTP greeting is not TLS.
        code, out, _ = await _scan(
            "heartbleed", targets[0], "--set", "starttls=none", "--format", "json"
        )
        assert code == 3
        assert json.loads(out)[0]["reason"] == "not_tls"


async def test_scan_usage_errors(tmp_path: Path) -> None:
    code, _, err = await _scan("heartbleed")
    assert code == 2
    assert "no targets" in err
    code, _, err = await _scan("heartbleed", "127.0.0.1:1", "--set", "starttls=smtpp")
    assert code == 2
    assert "starttls" in err
    code, _, err = await _scan("heartblead", "127.0.0.1:1")
    assert code == 2
    assert 'did you mean "heartbleed"' in err
