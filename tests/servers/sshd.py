"""OpenSSH sshd in the foreground with throwaway host keys and one authorized client key."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .common import (
    DEFAULT_TIMEOUT,
    LOCALHOST,
    ServerProcess,
    free_port,
    require_binary,
    run_checked,
    service_dir,
    started,
    wait_for_banner,
    write_file,
)


@dataclass(frozen=True)
class SshdServer:
    host: str
    port: int
    data_dir: Path
    host_keys: tuple[Path, ...]
    """Private host key files; the ``.pub`` next to each holds the public key line."""
    host_key_types: tuple[str, ...]
    client_key: Path
    """Private key (ed25519, no passphrase) of a client authorized to log in as root."""
    authorized_keys: Path
    banner: str
    pid: int
    log_path: Path

    def host_public_keys(self) -> list[str]:
        return [Path(f"{key}.pub").read_text().strip() for key in self.host_keys]


@contextlib.contextmanager
def run_sshd(
    *,
    host_key_types: Sequence[str] = ("ed25519",),
    extra_host_key_types: Sequence[str] = (),
    authorized_keys: Sequence[str] = (),
    extra_config: Sequence[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
) -> Iterator[SshdServer]:
    """Start ``sshd -D -e`` on 127.0.0.1.

    Host keys are generated for ``host_key_types`` plus ``extra_host_key_types`` (e.g. ``"rsa"``,
    ``"ecdsa"``). A fresh client key pair is always authorized (``client_key``), together with
    the public key lines in ``authorized_keys``. ``extra_config`` lines are appended to
    sshd_config (e.g. ``"Ciphers aes128-ctr"``).
    """
    sshd = require_binary("sshd", "openssh-server")
    keygen = require_binary("ssh-keygen", "openssh-client")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    with service_dir("sshd") as data:
        types = tuple(dict.fromkeys([*host_key_types, *extra_host_key_types]))
        host_keys: list[Path] = []
        for key_type in types:
            path = data / f"ssh_host_{key_type}_key"
            run_checked(
                [
                    keygen,
                    "-q",
                    "-t",
                    key_type,
                    *(["-b", "2048"] if key_type == "rsa" else []),
                    "-N",
                    "",
                    "-C",
                    "",
                    "-f",
                    str(path),
                ],
                what=f"sshd host key {key_type}",
            )
            host_keys.append(path)
        client_key = data / "client_ed25519"
        run_checked(
            [keygen, "-q", "-t", "ed25519", "-N", "", "-C", "probed-test", "-f", str(client_key)],
            what="ssh client key",
        )
        lines = [Path(f"{client_key}.pub").read_text().strip(), *authorized_keys]
        auth = write_file(data / "authorized_keys", "\n".join(lines) + "\n")
        port = free_port()
        config = [
            f"ListenAddress {LOCALHOST}",
            f"Port {port}",
            *(f"HostKey {key}" for key in host_keys),
            "PidFile none",
            f"AuthorizedKeysFile {auth}",
            "StrictModes no",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "Subsystem sftp internal-sftp",
            *extra_config,
        ]
        conf = write_file(data / "sshd_config", "\n".join(config) + "\n", mode=0o600)
        log = data / "server.log"
        proc = ServerProcess("sshd", [sshd, "-D", "-e", "-f", str(conf)], log_path=log)
        with started(proc):
            greeting = wait_for_banner(proc, LOCALHOST, port, b"\r\n", timeout=timeout)
            banner = greeting.split(b"\r\n", 1)[0].decode("ascii", "replace")
            if not banner.startswith("SSH-2.0-"):
                raise proc.failure(f"unexpected banner {banner!r}")
            yield SshdServer(
                host=LOCALHOST,
                port=port,
                data_dir=data,
                host_keys=tuple(host_keys),
                host_key_types=types,
                client_key=client_key,
                authorized_keys=auth,
                banner=banner,
                pid=proc.pid,
                log_path=log,
            )
