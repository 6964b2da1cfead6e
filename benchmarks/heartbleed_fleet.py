"""The Heartbleed benchmark's peer fleet: many test peers of many modes in one process.

    PYTHONPATH=. python benchmarks/heartbleed_fleet.py --plan plan.json --max-seconds 900

``plan.json`` is a list of listeners, each ``{"host": "127.2.0.1", "port": 443, "mode":
"vulnerable", "starttls": null, "max_version": 771, "heartbeat_extension": true,
"client_auth": false}``. Listeners with the same configuration share one
``tests.peers.heartbleed_server.HeartbleedPeer`` (the test suite's peer, used unchanged).
Every address must be loopback. When all listeners are bound the fleet prints
``READY <n>``; it serves until SIGTERM/SIGINT or ``--max-seconds``, whichever comes first.

The sweep (``heartbleed_sweep.py``) starts this as a child process and reads its CPU time from
/proc, so the fleet's cost is measured on its own and charged to no tool.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import resource
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvloop

from tests.peers.heartbleed_server import (
    HeartbleedPeer,
    Mode,
    PeerConfig,
    StartTLS,
    certificate_chain,
)


def peer_config(entry: dict[str, Any]) -> PeerConfig:
    """The peer configuration of one plan entry."""
    starttls = entry.get("starttls")
    return PeerConfig(
        mode=Mode(entry["mode"]),
        starttls=StartTLS(starttls) if starttls else None,
        max_version=int(entry.get("max_version", 0x0303)),
        heartbeat_extension=bool(entry.get("heartbeat_extension", True)),
        client_auth=bool(entry.get("client_auth", False)),
    )


def _raise_nofile(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def serve(plan: Sequence[dict[str, Any]], max_seconds: float) -> None:
    peers: dict[PeerConfig, HeartbleedPeer] = {}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        for entry in plan:
            host = str(entry["host"])
            if not ipaddress.ip_address(host).is_loopback:
                raise SystemExit(f"heartbleed_fleet: {host} is not a loopback address")
            config = peer_config(entry)
            peer = peers.setdefault(config, HeartbleedPeer(config))
            await peer.listen(host, int(entry["port"]))
        print(f"READY {len(plan)}", flush=True)
        # Bounded: the fleet ends by itself even if nobody stops it.
        try:
            async with asyncio.timeout(max_seconds):
                await stop.wait()
        except TimeoutError:
            print("heartbleed_fleet: --max-seconds reached, exiting", file=sys.stderr)
    finally:
        for peer in peers.values():
            await peer.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--plan", type=Path, required=True)
    parser.add_argument("--max-seconds", type=float, default=900.0)
    args = parser.parse_args(argv)
    plan = json.loads(args.plan.read_text())
    if not isinstance(plan, list):
        raise SystemExit("heartbleed_fleet: the plan must be a JSON list")
    # One listening socket per entry plus the connections in flight.
    _raise_nofile(len(plan) + 8192)
    certificate_chain()  # make the certificate before the first connection, not during it
    uvloop.run(serve(plan, args.max_seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
