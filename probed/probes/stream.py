"""A lean, bounded byte stream over asyncio: resolve, connect, expect, TLS upgrade.

Shared by every line- or dialogue-based probe (tcp, and later the mail and FTP probes). TLS
runs through an ``ssl.SSLObject`` on memory BIOs that we own, so the SSL object, and with it
the certificate chain, is still there when verification fails: expiry is reported exactly
when operators need it. Reads are bounded: past ``limit`` buffered bytes the transport is
paused, so a server that floods us costs at most ``limit`` bytes of memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import re
import socket
import ssl
from concurrent.futures import Executor, Future
from types import TracebackType
from typing import Literal, cast

from probed.probes.base import PROBE_IP_PROTOCOL, Reason
from probed.results import Recorder

Address = tuple[int, tuple[str, int]]
"""(address family, (ip, port))."""
_HEAD = 256

_ERRNO_REASON = {
    errno.ECONNREFUSED: Reason.CONNECT_REFUSED,
    errno.ENETUNREACH: Reason.NETWORK_UNREACHABLE,
    errno.EHOSTUNREACH: Reason.NETWORK_UNREACHABLE,
    errno.EADDRNOTAVAIL: Reason.NETWORK_UNREACHABLE,
    errno.EAFNOSUPPORT: Reason.NETWORK_UNREACHABLE,
    errno.ECONNRESET: Reason.CONNECTION_RESET,
    errno.EPIPE: Reason.CONNECTION_RESET,
    errno.EMFILE: Reason.RESOURCE_EXHAUSTED,
    errno.ENFILE: Reason.RESOURCE_EXHAUSTED,
    errno.ENOBUFS: Reason.RESOURCE_EXHAUSTED,
    errno.ENOMEM: Reason.RESOURCE_EXHAUSTED,
}


def _type_reason(exc: OSError) -> Reason:
    # Some loops (uvloop during a TLS handshake) raise these without an errno.
    if isinstance(exc, ConnectionRefusedError):
        return Reason.CONNECT_REFUSED
    if isinstance(exc, ConnectionResetError | ConnectionAbortedError | BrokenPipeError):
        return Reason.CONNECTION_RESET
    return Reason.CONNECT_ERROR


class StreamError(Exception):
    """An expected network failure, carrying the reason the probe records."""

    def __init__(self, reason: Reason, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}")


def os_error(exc: OSError, doing: str) -> StreamError:
    reason = _ERRNO_REASON.get(exc.errno or 0) or _type_reason(exc)
    text = os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
    return StreamError(reason, f"{doing}: {text}")


async def resolve(
    host: str,
    port: int,
    rec: Recorder,
    ip_protocol: Literal["ip4", "ip6"] = "ip6",
    fallback: bool = True,
) -> list[Address]:
    """Addresses to try, preferred family first; literals skip DNS entirely."""
    preferred = socket.AF_INET6 if ip_protocol == "ip6" else socket.AF_INET
    try:
        literal = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        literal = None
    if literal is not None:
        family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
        if family != preferred and not fallback:
            raise StreamError(Reason.NO_ADDRESS, f"{host} is not an {ip_protocol} address")
        return [(family, (host, port))]
    loop = asyncio.get_running_loop()
    with rec.phase("resolve"):
        try:
            infos = await loop.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except socket.gaierror as exc:
            raise StreamError(Reason.DNS_ERROR, f"resolving {host}: {exc.strerror}") from None
        except OSError as exc:
            raise os_error(exc, f"resolving {host}") from None
    first = [(int(f), (str(a[0]), port)) for f, _, _, _, a in infos if f == preferred]
    other = [(int(f), (str(a[0]), port)) for f, _, _, _, a in infos if f != preferred]
    addresses = first + other if fallback else first
    if not addresses:
        raise StreamError(Reason.NO_ADDRESS, f"{host} has no {ip_protocol} address")
    return list(dict.fromkeys(addresses))


class Stream(asyncio.Protocol):
    """Buffered reads with patterns and limits; optional TLS on the same connection."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buf = bytearray()
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._transport: asyncio.Transport | None = None
        self._paused = False
        self.tls: ssl.SSLObject | None = None
        self._tls_in: ssl.MemoryBIO | None = None
        self._tls_out: ssl.MemoryBIO | None = None
        self._tls_ready = False
        # The first bytes the peer sent during the handshake: a server that answers a
        # STARTTLS in plaintext ("500 OOPS: ...") can then be told apart from a TLS failure.
        self._tls_head = bytearray()
        # While a handshake step runs in a worker thread the SSL object and its BIOs are the
        # thread's: bytes (and EOF) that arrive meanwhile wait here.
        self._deferred: list[bytes] | None = None
        self._deferred_eof = False
        self._fed_in_step = False

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._deferred is not None:
            self._deferred.append(data)
            if len(self._deferred) > 16 and not self._paused and self._transport:
                self._transport.pause_reading()  # a flood during the step: wait for it
                self._paused = True
            return
        if self._tls_in is not None:
            self._tls_in.write(data)
            if self._tls_ready:
                self._decrypt()
            elif len(self._tls_head) < _HEAD:
                self._tls_head += data[: _HEAD - len(self._tls_head)]
        else:
            self._buf += data
        if len(self._buf) >= self._limit and not self._paused and self._transport:
            self._transport.pause_reading()
            self._paused = True
        self._wake()

    def eof_received(self) -> bool | None:
        if self._deferred is not None:
            self._deferred_eof = True
        elif self._tls_in is not None:
            self._tls_in.write_eof()
            if self._tls_ready:
                self._decrypt()
        self._eof = True
        self._wake()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._error = exc
        self._eof = True
        self._wake()

    # -- internals ----------------------------------------------------------------------
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        if self._paused and self._transport is not None and len(self._buf) < self._limit:
            self._transport.resume_reading()
            self._paused = False
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _closed_error(self, doing: str) -> StreamError:
        if isinstance(self._error, OSError):
            return os_error(self._error, doing)
        return StreamError(Reason.CONNECTION_CLOSED, f"connection closed while {doing}")

    def _decrypt(self) -> None:
        assert self.tls is not None
        while True:
            try:
                chunk = self.tls.read(65536)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self._eof = True
                break
            except ssl.SSLError as exc:
                self._error = exc
                self._eof = True
                break
            if not chunk:
                self._eof = True
                break
            self._buf += chunk
            if len(self._buf) >= self._limit:
                break
        self._flush_tls()

    def _flush_tls(self) -> None:
        if self._tls_out is not None and self._transport is not None:
            pending = self._tls_out.read()
            if pending:
                self._transport.write(pending)

    # -- public ---------------------------------------------------------------------------
    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def peer(self) -> str | None:
        """The peer's IP address (FTP passive data connections go there)."""
        info = self._transport.get_extra_info("peername") if self._transport else None
        return str(info[0]) if info else None

    @property
    def handshake_head(self) -> bytes:
        """Up to the first 256 bytes the peer sent during the TLS handshake."""
        return bytes(self._tls_head)

    def write(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise self._closed_error("sending")
        if self.tls is not None:
            self.tls.write(data)
            self._flush_tls()
        else:
            self._transport.write(data)

    async def expect(self, pattern: re.Pattern[bytes]) -> re.Match[bytes]:
        """Wait until ``pattern`` matches the buffered bytes, then consume through the end
        of the matched line (or just the match, when no newline follows it yet)."""
        while True:
            snapshot = bytes(self._buf)
            match = pattern.search(snapshot)
            if match is not None:
                end = match.end()
                if end == 0 or snapshot[end - 1] != 0x0A:
                    newline = snapshot.find(b"\n", end)
                    end = newline + 1 if newline >= 0 else end
                del self._buf[:end]
                return match
            if len(snapshot) >= self._limit:
                raise StreamError(
                    Reason.TOO_LARGE,
                    f"{len(snapshot)} bytes read and /{pattern.pattern!r}/ did not match",
                )
            if self._eof:
                if isinstance(self._error, OSError):
                    raise os_error(self._error, "reading")
                raise StreamError(
                    Reason.EXPECT_MISMATCH,
                    f"connection closed before /{pattern.pattern!r}/ matched; "
                    f"last bytes {snapshot[-80:]!r}",
                )
            await self._wait()

    async def read_line(self, max_length: int = 8192) -> bytes:
        """One line including its ``\\n``; a longer line is an error, never a buffer."""
        limit = min(max_length, self._limit)
        while True:
            end = self._buf.find(b"\n", 0, limit)
            if end >= 0:
                line = bytes(self._buf[: end + 1])
                del self._buf[: end + 1]
                return line
            if len(self._buf) >= limit:
                raise StreamError(Reason.TOO_LARGE, f"line longer than {limit} bytes")
            if self._eof:
                raise self._closed_error("reading a line")
            await self._wait()

    async def read_exactly(self, n: int) -> bytes:
        if n > self._limit:
            raise StreamError(Reason.TOO_LARGE, f"{n} bytes announced, limit {self._limit}")
        while len(self._buf) < n:
            if self._eof:
                raise self._closed_error(f"reading {n} bytes")
            await self._wait()
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    async def read_some(self, max_bytes: int = 65536) -> bytes:
        """Whatever is buffered (waiting for at least one byte); ``b""`` at a clean EOF."""
        while not self._buf:
            if self._eof:
                if isinstance(self._error, OSError):
                    raise os_error(self._error, "reading")
                return b""
            await self._wait()
        data = bytes(self._buf[:max_bytes])
        del self._buf[:max_bytes]
        return data

    async def start_tls(
        self,
        context: ssl.SSLContext,
        server_name: str | None,
        session: ssl.SSLSession | None = None,
        *,
        offload: Executor | None = None,
    ) -> None:
        """Handshake on this connection; ``self.tls`` stays set even if it fails.

        ``session`` resumes a session of another connection (FTP data channels: servers
        such as vsftpd require the control connection's session there). ``offload``: run
        each handshake step that has server bytes to process (certificate verification, key
        exchange: the CPU of a handshake) in that executor; OpenSSL releases the GIL there,
        so the event loop goes on with other runs meanwhile."""
        self._tls_in, self._tls_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        # The client speaks first in TLS: plaintext still buffered is the tail of the
        # STARTTLS reply (or a server talking out of turn), never handshake bytes.
        self._buf.clear()
        if self._eof:
            self._tls_in.write_eof()
        self.tls = context.wrap_bio(
            self._tls_in, self._tls_out, server_hostname=server_name, session=session
        )
        while True:
            try:
                if offload is not None and self._tls_in.pending:
                    await self._step_in(offload, self.tls)
                else:
                    self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush_tls()
                if self._fed_in_step:  # bytes arrived during an offloaded step: go on
                    self._fed_in_step = False
                    continue
                if self._eof and self._tls_in.pending == 0:
                    raise self._closed_error("in the TLS handshake") from None
                await self._wait()
        self._tls_ready = True
        self._flush_tls()
        self._decrypt()

    async def _step_in(self, executor: Executor, tls: ssl.SSLObject) -> None:
        """One ``do_handshake()`` in ``executor``; its outcome (or exception) here."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._deferred = []

        def stepped(step: Future[None]) -> None:  # on the loop, once the thread is done
            deferred, self._deferred = self._deferred or [], None
            for data in deferred:  # as if they arrived now
                self.data_received(data)
            if self._deferred_eof:
                self.eof_received()
            self._fed_in_step = bool(deferred) or self._deferred_eof
            if waiter.done():  # the run was cancelled (its deadline) meanwhile
                return
            error = step.exception()
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

        def from_thread(step: Future[None]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the daemon is gone
                loop.call_soon_threadsafe(stepped, step)

        try:
            executor.submit(tls.do_handshake).add_done_callback(from_thread)
        except RuntimeError:  # the executor is shut down
            self._deferred = None
            tls.do_handshake()
            return
        await waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


async def connect(
    address: Address, rec: Recorder, limit: int = 65536, *, note_family: bool = True
) -> Stream:
    """Open a TCP connection (phase ``connect``) and return its Stream. ``note_family``:
    record ``probe_ip_protocol`` (False for a run's later connections, e.g. redirects)."""
    family, sockaddr = address
    loop = asyncio.get_running_loop()
    if note_family:
        rec.set(PROBE_IP_PROTOCOL, 6.0 if family == socket.AF_INET6 else 4.0)
    with rec.phase("connect"):
        # One call with the address literal: the loop takes its numeric fast path (no
        # resolver thread), and this costs about a third less CPU than creating the socket
        # ourselves, sock_connect() and create_connection(sock=...) (benchmarks/RESULTS.md).
        try:
            _, stream = await loop.create_connection(
                lambda: Stream(limit),
                host=sockaddr[0],
                port=sockaddr[1],
                family=family,
                proto=socket.IPPROTO_TCP,
            )
        except OSError as exc:
            raise os_error(exc, f"connecting to {sockaddr[0]} port {sockaddr[1]}") from None
    rec.debug("connected", address=sockaddr[0], port=sockaddr[1])
    return stream


async def connect_socket(address: Address, rec: Recorder) -> socket.socket:
    """A connected non-blocking socket (phase ``connect``), for libraries that speak the
    protocol themselves on a socket we hand them (asyncssh)."""
    family, sockaddr = address
    rec.set(PROBE_IP_PROTOCOL, 6.0 if family == socket.AF_INET6 else 4.0)
    with rec.phase("connect"):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            raise os_error(exc, "creating a socket") from None
        try:
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, sockaddr)
        except OSError as exc:
            sock.close()
            raise os_error(exc, f"connecting to {sockaddr[0]} port {sockaddr[1]}") from None
        except BaseException:
            sock.close()
            raise
    return sock
