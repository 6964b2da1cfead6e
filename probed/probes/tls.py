"""``tls``: connect, optional STARTTLS dialogue, handshake, certificate chain facts.

A small module on top of the shared pieces: Stream (connect), dialogue.negotiate (the
STARTTLS dialogue of SMTP, POP3, IMAP, FTP, ...) and tlsfacts (handshake, facts, why
verification failed). Expiry is exported even when verification fails, because the
handshake runs on our own SSL object. ``min_remaining`` fails a run whose earliest
certificate expires sooner than that, so "expires in 14 days" needs no alert rule.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import Field

from probed.durations import Duration
from probed.probes.base import Env, Family, ProbeSpec, Reason, Settings, Target
from probed.probes.dialogue import StartTLS, negotiate
from probed.probes.stream import StreamError, connect, resolve
from probed.probes.tlsfacts import EARLIEST_EXPIRY, TLSSettings, handshake
from probed.probes.tlsfacts import FAMILIES as TLS_FAMILIES
from probed.results import Recorder

PHASES = Family(
    "probe_tls_duration_seconds",
    "Duration of each phase (resolve, connect, starttls, tls) of the last run.",
)
READ_LIMIT = 65536


class TLSProbeSettings(Settings):
    port: int | None = Field(default=None, ge=1, le=65535)
    starttls: StartTLS | None = None
    ehlo_name: str = "probed.invalid"
    ip_protocol: Literal["ip4", "ip6"] = "ip6"
    ip_protocol_fallback: bool = True
    tls_config: TLSSettings = Field(default_factory=TLSSettings)
    min_remaining: Duration | None = None


async def probe(target: Target, settings: TLSProbeSettings, rec: Recorder, env: Env) -> bool:
    assert target.port is not None
    try:
        addresses = await resolve(
            target.host, target.port, rec, settings.ip_protocol, settings.ip_protocol_fallback
        )
        stream = await connect(addresses[0], rec, READ_LIMIT)
    except StreamError as exc:
        return rec.fail(exc.reason, exc.detail)
    with stream:
        if settings.starttls is not None:
            try:
                await negotiate(
                    settings.starttls,
                    stream,
                    rec,
                    hostname=target.host,
                    ehlo_name=settings.ehlo_name,
                )
            except StreamError as exc:
                return rec.fail(exc.reason, exc.detail)
        if not await handshake(stream, env, settings.tls_config, target.host, rec):
            return False
    if settings.min_remaining is not None:
        return _check_remaining(rec, settings.min_remaining)
    return True


def _check_remaining(rec: Recorder, min_remaining: float) -> bool:
    expiry = next((value for family, _, value in rec.samples if family is EARLIEST_EXPIRY), None)
    if expiry is None:
        return rec.fail(Reason.TLS_CERT_INVALID, "the server presented no certificate")
    remaining = expiry - time.time()
    if remaining < min_remaining:
        return rec.fail(
            Reason.TLS_CERT_EXPIRING,
            f"a certificate expires in {remaining / 86400:.1f} days "
            f"(min_remaining {min_remaining / 86400:g} days)",
        )
    return True


SPEC = ProbeSpec(
    name="tls",
    probe=probe,
    settings=TLSProbeSettings,
    phase_family=PHASES,
    families=TLS_FAMILIES,
    default_port=443,
)
