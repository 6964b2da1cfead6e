"""CLI: parse arguments, call into the package, map errors to exit codes."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

# probed uses no pydantic plugins; without this, pydantic scans every installed package's
# entry points when the first model is built (~10 ms of each start-up, a quarter of
# `probed scan`'s fixed cost after imports). An operator's own setting wins.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

from probed import __version__, log
from probed import config as config_mod
from probed.config import ConfigError

EXIT_CONFIG = 2
DEFAULT_CONFIG = "probes.toml"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="probed", description=__doc__)
    parser.add_argument("--version", action="version", version=f"probed {__version__}")
    parser.add_argument("--log-level", default="info", choices=log.LEVELS)
    parser.add_argument("--log-format", default="auto", choices=("auto", "json", "console"))
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("-c", "--config", default=DEFAULT_CONFIG, type=Path)
    run.add_argument(
        "--web.config.file",
        dest="web_config_file",
        type=Path,
        default=None,
        metavar="FILE",
        help="TLS and basic auth for every endpoint (Prometheus exporter web config format)",
    )

    check = sub.add_parser("check-config", help="validate a config and summarise it")
    check.add_argument("config", type=Path)
    check.add_argument(
        "--web.config.file", dest="web_config_file", type=Path, default=None, metavar="FILE"
    )

    probe = sub.add_parser(
        "probe",
        help="run one check now (Nagios exit codes: 0 OK, 2 CRITICAL, 3 UNKNOWN)",
    )
    probe.add_argument("module", help="a module of the config, or a probe name (tcp, ...)")
    probe.add_argument("target", help="host:port (or what the module expects)")
    probe.add_argument("-c", "--config", type=Path, default=None)
    probe.add_argument("--debug", action="store_true", help="print the run's own log")

    scan = sub.add_parser(
        "scan",
        help="run one check per target now and report (exit 1 if anything is vulnerable)",
    )
    scan.add_argument("module", help="a module of the config, or a probe name (heartbleed)")
    scan.add_argument("hosts", nargs="*", help="targets (host, host:port)")
    scan.add_argument("--hosts-file", action="append", type=Path, default=[])
    scan.add_argument("--file-sd", action="append", type=Path, default=[])
    scan.add_argument("-c", "--config", type=Path, default=None)
    scan.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a module setting, e.g. --set starttls=smtp --set port=25",
    )
    scan.add_argument("--concurrency", type=int, default=256)
    scan.add_argument("--timeout", default=None, help='per-target deadline, e.g. "10s"')
    scan.add_argument("--format", choices=("table", "csv", "json"), default="table")
    return parser


def _check_config(path: Path, web_config_file: Path | None) -> int:
    from probed import webconfig  # noqa: PLC0415 - bcrypt and ssl only when asked for

    try:
        cfg = config_mod.load(path)
        web = webconfig.load(web_config_file) if web_config_file is not None else None
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    print(cfg.summary())
    if web is not None:
        print(f"{web.path}: OK, {web.describe()}")
    return 0


def _probe(args: argparse.Namespace) -> int:
    from probed.report import UNKNOWN, nagios_state, report  # noqa: PLC0415
    from probed.resources import Resources, new_event_loop  # noqa: PLC0415
    from probed.runner import execute  # noqa: PLC0415
    from probed.secrets import SecretStore  # noqa: PLC0415

    try:
        cfg = config_mod.load(args.config) if args.config is not None else None
        job = config_mod.adhoc_job(cfg, args.module, args.target)
    except (ConfigError, ValueError) as exc:
        print(f"UNKNOWN - {exc}", file=sys.stderr)
        return UNKNOWN
    env = Resources(cfg.secrets if cfg is not None else SecretStore(Path.cwd()))
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        outcome = runner.run(env.closing(execute(job, env, capture_log=args.debug)))
    sys.stdout.write(report(job, outcome, with_log=args.debug))
    return nagios_state(outcome)


def _scan(args: argparse.Namespace) -> int:
    from probed.durations import parse_duration  # noqa: PLC0415
    from probed.resources import Resources, new_event_loop  # noqa: PLC0415
    from probed.scan import (  # noqa: PLC0415
        EXIT_USAGE,
        ScanRequest,
        TargetFileError,
        build_jobs,
        collect_targets,
        parse_overrides,
        run_scan,
    )
    from probed.secrets import SecretStore  # noqa: PLC0415

    def request_from(args: argparse.Namespace) -> ScanRequest:
        targets = collect_targets(args.hosts, args.hosts_file, args.file_sd)
        if not targets:
            raise ValueError("no targets: give hosts, --hosts-file or --file-sd")
        if args.concurrency < 1:
            raise ValueError("--concurrency must be at least 1")
        return ScanRequest(
            module=args.module,
            targets=targets,
            overrides=parse_overrides(args.set),
            concurrency=args.concurrency,
            timeout=parse_duration(args.timeout) if args.timeout else None,
            fmt=args.format,
        )

    try:
        cfg = config_mod.load(args.config) if args.config is not None else None
        request = request_from(args)
        jobs = build_jobs(cfg, request)
    except (ConfigError, TargetFileError, ValueError) as exc:
        print(f"probed scan: {exc}", file=sys.stderr)
        return EXIT_USAGE
    env = Resources(cfg.secrets if cfg is not None else SecretStore(Path.cwd()))
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(env.closing(run_scan(jobs, env, request)))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # argparse gives `scan`'s hosts their slot at the first positional, so hosts written
    # after an option (`scan heartbleed --set starttls=smtp mx1:25`) come back as extras.
    if args.command == "scan" and not any(e.startswith("-") for e in extra):
        args.hosts = [*args.hosts, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    # The probe command's own log goes into its report; only the daemon logs to stdout.
    quiet = args.command in {"probe", "scan"}
    log.configure("warning" if quiet else args.log_level, args.log_format)
    if args.command == "check-config":
        return _check_config(args.config, args.web_config_file)
    if args.command == "probe":
        return _probe(args)
    if args.command == "scan":
        return _scan(args)
    from probed.app import run_daemon  # noqa: PLC0415

    try:
        return run_daemon(args.config, args.web_config_file)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
