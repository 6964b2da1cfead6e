"""``heartbleed``: the no-leak CVE-2014-0160 check (see shared HEARTBLEED.md).

We send a heartbeat whose payload_length is exactly the payload we sent, with no padding.
A correct server must drop it; OpenSSL 1.0.1-1.0.1f echoes our own payload back. The
echo is our data: nothing from the server's memory is requested, and the bytes the server
sends are compared by the sans-IO exchange (probed.tls) and dropped, never kept or logged.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from probed.durations import Duration
from probed.probes.base import Env, Family, ProbeSpec, Reason, Settings, Target
from probed.probes.dialogue import WELL_KNOWN_STARTTLS, StartTLS, negotiate
from probed.probes.stream import Address, Stream, StreamError, connect, resolve
from probed.probes.tlsfacts import TLS_VERSION
from probed.results import Recorder
from probed.tls import (
    HandshakeError,
    HandshakeFailure,
    HeartbleedExchange,
    ReadyForHeartbeat,
    Verdict,
    version_name,
)

PHASES = Family(
    "probe_heartbleed_duration_seconds",
    "Duration of each phase (resolve, connect, starttls, tls, heartbeat) of the last run.",
)
VULNERABLE = Family(
    "probe_heartbleed_vulnerable",
    "1 if the server echoed an unpadded heartbeat (CVE-2014-0160), 0 if not; absent when "
    "no verdict was reached.",
)
INCONCLUSIVE = Family(
    "probe_heartbleed_inconclusive",
    "1 if the server neither echoed nor refused the heartbeat before response_timeout.",
)
EXTENSION = Family(
    "probe_tls_heartbeat_extension",
    "Heartbeat extension in the ServerHello: 0 absent, 1 peer_allowed_to_send, "
    "2 peer_not_allowed_to_send.",
)
RESPONSE = Family(
    "probe_heartbleed_response_info",
    "How the exchange after the heartbeat ended: echo, alert, eof, timeout or other.",
)
STARTTLS_INFO = Family(
    "probe_heartbleed_starttls_info", "The STARTTLS dialogue used before the handshake."
)
ATTEMPTS = Family(
    "probe_heartbleed_attempts", "ClientHello versions tried before a handshake completed."
)

_VERSIONS = {"TLS12": 0x0303, "TLS11": 0x0302, "TLS10": 0x0301, "SSL30": 0x0300}
PAYLOAD_SIZE = 4096
READ_LIMIT = 64 * 1024
# Bytes the exchange reads per phase. Certificate flights with big CA lists (Exim) exceed
# 64 KiB; the exchange keeps none of it (only the ServerHello), so this bounds time, not
# memory.
HANDSHAKE_BUDGET = 256 * 1024
# A server that rejects the offered version answers with an alert or hangs up: try lower.
_RETRY = {HandshakeFailure.HANDSHAKE_ALERT, HandshakeFailure.HANDSHAKE_EOF}
_HANDSHAKE_REASON = {
    HandshakeFailure.HANDSHAKE_ALERT: Reason.TLS_HANDSHAKE,
    HandshakeFailure.HANDSHAKE_EOF: Reason.CONNECTION_CLOSED,
    HandshakeFailure.NOT_TLS: Reason.NOT_TLS,
    HandshakeFailure.BAD_VERSION: Reason.TLS_HANDSHAKE,
    HandshakeFailure.UNEXPECTED_MESSAGE: Reason.PROTOCOL_ERROR,
    HandshakeFailure.MALFORMED: Reason.PROTOCOL_ERROR,
    HandshakeFailure.TOO_LARGE: Reason.TOO_LARGE,
}


class HeartbleedSettings(Settings):
    port: int | None = Field(default=None, ge=1, le=65535)
    starttls: StartTLS | Literal["auto", "none"] = "auto"
    versions: tuple[Literal["TLS12", "TLS11", "TLS10"], ...] = ("TLS12", "TLS11", "TLS10")
    sslv3: bool = False
    server_name: str | None = None
    ehlo_name: str = "probed.invalid"
    ip_protocol: Literal["ip4", "ip6"] = "ip6"
    ip_protocol_fallback: bool = True
    response_timeout: Duration = 3.0


@dataclass(frozen=True, slots=True)
class _Attempt:
    exchange: HeartbleedExchange
    result: Verdict | HandshakeError | None  # None: no answer to the heartbeat in time


async def probe(target: Target, settings: HeartbleedSettings, rec: Recorder, env: Env) -> bool:
    del env
    assert target.port is not None
    starttls = _starttls(settings.starttls, target.port)
    rec.set(STARTTLS_INFO, 1.0, protocol=starttls or "none")
    versions = [_VERSIONS[v] for v in settings.versions]
    if settings.sslv3:
        versions.append(_VERSIONS["SSL30"])
    attempts = 0
    attempt: _Attempt | None = None
    try:
        addresses = await resolve(
            target.host, target.port, rec, settings.ip_protocol, settings.ip_protocol_fallback
        )
        for version in versions:
            attempts += 1
            attempt = await _attempt(
                addresses[0], version, target, settings, rec, starttls=starttls
            )
            result = attempt.result
            if not (isinstance(result, HandshakeError) and result.reason in _RETRY):
                break
            rec.debug("handshake refused; trying a lower version", offered=version_name(version))
    except StreamError as exc:
        return rec.fail(exc.reason, exc.detail)
    finally:
        rec.set(ATTEMPTS, float(attempts))
    assert attempt is not None
    return _verdict(attempt, rec)


def _starttls(setting: StartTLS | Literal["auto", "none"], port: int) -> StartTLS | None:
    if setting == "auto":
        return WELL_KNOWN_STARTTLS.get(port)
    return None if setting == "none" else setting


def _verdict(attempt: _Attempt, rec: Recorder) -> bool:
    exchange, result = attempt.exchange, attempt.result
    hello = exchange.server_hello
    if hello is not None:
        rec.set(TLS_VERSION, 1.0, version=version_name(hello.version))
        rec.set(EXTENSION, float(hello.heartbeat_mode or 0))
    if isinstance(result, HandshakeError):
        alert = f" ({result.alert})" if result.alert is not None else ""
        return rec.fail(
            _HANDSHAKE_REASON[result.reason],
            f"no verdict: handshake ended with {result.reason.value}{alert} "
            f"(offered {version_name(exchange.offered_version)})",
        )
    if result is None:
        rec.set(VULNERABLE, 0.0)
        rec.set(INCONCLUSIVE, 1.0)
        rec.set(RESPONSE, 1.0, response="timeout")
        rec.debug("no answer to the heartbeat: not vulnerable, inconclusive")
        return True
    rec.set(VULNERABLE, 1.0 if result.vulnerable else 0.0)
    rec.set(INCONCLUSIVE, 0.0)
    response = "echo" if result.vulnerable else result.outcome.value
    rec.set(RESPONSE, 1.0, response=response)
    if result.vulnerable:
        return rec.fail(
            Reason.HEARTBLEED_VULNERABLE,
            f"server echoed an unpadded heartbeat ({version_name(hello.version if hello else 0)})",
        )
    detail = result.alert or result.reason
    rec.debug("not vulnerable", response=response, detail=str(detail) if detail else "")
    return True


async def _attempt(
    address: Address,
    version: int,
    target: Target,
    settings: HeartbleedSettings,
    rec: Recorder,
    *,
    starttls: StartTLS | None,
) -> _Attempt:
    exchange = HeartbleedExchange(
        version, settings.server_name, os.urandom(PAYLOAD_SIZE), max_bytes=HANDSHAKE_BUDGET
    )
    stream = await connect(address, rec, READ_LIMIT)
    with stream:
        if starttls is not None:
            await negotiate(
                starttls, stream, rec, hostname=target.host, ehlo_name=settings.ehlo_name
            )
        rec.debug("client hello", offered=version_name(version))
        stream.write(exchange.client_hello())
        with rec.phase("tls"):
            result = await _read_until_decided(stream, exchange)
        if not isinstance(result, ReadyForHeartbeat):
            return _Attempt(exchange, result)
        rec.debug(
            "server hello done",
            negotiated=version_name(result.server_hello.version),
            heartbeat_mode=result.server_hello.heartbeat_mode,
        )
        with rec.phase("heartbeat"):
            # The heartbeat and the sentinel record go out in one write (HEARTBLEED.md 3).
            stream.write(exchange.heartbeat_request())
            try:
                async with asyncio.timeout(settings.response_timeout):
                    verdict = await _read_until_decided(stream, exchange)
            except TimeoutError:
                return _Attempt(exchange, None)
        assert not isinstance(verdict, ReadyForHeartbeat)
        return _Attempt(exchange, verdict)


async def _read_until_decided(
    stream: Stream, exchange: HeartbleedExchange
) -> ReadyForHeartbeat | Verdict | HandshakeError:
    while True:
        try:
            data = await stream.read_some(READ_LIMIT)
        except StreamError as exc:
            if exc.reason is not Reason.CONNECTION_RESET:
                raise
            data = b""
        event = exchange.feed(data) if data else exchange.eof()
        # The chunk is dropped here: only the exchange's verdict survives.
        del data
        if isinstance(event, ReadyForHeartbeat | Verdict | HandshakeError):
            return event


SPEC = ProbeSpec(
    name="heartbleed",
    probe=probe,
    settings=HeartbleedSettings,
    phase_family=PHASES,
    families=(VULNERABLE, INCONCLUSIVE, EXTENSION, RESPONSE, STARTTLS_INFO, ATTEMPTS, TLS_VERSION),
    default_port=443,
)
