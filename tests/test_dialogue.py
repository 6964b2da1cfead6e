"""Property tests for the shared dialogue parsers: any bytes, in any chunking, end in a
value or a StreamError carrying a reason, never another exception, never a hang."""

from __future__ import annotations

import asyncio
import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probed.probes import dialogue
from probed.probes.stream import Stream, StreamError
from probed.results import Recorder


def _stream(chunks: list[bytes]) -> Stream:
    # The parsers read from a Stream; feed it as the event loop would, then EOF.
    stream = Stream(limit=4096)
    for chunk in chunks:
        stream.data_received(chunk)
    stream.eof_received()
    return stream


async def _drive(chunks: list[bytes]) -> None:
    rec = Recorder()
    for parse in (
        lambda s: dialogue.read_reply(s, "reply"),
        lambda s: dialogue.read_status_line(s, "status"),
        lambda s: dialogue.read_tagged(s, "a1", "tagged"),
        lambda s: dialogue.mysql(s, rec),
    ):
        # A value, or a StreamError (which includes mysql() answering a good greeting:
        # this stream has no transport). Anything else propagates and fails the test.
        with contextlib.suppress(StreamError):
            await asyncio.wait_for(parse(_stream(chunks)), 1.0)


lines = st.lists(
    st.one_of(
        st.binary(max_size=64),
        st.sampled_from(
            [
                b"220-hello\r\n",
                b"220 ok\r\n",
                b"250 x\r\n",
                b"+OK hi\r\n",
                b"a1 OK done\r\n",
                b"* OK ready\r\n",
                b"\n",
                b"-ERR no\r\n",
            ]
        ),
    ),
    max_size=20,
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines)
def test_dialogue_parsers_never_crash(chunks: list[bytes]) -> None:
    asyncio.run(_drive(chunks))


def test_reply_line_count_is_bounded() -> None:
    flood = [b"220-x\r\n"] * (dialogue.MAX_REPLY_LINES + 5)

    async def run() -> str:
        stream = Stream(limit=1 << 20)
        for chunk in flood:
            stream.data_received(chunk)
        try:
            await dialogue.read_reply(stream, "greeting")
        except StreamError as exc:
            return exc.detail
        return "no error"

    assert "more than" in asyncio.run(run())
