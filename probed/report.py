"""Human-readable report of one run: the CLI's `probe` output and /probe?debug=true."""

from __future__ import annotations

from probed.config import JobSpec
from probed.exposition import format_value, job_labels, render_outcome
from probed.results import Outcome

OK, CRITICAL, UNKNOWN = 0, 2, 3
_STATE = {OK: "OK", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


def nagios_state(outcome: Outcome) -> int:
    if outcome.success:
        return OK
    return UNKNOWN if outcome.reason.value == "internal_error" else CRITICAL


def report(job: JobSpec, outcome: Outcome, *, with_log: bool) -> str:
    state = nagios_state(outcome)
    verdict = "" if outcome.success else f": {outcome.reason.value} ({outcome.detail})"
    lines = [
        f"{job.spec.name.upper()} {_STATE[state]} - {job.target.raw} (module {job.module})"
        f"{verdict} | time={format_value(round(outcome.duration, 6))}s",
        "phases:",
    ]
    lines += [f"  {name:<10} {seconds * 1000:9.3f} ms" for name, seconds in outcome.phases]
    lines.append("metrics:")
    labels = job_labels(job.module, job.target.raw, job.labels)
    for text in render_outcome(labels, job.spec, outcome).values():
        lines += [f"  {line}" for line in text.splitlines()]
    if with_log and outcome.log is not None:
        lines.append("log:")
        lines += [f"  {line}" for line in outcome.log]
    return "\n".join(lines) + "\n"
