"""TLS handshake checks: probed against blackbox_exporter, same fleet, same rate, one run.

    .venv/bin/python benchmarks/bench_tls.py --jobs 2000 --interval 10s --duration 45s \\
        --sides probed,blackbox,floor

Each side connects to a fleet listener (127.1.x.y:PORT), does a TLS handshake that
verifies the fleet's certificate against the fleet's trustme CA for the server name
``localhost``, and closes: probed's ``tls`` probe, blackbox_exporter's ``tcp`` prober
with ``tls: true``, floor.py's ``create_connection(ssl=ctx)``. The ``plugins`` side
runs ``check_curl --ssl --verify-cert --ca-cert <fleet CA>`` with the server name as
``-H`` and the listener as ``-I``: the only monitoring-plugins check that verifies chain
and name, and it sends a ``GET /`` over the connection too (the fleet answers it); a
plugin without verification is ``--plugins-cmd "/usr/lib/nagios/plugins/check_tcp -S
--sni {server_name} -H {host} -p {port} -t {timeout}"``. The certificate is
ECDSA P-256 unless ``--fleet-args="--tls-key rsa"`` (RSA 2048). See
benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import sys

import harness

# CPU-ms per probe that issue 3 sets as probed's target for a TLS handshake probe.
TARGET_CPU_MS_PER_PROBE = 0.70

# The same verification on every side: the fleet's CA, the leaf's name.
TLS_CONFIG = {
    "ca_file": harness.FleetExtra("ca_file"),
    "server_name": harness.FleetExtra("server_name"),
}

TLS_HANDSHAKE = harness.Workload(
    name="tls-handshake",
    fleet_kind="tls",
    module="tls_handshake",
    probed_module={"probe": "tls", "ip_protocol": "ip4", "tls_config": TLS_CONFIG},
    blackbox_module={
        "prober": "tcp",
        "tcp": {"preferred_ip_protocol": "ip4", "tls": True, "tls_config": TLS_CONFIG},
    },
    # libcurl with CURLOPT_SSL_VERIFYPEER/VERIFYHOST against the fleet's CA, the name as the
    # URL's host (pinned to the listener's address by CURLOPT_RESOLVE), then GET /.
    plugins_command=(
        str(harness.PLUGINS_DIR / "check_curl"),
        *("--ssl", "--verify-cert", "--ca-cert", "{ca_file}"),
        *("-H", "{server_name}", "-I", "{host}", "-p", "{port}", "-u", "/", "-t", "{timeout}"),
    ),
)


def main(argv: list[str] | None = None) -> int:
    settings = harness.parse_settings(
        __doc__.splitlines()[0], argv, jobs=2000, duration="45s", base_port=24000
    )
    harness.run_benchmark(settings, TLS_HANDSHAKE, TARGET_CPU_MS_PER_PROBE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
