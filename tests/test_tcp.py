"""The tcp probe against loopback peers written for the tests (banners, dialogues, TLS,
hostile servers). Real Debian servers are in test_tcp_real.py."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest

from probed.probes.base import Reason
from probed.probes.tlsfacts import EARLIEST_EXPIRY, TLS_VERSION
from probed.resources import Resources
from probed.results import Outcome
from probed.runner import execute
from tests.conftest import Certs
from tests.helpers import (
    banner,
    endless_stream,
    job,
    never_answer,
    reset_at_once,
    serve,
)

SSH_BANNER = b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n"


def _facts(outcome: Outcome) -> dict[str, list[tuple[str, float]]]:
    out: dict[str, list[tuple[str, float]]] = {}
    for family, labels, value in outcome.samples:
        out.setdefault(family.name, []).append((labels, value))
    return out


async def test_banner_matches(tmp_path: Path, env: Resources) -> None:
    async with serve(banner(SSH_BANNER)) as port:
        j = job(
            tmp_path, {"probe": "tcp", "query": [{"expect": "^SSH-2\\.0-"}]}, f"127.0.0.1:{port}"
        )
        outcome = await execute(j, env, capture_log=True)
    assert outcome.success, outcome
    assert outcome.reason is Reason.NONE
    phases = dict(outcome.phases)
    assert set(phases) == {"connect", "dialogue"}
    assert _facts(outcome)["probe_ip_protocol"] == [("", 4.0)]
    assert outcome.log is not None
    assert any("expect matched" in line for line in outcome.log)


async def test_banner_mismatch_is_expect_mismatch(tmp_path: Path, env: Resources) -> None:
    async with serve(banner(b"SSH-1.99-old\r\n", then_close=True)) as port:
        j = job(
            tmp_path, {"probe": "tcp", "query": [{"expect": "^SSH-2\\.0-"}]}, f"127.0.0.1:{port}"
        )
        outcome = await execute(j, env)
    assert not outcome.success
    assert outcome.reason is Reason.EXPECT_MISMATCH
    assert "SSH-1.99" in outcome.detail


async def test_refused(tmp_path: Path, env: Resources) -> None:
    with socket.socket() as sock:  # a port that was just free and has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    outcome = await execute(job(tmp_path, {"probe": "tcp"}, f"127.0.0.1:{port}"), env)
    assert outcome.reason is Reason.CONNECT_REFUSED


async def test_binary_dialogue_sends_exact_bytes(tmp_path: Path, env: Resources) -> None:
    received: list[bytes] = []

    async def echo_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.readexactly(5)
        received.append(data)
        writer.write(b"\x00\xffOK" + data)
        await writer.drain()
        await reader.read(1)

    module = {
        "probe": "tcp",
        "query": [
            {"send_hex": "0001fe"},
            {"send": "ab"},  # no newline added
            {"expect": "^\\x00\\xffOK\\x00\\x01\\xfeab"},
        ],
    }
    async with serve(echo_once) as port:
        outcome = await execute(job(tmp_path, module, f"127.0.0.1:{port}"), env)
    assert outcome.success, outcome
    assert received == [b"\x00\x01\xfeab"]


async def test_multiline_greeting(tmp_path: Path, env: Resources) -> None:
    greeting = b"220-mx.example ESMTP\r\n220-second line\r\n220 ready\r\n"
    async with serve(banner(greeting)) as port:
        module = {"probe": "tcp", "query": [{"expect": "^220 "}]}
        outcome = await execute(job(tmp_path, module, f"127.0.0.1:{port}"), env)
    assert outcome.success


async def test_ipv6_loopback(tmp_path: Path, env: Resources) -> None:
    async with serve(banner(SSH_BANNER), host="::1") as port:
        module = {"probe": "tcp", "query": [{"expect": "^SSH-"}]}
        outcome = await execute(job(tmp_path, module, f"[::1]:{port}"), env)
    assert outcome.success, outcome
    assert _facts(outcome)["probe_ip_protocol"] == [("", 6.0)]


async def test_ip_protocol_without_fallback(tmp_path: Path, env: Resources) -> None:
    module = {"probe": "tcp", "ip_protocol": "ip6", "ip_protocol_fallback": False}
    outcome = await execute(job(tmp_path, module, "127.0.0.1:9"), env)
    assert outcome.reason is Reason.NO_ADDRESS


async def test_name_resolution_and_every_address(tmp_path: Path, env: Resources) -> None:
    # "localhost" resolves to 127.0.0.1 and ::1 here; a v4-only listener fails on ::1.
    async with serve(banner(SSH_BANNER), host="127.0.0.1") as port:
        module = {
            "probe": "tcp",
            "ip_protocol": "ip4",
            "all_addresses": True,
            "query": [{"expect": "^SSH-"}],
        }
        outcome = await execute(job(tmp_path, module, f"localhost:{port}"), env)
    facts = _facts(outcome)
    per_address = dict(facts["probe_tcp_address_success"])
    assert per_address['address="127.0.0.1"'] == 1.0
    assert "resolve" in dict(outcome.phases)
    if 'address="::1"' in per_address:
        assert per_address['address="::1"'] == 0.0
        assert not outcome.success
        assert outcome.reason is Reason.CONNECT_REFUSED
    else:
        assert outcome.success


async def test_unresolvable_name(tmp_path: Path, env: Resources) -> None:
    # .invalid is reserved (RFC 2606): it never resolves, and no query leaves loopback
    # when the resolver has no upstream.
    outcome = await execute(job(tmp_path, {"probe": "tcp"}, "no-such-host.invalid:22"), env)
    assert outcome.reason is Reason.DNS_ERROR


# -- TLS -------------------------------------------------------------------------------


def _tls_module(certs: Certs, **extra: object) -> dict[str, object]:
    return {
        "probe": "tcp",
        "tls": True,
        "tls_config": {"ca_file": str(certs.ca_file)},
        "query": [{"expect": "^hello"}],
        **extra,
    }


async def test_implicit_tls_valid(tmp_path: Path, env: Resources, certs: Certs) -> None:
    async with serve(banner(b"hello\r\n"), ssl_context=certs.valid) as port:
        j = job(tmp_path, _tls_module(certs), f"localhost:{port}")
        outcome = await execute(j, env)
    assert outcome.success, outcome
    facts = _facts(outcome)
    assert facts[TLS_VERSION.name] == [('version="TLS 1.3"', 1.0)]
    assert facts["probe_tls_certificate_verified"] == [("", 1.0)]
    assert facts[EARLIEST_EXPIRY.name][0][1] > 0
    info = facts["probe_ssl_last_chain_info"][0][0]
    assert "fingerprint_sha256=" in info
    assert 'subjectalternative="localhost,127.0.0.1' in info
    assert "tls" in dict(outcome.phases)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("expired", Reason.TLS_CERT_EXPIRED),
        ("not_yet_valid", Reason.TLS_CERT_NOT_YET_VALID),
        ("wrong_name", Reason.TLS_CERT_NAME_MISMATCH),
        ("unknown_issuer", Reason.TLS_CERT_UNKNOWN_ISSUER),
        ("self_signed", Reason.TLS_CERT_SELF_SIGNED),
    ],
)
async def test_certificate_failures_still_report_expiry(
    tmp_path: Path, env: Resources, certs: Certs, case: str, reason: Reason
) -> None:
    server_ctx: ssl.SSLContext = getattr(certs, case)
    async with serve(banner(b"hello\r\n"), ssl_context=server_ctx) as port:
        outcome = await execute(job(tmp_path, _tls_module(certs), f"localhost:{port}"), env)
    assert not outcome.success
    assert outcome.reason is reason, outcome.detail
    facts = _facts(outcome)
    assert facts[EARLIEST_EXPIRY.name][0][1] > 0, "expiry must be exported on failure"
    assert facts["probe_tls_certificate_verified"] == [("", 0.0)]


async def test_insecure_skip_verify_succeeds_on_bad_cert(
    tmp_path: Path, env: Resources, certs: Certs
) -> None:
    module = _tls_module(certs)
    module["tls_config"] = {"insecure_skip_verify": True}
    async with serve(banner(b"hello\r\n"), ssl_context=certs.expired) as port:
        outcome = await execute(job(tmp_path, module, f"127.0.0.1:{port}"), env)
    assert outcome.success, outcome
    assert _facts(outcome)["probe_tls_certificate_verified"] == [("", 0.0)]


async def test_tls_to_plaintext_server(tmp_path: Path, env: Resources, certs: Certs) -> None:
    async with serve(banner(b"220 plain text here\r\n" * 20)) as port:
        outcome = await execute(job(tmp_path, _tls_module(certs), f"localhost:{port}"), env)
    assert outcome.reason is Reason.TLS_HANDSHAKE


async def test_starttls_dialogue(tmp_path: Path, env: Resources, certs: Certs) -> None:
    async def smtp_like(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220-mx ESMTP\r\n220 ready\r\n")
        assert (await reader.readline()).startswith(b"EHLO")
        writer.write(b"250-mx\r\n250 STARTTLS\r\n")
        assert await reader.readline() == b"STARTTLS\r\n"
        writer.write(b"220 go ahead\r\n")
        await writer.drain()
        await writer.start_tls(certs.valid)
        assert await reader.readline() == b"NOOP\r\n"
        writer.write(b"250 ok secure\r\n")
        await writer.drain()
        await reader.read(1)

    module = {
        "probe": "tcp",
        "tls_config": {"ca_file": str(certs.ca_file)},
        "query": [
            {"expect": "^220 "},
            {"send": "EHLO probed\r\n"},
            {"expect": "^250 STARTTLS"},
            {"send": "STARTTLS\r\n"},
            {"expect": "^220 "},
            {"starttls": True},
            {"send": "NOOP\r\n"},
            {"expect": "^250 ok secure"},
        ],
    }
    async with serve(smtp_like) as port:
        outcome = await execute(job(tmp_path, module, f"localhost:{port}"), env)
    assert outcome.success, outcome
    assert TLS_VERSION.name in _facts(outcome)


# -- hostile peers: each run ends by its deadline with the right reason ------------------


async def test_accept_and_never_answer_times_out(tmp_path: Path, env: Resources) -> None:
    async with serve(never_answer) as port:
        j = job(
            tmp_path,
            {"probe": "tcp", "query": [{"expect": "^SSH"}]},
            f"127.0.0.1:{port}",
            timeout="300ms",
        )
        outcome = await execute(j, env)
    assert outcome.reason is Reason.TIMEOUT
    assert "dialogue" in outcome.detail
    assert "connect" in dict(outcome.phases), "phases before the timeout stay recorded"
    assert outcome.duration < j.timeout + 0.5


async def test_endless_stream_is_bounded(tmp_path: Path, env: Resources) -> None:
    async with serve(endless_stream) as port:
        module = {"probe": "tcp", "read_limit": 100_000, "query": [{"expect": "^never"}]}
        outcome = await execute(job(tmp_path, module, f"127.0.0.1:{port}"), env)
    assert outcome.reason is Reason.TOO_LARGE


async def test_reset(tmp_path: Path, env: Resources) -> None:
    async with serve(reset_at_once) as port:
        module = {"probe": "tcp", "query": [{"expect": "^SSH"}]}
        outcome = await execute(job(tmp_path, module, f"127.0.0.1:{port}"), env)
    assert outcome.reason is Reason.CONNECTION_RESET, outcome.detail


async def test_close_mid_dialogue(tmp_path: Path, env: Resources) -> None:
    async def hangs_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 hello\r\n")
        await reader.readline()
        writer.close()

    module = {
        "probe": "tcp",
        "query": [{"expect": "^220"}, {"send": "EHLO x\r\n"}, {"expect": "^250"}],
    }
    async with serve(hangs_up) as port:
        outcome = await execute(job(tmp_path, module, f"127.0.0.1:{port}"), env)
    assert outcome.reason is Reason.EXPECT_MISMATCH
    assert "query step 2" in outcome.detail


async def test_tls_handshake_stall_times_out(tmp_path: Path, env: Resources, certs: Certs) -> None:
    async with serve(never_answer) as port:
        j = job(tmp_path, _tls_module(certs), f"127.0.0.1:{port}", timeout="300ms")
        outcome = await execute(j, env)
    assert outcome.reason is Reason.TIMEOUT
    assert "tls" in outcome.detail


async def test_suite_runs_on_uvloop() -> None:
    assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
