"""The per-run recorder and the immutable outcome of a run."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from probed.probes.base import Family, Reason

Sample = tuple[Family, str, float]
"""A family, its extra label text (``phase="connect"``, maybe empty) and the value."""


def escape_label(value: str) -> str:
    """Escape a label value for the Prometheus text format."""
    if "\\" in value or '"' in value or "\n" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def label_text(labels: dict[str, str]) -> str:
    return ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items())


class _Phase:
    """Times one phase; the duration is kept even when the phase is cancelled."""

    __slots__ = ("_name", "_rec", "_start")

    def __init__(self, rec: Recorder, name: str) -> None:
        self._rec = rec
        self._name = name
        self._start = 0.0

    def __enter__(self) -> None:
        self._rec.current_phase = self._name
        self._start = time.perf_counter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        elapsed = time.perf_counter() - self._start
        self._rec.phases[self._name] = self._rec.phases.get(self._name, 0.0) + elapsed


class Recorder:
    """Collects what one run observed: phases, facts (as samples), one failure reason."""

    __slots__ = ("_redacted", "current_phase", "detail", "log", "phases", "reason", "samples")

    def __init__(self, *, capture_log: bool = False) -> None:
        self.phases: dict[str, float] = {}
        self.samples: list[Sample] = []
        self.reason = Reason.NONE
        self.detail = ""
        self.current_phase = ""
        self.log: list[str] | None = [] if capture_log else None
        self._redacted: list[str] = []

    def redact(self, *values: str) -> None:
        """Keep these strings (a secret and the encodings the probe sends it in) out of the
        detail and the log: a server may quote what we sent in its error reply."""
        self._redacted += [value for value in values if value and value not in self._redacted]

    @property
    def redacted(self) -> tuple[str, ...]:
        return tuple(self._redacted)

    def _scrub(self, text: str) -> str:
        for value in self._redacted:
            if value in text:
                text = text.replace(value, "<redacted>")
        return text

    def phase(self, name: str) -> _Phase:
        return _Phase(self, name)

    def set(self, family: Family, value: float, **labels: str) -> None:
        """Record one sample; label values are bounded facts, never free text."""
        text = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items()) if labels else ""
        # Interned: label values are bounded, so the texts are few and every job's result
        # shares them instead of holding its own copy.
        self.samples.append((family, sys.intern(text), value))

    def fail(self, reason: Reason, detail: str = "") -> bool:
        """Record the failure reason (the first one wins) and return False for the probe."""
        if self.reason is Reason.NONE:
            self.reason = reason
            self.detail = detail = self._scrub(detail)
            self.debug("failed", reason=reason.value, detail=detail)
        return False

    def debug(self, event: str, **fields: Any) -> None:
        """A line for the run's own log (``probed probe --debug``, ``/probe?debug=true``)."""
        if self.log is not None:
            extra = " ".join(f"{k}={v!r}" for k, v in fields.items())
            phase = self.current_phase or "-"
            self.log.append(self._scrub(f"[{phase}] {event} {extra}".rstrip()))

    def finish(self, success: bool, started: float, duration: float) -> Outcome:
        if not success and self.reason is Reason.NONE:
            self.reason = Reason.INTERNAL_ERROR
            self.detail = "probe returned False without a reason"
        if success:
            # A probe may have recorded a reason on a path it then recovered from.
            self.reason, self.detail = Reason.NONE, ""
        return Outcome(
            success=success,
            reason=self.reason,
            detail=self.detail,
            started=started,
            duration=duration,
            phases=tuple(self.phases.items()),
            samples=tuple(self.samples),
            log=tuple(self.log) if self.log is not None else None,
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """The immutable result of one run."""

    success: bool
    reason: Reason
    detail: str
    started: float
    duration: float
    phases: tuple[tuple[str, float], ...]
    samples: tuple[Sample, ...]
    log: tuple[str, ...] | None = None
