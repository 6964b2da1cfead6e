"""The probe contract: what every protocol module provides and receives.

A probe is ``async def probe(target, settings, rec, env) -> bool``. Expected failures are
data (``rec.fail(Reason.X, detail)`` then ``return False``); only bugs raise.
"""

from __future__ import annotations

import enum
import ssl
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from probed.results import Recorder
    from probed.secrets import SecretStore


class Reason(enum.Enum):
    """Why a run failed. Bounded on purpose: it becomes a label value."""

    NONE = "none"
    TIMEOUT = "timeout"
    DNS_ERROR = "dns_error"
    NO_ADDRESS = "no_address"
    CONNECT_REFUSED = "connect_refused"
    NETWORK_UNREACHABLE = "network_unreachable"
    CONNECT_ERROR = "connect_error"
    CONNECTION_RESET = "connection_reset"
    CONNECTION_CLOSED = "connection_closed"
    TOO_LARGE = "response_too_large"
    NOT_TLS = "not_tls"
    EXPECT_MISMATCH = "expect_mismatch"
    PROTOCOL_ERROR = "protocol_error"
    STARTTLS_REFUSED = "starttls_refused"
    TLS_HANDSHAKE = "tls_handshake_failed"
    TLS_CERT_EXPIRED = "tls_cert_expired"
    TLS_CERT_NOT_YET_VALID = "tls_cert_not_yet_valid"
    TLS_CERT_SELF_SIGNED = "tls_cert_self_signed"
    TLS_CERT_UNKNOWN_ISSUER = "tls_cert_unknown_issuer"
    TLS_CERT_NAME_MISMATCH = "tls_cert_name_mismatch"
    TLS_CERT_INVALID = "tls_cert_invalid"
    TLS_CERT_EXPIRING = "tls_cert_expiring"
    HTTP_STATUS = "http_status"
    HTTP_VERSION = "http_version"
    HTTP_REGEX = "http_regex"
    HTTP_SSL_REQUIRED = "http_ssl_required"
    HTTP_SSL_FORBIDDEN = "http_ssl_forbidden"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    SECRET_UNAVAILABLE = "secret_unavailable"  # noqa: S105 - a reason name, not a secret
    SSH_HOST_KEY_MISMATCH = "ssh_host_key_mismatch"
    COMMAND_FAILED = "command_failed"
    QUERY_FAILED = "query_failed"
    REPLICATION_BROKEN = "replication_broken"
    REPLICATION_LAG = "replication_lag"
    BACKUP_MISSING = "backup_missing"
    BACKUP_TOO_OLD = "backup_too_old"
    BACKUP_TOO_SMALL = "backup_too_small"
    HEARTBLEED_VULNERABLE = "heartbleed_vulnerable"
    SERVER_ERROR = "server_error"  # the server reported its own fault (vsftpd "500 OOPS")
    LOGIN_REFUSED = "login_refused"  # login not offered here (LOGINDISABLED, no AUTH, ...)
    AUTH_FAILED = "auth_failed"  # credentials sent and rejected
    SMTP_REJECTED = "smtp_rejected"  # greeting, EHLO, MAIL FROM, RCPT TO or DATA refused
    MAILBOX_UNAVAILABLE = "mailbox_unavailable"  # EXAMINE/STAT refused after login
    FTP_PATH_UNAVAILABLE = "ftp_path_unavailable"  # CWD/LIST of the directory refused
    FTP_DATA_FAILED = "ftp_data_failed"  # passive data connection refused or broken
    FILE_TOO_OLD = "file_too_old"  # the newest file is older than allowed
    MESSAGE_LOST = "message_lost"  # mailflow: not delivered before the deadline
    RESOURCE_EXHAUSTED = "resource_exhausted"
    INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family: name, type and help, rendered once as its header."""

    name: str
    help: str
    type: Literal["gauge", "counter"] = "gauge"
    header: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        text = self.help.replace("\\", "\\\\").replace("\n", "\\n")
        object.__setattr__(
            self, "header", f"# HELP {self.name} {text}\n# TYPE {self.name} {self.type}\n"
        )


# Families every probe shares (blackbox_exporter names and meanings).
PROBE_SUCCESS = Family(
    "probe_success", "Whether the last run of the probe succeeded (1) or not (0)."
)
PROBE_DURATION = Family("probe_duration_seconds", "How long the last run of the probe took.")
PROBE_FAILURE = Family(
    "probe_failure_info",
    'Why the last run failed, as a bounded reason; reason="none" after a success.',
)
PROBE_LAST_RUN = Family(
    "probe_last_run_timestamp_seconds", "When the last run of this job started (Unix time)."
)
PROBE_DNS_LOOKUP = Family(
    "probe_dns_lookup_time_seconds", "How long the DNS lookup of the last run took."
)
PROBE_IP_PROTOCOL = Family(
    "probe_ip_protocol", "The IP protocol (4 or 6) of the address the last run used."
)


class Settings(BaseModel):
    """Base of every module's settings: strict, frozen, hashable (it keys caches)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    def job_problem(self, timeout: float) -> str | None:
        """A problem with running these settings under a job ``timeout`` (config check)."""
        del timeout
        return None


@dataclass(frozen=True, slots=True)
class Target:
    """A resolved job target. ``raw`` is what the operator wrote (the ``target`` label)."""

    raw: str
    host: str
    port: int | None


class Env(Protocol):
    """Long-lived shared resources injected by app.py (no module-level globals)."""

    @property
    def secrets(self) -> SecretStore: ...

    def ssl_context(self, key: Any, build: Callable[[], ssl.SSLContext]) -> ssl.SSLContext: ...

    def tls_offload(self) -> Executor | None:
        """Where the CPU-heavy steps of TLS handshakes run (OpenSSL releases the GIL), or
        None to run them on the loop."""
        ...


ProbeFn = Callable[[Target, Any, "Recorder", Env], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """What a protocol module registers in ``PROBES``."""

    name: str
    probe: ProbeFn
    settings: type[Settings]
    phase_family: Family
    families: tuple[Family, ...] = ()
    default_port: int | None = None
    parse_target: Callable[[str, Any], Target] | None = None

    def __reduce__(self) -> tuple[Callable[[str], ProbeSpec], tuple[str]]:
        # Pickled by name (a reload's jobs cross a pipe): the registry holds the one spec.
        return (_registered, (self.name,))


def _registered(name: str) -> ProbeSpec:
    from probed.probes import PROBES  # noqa: PLC0415 - the registry imports this module

    return PROBES[name]
