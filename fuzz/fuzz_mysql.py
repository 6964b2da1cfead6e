"""Coverage-guided fuzzing of the MySQL greeting parser (probed.probes.dialogue).

    .venv/bin/python fuzz/fuzz_mysql.py -max_total_time=60 [corpus_dir]

Both the payload parser and the bounded packet reader: any input must end in a
``MySQLGreeting`` or a ``StreamError``, never another exception.
"""

from __future__ import annotations

import asyncio
import sys

import atheris

# Only the code under test: instrumenting what it imports (pydantic, aiohttp, asyncssh via
# probed.probes) would cost seconds of start-up and coverage noise.
with atheris.instrument_imports(include=["probed.probes.dialogue", "probed.probes.stream"]):
    from probed.probes.dialogue import MySQLGreeting, parse_mysql_greeting, read_mysql_greeting
    from probed.probes.stream import Stream, StreamError


async def _read(data: bytes) -> None:
    stream = Stream(limit=64 * 1024)
    stream.data_received(data)
    stream.eof_received()
    try:
        greeting = await read_mysql_greeting(stream)
    except StreamError:
        return
    if not isinstance(greeting, MySQLGreeting):
        raise TypeError(f"read_mysql_greeting returned {greeting!r}")


def test_one_input(data: bytes) -> None:
    try:
        greeting = parse_mysql_greeting(data)
    except StreamError:
        pass
    else:
        if not 0 <= greeting.capabilities < 2**32:
            raise AssertionError(f"capabilities {greeting.capabilities:#x}")
        _ = greeting.tls_offered, greeting.server_version, greeting.flavor
    asyncio.run(_read(data))


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
