"""Write RELIABILITY.md from the hostile-peer table: ``python -m tests.hostile.report``."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.hostile.cases import BEHAVIOUR_SUMMARY, CASES, PROBES
from tests.hostile.harness import PYTHON_HEAP_BOUND, RSS_BOUND, SLACK, TIMEOUT

PATH = Path(__file__).resolve().parents[2] / "RELIABILITY.md"


def render() -> str:
    behaviours = list(dict.fromkeys(case.behaviour for case in CASES))
    by_key = {(case.probe.name, case.behaviour): case for case in CASES}
    lines = [
        "# Reliability: probes against hostile peers",
        "",
        "Generated from `tests/hostile/cases.py` by `python -m tests.hostile.report`;",
        "`tests/hostile/test_hostile.py` runs every cell and fails if this file is stale.",
        "",
        f"Each cell is one run through `probed.runner.execute` with a job timeout of "
        f"{TIMEOUT:g} s against a peer on 127.0.0.1. Every run must:",
        "",
        f"- return within the timeout plus {SLACK:g} s of slack;",
        "- end with one of the reasons in its cell (`none`: the run succeeded, which is right "
        "where the protocol allows it); `internal_error` is never expected;",
        f"- keep the Python heap peak (tracemalloc, probe and peer) under "
        f"{PYTHON_HEAP_BOUND // 2**20} MiB and the peak RSS growth (VmHWM, which also counts "
        f"OpenSSL's buffers) under {RSS_BOUND // 2**20} MiB;",
        "- leave no file descriptor open, and have been seen by the peer (one connection or more).",
        "",
        "A daemon-level test runs `probed run` with several of these peers as jobs and checks "
        "that `/metrics` and `/-/healthy` answer 200 all along.",
        "",
        "## Behaviours",
        "",
        "| behaviour | what the peer does |",
        "|---|---|",
    ]
    lines += [f"| `{name}` | {BEHAVIOUR_SUMMARY[name]} |" for name in behaviours]
    lines += ["", "## Probes", "", "| probe | module |", "|---|---|"]
    lines += [f"| `{probe.name}` | {probe.summary} |" for probe in PROBES]
    lines += ["", "## Expected outcomes", "", "Empty cell: the behaviour does not apply.", ""]
    lines.append("| probe | " + " | ".join(f"`{b}`" for b in behaviours) + " |")
    lines.append("|---" * (len(behaviours) + 1) + "|")
    for probe in PROBES:
        cells = []
        for behaviour in behaviours:
            case = by_key.get((probe.name, behaviour))
            cells.append("" if case is None else " ".join(sorted(case.expected)))
        lines.append(f"| `{probe.name}` | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render())
