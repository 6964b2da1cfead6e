"""Coverage-guided fuzzing of the Heartbleed exchange (probed.tls.HeartbleedExchange.feed).

    .venv/bin/python fuzz/fuzz_tls.py -max_total_time=60 [corpus_dir]

The input picks the offered version and cuts the rest into chunks fed one by one; any
exception, an unbounded buffer or a final event that changes is a finding.
"""

from __future__ import annotations

import sys

import atheris

_UNDER_TEST = [f"probed.tls.{name}" for name in ("exchange", "records", "handshake", "heartbeat")]
with atheris.instrument_imports(include=["probed.tls", *_UNDER_TEST, "probed.tls.alerts"]):
    from probed.tls import (
        MAX_SERVER_HELLO_LENGTH,
        HandshakeError,
        HeartbleedExchange,
        NeedMoreData,
        ReadyForHeartbeat,
        Verdict,
    )

PAYLOAD = bytes(range(256)) * 16
VERSIONS = [0x0303, 0x0302, 0x0301, 0x0300]
# A partial record header, handshake header and alert, and a ServerHello still arriving.
MAX_BUFFERED = 4 + 4 + 2 + MAX_SERVER_HELLO_LENGTH


def test_one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    version = provider.PickValueInList(VERSIONS)
    budget = provider.ConsumeIntInRange(64, 256 * 1024)
    exchange = HeartbleedExchange(version, None, PAYLOAD, max_bytes=budget)
    final: Verdict | HandshakeError | None = None
    while provider.remaining_bytes():
        chunk = provider.ConsumeBytes(provider.ConsumeIntInRange(1, 600))
        event = exchange.feed(chunk)
        if not isinstance(event, NeedMoreData | ReadyForHeartbeat | Verdict | HandshakeError):
            raise TypeError(f"feed returned {event!r}")
        if exchange.buffered_bytes > MAX_BUFFERED:
            raise AssertionError(f"{exchange.buffered_bytes} bytes buffered")
        if isinstance(event, ReadyForHeartbeat):
            exchange.heartbeat_request()
        elif isinstance(event, Verdict | HandshakeError):
            if final is not None and event != final:
                raise AssertionError(f"final event changed: {final!r} -> {event!r}")
            final = event
    end = exchange.eof()
    if final is not None and end != final:
        raise AssertionError(f"eof changed the final event: {final!r} -> {end!r}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
