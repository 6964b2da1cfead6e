"""HTTP GET checks: probed against blackbox_exporter, same fleet, same rate, one run.

    .venv/bin/python benchmarks/bench_http.py --jobs 3000 --interval 10s --duration 45s \\
        --sides probed,blackbox,floor

Each side sends ``GET http://127.1.x.y:PORT/`` to a fleet listener (one canned
``HTTP/1.1 200 OK`` with ``Content-Length`` and ``Connection: close``), requires a 2xx
status and reads the body; a new connection per check on both sides. The ``plugins``
side runs ``check_http`` once per check (its own socket code, an ``HTTP/1.0`` GET,
reads to EOF) with ``-e`` so that only a 2xx status line exits 0. See
benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import sys

import harness

# CPU-ms per probe that issue 3 sets as probed's target for an HTTP probe.
TARGET_CPU_MS_PER_PROBE = 0.15

HTTP_GET = harness.Workload(
    name="http-get",
    fleet_kind="http",
    module="http_2xx",
    # Defaults otherwise: GET, 2xx, follow redirects, 10 MiB body limit.
    probed_module={"probe": "http", "ip_protocol": "ip4"},
    blackbox_module={
        "prober": "http",
        "http": {"preferred_ip_protocol": "ip4", "valid_status_codes": []},
    },
    target=lambda t: f"http://{t['host']}:{t['port']}/",
    # check_http, not check_curl: the stable one (check_curl calls itself experimental) and
    # the closer to the others' work (no libcurl start-up). -e replaces its status logic
    # (3xx OK, 4xx WARNING by default) with "the status line holds one of these".
    plugins_command=(
        str(harness.PLUGINS_DIR / "check_http"),
        *("-H", "{host}", "-p", "{port}", "-u", "/", "-t", "{timeout}"),
        *("-e", "HTTP/1.1 2,HTTP/1.0 2"),
    ),
)


def main(argv: list[str] | None = None) -> int:
    settings = harness.parse_settings(
        __doc__.splitlines()[0], argv, jobs=3000, duration="45s", base_port=23000
    )
    harness.run_benchmark(settings, HTTP_GET, TARGET_CPU_MS_PER_PROBE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
