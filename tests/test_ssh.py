"""The ssh probe against OpenSSH's sshd (fixture) and hostile loopback peers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncssh

from probed.probes.base import Reason
from probed.resources import Resources
from probed.results import Outcome
from probed.runner import execute
from tests.helpers import job, serve
from tests.servers.sshd import SshdServer


def _facts(outcome: Outcome) -> dict[str, list[tuple[str, float]]]:
    out: dict[str, list[tuple[str, float]]] = {}
    for family, labels, value in outcome.samples:
        out.setdefault(family.name, []).append((labels, value))
    return out


def _fingerprint(server: SshdServer, key_type: str) -> str:
    index = server.host_key_types.index(key_type)
    key = asyncssh.read_public_key(f"{server.host_keys[index]}.pub")
    return str(key.get_fingerprint("sha256"))


def _login(tmp_path: Path, server: SshdServer, **extra: Any) -> dict[str, Any]:
    """A login module: the client key copied into a secret file next to probes.toml."""
    (tmp_path / "id_probe").write_text(server.client_key.read_text())
    return {
        "probe": "ssh",
        "username": "root",
        "client_key": {"file": "id_probe"},
        **extra,
    }


async def test_version_and_host_key_without_login(
    tmp_path: Path, env: Resources, sshd_server: SshdServer
) -> None:
    target = f"{sshd_server.host}:{sshd_server.port}"
    outcome = await execute(job(tmp_path, {"probe": "ssh"}, target), env)
    assert outcome.success, outcome.detail
    facts = _facts(outcome)
    [(version, _)] = facts["probe_ssh_version_info"]
    assert 'protocol="2.0"' in version
    assert 'software="OpenSSH_' in version
    [(key, _)] = facts["probe_ssh_host_key_info"]
    # asyncssh's preference picks one of the server's two keys; either way the label pair fits.
    assert any(
        f'algorithm="{name}",fingerprint_sha256="{_fingerprint(sshd_server, key_type)}"' == key
        for key_type, name in (("ed25519", "ssh-ed25519"), ("rsa", "ssh-rsa"))
    ), key
    assert "probe_ssh_host_key_match" not in facts  # nothing pinned, nothing judged
    assert set(dict(outcome.phases)) == {"connect", "handshake"}
    # The run stopped after the key exchange: sshd never saw a user name.
    assert "probed" not in sshd_server.log_path.read_text()


async def test_pinned_fingerprint_per_host_key_algorithm(
    tmp_path: Path, env: Resources, sshd_server: SshdServer
) -> None:
    """The server has two host keys; a pin of the RSA one fails when ed25519 is negotiated."""
    target = f"{sshd_server.host}:{sshd_server.port}"
    rsa = _fingerprint(sshd_server, "rsa")
    base = {"probe": "ssh", "host_key_fingerprints": [rsa]}
    good = await execute(
        job(tmp_path, {**base, "host_key_algorithms": ["rsa-sha2-256"]}, target), env
    )
    assert good.success, good.detail
    assert _facts(good)["probe_ssh_host_key_match"] == [("", 1.0)]
    bad = await execute(
        job(tmp_path, {**base, "host_key_algorithms": ["ssh-ed25519"]}, target), env
    )
    assert bad.reason is Reason.SSH_HOST_KEY_MISMATCH, bad.detail
    facts = _facts(bad)
    assert facts["probe_ssh_host_key_match"] == [("", 0.0)]
    # The presented key is exported even though it was refused.
    [(key, _)] = facts["probe_ssh_host_key_info"]
    assert _fingerprint(sshd_server, "ed25519") in key


async def test_login_command_with_known_hosts(
    tmp_path: Path, env: Resources, sshd_server: SshdServer
) -> None:
    known = tmp_path / "known_hosts"
    lines = [f"[{sshd_server.host}]:{sshd_server.port} {k}" for k in sshd_server.host_public_keys()]
    known.write_text("\n".join(lines) + "\n")
    module = _login(
        tmp_path,
        sshd_server,
        known_hosts=str(known),
        command="echo probe-$((40 + 2)); echo to-stderr >&2; exit 3",
        command_exit_status=3,
        command_output="^probe-42$",
    )
    outcome = await execute(
        job(tmp_path, module, f"{sshd_server.host}:{sshd_server.port}"), env, capture_log=True
    )
    assert outcome.success, outcome.detail
    assert set(dict(outcome.phases)) == {"connect", "handshake", "auth", "command"}
    facts = _facts(outcome)
    assert facts["probe_ssh_command_exit_status"] == [("", 3.0)]
    assert facts["probe_ssh_host_key_match"] == [("", 1.0)]
    # The key never shows up in the outcome or its log.
    secret = (tmp_path / "id_probe").read_text()
    body = secret.splitlines()[1]
    assert body not in repr(outcome)


async def test_known_hosts_without_this_host_refuses_before_login(
    tmp_path: Path, env: Resources, sshd_server: SshdServer
) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519")
    known = tmp_path / "known_hosts"
    known.write_text(
        f"[{sshd_server.host}]:{sshd_server.port} {other.export_public_key().decode()}"
    )
    module = _login(tmp_path, sshd_server, known_hosts=str(known), command="true")
    outcome = await execute(job(tmp_path, module, f"{sshd_server.host}:{sshd_server.port}"), env)
    assert outcome.reason is Reason.SSH_HOST_KEY_MISMATCH, outcome.detail
    assert "auth" not in dict(outcome.phases)


async def test_command_status_and_output_failures(
    tmp_path: Path, env: Resources, sshd_server: SshdServer
) -> None:
    target = f"{sshd_server.host}:{sshd_server.port}"
    pins = {"host_key_fingerprints": [_fingerprint(sshd_server, t) for t in ("ed25519", "rsa")]}
    failing = _login(tmp_path, sshd_server, command="exit 1", **pins)
    outcome = await execute(job(tmp_path, failing, target), env)
    assert outcome.reason is Reason.COMMAND_FAILED, outcome.detail
    assert _facts(outcome)["probe_ssh_command_exit_status"] == [("", 1.0)]
    wrong = _login(tmp_path, sshd_server, command="echo hi", command_output="^bye", **pins)
    outcome = await execute(job(tmp_path, wrong, target), env)
    assert outcome.reason is Reason.EXPECT_MISMATCH, outcome.detail
    chatty = _login(
        tmp_path, sshd_server, command="head -c 5000 /dev/zero", command_output_limit=1000, **pins
    )
    outcome = await execute(job(tmp_path, chatty, target), env)
    assert outcome.reason is Reason.TOO_LARGE, outcome.detail


async def test_unauthorized_key_and_missing_secret(
    tmp_path: Path, env: Resources, sshd_server: SshdServer
) -> None:
    target = f"{sshd_server.host}:{sshd_server.port}"
    stranger = tmp_path / "stranger"
    stranger.write_text(asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode())
    module = {
        "probe": "ssh",
        "username": "root",
        "client_key": {"file": "stranger"},
        "accept_any_host_key": True,
    }
    outcome = await execute(job(tmp_path, module, target), env)
    assert outcome.reason is Reason.AUTH_FAILED, outcome.detail
    assert "auth" in dict(outcome.phases)
    module["client_key"] = {"file": "absent"}
    outcome = await execute(job(tmp_path, module, target), env)
    assert outcome.reason is Reason.SECRET_UNAVAILABLE, outcome.detail
    (tmp_path / "not-a-key").write_text("hunter2\n")
    module["client_key"] = {"file": "not-a-key"}
    outcome = await execute(job(tmp_path, module, target), env)
    assert outcome.reason is Reason.SECRET_UNAVAILABLE, outcome.detail
    assert "hunter2" not in repr(outcome)


async def test_password_login_refused_by_server(
    tmp_path: Path, env: Resources, sshd_server: SshdServer
) -> None:
    (tmp_path / "pw").write_text("not-the-password\n")
    module = {
        "probe": "ssh",
        "username": "root",
        "password": {"file": "pw"},
        "accept_any_host_key": True,
    }
    outcome = await execute(job(tmp_path, module, f"{sshd_server.host}:{sshd_server.port}"), env)
    assert outcome.reason is Reason.AUTH_FAILED, outcome.detail
    assert "not-the-password" not in repr(outcome)


async def test_endless_banner_is_cut_off(tmp_path: Path, env: Resources) -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = b"welcome to the tarpit " * 20 + b"\r\n"
        for _ in range(100_000):  # bounded; the client gives up long before
            writer.write(line)
            await writer.drain()

    async with serve(endless) as port:
        outcome = await execute(job(tmp_path, {"probe": "ssh"}, f"127.0.0.1:{port}"), env)
    assert outcome.reason is Reason.PROTOCOL_ERROR, outcome.detail
    assert "probe_ssh_version_info" not in _facts(outcome)


async def test_endless_line_and_silence_end_by_the_deadline(tmp_path: Path, env: Resources) -> None:
    async def no_newline(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-" + b"x" * 100_000)
        await writer.drain()
        await reader.read(1)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3600)

    async with serve(no_newline) as port:
        outcome = await execute(job(tmp_path, {"probe": "ssh"}, f"127.0.0.1:{port}"), env)
    assert outcome.reason is Reason.PROTOCOL_ERROR, outcome.detail
    async with serve(silent) as port:
        spec = job(tmp_path, {"probe": "ssh"}, f"127.0.0.1:{port}", timeout="300ms")
        outcome = await execute(spec, env)
    assert outcome.reason is Reason.TIMEOUT
    assert "handshake" in outcome.detail
