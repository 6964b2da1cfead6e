"""Run inside ``unshare --net --mount`` by tests/test_faults.py; prints one JSON object.

The namespace has only a loopback interface, and no ::1 (IPv6 is switched off on lo), so
nothing here can reach a real network: the host's resolver (outside 127.0.0.0/8) is
unreachable, and the DNS-timeout case swaps in, in this mount namespace only, a
resolv.conf that points at a loopback UDP port that never answers.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from probed.resources import Resources
from probed.runner import execute
from probed.secrets import SecretStore
from tests.helpers import banner, job, serve


async def _run(directory: Path, module: dict[str, Any], target: str, deadline: str) -> str:
    env = Resources(SecretStore(directory))
    try:
        outcome = await execute(job(directory, module, target, timeout=deadline), env)
    finally:
        await env.close()
    return outcome.reason.value


def _bind_mount(source: Path, target: Path) -> None:
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)


async def main() -> dict[str, str]:
    directory = Path(tempfile.mkdtemp())
    results: dict[str, str] = {}
    async with serve(banner(b"OK\r\n")) as port:
        tcp = {"probe": "tcp", "query": [{"expect": "^OK"}]}
        results["v4_literal"] = await _run(directory, tcp, f"127.0.0.1:{port}", "2s")
        results["invalid_name"] = await _run(directory, tcp, f"host.invalid:{port}", "2s")
        ip6_only = {**tcp, "ip_protocol": "ip6", "ip_protocol_fallback": False}
        results["ip6_only_v4_name"] = await _run(directory, ip6_only, f"localhost:{port}", "2s")
        results["ip6_only_v4_literal"] = await _run(directory, ip6_only, f"127.0.0.1:{port}", "2s")
        results["no_ipv6_loopback"] = await _run(directory, tcp, f"[::1]:{port}", "2s")
        # A resolver that never answers: only this mount namespace sees the new resolv.conf.
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 53))
        conf = directory / "resolv.conf"
        conf.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        _bind_mount(conf, Path("/etc/resolv.conf"))
        results["dns_timeout"] = await _run(directory, tcp, f"probe.example:{port}", "500ms")
        results["dns_timeout_long"] = await _run(directory, tcp, f"probe.example:{port}", "5s")
        silent.close()
    return results


if __name__ == "__main__":
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=1"], check=False)
    print(json.dumps(asyncio.run(main())))
    sys.exit(0)
