"""Durations as operators write them: "500ms", "30s", "5m", "1h", "1m30s"."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """``"500ms"``, ``"30s"``, ``"5m"``, ``"1h"``, ``"1m30s"`` -> seconds."""
    if not isinstance(value, str) or not _DURATION_WHOLE.fullmatch(value.strip()):
        raise ValueError(f'expected a duration such as "500ms", "30s" or "5m", got {value!r}')
    seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION_PART.findall(value))
    if seconds <= 0:
        raise ValueError(f"duration must be greater than zero, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


Duration = Annotated[float, BeforeValidator(parse_duration)]
