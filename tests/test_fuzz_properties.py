"""Property tests for the parsers of untrusted or operator-written input: any input ends in a
value or the parser's own error type, never another exception.

Covered elsewhere: the TLS exchange (tests/tls/test_tls_properties.py) and the dialogue
readers (tests/test_dialogue.py).
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probed import config as config_mod
from probed.probes.base import Target
from probed.probes.dialogue import MySQLGreeting, parse_mysql_greeting
from probed.probes.ftp import FTPEntry, parse_listing
from probed.probes.http import HTTPTarget
from probed.probes.http import parse_target as parse_http_target
from probed.probes.stream import StreamError
from probed.targets import TargetFileError, parse_host_port, read_file_sd, read_hosts_file
from tests import toml_text

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- the config loader ---------------------------------------------------------------------------

_PROBE_KEYS = (
    "probe",
    "port",
    "timeout",
    "tls",
    "tls_config",
    "query",
    "read_limit",
    "ip_protocol",
    "ip_protocol_fallback",
    "all_addresses",
    "starttls",
    "method",
    "headers",
    "basic_auth",
    "bearer_token",
    "valid_status_codes",
    "body_size_limit",
    "username",
    "password",
    "min_remaining",
    "response_timeout",
    "versions",
    "mailbox",
    "directory",
    "max_file_age",
    "source",
    "max_age",
    "sftp",
    "ftp",
    "http",
    "command",
    "host_key_fingerprints",
    "replication",
    "deadline",
    "poll_interval",
    "mail_from",
    "rcpt_to",
    "smtp",
    "imap",
    "expect",
    "send",
    "send_hex",
    "file",
    "env",
    "credential",
    "insecure_skip_verify",
)
_PROBES = (
    "tcp",
    "http",
    "tls",
    "heartbleed",
    "smtp",
    "pop3",
    "imap",
    "ftp",
    "ssh",
    "mysql",
    "backup",
    "mailflow",
    "htps",
    "",
)

scalars = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["30s", "500ms", "1m30s", "0s", "-1s", "1d", "10MiB", "^OK", "(", "ip4"]),
    st.sampled_from(list(_PROBES)),
    st.integers(-(2**63), 2**63 - 1),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(_PROBE_KEYS), inner, max_size=3),
    ),
    max_leaves=12,
)
module_tables = st.dictionaries(st.sampled_from(_PROBE_KEYS), values, max_size=6)
sections = st.fixed_dictionaries(
    {},
    optional={
        "server": st.dictionaries(
            st.sampled_from(
                [
                    "listen",
                    "max_concurrency",
                    "per_host_concurrency",
                    "shutdown_grace",
                    "watch_interval",
                    "allow_probe_any_target",
                    "lissen",
                ]
            ),
            values,
            max_size=3,
        ),
        "defaults": st.dictionaries(st.sampled_from(["interval", "timeout", "x"]), values),
        "modules": st.dictionaries(st.text(max_size=8), module_tables, max_size=3),
        "groups": st.lists(
            st.dictionaries(
                st.sampled_from(
                    [
                        "name",
                        "modules",
                        "hosts",
                        "labels",
                        "interval",
                        "hosts_file",
                        "file_sd",
                        "timeout",
                    ]
                ),
                values,
                max_size=5,
            ),
            max_size=2,
        ),
        "probes": st.lists(
            st.dictionaries(
                st.sampled_from(["module", "target", "labels", "interval", "timeout"]),
                values,
                max_size=4,
            ),
            max_size=3,
        ),
        "stray": values,
    },
)


@PROPERTY
@given(sections)
def test_any_toml_document_is_a_config_or_a_config_error(document: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "probes.toml"
        path.write_text(toml_text.document(document), encoding="utf-8")
        try:
            cfg: object = config_mod.load(path, environ={})
        except config_mod.ConfigError as exc:
            cfg = exc
    if isinstance(cfg, config_mod.ConfigError):
        assert cfg.problems
        assert all(isinstance(p, str) for p in cfg.problems)
        assert all(cfg.problems)
    else:
        assert isinstance(cfg, config_mod.Config)


@PROPERTY
@given(st.text(max_size=300))
def test_any_text_is_a_config_or_a_config_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "probes.toml"
        path.write_text(text, encoding="utf-8")
        with contextlib.suppress(config_mod.ConfigError):
            config_mod.load(path, environ={})


# -- target files and target syntax ---------------------------------------------------------------


@PROPERTY
@given(st.binary(max_size=400))
def test_hosts_file_gives_entries_or_a_target_file_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "hosts.txt"
        path.write_bytes(data)
        try:
            entries = read_hosts_file(path)
        except TargetFileError as exc:
            problems = exc.problems
            entries = []
        else:
            problems = ["none"]
    assert problems
    for host, line in entries:
        assert host
        assert host == host.strip()
        assert "#" not in host
        assert line >= 1


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["targets", "labels", "__meta", "job", "x"]), inner),
    ),
    max_leaves=10,
)


@PROPERTY
@given(
    st.one_of(json_values.map(repr), st.text(max_size=200)),
    st.sampled_from([".json", ".yml", ".yaml", ".txt"]),
)
def test_file_sd_gives_targets_or_a_target_file_error(text: str, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / f"targets{suffix}"
        path.write_text(text.replace("'", '"').replace("None", "null"), encoding="utf-8")
        try:
            found = read_file_sd(path)
        except TargetFileError as exc:
            problems = exc.problems
            found = []
        else:
            problems = ["none"]
    assert problems
    for target, labels, where in found:
        assert isinstance(target, str)
        assert isinstance(where, str)
        assert all(not k.startswith("__") for k in labels)


@PROPERTY
@given(st.text(max_size=60), st.one_of(st.none(), st.integers(1, 65535)))
def test_parse_host_port_gives_a_target_or_value_error(raw: str, port: int | None) -> None:
    try:
        target = parse_host_port(raw, port)
    except ValueError:
        return
    assert isinstance(target, Target)
    assert target.host
    assert target.port is not None
    assert 1 <= target.port <= 65535


@PROPERTY
@given(
    st.one_of(
        st.text(max_size=80),
        st.builds(
            lambda scheme, rest, via: f"{scheme}{rest}{via}",
            st.sampled_from(["http://", "https://", "ftp://", "", "http://u:p@"]),
            st.text(max_size=40),
            st.sampled_from(["", " via ", " via 127.0.0.1:8080", " via [::1]", " via x y"]),
        ),
    )
)
def test_http_target_gives_a_target_or_value_error(raw: str) -> None:
    try:
        target = parse_http_target(raw, None)
    except ValueError as exc:
        message = str(exc)
        # The rejection of credentials in the URL must not repeat them.
        assert "u:p@" not in message or "u:p@" not in raw
        return
    assert isinstance(target, HTTPTarget)
    assert target.url.scheme in ("http", "https")
    assert target.port is not None
    assert 1 <= target.port <= 65535


# -- wire parsers --------------------------------------------------------------------------------

_LISTING_LINES = st.one_of(
    st.text(max_size=80),
    st.sampled_from(
        [
            "-rw-r--r--    1 0        0            1234 Jan 02 03:04 a.tar",
            "drwxr-xr-x    2 0        0            4096 Feb 29  2024 dir",
            "lrwxrwxrwx    1 0        0               3 Dec 31 23:59 l -> x",
            "-rw-r--r--    1 0        0        99999999 Zzz 99 99:99 bad",
            "12-31-24  11:59PM       <DIR>          folder",
            "02-30-99  13:61AM                  123 odd.txt",
            "type=file;size=42;modify=20240102030405; f.txt",
            "type=file;size=x;modify=99999999999999; g",
            "type=cdir; .",
            "=;= ",
        ]
    ),
)


@PROPERTY
@given(st.lists(_LISTING_LINES, max_size=20), st.floats(0, 4e9))
def test_ftp_listing_gives_entries(lines: list[str], now: float) -> None:
    entries = parse_listing("\r\n".join(lines), now)
    assert all(isinstance(e, FTPEntry) for e in entries)
    assert all(e.name not in (".", "..") for e in entries)


@PROPERTY
@given(
    st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda version, rest: b"\x0a" + version + b"\x00" + rest,
            st.binary(max_size=40).filter(lambda b: b"\x00" not in b),
            st.binary(max_size=60),
        ),
        st.builds(lambda rest: b"\xff" + rest, st.binary(max_size=60)),
    )
)
def test_mysql_greeting_gives_facts_or_stream_error(payload: bytes) -> None:
    try:
        greeting: MySQLGreeting | StreamError = parse_mysql_greeting(payload)
    except StreamError as exc:
        greeting = exc
    if isinstance(greeting, StreamError):
        assert greeting.reason.value == "protocol_error"
        return
    assert isinstance(greeting, MySQLGreeting)
    assert 0 <= greeting.capabilities < 2**32
    assert greeting.flavor in ("mysql", "mariadb")


def test_impossible_ftp_dates_are_no_dates() -> None:
    # Regression: a 14-digit modify fact that is no date crashed the listing parser
    # (ValueError from strptime), failing the run with internal_error.
    text = "type=file;size=1;modify=00000000000000; a\r\ntype=file;modify=20241399000000; b"
    entries = parse_listing(text, 0.0)
    assert [(e.name, e.mtime) for e in entries] == [("a", None), ("b", None)]
