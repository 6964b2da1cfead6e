"""The shipped unit passes systemd-analyze; the daemon speaks sd_notify over a real socket."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import free_port

ROOT = Path(__file__).parent.parent
UNIT = ROOT / "systemd" / "probed.service"


def _unit_for_here(tmp_path: Path) -> Path:
    # verify insists that ExecStart's binary exists: point it at this checkout's probed.
    here = Path(sys.executable).parent / "probed"
    assert here.exists(), f"{here} missing: install the package (pip install -e .)"
    unit = tmp_path / "probed.service"
    unit.write_text(UNIT.read_text().replace("/opt/probed/bin/probed", str(here)))
    return unit


def test_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze (Debian package systemd) is required"
    unit = _unit_for_here(tmp_path)
    verify = subprocess.run(
        [tool, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert verify.returncode == 0, verify.stderr
    assert "Unknown key" not in verify.stderr, verify.stderr
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "ExecReload=",
        "WatchdogSec=",
        "Restart=on-failure",
        "LimitNOFILE=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "DynamicUser=yes",
        "CapabilityBoundingSet=\n",
        "AmbientCapabilities=\n",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX\n",
        "SystemCallFilter=@system-service",
    ):
        assert line in text
    # README states the exposure figure (1.1 when written); 2.0 is the line we hold.
    security = subprocess.run(
        [tool, "security", "--offline=yes", "--threshold=20", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert security.returncode == 0, security.stdout[-2000:]


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    async def wait_for(self, field: str) -> str:
        loop = asyncio.get_running_loop()
        end = loop.time() + 15.0
        while loop.time() < end:
            for message in self.messages:
                if field in message.split("\n"):
                    self.messages.remove(message)
                    return message
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                await asyncio.sleep(0.05)
                continue
            self.messages.append(data.decode())
        pytest.fail(f"no {field} within 15 s; got {self.messages}")


async def test_sd_notify_ready_reload_watchdog_stopping(tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    cfg = tmp_path / "probes.toml"
    cfg.write_text(
        f'[server]\nlisten = "127.0.0.1:{free_port()}"\n'
        '[modules.t]\nprobe = "tcp"\n[[probes]]\nmodule = "t"\ntarget = "127.0.0.1:9"\n'
    )
    env = {
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
        "WATCHDOG_USEC": "400000",
        "PATH": "/usr/bin:/bin",
    }
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "probed", "--log-format", "json", "run", "-c", str(cfg)),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        ready = await notify.wait_for("READY=1")
        assert "STATUS=1 jobs" in ready.split("\n")
        await notify.wait_for("WATCHDOG=1")
        await notify.wait_for("WATCHDOG=1")  # repeated, from the running loop
        proc.send_signal(signal.SIGHUP)
        reloading = await notify.wait_for("RELOADING=1")
        assert any(f.startswith("MONOTONIC_USEC=") for f in reloading.split("\n"))
        await notify.wait_for("READY=1")
        proc.send_signal(signal.SIGTERM)
        await notify.wait_for("STOPPING=1")
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        notify.sock.close()


def test_unit_with_credentials_and_web_config_verifies(tmp_path: Path) -> None:
    """The drop-in the unit's comments describe (LoadCredential= with the dynamic user, the
    web config file from %d) is valid systemd."""
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze (Debian package systemd) is required"
    unit = _unit_for_here(tmp_path)
    text = unit.read_text()
    dropin = [line.removeprefix("#   ") for line in text.splitlines() if line.startswith("#   ")]
    dropin = [line for line in dropin if line.startswith(("LoadCredential=", "ExecStart"))]
    assert any("--web.config.file=%d/web-config.yml" in line for line in dropin), dropin
    assert sum(line.startswith("LoadCredential=") for line in dropin) == 4
    unit.write_text(text.replace("[Install]", "\n".join(dropin) + "\n\n[Install]"))
    verify = subprocess.run(
        [tool, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr == "", verify.stderr
