"""HTTP/1.1 on the wire for the ``http`` probe: the request's bytes, and a bounded reader of
one response.

Parsing is llhttp's (Node.js's parser, through ``httptools``): strict about the status line,
header syntax, ``Content-Length`` and chunked framing, in C. What llhttp leaves to its user,
this module does: a cap on the bytes of the response head (``HEAD_LIMIT``), a cap on the
body as decoded (``body_size_limit``, counted after gzip/deflate decoding, which runs in
bounded steps so a compression bomb never inflates past the cap), skipping interim ``1xx``
responses, and end-of-stream framing (a body without length or chunking ends when the
server closes; any other body cut short is an error).

The response callbacks never raise (httptools would wrap the error and lose its type); they
set flags that ``feed`` turns into a ``StreamError`` with a reason.
"""

from __future__ import annotations

import zlib

import httptools

from probed.probes.base import Reason
from probed.probes.stream import StreamError

HEAD_LIMIT = 65536
"""Bytes of status line and headers (interim responses included) a server may send."""
_DECODE_STEP = 1 << 20
_DECODED = frozenset({b"gzip", b"x-gzip", b"deflate"})
_NO_BODY = frozenset({204, 304})


def request_head(
    method: str, target: str, host: str, *, extra: str, static: bytes, body_length: int | None
) -> bytes:
    """``method target HTTP/1.1``, ``Host``, per-request lines (``extra``, CRLF-terminated),
    the module's static header lines, ``Content-Length``, then the blank line."""
    head = f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n{extra}".encode()
    length = b"" if body_length is None else b"Content-Length: %d\r\n" % body_length
    return head + static + length + b"\r\n"


class Headers:
    """Response headers as received (names compared case-insensitively, values as bytes)."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: list[tuple[bytes, bytes]] = []

    def add(self, name: bytes, value: bytes) -> None:
        self._items.append((name.lower(), value))

    def getall(self, name: str) -> list[bytes]:
        key = name.lower().encode("latin-1")
        return [value for item, value in self._items if item == key]

    def get(self, name: str) -> str | None:
        """The first value, as text (UTF-8, undecodable bytes replaced)."""
        key = name.lower().encode("latin-1")
        for item, value in self._items:
            if item == key:
                return value.decode("utf-8", "replace")
        return None


class Response:
    """One response, fed the bytes read from the connection (``feed``, then ``finish`` at
    the end of the stream). ``head_done`` once the final status and headers are in;
    ``done`` once the body is complete."""

    __slots__ = (
        "_bad_encoding",
        "_decoder",
        "_head_bytes",
        "_keep",
        "_limit",
        "_parser",
        "_want_decoded",
        "chunks",
        "done",
        "head_done",
        "headers",
        "length",
        "over_limit",
        "status",
        "version",
    )

    def __init__(self, *, keep: bool, limit: int, decode: bool) -> None:
        self._keep = keep
        self._limit = limit
        self._want_decoded = decode
        self._decoder: zlib._Decompress | None = None
        self._bad_encoding = False
        self._head_bytes = 0
        self._parser = httptools.HttpResponseParser(self)
        self.headers = Headers()
        self.head_done = False
        self.done = False
        self.over_limit = False
        self.status = 0
        self.version = (1, 1)
        self.length = 0
        self.chunks: list[bytes] = []

    # -- httptools callbacks (never raise) --------------------------------------------
    def on_message_begin(self) -> None:
        if not self.head_done:  # a fresh head after an interim 1xx response
            self.headers = Headers()

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head_done:
            self.headers.add(name, value)

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            return  # interim (100 Continue, 103 Early Hints): the real response follows
        self.status = status
        major, _, minor = self._parser.get_http_version().partition(".")
        self.version = (int(major or 1), int(minor or 0))
        self.head_done = True
        if self._want_decoded:
            encoding = self.headers.getall("Content-Encoding")
            if encoding and encoding[-1].strip().lower() in _DECODED:
                self._decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib

    def on_body(self, data: bytes) -> None:
        if not self.head_done or self.over_limit or self._bad_encoding:
            return
        decoder = self._decoder
        if decoder is None:
            self._count(data)
            return
        try:
            out = decoder.decompress(data, _DECODE_STEP)
            self._count(out)
            while decoder.unconsumed_tail and not self.over_limit:
                self._count(decoder.decompress(decoder.unconsumed_tail, _DECODE_STEP))
        except zlib.error:
            self._bad_encoding = True

    def on_message_complete(self) -> None:
        if self.head_done:
            self._end()

    # -- internals ----------------------------------------------------------------------
    def _count(self, data: bytes) -> None:
        if not data:
            return
        self.length += len(data)
        if self._limit and self.length > self._limit:
            self.over_limit = True
            self.chunks.clear()
        elif self._keep:
            self.chunks.append(data)

    def _end(self) -> None:
        if self._decoder is not None and not (self.over_limit or self._bad_encoding):
            try:
                self._count(self._decoder.flush())
            except zlib.error:
                self._bad_encoding = True
        self.done = True

    def _framed(self) -> bool:
        """Whether the body has its own end (length or chunks), so EOF before it is an error."""
        if self.status in _NO_BODY:
            return True
        if self.headers.getall("Content-Length"):
            return True
        return any(b"chunked" in v.lower() for v in self.headers.getall("Transfer-Encoding"))

    def _raise_for_flags(self) -> None:
        if self.over_limit:
            raise StreamError(Reason.TOO_LARGE, f"body longer than body_size_limit {self._limit}")
        if self._bad_encoding:
            raise StreamError(Reason.PROTOCOL_ERROR, "body does not decode as gzip/deflate")

    # -- public -------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        if not self.head_done:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._end()  # 101 Switching Protocols: what follows is not HTTP
        except httptools.HttpParserError as exc:
            detail = str(exc) or type(exc).__name__
            raise StreamError(Reason.PROTOCOL_ERROR, f"invalid response: {detail}") from None
        if not self.head_done and self._head_bytes > HEAD_LIMIT:
            raise StreamError(Reason.TOO_LARGE, f"response head longer than {HEAD_LIMIT} bytes")
        self._raise_for_flags()

    def finish(self) -> None:
        """The server closed the connection (cleanly)."""
        if not self.head_done:
            raise StreamError(
                Reason.CONNECTION_CLOSED, "connection closed before the response head"
            )
        if not self.done:
            if self._framed():
                raise StreamError(
                    Reason.CONNECTION_CLOSED,
                    f"connection closed in the body after {self.length} bytes",
                )
            self._end()
        self._raise_for_flags()

    @property
    def content_length(self) -> int | None:
        values = self.headers.getall("Content-Length")
        text = values[0].strip() if values else b""
        return int(text) if text.isdigit() else None

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)
