"""TCP banner checks: probed against blackbox_exporter, same fleet, same rate, one run.

    .venv/bin/python benchmarks/bench_tcp.py --jobs 5000 --interval 10s --duration 60s

Each side connects to a fleet listener, expects ``^SSH-2.0-`` in the first line
and closes. The ``plugins`` side runs ``check_tcp -e SSH-2.0-`` once per check (a
substring match on what the listener sent: check_tcp has no anchor). See
benchmarks/README.md for what each figure means.
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
    # Exit 0 when the reply holds "SSH-2.0-"; a mismatch is WARNING (1), a refusal CRITICAL.
    plugins_command=(
        str(harness.PLUGINS_DIR / "check_tcp"),
        *("-H", "{host}", "-p", "{port}", "-e", "SSH-2.0-", "-t", "{timeout}"),
    ),
)


def main(argv: list[str] | None = None) -> int:
    settings = harness.parse_settings(__doc__.splitlines()[0], argv)
    harness.run_benchmark(settings, TCP_BANNER, TARGET_CPU_MS_PER_PROBE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
