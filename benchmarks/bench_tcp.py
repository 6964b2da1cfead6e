"""TCP banner checks: probed against blackbox_exporter, same fleet, same rate, one run.

    .venv/bin/python benchmarks/bench_tcp.py --jobs 5000 --interval 10s --duration 60s

Each side connects to a fleet listener, expects ``^SSH-2.0-`` in the first line
and closes. See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import sys

import harness

# CPU-ms per probe that the "core daemon" issue sets as probed's target.
TARGET_CPU_MS_PER_PROBE = 0.07

TCP_BANNER = harness.Workload(
    name="tcp-banner",
    fleet_kind="banner",
    module="banner",
    probed_module={"probe": "tcp", "query": [{"expect": "^SSH-2\\.0-"}]},
    blackbox_module={
        "prober": "tcp",
        "tcp": {"query_response": [{"expect": "^SSH-2.0-"}]},
    },
)


def main(argv: list[str] | None = None) -> int:
    settings = harness.parse_settings(__doc__.splitlines()[0], argv)
    harness.run_benchmark(settings, TCP_BANNER, TARGET_CPU_MS_PER_PROBE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
