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
- ``http``: reads one request head (up to the blank line), answers one canned
  ``HTTP/1.1 200 OK`` with ``Content-Length`` and ``Connection: close``, and closes.
- ``tls``: the same HTTP protocol behind TLS. A trustme CA and one leaf for
  ``localhost`` (``--tls-key ecdsa``: P-256, the default; ``rsa``: RSA 2048) are made
  at start-up, the same certificate for every listener; the CA's PEM path and the
  server name go into the target list under ``extra``. A TLS handshake probe
  connects, handshakes and closes without a request; an HTTPS GET gets the reply.
  The server sends no TLS 1.3 session tickets (``num_tickets = 0``): no client here
  resumes, and a ticket written after the client has gone only costs a reset.

- ``smtp``, ``pop3``, ``imap``: scripted plaintext mail dialogues (no TLS, no login):
  a greeting (``220 ... ESMTP``, ``+OK``, ``* OK``), then one canned answer per command
  line (EHLO/HELO, CAPA, CAPABILITY, NOOP; QUIT/LOGOUT answer and close; anything else
  an error reply), enough for the smtp, pop3 and imap probes with ``tls = "none"``.

``--first-host`` moves the whole fleet to another 127.x range, so fleets of several
kinds (``bench_scale.py`` runs six) and other benchmarks can run side by side.

``--flap SECONDS`` (the soak, ``soak.py``): every listener cycles through ``FLAP_CYCLE``,
one step every SECONDS: ``healthy`` (the kind's protocol), ``refused`` (the listener is
closed: connects are refused), ``stall`` (accepts, never sends a byte, closes after
``--hold``: set it past the probe's timeout), ``close`` (accepts and closes at once),
``reset`` (accepts and resets: SO_LINGER 0) and ``garbage`` (sends bytes of no protocol,
then closes). A TLS kind does all but ``healthy`` in plain TCP, before any handshake. The
schedule is deterministic (``flap_behaviour``): a function of the listener's index and the
seconds since ``READY``. The ports of one host step together, hosts at staggered instants,
and a host's ports sit on consecutive steps of the cycle, so no two of them fail the same
way at once.

To add a kind: write an ``asyncio.Protocol``, give it a ``FleetKind`` (with a
``tls`` factory if it speaks TLS) and register it in ``FLEET_KINDS``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import ipaddress
import json
import math
import os
import resource
import signal
import socket
import ssl
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import uvloop

BANNER = b"SSH-2.0-OpenSSH_9.2p1 fleet\r\n"
HTTP_BODY = b"ok\n"
HTTP_RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: " + str(len(HTTP_BODY)).encode() + b"\r\n"
    b"Connection: close\r\n"
    b"\r\n" + HTTP_BODY
)
HTTP_HEAD_LIMIT = 16384  # a request head longer than this gets no answer, just a close
TLS_SERVER_NAME = "localhost"
FIRST_HOST = ipaddress.IPv4Address("127.1.0.1")
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


@dataclass(slots=True)
class FleetCounters:
    accepted: int = 0
    closed_by_peer: int = 0
    closed_by_hold: int = 0
    answered: int = 0  # http/tls: requests answered
    lost_with_error: int = 0  # connection_lost with an exception (resets, TLS errors)
    # --flap: connections accepted per behaviour, behaviour changes, listener rebinds
    by_behaviour: dict[str, int] = field(default_factory=dict)
    flips: int = 0
    rebinds: int = 0


@dataclass(frozen=True, slots=True)
class FleetSettings:
    hold: float  # seconds a connection may stay open before the fleet closes it
    counters: FleetCounters = field(default_factory=FleetCounters)
    tls_key: str = "ecdsa"  # tls kind: "ecdsa" (P-256) or "rsa" (2048)
    run_dir: Path = Path()  # where the tls kind writes its CA and leaf


class HeldConnection(asyncio.Protocol):
    """What every fleet kind shares: count the accept, send an optional greeting, close
    after ``hold`` unless the client closed first, count how each connection ended."""

    __slots__ = ("_settings", "_timer", "_transport")

    greeting = b""

    def __init__(self, settings: FleetSettings) -> None:
        self._settings = settings
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so cast, not isinstance.
        self._transport = stream = cast(asyncio.Transport, transport)
        self._settings.counters.accepted += 1
        if self.greeting:
            stream.write(self.greeting)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._settings.hold, self._hold_expired)

    def eof_received(self) -> bool:
        self._settings.counters.closed_by_peer += 1
        return False  # let the transport close our side too

    def _hold_expired(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._settings.counters.closed_by_hold += 1
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._settings.counters.lost_with_error += 1
        if self._timer is not None:
            self._timer.cancel()
        self._transport = None


class BannerProtocol(HeldConnection):
    """Greets like an SSH server, ignores what it reads, closes on EOF or after hold."""

    __slots__ = ()

    greeting = BANNER

    def data_received(self, data: bytes) -> None:
        """A banner server ignores what the client says."""


class HttpProtocol(HeldConnection):
    """One canned ``HTTP/1.1 200 OK`` per connection, then close (``Connection: close``).

    Over TLS, ``connection_made`` runs after the handshake; a client that only
    handshakes closes without a request, which ends here as EOF or a lost connection.
    """

    __slots__ = ("_head",)

    def __init__(self, settings: FleetSettings) -> None:
        super().__init__(settings)
        self._head = b""

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._head += data
        if b"\r\n\r\n" in self._head:
            self._settings.counters.answered += 1
            transport.write(HTTP_RESPONSE)
            transport.close()  # flushes the reply first
        elif len(self._head) > HTTP_HEAD_LIMIT:
            transport.close()


@dataclass(frozen=True, slots=True)
class Dialogue:
    """A scripted line protocol: the greeting, canned replies by command, how to end."""

    greeting: bytes
    replies: dict[str, bytes]  # upper-case command word -> reply ("{tag}" for IMAP tags)
    closing: frozenset[str]  # commands whose reply is followed by a close
    error: bytes
    tagged: bool = False  # IMAP: "TAG COMMAND ..."


SMTP_DIALOGUE = Dialogue(
    greeting=b"220 fleet.example ESMTP Exim 4.96 ready\r\n",
    replies={
        "EHLO": b"250-fleet.example Hello\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n"
        b"250-PIPELINING\r\n250 HELP\r\n",
        "HELO": b"250 fleet.example Hello\r\n",
        "NOOP": b"250 OK\r\n",
        "RSET": b"250 Reset OK\r\n",
        "QUIT": b"221 fleet.example closing connection\r\n",
    },
    closing=frozenset({"QUIT"}),
    error=b"500 unrecognized command\r\n",
)
POP3_DIALOGUE = Dialogue(
    greeting=b"+OK Dovecot ready.\r\n",
    replies={
        "CAPA": b"+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nUSER\r\n.\r\n",
        "NOOP": b"+OK\r\n",
        "QUIT": b"+OK Logging out.\r\n",
    },
    closing=frozenset({"QUIT"}),
    error=b"-ERR Unknown command.\r\n",
)
IMAP_DIALOGUE = Dialogue(
    greeting=b"* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE AUTH=PLAIN] "
    b"Dovecot ready.\r\n",
    replies={
        "CAPABILITY": b"* CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE AUTH=PLAIN\r\n"
        b"{tag} OK Capability completed.\r\n",
        "NOOP": b"{tag} OK NOOP completed.\r\n",
        "LOGOUT": b"* BYE Logging out\r\n{tag} OK Logout completed.\r\n",
    },
    closing=frozenset({"LOGOUT"}),
    error=b"{tag} BAD Error in IMAP command.\r\n",
    tagged=True,
)
DIALOGUE_LINE_LIMIT = 4096  # a longer line gets no answer, just a close


class DialogueProtocol(HeldConnection):
    """Greets, then answers each command line from a ``Dialogue``; closes after the
    closing command, on EOF, on an over-long line or after hold."""

    __slots__ = ("_buf", "_dialogue", "greeting")

    def __init__(self, settings: FleetSettings, dialogue: Dialogue) -> None:
        super().__init__(settings)
        self._dialogue = dialogue
        self.greeting = dialogue.greeting
        self._buf = b""

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._buf += data
        while b"\n" in self._buf:  # bounded: each pass consumes one line
            line, _, self._buf = self._buf.partition(b"\n")
            if not self._answer(transport, line.decode("latin-1").strip()):
                return
        if len(self._buf) > DIALOGUE_LINE_LIMIT:
            transport.close()

    def _answer(self, transport: asyncio.Transport, line: str) -> bool:
        """Reply to one command line; False once the connection is closing."""
        d = self._dialogue
        words = line.split()
        tag = words.pop(0) if d.tagged and words else "*"
        command = words[0].upper() if words else ""
        reply = d.replies.get(command, d.error)
        transport.write(reply.replace(b"{tag}", tag.encode()) if d.tagged else reply)
        if command in d.closing:
            self._settings.counters.answered += 1
            transport.close()
            return False
        return True


GARBAGE = b"\xff\xfe\x00\x80 fleet garbage \x1b[0m\x00\r\nnot any protocol\r\n"


class StallProtocol(HeldConnection):
    """Accepts and never answers; closes after hold (set it past the probe's timeout)."""

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        """A stalled server reads and ignores."""


class CloseProtocol(HeldConnection):
    """Accepts, sends ``greeting`` (none: a bare FIN), closes at once."""

    __slots__ = ()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        transport.close()


class GarbageProtocol(CloseProtocol):
    """Sends bytes of no protocol (not a greeting, not a TLS record), then closes."""

    __slots__ = ()

    greeting = GARBAGE


class ResetProtocol(HeldConnection):
    """Accepts and resets the connection (SO_LINGER 0, then close: an RST, no FIN)."""

    __slots__ = ()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        cast(asyncio.Transport, transport).abort()


# One step per --flap period; half the steps healthy, each failure mode once.
FLAP_CYCLE = (
    "healthy",
    "refused",
    "healthy",
    "stall",
    "healthy",
    "close",
    "healthy",
    "reset",
    "healthy",
    "garbage",
)
FLAP_PROTOCOLS: dict[str, Callable[[FleetSettings], asyncio.Protocol]] = {
    "stall": StallProtocol,
    "close": CloseProtocol,
    "reset": ResetProtocol,
    "garbage": GarbageProtocol,
}
GOLDEN = (math.sqrt(5) - 1) / 2  # hosts' step instants: spread evenly, never in step


def flap_behaviour(index: int, ports_per_host: int, elapsed: float, period: float) -> str:
    """What listener ``index`` does ``elapsed`` seconds after READY, stepping every
    ``period``: the ports of a host step together (at a per-host instant within the
    period) and sit on consecutive steps of ``FLAP_CYCLE``."""
    stagger = (index // ports_per_host * GOLDEN) % 1.0
    step = math.floor(elapsed / period + stagger)
    return FLAP_CYCLE[(index + step) % len(FLAP_CYCLE)]


def dialogue_kind(dialogue: Dialogue) -> Callable[[FleetSettings], asyncio.Protocol]:
    def protocol(settings: FleetSettings) -> asyncio.Protocol:
        return DialogueProtocol(settings, dialogue)

    return protocol


def no_tls(settings: FleetSettings) -> tuple[ssl.SSLContext | None, dict[str, Any]]:
    del settings
    return None, {}


def trustme_tls(settings: FleetSettings) -> tuple[ssl.SSLContext | None, dict[str, Any]]:
    """A server context from a fresh trustme CA; its CA PEM is written for the clients."""
    import trustme  # noqa: PLC0415 (only the tls kind needs it)

    key_type = trustme.KeyType.RSA if settings.tls_key == "rsa" else trustme.KeyType.ECDSA
    ca = trustme.CA(key_type=key_type)
    leaf = ca.issue_cert(TLS_SERVER_NAME, key_type=key_type)
    ca_path = settings.run_dir / "fleet-ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    chain_path = settings.run_dir / "fleet-leaf.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(chain_path))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(chain_path))
    ctx.num_tickets = 0  # no client resumes; see the module docstring
    extra = {
        "ca_file": str(ca_path.resolve()),
        "server_name": TLS_SERVER_NAME,
        "key_type": "ECDSA P-256" if key_type is trustme.KeyType.ECDSA else "RSA 2048",
        "leaf_file": str(chain_path.resolve()),
    }
    return ctx, extra


@dataclass(frozen=True, slots=True)
class FleetKind:
    """What one kind of listener speaks, and how it is set up."""

    name: str
    protocol: Callable[[FleetSettings], asyncio.Protocol]
    # The server's TLS context (None: plain TCP) and what clients must know (``extra``).
    tls: Callable[[FleetSettings], tuple[ssl.SSLContext | None, dict[str, Any]]] = no_tls
    description: str = ""


FLEET_KINDS: dict[str, FleetKind] = {
    "banner": FleetKind(
        name="banner",
        protocol=BannerProtocol,
        description="SSH-like banner on accept, close on client EOF or after hold",
    ),
    "http": FleetKind(
        name="http",
        protocol=HttpProtocol,
        description="one canned HTTP/1.1 200 (Content-Length, Connection: close), then close",
    ),
    "tls": FleetKind(
        name="tls",
        protocol=HttpProtocol,
        tls=trustme_tls,
        description="TLS (trustme CA, one leaf for localhost), then the http kind's reply",
    ),
    "smtp": FleetKind(
        name="smtp",
        protocol=dialogue_kind(SMTP_DIALOGUE),
        description="scripted plaintext SMTP: 220 greeting, EHLO, QUIT",
    ),
    "pop3": FleetKind(
        name="pop3",
        protocol=dialogue_kind(POP3_DIALOGUE),
        description="scripted plaintext POP3: +OK greeting, CAPA, QUIT",
    ),
    "imap": FleetKind(
        name="imap",
        protocol=dialogue_kind(IMAP_DIALOGUE),
        description="scripted plaintext IMAP: * OK greeting, CAPABILITY, LOGOUT",
    ),
}


FLAP_TICK = 0.5  # seconds between schedule checks: a step lands at most this late


@dataclass(slots=True)
class FlappingListener:
    index: int
    host: str
    port: int
    behaviour: str = ""
    shape: str = "closed"  # "closed" (refusing), "plain" or "tls"
    server: asyncio.Server | None = None


class Flapper:
    """``--flap``: binds each listener as its behaviour of the moment needs, steps them on
    the ``flap_behaviour`` schedule. The protocol of a new connection is the listener's
    behaviour at accept time; a listener is closed or rebound only when it must refuse, or
    (TLS kinds) switch between TLS and plain TCP."""

    def __init__(
        self,
        kind: FleetKind,
        settings: FleetSettings,
        ssl_context: ssl.SSLContext | None,
        addresses: list[tuple[str, int]],
        args: argparse.Namespace,
    ) -> None:
        self.kind = kind
        self.settings = settings
        self.ssl_context = ssl_context
        self.period: float = args.flap
        self.ports_per_host: int = args.ports_per_host
        self.backlog: int = args.backlog
        self.listeners = [FlappingListener(i, h, p) for i, (h, p) in enumerate(addresses)]

    def _protocol(self, listener: FlappingListener) -> asyncio.Protocol:
        behaviour = listener.behaviour
        counts = self.settings.counters.by_behaviour
        counts[behaviour] = counts.get(behaviour, 0) + 1
        if behaviour == "healthy":
            return self.kind.protocol(self.settings)
        return FLAP_PROTOCOLS[behaviour](self.settings)

    def _shape(self, behaviour: str) -> str:
        if behaviour == "refused":
            return "closed"
        return "tls" if behaviour == "healthy" and self.ssl_context is not None else "plain"

    async def step(self, elapsed: float) -> None:
        """Bring every listener to its behaviour at ``elapsed`` seconds after READY."""
        loop = asyncio.get_running_loop()
        counters = self.settings.counters
        for listener in self.listeners:
            behaviour = flap_behaviour(listener.index, self.ports_per_host, elapsed, self.period)
            if behaviour == listener.behaviour:
                continue
            if listener.behaviour:
                counters.flips += 1
            listener.behaviour = behaviour
            shape = self._shape(behaviour)
            if shape == listener.shape:
                continue
            if listener.server is not None:
                listener.server.close()  # at once: later connects are refused
                listener.server = None
            listener.shape = shape
            if shape != "closed":
                listener.server = await loop.create_server(
                    functools.partial(self._protocol, listener),
                    listener.host,
                    listener.port,
                    ssl=self.ssl_context if shape == "tls" else None,
                    backlog=self.backlog,
                    reuse_address=True,
                )
                counters.rebinds += 1

    async def run(self, started: float) -> None:
        """Step until cancelled (the fleet's stop or --max-seconds bounds it)."""
        while True:
            await self.step(time.monotonic() - started)
            await asyncio.sleep(FLAP_TICK)

    def close(self) -> None:
        for listener in self.listeners:
            if listener.server is not None:
                listener.server.close()


def fleet_addresses(
    listeners: int,
    ports_per_host: int,
    base_port: int,
    first_host: ipaddress.IPv4Address = FIRST_HOST,
) -> list[tuple[str, int]]:
    """(host, port) of each listener: 127.1.0.1, 127.1.0.2 ... ports_per_host ports each."""
    addresses: list[tuple[str, int]] = []
    offset = 0
    while len(addresses) < listeners:  # bounded: parse_args caps listeners
        host = first_host + offset
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
    addresses = fleet_addresses(
        args.listeners, args.ports_per_host, args.base_port, args.first_host
    )
    soft, _ = raise_nofile(args.listeners + args.connection_headroom + 64)
    out = Path(args.out)
    settings = FleetSettings(hold=args.hold, tls_key=args.tls_key, run_dir=out.parent)
    ssl_context, extra = kind.tls(settings)
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    servers: list[asyncio.Server] = []

    def factory() -> asyncio.Protocol:
        return kind.protocol(settings)

    flapper: Flapper | None = None
    if args.flap:
        flapper = Flapper(kind, settings, ssl_context, addresses, args)
        await flapper.step(0.0)
    else:
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
        "extra": extra,
        "flap": {"period": args.flap, "cycle": FLAP_CYCLE, "hold": args.hold}
        if args.flap
        else None,
        "targets": [{"host": h, "port": p} for h, p in addresses],
    }
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
    stepping = asyncio.create_task(flapper.run(time.monotonic())) if flapper else None
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=args.max_seconds)
    if stepping is not None:
        stepping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stepping
    for server in servers:
        server.close()
    if flapper is not None:
        flapper.close()
    c = settings.counters
    print(
        json.dumps(
            {
                "accepted": c.accepted,
                "closed_by_peer": c.closed_by_peer,
                "closed_by_hold": c.closed_by_hold,
                "answered": c.answered,
                "lost_with_error": c.lost_with_error,
                "by_behaviour": c.by_behaviour,
                "flips": c.flips,
                "rebinds": c.rebinds,
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
    parser.add_argument(
        "--first-host",
        type=ipaddress.IPv4Address,
        default=FIRST_HOST,
        help="the first listener address (default 127.1.0.1); must be in 127.0.0.0/8",
    )
    parser.add_argument("--hold", type=float, default=5.0, help="close after this many seconds")
    parser.add_argument("--backlog", type=int, default=128)
    parser.add_argument(
        "--tls-key",
        choices=("ecdsa", "rsa"),
        default="ecdsa",
        help="tls kind: the CA's and leaf's key, ECDSA P-256 or RSA 2048",
    )
    parser.add_argument(
        "--connection-headroom", type=int, default=4000, help="descriptors kept for connections"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=1800.0, help="exit by itself after this long"
    )
    parser.add_argument(
        "--flap",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="cycle every listener through FLAP_CYCLE, one step every SECONDS (0: off)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.listeners <= 60000:
        parser.error("--listeners must be in 1..60000")
    if args.flap and args.flap < 1:
        parser.error("--flap must be 0 (off) or at least 1 second")
    if args.first_host not in LOOPBACK:
        parser.error("--first-host must be in 127.0.0.0/8")
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
