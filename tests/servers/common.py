"""Shared machinery for real-server fixtures: ports, dirs, processes, bounded waits.

Every server module builds on :class:`ServerProcess` (a ``subprocess.Popen`` whose stdout and
stderr go to a log file) and on the ``wait_for_*`` helpers, which poll until a deadline and raise
:class:`ServerStartError` carrying the tail of the server's logs.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TypeVar

LOCALHOST = "127.0.0.1"
DEFAULT_TIMEOUT = 15.0
"""Seconds any fixture waits for a server to become healthy."""

STOP_TIMEOUT = 5.0
"""Seconds between SIGTERM and SIGKILL."""

LOG_TAIL_LINES = 40

_T = TypeVar("_T")


class ServerStartError(RuntimeError):
    """A server did not come up (or a required binary is missing)."""


class MissingBinaryError(ServerStartError):
    """A Debian package the fixture needs is not installed."""


def require_binary(name: str, package: str) -> str:
    """Absolute path of ``name`` (PATH plus sbin dirs), or a clear error naming the package."""
    search = os.pathsep.join(
        [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"]
    )
    path = shutil.which(name, path=search)
    if path is None:
        raise MissingBinaryError(
            f"{name!r} not found: install the Debian package {package!r} "
            f"(apt-get install -y --no-install-recommends {package})"
        )
    return path


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port that was free on ``host`` a moment ago (bind to 0, read, close: small race)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = LOCALHOST) -> list[int]:
    """``count`` distinct free ports (all sockets are held open together while choosing)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


@contextlib.contextmanager
def service_dir(prefix: str) -> Iterator[Path]:
    """A fresh 0755 directory under /tmp, removed afterwards.

    pytest's ``tmp_path`` (and its parents) are 0700, which service users (``nobody``,
    ``Debian-exim``, mail uids) cannot traverse. The path stays short for unix sockets (<108 bytes).
    """
    path = Path(tempfile.mkdtemp(prefix=f"probed-{prefix}-", dir="/tmp"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_file(path: Path, text: str | bytes, mode: int = 0o644) -> Path:
    """Write ``text`` to ``path`` (parents created 0755) and chmod it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    path.chmod(mode)
    return path


def chown_tree(path: Path, uid: int, gid: int) -> None:
    """``chown -R uid:gid path``."""
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """Last ``lines`` lines of a text file, or a note if it cannot be read."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"<{path}: {exc.strerror}>"
    text = data.decode("utf-8", "replace").rstrip("\n")
    return "\n".join(text.splitlines()[-lines:]) if text else "<empty>"


def run_checked(
    argv: Sequence[str],
    *,
    what: str,
    timeout: float = DEFAULT_TIMEOUT,
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
) -> str:
    """Run a short helper command; raise :class:`ServerStartError` with its output on failure."""
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=None if env is None else dict(env),
            input=input_text,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ServerStartError(f"{what}: {argv[0]} timed out after {timeout:.0f} s") from exc
    if done.returncode != 0:
        raise ServerStartError(
            f"{what}: {' '.join(argv)} exited {done.returncode}\n"
            f"--- stdout ---\n{done.stdout[-4000:]}\n--- stderr ---\n{done.stderr[-4000:]}"
        )
    return done.stdout


class ServerProcess:
    """A server started with ``Popen`` in its own session, output captured in ``log_path``.

    ``extra_logs`` are further files the server writes (e.g. Exim's mainlog) whose tails go into
    error messages too. :meth:`stop` sends SIGTERM, waits, then SIGKILLs the whole process group.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        extra_logs: Sequence[Path] = (),
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        stdin: int | IO[bytes] | None = subprocess.DEVNULL,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        self.name = name
        self.stop_timeout = stop_timeout
        self.argv = list(argv)
        self.log_path = log_path
        self.extra_logs = list(extra_logs)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # Append mode: daemons that reopen /dev/stderr (Dovecot) must not overwrite each other.
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=stdin,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=None if env is None else dict(env),
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        parts = [f"--- {self.log_path} (stdout+stderr) ---\n{tail(self.log_path, lines)}"]
        parts.extend(f"--- {extra} ---\n{tail(extra, lines)}" for extra in self.extra_logs)
        return "\n".join(parts)

    def failure(self, message: str) -> ServerStartError:
        """An error for ``message`` with exit status (if any) and the log tails appended."""
        status = self.popen.poll()
        state = "running" if status is None else f"exited with status {status}"
        return ServerStartError(
            f"{self.name}: {message} (pid {self.pid}, {state})\n"
            f"command: {' '.join(self.argv)}\n{self.log_tail()}"
        )

    def check_alive(self) -> None:
        if not self.alive():
            raise self.failure("process died during start-up")

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM, wait up to ``timeout`` (default: ``stop_timeout``), then SIGKILL the process
        group. Idempotent."""
        if timeout is None:
            timeout = self.stop_timeout
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(STOP_TIMEOUT)
        # Children left in the session (workers, login processes) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_until(
    check: Callable[[], _T | None],
    *,
    proc: ServerProcess,
    what: str,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.05,
) -> _T:
    """Poll ``check`` until it returns non-None; fail if the process dies or time runs out.

    Exceptions raised by ``check`` (OSError, ssl errors, ...) count as "not yet" and the last
    one is reported on timeout.
    """
    deadline = time.monotonic() + timeout
    last_error = "no attempt finished"
    while True:
        proc.check_alive()
        try:
            result = check()
        except (OSError, ValueError, EOFError) as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        else:
            if result is not None:
                return result
            last_error = "check not satisfied yet"
        if time.monotonic() >= deadline:
            raise proc.failure(f"{what} not ready within {timeout:.0f} s; last: {last_error}")
        time.sleep(interval)


def read_banner(
    host: str,
    port: int,
    *,
    expect: bytes,
    timeout: float = 2.0,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    send: bytes | None = None,
) -> bytes:
    """Connect (optionally with TLS), optionally send ``send``, read until ``expect`` appears.

    Returns everything read; raises ``ValueError`` if the peer closes or ``expect`` is not seen.
    """
    with socket.create_connection((host, port), timeout=timeout) as raw:
        sock: socket.socket = raw
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(raw, server_hostname=server_hostname)
        try:
            if send is not None:
                sock.sendall(send)
            data = b""
            while expect not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    raise ValueError(f"connection closed after {data!r}")
                data += chunk
            return data
        finally:
            if sock is not raw:
                sock.close()


def wait_for_banner(
    proc: ServerProcess,
    host: str,
    port: int,
    expect: bytes,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    send: bytes | None = None,
) -> bytes:
    """Wait until ``host:port`` greets with data containing ``expect``; return the greeting."""
    return wait_until(
        lambda: read_banner(
            host,
            port,
            expect=expect,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
            send=send,
        ),
        proc=proc,
        what=f"banner {expect!r} on {host}:{port}",
        timeout=timeout,
    )


def http_get(
    url: str, *, timeout: float = 2.0, context: ssl.SSLContext | None = None
) -> tuple[int, bytes]:
    """GET ``url`` without proxies; return (status, body) for any HTTP status."""
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    try:
        with opener.open(url, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def wait_for_http(
    proc: ServerProcess,
    url: str,
    *,
    status: int = 200,
    timeout: float = DEFAULT_TIMEOUT,
    context: ssl.SSLContext | None = None,
) -> bytes:
    """Wait until ``GET url`` answers ``status``; return the body."""

    def check() -> bytes | None:
        code, body = http_get(url, context=context)
        return body if code == status else None

    return wait_until(check, proc=proc, what=f"HTTP {status} from {url}", timeout=timeout)


@contextlib.contextmanager
def started(proc: ServerProcess) -> Iterator[ServerProcess]:
    """Stop ``proc`` however the block ends (start-up failure included)."""
    try:
        yield proc
    finally:
        proc.stop()


def user_ids(name: str) -> tuple[int, int]:
    """(uid, gid) of a system user; a clear error naming the user if it does not exist."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError as exc:
        raise ServerStartError(f"system user {name!r} does not exist (package missing?)") from exc
    return entry.pw_uid, entry.pw_gid
