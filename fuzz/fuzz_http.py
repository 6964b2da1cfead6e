"""Coverage-guided fuzzing of the http probe's response reader (probed.probes.httpwire).

    .venv/bin/python fuzz/fuzz_http.py -max_total_time=60 [corpus_dir]

Any bytes, cut into any chunks, with or without decoding, any limit: ``feed``/``finish``
end in a ``StreamError`` or a response whose counted length respects the limit and whose
kept body is exactly what was counted. llhttp (httptools) is C, so coverage guides only our
side of it; the parser itself is Node.js's, fuzzed upstream.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["probed.probes.httpwire"]):
    from probed.probes.httpwire import Response
    from probed.probes.stream import StreamError


# Starts that get random bytes past the status line, into headers, chunking and decoding.
_STARTS = (
    b"",
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n\r\n\x1f\x8b\x08\x00",
    b"HTTP/1.0 200 OK\r\nContent-Encoding: deflate\r\nContent-Length: 40\r\n\r\nx\x9c",
)


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    limit = fdp.ConsumeIntInRange(0, 4096)
    decode = fdp.ConsumeBool()
    cuts = [fdp.ConsumeIntInRange(1, 512) for _ in range(fdp.ConsumeIntInRange(0, 8))]
    payload = fdp.PickValueInList(list(_STARTS)) + fdp.ConsumeBytes(fdp.remaining_bytes())
    response = Response(keep=True, limit=limit, decode=decode)
    try:
        pos = 0
        for cut in [*cuts, len(payload)]:
            if response.done or pos >= len(payload):
                break
            response.feed(payload[pos : pos + cut])
            pos += cut
        if not response.done:
            response.finish()
    except StreamError:
        return
    if not response.head_done or not response.done:
        raise AssertionError("finish() returned without a complete response")
    if limit and response.length > limit:
        raise AssertionError(f"length {response.length} over limit {limit}")
    if len(response.body) != response.length:
        raise AssertionError(f"kept {len(response.body)} bytes, counted {response.length}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
