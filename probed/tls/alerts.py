"""TLS alerts: the two-byte message and the names operators read in results and logs."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

__all__ = ["ALERT_NAMES", "Alert", "AlertDescription", "AlertLevel", "alert_name", "encode_alert"]


class AlertLevel(enum.IntEnum):
    WARNING = 1
    FATAL = 2


class AlertDescription(enum.IntEnum):
    """The descriptions a Heartbleed check meets; ``alert_name`` knows the full registry."""

    CLOSE_NOTIFY = 0
    UNEXPECTED_MESSAGE = 10
    RECORD_OVERFLOW = 22
    HANDSHAKE_FAILURE = 40
    ILLEGAL_PARAMETER = 47
    DECODE_ERROR = 50
    PROTOCOL_VERSION = 70
    INSUFFICIENT_SECURITY = 71
    INTERNAL_ERROR = 80
    INAPPROPRIATE_FALLBACK = 86
    UNRECOGNIZED_NAME = 112


# IANA TLS Alert registry (RFC 5246, 6066, 7301, 7507, 8446).
ALERT_NAMES: Final[dict[int, str]] = {
    0: "close_notify",
    10: "unexpected_message",
    20: "bad_record_mac",
    21: "decryption_failed",
    22: "record_overflow",
    30: "decompression_failure",
    40: "handshake_failure",
    41: "no_certificate",
    42: "bad_certificate",
    43: "unsupported_certificate",
    44: "certificate_revoked",
    45: "certificate_expired",
    46: "certificate_unknown",
    47: "illegal_parameter",
    48: "unknown_ca",
    49: "access_denied",
    50: "decode_error",
    51: "decrypt_error",
    60: "export_restriction",
    70: "protocol_version",
    71: "insufficient_security",
    80: "internal_error",
    86: "inappropriate_fallback",
    90: "user_canceled",
    100: "no_renegotiation",
    109: "missing_extension",
    110: "unsupported_extension",
    111: "certificate_unobtainable",
    112: "unrecognized_name",
    113: "bad_certificate_status_response",
    114: "bad_certificate_hash_value",
    115: "unknown_psk_identity",
    116: "certificate_required",
    120: "no_application_protocol",
}

_LEVEL_NAMES: Final = {1: "warning", 2: "fatal"}


def alert_name(description: int) -> str:
    """Registry name, or ``unknown_<n>`` (still a bounded set: n is one byte)."""
    return ALERT_NAMES.get(description, f"unknown_{description}")


@dataclass(frozen=True, slots=True)
class Alert:
    level: int
    description: int

    @property
    def fatal(self) -> bool:
        # Anything that is not explicitly a warning ends the connection in practice.
        return self.level != AlertLevel.WARNING

    @property
    def level_name(self) -> str:
        return _LEVEL_NAMES.get(self.level, f"unknown_{self.level}")

    @property
    def description_name(self) -> str:
        return alert_name(self.description)

    def __str__(self) -> str:
        return f"{self.level_name} {self.description_name}"


def encode_alert(level: int, description: int) -> bytes:
    """The alert message body (not the record around it)."""
    return bytes((level, description))
