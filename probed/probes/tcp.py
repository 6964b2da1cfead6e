"""``tcp``: connect, optional implicit TLS, and a send/expect dialogue with STARTTLS."""

from __future__ import annotations

import re
from typing import Literal, Self

from pydantic import Field, PrivateAttr, model_validator

from probed.probes.base import Env, Family, ProbeSpec, Settings, Target
from probed.probes.stream import Address, StreamError, connect, resolve
from probed.probes.tlsfacts import FAMILIES as TLS_FAMILIES
from probed.probes.tlsfacts import TLSSettings, handshake
from probed.results import Recorder

PHASES = Family(
    "probe_tcp_duration_seconds",
    "Duration of each phase (resolve, connect, tls, dialogue) of the last run.",
)
ADDRESS_SUCCESS = Family(
    "probe_tcp_address_success",
    "With all_addresses: whether the check succeeded against each resolved address.",
)


class Step(Settings):
    """One dialogue step: exactly one of expect, send, send_hex, starttls."""

    expect: str | None = None
    send: str | None = None
    send_hex: str | None = None
    starttls: bool = False
    _pattern: re.Pattern[bytes] | None = PrivateAttr(default=None)
    _data: bytes = PrivateAttr(default=b"")

    @model_validator(mode="after")
    def _one_action(self) -> Self:
        actions = [
            self.expect is not None,
            self.send is not None,
            self.send_hex is not None,
            self.starttls,
        ]
        if sum(actions) != 1:
            raise ValueError(
                'a step needs exactly one of "expect", "send", "send_hex", "starttls = true"'
            )
        if self.expect is not None:
            try:
                # Bytes regex: binary-safe; MULTILINE so "^220 " finds the last line of a
                # multi-line reply.
                self._pattern = re.compile(self.expect.encode("utf-8"), re.MULTILINE)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {self.expect!r}: {exc}") from None
        if self.send is not None:
            self._data = self.send.encode("utf-8")
        if self.send_hex is not None:
            try:
                self._data = bytes.fromhex(self.send_hex)
            except ValueError:
                raise ValueError(f"send_hex: not hexadecimal: {self.send_hex!r}") from None
        return self

    @property
    def pattern(self) -> re.Pattern[bytes] | None:
        return self._pattern

    @property
    def data(self) -> bytes:
        return self._data


class TCPSettings(Settings):
    port: int | None = Field(default=None, ge=1, le=65535)
    ip_protocol: Literal["ip4", "ip6"] = "ip6"
    ip_protocol_fallback: bool = True
    all_addresses: bool = False
    tls: bool = False
    tls_config: TLSSettings = Field(default_factory=TLSSettings)
    query: tuple[Step, ...] = ()
    read_limit: int = Field(default=65536, ge=64, le=16 * 1024 * 1024)

    @model_validator(mode="after")
    def _starttls_needs_plain(self) -> Self:
        if self.tls and any(step.starttls for step in self.query):
            raise ValueError('"starttls" in the query needs "tls = false" (TLS would be on twice)')
        if sum(step.starttls for step in self.query) > 1:
            raise ValueError('"starttls" may appear once in the query')
        return self


async def probe(target: Target, settings: TCPSettings, rec: Recorder, env: Env) -> bool:
    assert target.port is not None
    try:
        addresses = await resolve(
            target.host, target.port, rec, settings.ip_protocol, settings.ip_protocol_fallback
        )
    except StreamError as exc:
        return rec.fail(exc.reason, exc.detail)
    if not settings.all_addresses:
        return await _check(addresses[0], target, settings, rec, env)
    ok = True
    for address in addresses:
        good = await _check(address, target, settings, rec, env)
        rec.set(ADDRESS_SUCCESS, 1.0 if good else 0.0, address=address[1][0])
        ok = ok and good
    return ok


async def _check(
    address: Address, target: Target, settings: TCPSettings, rec: Recorder, env: Env
) -> bool:
    try:
        stream = await connect(address, rec, settings.read_limit)
    except StreamError as exc:
        return rec.fail(exc.reason, exc.detail)
    with stream:
        if settings.tls and not await handshake(stream, env, settings.tls_config, target.host, rec):
            return False
        for number, step in enumerate(settings.query):
            if step.starttls:
                if not await handshake(stream, env, settings.tls_config, target.host, rec):
                    return False
                continue
            with rec.phase("dialogue"):
                try:
                    if step.pattern is not None:
                        match = await stream.expect(step.pattern)
                        rec.debug("expect matched", step=number, matched=match.group(0)[:200])
                    else:
                        stream.write(step.data)
                        rec.debug("sent", step=number, size=len(step.data))
                except StreamError as exc:
                    return rec.fail(exc.reason, f"query step {number}: {exc.detail}")
    return True


SPEC = ProbeSpec(
    name="tcp",
    probe=probe,
    settings=TCPSettings,
    phase_family=PHASES,
    families=(ADDRESS_SUCCESS, *TLS_FAMILIES),
)
