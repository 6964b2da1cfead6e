"""``gnutls-serv --heartbeat`` inside a private network namespace, and setns helpers.

gnutls-serv always listens on 0.0.0.0 and [::]; to keep it off the host's interfaces it runs
under ``unshare --net`` with only ``lo`` up (TEST-SERVERS.md §7). The unshare pid is the server
pid, and clients reach it by entering ``/proc/<pid>/ns/net`` with ``setns(2)``, which switches
only the calling thread; sockets created inside keep working after switching back.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

from .certs import CertFiles, certs_for_server
from .common import (
    DEFAULT_TIMEOUT,
    LOCALHOST,
    ServerProcess,
    free_port,
    require_binary,
    service_dir,
    started,
    wait_until,
)

CLONE_NEWNET = 0x40000000
_P = ParamSpec("_P")
_T = TypeVar("_T")


def _setns(fd: int, nstype: int) -> None:
    if sys.version_info >= (3, 12):
        os.setns(fd, nstype)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def netns(path: str | os.PathLike[str]) -> Iterator[None]:
    """Run the block with the *calling thread* in the network namespace at ``path``.

    Only this thread moves (other threads, e.g. executor workers doing getaddrinfo, do not):
    use IP literals inside. The thread's own namespace is restored on exit.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(os.fspath(path), os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target, CLONE_NEWNET)
            try:
                yield
            finally:
                _setns(own, CLONE_NEWNET)
        finally:
            os.close(target)
    finally:
        os.close(own)


def call_in_netns(
    path: str | os.PathLike[str], func: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
) -> _T:
    """``func(*args, **kwargs)`` with the calling thread inside the namespace at ``path``."""
    with netns(path):
        return func(*args, **kwargs)


async def run_in_netns(path: str | os.PathLike[str], awaitable: Awaitable[_T]) -> _T:
    """Await ``awaitable`` with the event-loop thread inside the namespace at ``path``.

    Every socket the loop thread creates meanwhile (other tasks' too) lands in that
    namespace; sockets already open are unaffected. Use IP literals (no resolver threads).
    """
    with netns(path):
        return await awaitable


@dataclass(frozen=True)
class GnutlsServer:
    host: str
    """Address inside the namespace (127.0.0.1; the host namespace cannot reach it)."""
    port: int
    netns_path: Path
    """``/proc/<pid>/ns/net``, for :func:`netns`, :func:`call_in_netns`, :func:`run_in_netns`."""
    certs: CertFiles
    heartbeat: bool
    data_dir: Path
    pid: int
    log_path: Path

    @property
    def ca_cert(self) -> Path:
        return self.certs.ca_cert

    def netns(self) -> contextlib.AbstractContextManager[None]:
        return netns(self.netns_path)


def _handshake_echo(port: int, ctx: ssl.SSLContext) -> bytes:
    with (
        socket.create_connection((LOCALHOST, port), timeout=2.0) as raw,
        ctx.wrap_socket(raw) as tls,
    ):
        tls.sendall(b"probed\n")
        data = b""
        while b"probed" not in data:
            chunk = tls.recv(1024)
            if not chunk:
                raise ValueError(f"closed after {data!r}")
            data += chunk
        return data


@contextlib.contextmanager
def run_gnutls_serv(
    *,
    certs: CertFiles | None = None,
    heartbeat: bool = True,
    priority: str | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
) -> Iterator[GnutlsServer]:
    """Start ``gnutls-serv [--heartbeat] --echo`` in a fresh network namespace (lo up).

    Health = a TLS handshake plus an echoed line, made from inside the namespace.
    ``priority`` is a GnuTLS priority string (e.g. ``"NORMAL:-VERS-TLS1.3"``).
    """
    gnutls_serv = require_binary("gnutls-serv", "gnutls-bin")
    unshare = require_binary("unshare", "util-linux")
    ip = require_binary("ip", "iproute2")
    with service_dir("gnutls") as data:
        server_certs = certs_for_server(data / "tls", certs)
        port = free_port()
        serv = [
            gnutls_serv,
            "--echo",
            "-p",
            str(port),
            f"--x509certfile={server_certs.cert}",
            f"--x509keyfile={server_certs.key}",
        ]
        if heartbeat:
            serv.append("--heartbeat")
        if priority is not None:
            serv.append(f"--priority={priority}")
        serv += list(extra_args)
        script = f"{shlex.join([ip, 'link', 'set', 'lo', 'up'])} && exec {shlex.join(serv)}"
        log = data / "server.log"
        proc = ServerProcess("gnutls-serv", [unshare, "--net", "sh", "-c", script], log_path=log)
        with started(proc):
            ns_path = Path(f"/proc/{proc.pid}/ns/net")
            ctx = ssl.create_default_context(cafile=str(server_certs.ca_cert))
            ctx.check_hostname = False
            own_ns = os.stat("/proc/self/ns/net").st_ino

            def healthy() -> bytes | None:
                if os.stat(ns_path).st_ino == own_ns:
                    return None  # unshare has not created the namespace yet
                return call_in_netns(ns_path, _handshake_echo, port, ctx)

            wait_until(
                healthy,
                proc=proc,
                what=f"TLS echo on {LOCALHOST}:{port} inside the namespace",
                timeout=timeout,
            )
            yield GnutlsServer(
                host=LOCALHOST,
                port=port,
                netns_path=ns_path,
                certs=server_certs,
                heartbeat=heartbeat,
                data_dir=data,
                pid=proc.pid,
                log_path=log,
            )
