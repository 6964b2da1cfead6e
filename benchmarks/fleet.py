"""A loopback fleet: thousands of listeners spread over 127.0.0.0/8 in one process.

    python benchmarks/fleet.py --listeners 5000 --kind banner --out targets.json

Listeners bind 127.1.x.y (y in 1..254), ``--ports-per-host`` consecutive ports
each, so per-host concurrency caps and the kernel's per-destination port reuse
behave as they would against a real fleet of many servers. When every listener
is up the target list is written atomically to ``--out`` and ``READY <n>`` is
printed; the process then serves until SIGTERM/SIGINT or ``--max-seconds``.

Kinds (``FLEET_KINDS``):
- ``banner``: sends ``SSH-2.0-OpenSSH_9.2p1 fleet\\r\\n`` on accept, then closes
  when the client closes or after ``--hold`` seconds.
- To add ``http`` or ``tls``: write an ``asyncio.Protocol`` (e.g. one canned
  ``HTTP/1.1 200`` reply per request), give it a ``FleetKind`` with an
  ``ssl_context`` factory for ``tls`` (a trustme CA made at start-up, its PEM path
  written into the target list under ``extra``), and register it below. The
  target-list format and the benchmark harness need no change.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import resource
import signal
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import uvloop

BANNER = b"SSH-2.0-OpenSSH_9.2p1 fleet\r\n"
FIRST_HOST = ipaddress.IPv4Address("127.1.0.1")
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


@dataclass(slots=True)
class FleetCounters:
    accepted: int = 0
    closed_by_peer: int = 0
    closed_by_hold: int = 0


@dataclass(frozen=True, slots=True)
class FleetSettings:
    hold: float  # seconds a connection may stay open before the fleet closes it
    counters: FleetCounters = field(default_factory=FleetCounters)


class BannerProtocol(asyncio.Protocol):
    """Greets like an SSH server, ignores what it reads, closes on EOF or after hold."""

    __slots__ = ("_settings", "_timer", "_transport")

    def __init__(self, settings: FleetSettings) -> None:
        self._settings = settings
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so cast, not isinstance.
        self._transport = stream = cast(asyncio.Transport, transport)
        self._settings.counters.accepted += 1
        stream.write(BANNER)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._settings.hold, self._hold_expired)

    def data_received(self, data: bytes) -> None:
        """A banner server ignores what the client says."""

    def eof_received(self) -> bool:
        self._settings.counters.closed_by_peer += 1
        return False  # let the transport close our side too

    def _hold_expired(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._settings.counters.closed_by_hold += 1
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._transport = None


@dataclass(frozen=True, slots=True)
class FleetKind:
    """What one kind of listener speaks, and how it is set up."""

    name: str
    protocol: Callable[[FleetSettings], asyncio.Protocol]
    ssl_context: Callable[[], ssl.SSLContext | None] = lambda: None
    description: str = ""


FLEET_KINDS: dict[str, FleetKind] = {
    "banner": FleetKind(
        name="banner",
        protocol=BannerProtocol,
        description="SSH-like banner on accept, close on client EOF or after hold",
    ),
    # "http": FleetKind("http", HttpProtocol, description="HTTP/1.1 200 with a small body"),
    # "tls": FleetKind("tls", HttpProtocol, ssl_context=make_trustme_context, ...),
}


def fleet_addresses(listeners: int, ports_per_host: int, base_port: int) -> list[tuple[str, int]]:
    """(host, port) of each listener: 127.1.0.1, 127.1.0.2 ... ports_per_host ports each."""
    addresses: list[tuple[str, int]] = []
    offset = 0
    while len(addresses) < listeners:  # bounded: parse_args caps listeners
        host = FIRST_HOST + offset
        offset += 1
        if host.packed[-1] in {0, 255}:
            continue  # legal on lo, but .0 and .255 look like network and broadcast
        if host not in LOOPBACK:
            raise ValueError("fleet would leave 127.0.0.0/8")
        addresses.extend((str(host), base_port + p) for p in range(ports_per_host))
    return addresses[:listeners]


def raise_nofile(needed: int) -> tuple[int, int]:
    """Raise RLIMIT_NOFILE so ``needed`` descriptors fit; return the new (soft, hard)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if needed > hard:
        # Root may raise the hard limit (CAP_SYS_RESOURCE); otherwise keep the old one.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return needed, needed
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < needed:
        raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} < {needed} descriptors needed")
    return hard, hard


async def serve(args: argparse.Namespace) -> int:
    kind = FLEET_KINDS[args.kind]
    addresses = fleet_addresses(args.listeners, args.ports_per_host, args.base_port)
    soft, _ = raise_nofile(args.listeners + args.connection_headroom + 64)
    settings = FleetSettings(hold=args.hold)
    ssl_context = kind.ssl_context()
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    servers: list[asyncio.Server] = []

    def factory() -> asyncio.Protocol:
        return kind.protocol(settings)

    for host, port in addresses:
        server = await loop.create_server(
            factory, host, port, ssl=ssl_context, backlog=args.backlog, reuse_address=True
        )
        servers.append(server)
    bind_seconds = time.monotonic() - started

    targets = {
        "kind": kind.name,
        "description": kind.description,
        "pid": os.getpid(),
        "listeners": len(addresses),
        "hosts": len({h for h, _ in addresses}),
        "ports_per_host": args.ports_per_host,
        "banner": BANNER.decode() if kind.name == "banner" else None,
        "extra": {},
        "targets": [{"host": h, "port": p} for h, p in addresses],
    }
    out = Path(args.out)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(targets, indent=1))
    tmp.replace(out)
    print(
        f"READY {len(addresses)} listeners on {targets['hosts']} hosts "
        f"in {bind_seconds:.2f}s (RLIMIT_NOFILE {soft})",
        flush=True,
    )

    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=args.max_seconds)
    for server in servers:
        server.close()
    c = settings.counters
    print(
        json.dumps(
            {
                "accepted": c.accepted,
                "closed_by_peer": c.closed_by_peer,
                "closed_by_hold": c.closed_by_hold,
                "seconds": round(time.monotonic() - started, 1),
            }
        ),
        flush=True,
    )
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listeners", type=int, default=5000)
    parser.add_argument("--kind", choices=sorted(FLEET_KINDS), default="banner")
    parser.add_argument("--out", required=True, help="where to write the target list (JSON)")
    parser.add_argument("--ports-per-host", type=int, default=4)
    parser.add_argument("--base-port", type=int, default=22000, help="below the ephemeral range")
    parser.add_argument("--hold", type=float, default=5.0, help="close after this many seconds")
    parser.add_argument("--backlog", type=int, default=128)
    parser.add_argument(
        "--connection-headroom", type=int, default=4000, help="descriptors kept for connections"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=1800.0, help="exit by itself after this long"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.listeners <= 60000:
        parser.error("--listeners must be in 1..60000")
    if not 1 <= args.ports_per_host <= 64:
        parser.error("--ports-per-host must be in 1..64")
    if not 1024 <= args.base_port <= 32768 - args.ports_per_host:
        parser.error("--base-port must leave all ports below the ephemeral range (32768)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return uvloop.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
